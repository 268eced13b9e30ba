package fs

import (
	"context"
	"slices"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/proto"
)

// The snapshot tree:
//
//	/snapshot/NAME/        one directory per VDI that exists or has snapshots
//	/snapshot/NAME/TAG     snapshot NAME@TAG, a read-only raw image
//
// Creating TAG (touch, or mknod) takes the snapshot; unlinking it deletes
// the snapshot. Everything else that would change the tree (mkdir, rmdir,
// rename, links, symlinks) fails with EPERM; what would change a snapshot's
// data or attributes (open for writing, truncate, fallocate, chmod, chown)
// fails with EROFS. Setting times is accepted and ignored, so that touch of
// an existing snapshot succeeds.

// snapRoot is /snapshot.
type snapRoot struct {
	gofs.Inode
	noChange // its directories come and go with the VDIs
	fs       *FS
}

var (
	_ gofs.NodeLookuper  = (*snapRoot)(nil)
	_ gofs.NodeReaddirer = (*snapRoot)(nil)
	_ gofs.NodeCreater   = (*snapRoot)(nil)
	_ gofs.NodeMknoder   = (*snapRoot)(nil)
	_ gofs.NodeMkdirer   = (*snapRoot)(nil)
	_ gofs.NodeRmdirer   = (*snapRoot)(nil)
	_ gofs.NodeUnlinker  = (*snapRoot)(nil)
	_ gofs.NodeRenamer   = (*snapRoot)(nil)
	_ gofs.NodeSymlinker = (*snapRoot)(nil)
	_ gofs.NodeLinker    = (*snapRoot)(nil)
)

// snapList returns the snapshots of VDI name (every snapshot if name is
// empty), oldest first.
func (f *FS) snapList(ctx context.Context, name string) ([]proto.VDIInfo, error) {
	var list []proto.VDIInfo
	err := f.c.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminSnapList, Name: name}, &list)
	return list, err
}

// Lookup finds the directory of a VDI that exists or has snapshots.
func (r *snapRoot) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if cluster.CheckName(name) != nil {
		return nil, syscall.ENOENT
	}
	ctx, cancel := r.fs.ctx(ctx)
	defer cancel()
	_, err := r.fs.lookupVDI(ctx, name)
	if errs.Is(err, errs.NotFound) {
		var list []proto.VDIInfo
		list, err = r.fs.snapList(ctx, name)
		if err == nil && len(list) == 0 {
			return nil, syscall.ENOENT
		}
	}
	if err != nil {
		return nil, toErrno(err)
	}
	ino := r.fs.snapDirIno(name)
	ch := r.NewInode(ctx, &snapDir{fs: r.fs, name: name}, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: ino})
	out.Mode = syscall.S_IFDIR | 0o755
	out.Nlink = 2
	return ch, 0
}

// Readdir lists the VDIs and the names that only snapshots still have.
func (r *snapRoot) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	ctx, cancel := r.fs.ctx(ctx)
	defer cancel()
	var vdis []proto.VDIInfo
	if err := r.fs.c.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDIList}, &vdis); err != nil {
		return nil, toErrno(err)
	}
	snaps, err := r.fs.snapList(ctx, "")
	if err != nil {
		return nil, toErrno(err)
	}
	var names []string
	for _, v := range append(vdis, snaps...) {
		names = append(names, v.Name)
	}
	slices.Sort(names)
	names = slices.Compact(names)
	ents := make([]fuse.DirEntry, len(names))
	for i, name := range names {
		ents[i] = fuse.DirEntry{Name: name, Mode: syscall.S_IFDIR, Ino: r.fs.snapDirIno(name)}
	}
	return gofs.NewListDirStream(ents), 0
}

// snapDir is /snapshot/NAME: the snapshots of VDI NAME.
type snapDir struct {
	gofs.Inode
	noChange // but Create, Mknod and Unlink: snapshots are made and deleted here
	fs       *FS
	name     string
}

var (
	_ gofs.NodeLookuper  = (*snapDir)(nil)
	_ gofs.NodeReaddirer = (*snapDir)(nil)
	_ gofs.NodeCreater   = (*snapDir)(nil)
	_ gofs.NodeMknoder   = (*snapDir)(nil)
	_ gofs.NodeUnlinker  = (*snapDir)(nil)
	_ gofs.NodeMkdirer   = (*snapDir)(nil)
	_ gofs.NodeRmdirer   = (*snapDir)(nil)
	_ gofs.NodeRenamer   = (*snapDir)(nil)
	_ gofs.NodeSymlinker = (*snapDir)(nil)
	_ gofs.NodeLinker    = (*snapDir)(nil)
)

