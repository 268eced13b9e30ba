package fs

import (
	"context"
	"hash/fnv"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/sheepfs/sheepfs/proto"
)

// Resolving a node by its ID alone: the kernel may name a node that an
// earlier sheepfs process gave it (takeover.go; rawFS asks the root with a
// LOOKUP of "."). Node IDs are inode numbers, which say what the node is:
// a fixed entry, a VDI file (its VDI ID), a snapshot file (its ID), or a
// directory of /snapshot (a hash of its name). The node is found by name
// as a lookup would find it; if that name leads elsewhere now (the VDI was
// deleted), the answer is ESTALE, as for any stale inode. The directories
// of /node have numbers of their own run and are not resolved (ESTALE).

var _ gofs.NodeLookupNoder = (*rootNode)(nil)

// LookupNode finds the node whose inode number is id.
func (r *rootNode) LookupNode(ctx context.Context, id uint64, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	ctx, cancel := r.fs.ctx(ctx)
	defer cancel()
	ch, errno := r.resolve(ctx, id, out)
	if errno != 0 {
		return nil, errno
	}
	if ch == nil || ch.StableAttr().Ino != id {
		return nil, syscall.ESTALE
	}
	return ch, 0
}

func (r *rootNode) resolve(ctx context.Context, id uint64, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	child := func(name string) *gofs.Inode { return r.GetChild(name) }
	switch {
	case id == inoVDIDir:
		return child("vdi"), 0
	case id == inoSnapDir:
		return child("snapshot"), 0
	case id == inoClusterDir:
		return child("cluster"), 0
	case id == inoNodeDir:
		return child("node"), 0
	case id == inoClusterInfo || id == inoClusterJSON:
		cl := child("cluster")
		if id == inoClusterInfo {
			return cl.GetChild("info"), 0
		}
		return cl.GetChild("info.json"), 0
	case id == inoNodeList:
		return child("node").Operations().(*nodeDir).Lookup(ctx, "list", out)
	case id >= vdiInoBase && id < nodeInoBase:
		var list []proto.VDIInfo
		if err := r.fs.c.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDIList}, &list); err != nil {
			return nil, toErrno(err)
		}
		for _, v := range list {
			if vdiInoBase+uint64(v.ID) == id {
				return child("vdi").Operations().(*vdiDir).Lookup(ctx, v.Name, out)
			}
		}
	case id >= snapDirInoBase && id < snapInoBase:
		list, err := r.fs.snapList(ctx, "")
		if err != nil {
			return nil, toErrno(err)
		}
		var vdis []proto.VDIInfo
		if err := r.fs.c.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDIList}, &vdis); err != nil {
			return nil, toErrno(err)
		}
		for _, v := range append(list, vdis...) {
			if r.fs.snapDirIno(v.Name) == id {
				return child("snapshot").Operations().(*snapRoot).Lookup(ctx, v.Name, out)
			}
		}
	case id >= snapInoBase && id < snapInoBase+1<<32:
		list, err := r.fs.snapList(ctx, "")
		if err != nil {
			return nil, toErrno(err)
		}
		for _, v := range list {
			if snapInoBase+uint64(v.ID) != id {
				continue
			}
			dir, errno := child("snapshot").Operations().(*snapRoot).Lookup(ctx, v.Name, &fuse.EntryOut{})
			if errno != 0 {
				return nil, errno
			}
			return dir.Operations().(*snapDir).Lookup(ctx, v.Tag, out)
		}
	}
	return nil, syscall.ESTALE
}

// snapDirIno returns the inode number of /snapshot/name: a hash of the
// name, the same in every sheepfs process, unless another name of this
// process has it (then the next free number).
func (f *FS) snapDirIno(name string) uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ino, ok := f.snapDirs[name]; ok {
		return ino
	}
	h := fnv.New32a()
	h.Write([]byte(name))
	ino := snapDirInoBase + uint64(h.Sum32())
	for f.snapDirInos[ino] {
		ino = snapDirInoBase + (ino+1-snapDirInoBase)%(1<<32)
	}
	f.snapDirs[name] = ino
	f.snapDirInos[ino] = true
	return ino
}
