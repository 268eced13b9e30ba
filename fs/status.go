package fs

import (
	"context"
	"encoding/json"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/status"
)

// statusFile is a read-only file whose content is generated at open.
type statusFile struct {
	gofs.Inode
	gen func(ctx context.Context) ([]byte, error)
}

var (
	_ gofs.NodeOpener    = (*statusFile)(nil)
	_ gofs.NodeGetattrer = (*statusFile)(nil)
	_ gofs.NodeReader    = (*statusFile)(nil)
)

type statusHandle struct{ data []byte }

func (s *statusFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EACCES
	}
	b, err := s.gen(ctx)
	if err != nil {
		return nil, 0, toErrno(err)
	}
	return &statusHandle{data: b}, fuse.FOPEN_DIRECT_IO, 0
}

func (s *statusFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o444
	out.Nlink = 1
	if h, ok := fh.(*statusHandle); ok {
		out.Size = uint64(len(h.data))
	} else if b, err := s.gen(ctx); err == nil {
		out.Size = uint64(len(b))
	}
	out.SetTimeout(0)
	return 0
}

func (s *statusFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h, ok := fh.(*statusHandle)
	if !ok {
		return nil, syscall.EBADF
	}
	if off >= int64(len(h.data)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(h.data[off:min(int64(len(h.data)), off+int64(len(dest)))]), 0
}

func (f *FS) clusterInfo(ctx context.Context) (proto.ClusterInfo, error) {
	var ci proto.ClusterInfo
	err := f.c.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminClusterInfo}, &ci)
	return ci, err
}

func (f *FS) clusterInfoJSON(ctx context.Context) ([]byte, error) {
	ci, err := f.clusterInfo(ctx)
	if err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(ci, "", "  ")
	return append(b, '\n'), err
}

func (f *FS) clusterInfoText(ctx context.Context) ([]byte, error) {
	ci, err := f.clusterInfo(ctx)
	if err != nil {
		return nil, err
	}
	return status.FormatClusterInfo(ci), nil
}

// nodeDir is /node: list, and one directory per node with its info.
type nodeDir struct {
	gofs.Inode
	noRemove
	fs *FS
}

var (
	_ gofs.NodeLookuper  = (*nodeDir)(nil)
	_ gofs.NodeReaddirer = (*nodeDir)(nil)
	_ gofs.NodeUnlinker  = (*nodeDir)(nil)
	_ gofs.NodeRmdirer   = (*nodeDir)(nil)
)

func (d *nodeDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	ci, err := d.fs.clusterInfo(ctx)
	if err != nil {
		return nil, toErrno(err)
	}
	ents := []fuse.DirEntry{{Name: "list", Mode: syscall.S_IFREG, Ino: inoNodeList}}
	for i, n := range ci.Nodes {
		ents = append(ents, fuse.DirEntry{Name: string(n.ID), Mode: syscall.S_IFDIR, Ino: nodeInoBase + uint64(i)})
	}
	return gofs.NewListDirStream(ents), 0
}

func (d *nodeDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if name == "list" {
		ch := d.NewInode(ctx, &statusFile{gen: func(ctx context.Context) ([]byte, error) {
			ci, err := d.fs.clusterInfo(ctx)
			if err != nil {
				return nil, err
			}
			return status.FormatNodes(ci.Nodes), nil
		}}, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: inoNodeList})
		return ch, 0
	}
	ci, err := d.fs.clusterInfo(ctx)
	if err != nil {
		return nil, toErrno(err)
	}
	for _, n := range ci.Nodes {
		if string(n.ID) != name {
			continue
		}
		id := n.ID
		dir := d.NewInode(ctx, &fixedDir{}, gofs.StableAttr{Mode: syscall.S_IFDIR})
		info := dir.NewInode(ctx, &statusFile{gen: func(ctx context.Context) ([]byte, error) {
			ci, err := d.fs.clusterInfo(ctx)
			if err != nil {
				return nil, err
			}
			for _, n := range ci.Nodes {
				if n.ID == id {
					b, err := json.MarshalIndent(n, "", "  ")
					return append(b, '\n'), err
				}
			}
			return nil, errs.E(errs.NotFound, "node %s", id)
		}}, gofs.StableAttr{Mode: syscall.S_IFREG})
		dir.AddChild("info", info, true)
		out.Mode = syscall.S_IFDIR | 0o555
		return dir, 0
	}
	return nil, syscall.ENOENT
}