// child returns the inode of snapshot info. Its number comes from the
// snapshot's ID, so a snapshot deleted and taken again under the same tag
// is a new inode, with nothing in its page cache.
func (d *snapDir) child(ctx context.Context, info proto.VDIInfo, out *fuse.EntryOut) *gofs.Inode {
	n := &snapNode{name: info.Name, tag: info.Tag, taken: uint64(max(info.SnapTime, 0))}
	n.fs, n.id, n.fixed = d.fs, info.ID, true
	n.size.Store(info.Size)
	ch := d.NewInode(ctx, n, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: snapInoBase + uint64(info.ID)})
	if sn, ok := ch.Operations().(*snapNode); ok {
		sn.allocMap(ctx, false) // for st_blocks; fetched once, a snapshot does not change
		sn.fill(&out.Attr)
	}
	return ch
}

// Lookup finds snapshot NAME@TAG.
func (d *snapDir) Lookup(ctx context.Context, tag string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if cluster.CheckTag(tag) != nil {
		return nil, syscall.ENOENT
	}
	ctx, cancel := d.fs.ctx(ctx)
	defer cancel()
	info, err := d.fs.lookupVDI(ctx, d.name+"@"+tag)
	if err != nil {
		return nil, toErrno(err)
	}
	return d.child(ctx, info, out), 0
}

// Readdir lists the VDI's snapshots, oldest first.
func (d *snapDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	ctx, cancel := d.fs.ctx(ctx)
	defer cancel()
	list, err := d.fs.snapList(ctx, d.name)
	if err != nil {
		return nil, toErrno(err)
	}
	ents := make([]fuse.DirEntry, 0, len(list))
	for _, v := range list {
		if v.Name == d.name {
			ents = append(ents, fuse.DirEntry{Name: v.Tag, Mode: syscall.S_IFREG, Ino: snapInoBase + uint64(v.ID)})
		}
	}
	return gofs.NewListDirStream(ents), 0
}

// take takes snapshot NAME@tag. If it exists already, excl makes that
// EEXIST; otherwise the existing snapshot is returned.
func (d *snapDir) take(ctx context.Context, tag string, excl bool) (proto.VDIInfo, syscall.Errno) {
	var info proto.VDIInfo
	if err := cluster.CheckTag(tag); err != nil {
		return info, syscall.EINVAL
	}
	if errno := d.fs.writeBack(ctx, d.name); errno != 0 {
		return info, errno
	}
	err := d.fs.c.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDISnapshot, Name: d.name, Tag: tag}, &info)
	if errs.Is(err, errs.Exists) && !excl {
		info, err = d.fs.lookupVDI(ctx, d.name+"@"+tag)
	}
	return info, toErrno(err)
}

// Create takes a snapshot (touch). O_TRUNC, which could only mean writing
// to it, fails with EROFS and takes none. The file handle it returns to a
// writable create refuses writes (EROFS) and bypasses the page cache, so
// that a write fails at once instead of at writeback.
func (d *snapDir) Create(ctx context.Context, tag string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_TRUNC != 0 {
		return nil, nil, 0, syscall.EROFS
	}
	ctx, cancel := d.fs.ctx(ctx)
	defer cancel()
	info, errno := d.take(ctx, tag, flags&syscall.O_EXCL != 0)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	ch := d.child(ctx, info, out)
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return ch, &snapHandle{}, fuse.FOPEN_DIRECT_IO, 0
	}
	return ch, &snapHandle{}, fuse.FOPEN_KEEP_CACHE, 0
}

// Mknod of a regular file takes a snapshot, like Create.
func (d *snapDir) Mknod(ctx context.Context, tag string, mode uint32, dev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if t := mode & syscall.S_IFMT; t != syscall.S_IFREG && t != 0 {
		return nil, syscall.EPERM
	}
	ctx, cancel := d.fs.ctx(ctx)
	defer cancel()
	info, errno := d.take(ctx, tag, true)
	if errno != 0 {
		return nil, errno
	}
	return d.child(ctx, info, out), 0
}

// Unlink deletes a snapshot.
func (d *snapDir) Unlink(ctx context.Context, tag string) syscall.Errno {
	if cluster.CheckTag(tag) != nil {
		return syscall.ENOENT
	}
	ctx, cancel := d.fs.ctx(ctx)
	defer cancel()
	return toErrno(d.fs.c.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminSnapDelete, Name: d.name, Tag: tag}, nil))
}

// writeBack sends the writes to VDI name that this mount still holds in the
// page cache (writeback cache) to the cluster, as fsync would, if the mount
// has the VDI open for writing: a snapshot taken through this mount then
// holds every write(2) to it that returned before. It goes through the
// mount itself, the one way to reach the kernel's dirty pages.
func (f *FS) writeBack(ctx context.Context, name string) syscall.Errno {
	w, done := f.writersOf(name)
	open := w.n > 0
	done() // not held while the kernel writes back: an open could be waiting for it
	if !open {
		return 0
	}
	return f.ownWriteBack(wbOpFsync, name, 0)
}

// snapNode is one snapshot's file, read-only.
type snapNode struct {
	gofs.Inode
	image
	name, tag string
	taken     uint64 // unix seconds
}

// snapHandle is an open snapshot file.
type snapHandle struct{}

var (
	_ gofs.NodeOpener    = (*snapNode)(nil)
	_ gofs.NodeReader    = (*snapNode)(nil)
	_ gofs.NodeWriter    = (*snapNode)(nil)
	_ gofs.NodeFsyncer   = (*snapNode)(nil)
	_ gofs.NodeGetattrer = (*snapNode)(nil)
	_ gofs.NodeSetattrer = (*snapNode)(nil)
	_ gofs.NodeLseeker   = (*snapNode)(nil)
	_ gofs.NodeAllocater = (*snapNode)(nil)
)

func (n *snapNode) fill(a *fuse.Attr) {
	a.Mode = syscall.S_IFREG | 0o444
	a.Size = n.size.Load()
	a.Nlink = 1
	a.Blksize = 4096
	a.Mtime, a.Ctime, a.Atime = n.taken, n.taken, n.taken
	a.Blocks = n.blocks()
}

// info looks the snapshot up: ENOENT once it is deleted, ESTALE if its tag
// now names another snapshot (the kernel then looks the path up again).
func (n *snapNode) info(ctx context.Context) (proto.VDIInfo, syscall.Errno) {
	info, err := n.fs.lookupVDI(ctx, n.name+"@"+n.tag)
	if err != nil {
		return info, toErrno(err)
	}
	if info.ID != n.id {
		return info, syscall.ESTALE
	}
	return info, 0
}

// Getattr reports size, allocation and the time the snapshot was taken.
func (n *snapNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	ctx, cancel := n.fs.ctx(ctx)
	defer cancel()
	if _, errno := n.info(ctx); errno != 0 {
		return errno
	}
	if _, _, err := n.allocMap(ctx, false); err != nil {
		return toErrno(err)
	}
	n.fill(&out.Attr)
	out.SetTimeout(attrTTL)
	return 0
}

// Open opens the snapshot for reading; its cached pages are always good
// (a snapshot never changes, and its inode is its ID's).
func (n *snapNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&syscall.O_TRUNC != 0 {
		return nil, 0, syscall.EROFS
	}
	ctx, cancel := n.fs.ctx(ctx)
	defer cancel()
	if _, errno := n.info(ctx); errno != 0 {
		return nil, 0, errno
	}
	return &snapHandle{}, fuse.FOPEN_KEEP_CACHE, 0
}

// Read reads from the snapshot.
func (n *snapNode) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return n.read(ctx, dest, off)
}

// Write fails: snapshots are read-only (only a handle from a writable
// create can try).
func (n *snapNode) Write(ctx context.Context, fh gofs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	return 0, syscall.EROFS
}

// Fsync has nothing to do: a snapshot is durable when taken.
func (n *snapNode) Fsync(ctx context.Context, fh gofs.FileHandle, flags uint32) syscall.Errno {
	return 0
}

// Setattr refuses changes of size, mode and owner (EROFS) and ignores
// times.
func (n *snapNode) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	_, size := in.GetSize()
	_, mode := in.GetMode()
	_, uid := in.GetUID()
	_, gid := in.GetGID()
	if size || mode || uid || gid {
		return syscall.EROFS
	}
	n.fill(&out.Attr)
	return 0
}

// Lseek answers SEEK_DATA and SEEK_HOLE from the snapshot's allocated
// objects.
func (n *snapNode) Lseek(ctx context.Context, fh gofs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	return n.lseek(ctx, off, whence)
}

// Allocate fails: snapshots are read-only.
func (n *snapNode) Allocate(ctx context.Context, fh gofs.FileHandle, off uint64, length uint64, mode uint32) syscall.Errno {
	return syscall.EROFS
}
