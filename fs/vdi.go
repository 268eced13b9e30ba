package fs

import (
	"context"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/proto"
)

// Linux fallocate modes.
const (
	fallocKeepSize  = 0x01
	fallocPunchHole = 0x02
	fallocZeroRange = 0x10
)

// vdiDir is /vdi: one file per VDI.
type vdiDir struct {
	gofs.Inode
	fs *FS
}

var (
	_ gofs.NodeLookuper  = (*vdiDir)(nil)
	_ gofs.NodeReaddirer = (*vdiDir)(nil)
	_ gofs.NodeCreater   = (*vdiDir)(nil)
	_ gofs.NodeUnlinker  = (*vdiDir)(nil)
)

func (d *vdiDir) child(ctx context.Context, info proto.VDIInfo, out *fuse.EntryOut) *gofs.Inode {
	// The node the bridge has for this VDI, if any: it keeps that one
	// (go-fuse goes by the inode's identity), with its open state.
	ch := d.GetChild(info.Name)
	var vn *vdiNode
	if ch != nil {
		if o, ok := ch.Operations().(*vdiNode); ok && o.id == info.ID {
			vn = o
		}
	}
	if vn == nil {
		vn = &vdiNode{name: info.Name, created: uint64(info.Created)}
		vn.fs, vn.id = d.fs, info.ID
		if !d.fs.held {
			// A node the bridge does not have is an inode the kernel
			// does not have: it makes it with this entry's size. A
			// sheepfs that took the mount over starts with no nodes
			// while the kernel keeps its inodes, and their sizes are
			// not known.
			vn.setKernel(info.Size)
		}
		ch = d.NewInode(ctx, vn, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: vdiInoBase + uint64(info.ID)})
	}
	vn.size.Store(info.Size)
	vn.allocMap(ctx, false) // for st_blocks; without it they read as 0
	vn.fill(&out.Attr)
	if vn.kernelSizeOld() {
		// Resized elsewhere: the attributes expire at once, so that a
		// stat asks Getattr, which gives the kernel the new size
		// (setKernelSize; not here, where the kernel may hold the
		// lookup of the very name that the truncate of the new size
		// looks up).
		out.SetAttrTimeout(attrsExpired)
	}
	return ch
}

// Lookup finds a VDI by name. A name no VDI can have (NAME@TAG names a
// snapshot, which lives under /snapshot) is not there.
func (d *vdiDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if cluster.CheckName(name) != nil {
		return nil, syscall.ENOENT
	}
	ctx, cancel := d.fs.ctx(ctx)
	defer cancel()
	info, err := d.fs.lookupVDI(ctx, name)
	if err != nil {
		if errs.Is(err, errs.Invalid) {
			return nil, syscall.ENOENT
		}
		return nil, toErrno(err)
	}
	ch := d.child(ctx, info, out)
	// A stat whose entry has expired asks here, not Getattr, and is then
	// told the size the kernel holds: it waits for a fix of it too.
	if vn, ok := ch.Operations().(*vdiNode); ok {
		vn.waitSizeFix(ctx)
	}
	return ch, 0
}

// Readdir lists the VDIs.
func (d *vdiDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	ctx, cancel := d.fs.ctx(ctx)
	defer cancel()
	var list []proto.VDIInfo
	if err := d.fs.c.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDIList}, &list); err != nil {
		return nil, toErrno(err)
	}
	ents := make([]fuse.DirEntry, len(list))
	for i, v := range list {
		ents[i] = fuse.DirEntry{Name: v.Name, Mode: syscall.S_IFREG, Ino: vdiInoBase + uint64(v.ID)}
	}
	return gofs.NewListDirStream(ents), 0
}

// Create makes a new, empty VDI (truncate or write to give it a size).
func (d *vdiDir) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	ctx, cancel := d.fs.ctx(ctx)
	defer cancel()
	var info proto.VDIInfo
	err := d.fs.c.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDICreate, Name: name}, &info)
	if errs.Is(err, errs.Exists) && flags&syscall.O_EXCL == 0 {
		info, err = d.fs.lookupVDI(ctx, name)
	}
	if err != nil {
		return nil, nil, 0, toErrno(err)
	}
	ch := d.child(ctx, info, out)
	n := ch.Operations().(*vdiNode)
	fh, fuseFlags, errno := n.Open(ctx, flags)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	return ch, fh, fuseFlags, 0
}

// Unlink deletes a VDI: EBUSY while anyone has it open for writing.
func (d *vdiDir) Unlink(ctx context.Context, name string) syscall.Errno {
	ctx, cancel := d.fs.ctx(ctx)
	defer cancel()
	err := d.fs.c.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDIDelete, Name: name}, nil)
	return toErrno(err)
}

// vdiNode is one VDI's file. Its inode number comes from the VDI's ID: a
// VDI deleted and created again under the same name is another inode, with
// its own page cache.
type vdiNode struct {
	gofs.Inode
	image
	name     string
	created  uint64        // unix seconds
	cacheGen uint64        // the VDI's WriteGen when the page cache was last valid (under mu)
	fix      *sizeFix      // a fix of the kernel's size of the file under way (size.go; under mu)
	setting  chan struct{} // closed when the kernel's size set under way is done (size.go; under mu)
	// kernelSize is the kernel's size of the file, as far as sheepfs
	// knows, plus one (0: not known; size.go).
	kernelSize atomic.Uint64
	// writeOpens counts the file's handles open for writing here: while
	// there are any, the kernel may hold writes of it (cached.go).
	writeOpens atomic.Int32
	wbMu       sync.Mutex // held across a write-back (one at a time per file)
	// wbErrs counts the errors of write-backs of cached writes (the
	// kernel reports such an error to one close only, which sheepfs's
	// own files, for a write-back or a size fix, may take); wbErrno is
	// the last. Each writer's close reports those since it opened
	// (Flush). Not under wbMu: the WRITE that fails may be the one a
	// write-back holding wbMu waits for.
	errMu   sync.Mutex
	wbErrs  uint64
	wbErrno syscall.Errno

	synced syncedWrites // which writes go out synced, which fsyncs need no flush
}

var (
	_ gofs.NodeOpener    = (*vdiNode)(nil)
	_ gofs.NodeReader    = (*vdiNode)(nil)
	_ gofs.NodeWriter    = (*vdiNode)(nil)
	_ gofs.NodeFsyncer   = (*vdiNode)(nil)
	_ gofs.NodeReleaser  = (*vdiNode)(nil)
	_ gofs.NodeGetattrer = (*vdiNode)(nil)
	_ gofs.NodeSetattrer = (*vdiNode)(nil)
	_ gofs.NodeLseeker   = (*vdiNode)(nil)
	_ gofs.NodeAllocater = (*vdiNode)(nil)
	_ gofs.NodeFlusher   = (*vdiNode)(nil)
)

// handle is one open of a VDI file.
type handle struct {
	write  bool
	sync   bool   // O_SYNC / O_DSYNC
	direct bool   // O_DIRECT: its writes bypass the cache (their errors go to write(2))
	errs   uint64 // the node's wbErrs this handle's closes have reported (under errMu)
}

// wbError records the error e of a write-back.
func (n *vdiNode) wbError(e syscall.Errno) {
	n.errMu.Lock()
	n.wbErrs++
	n.wbErrno = e
	n.errMu.Unlock()
}

// Flush (at each close) reports to a writer the errors of write-backs
// since it opened, once: the kernel reports them to a close only if no
// other close took the report first, and sheepfs's own files (cached.go,
// size.go) take it. fsync reports them anyway.
func (n *vdiNode) Flush(ctx context.Context, fh gofs.FileHandle) syscall.Errno {
	h, ok := fh.(*handle)
	if !ok || !h.write {
		return 0
	}
	n.errMu.Lock()
	defer n.errMu.Unlock()
	if h.errs == n.wbErrs {
		return 0
	}
	h.errs = n.wbErrs
	return n.wbErrno
}

func (n *vdiNode) fill(a *fuse.Attr) {
	size := n.size.Load()
	a.Mode = syscall.S_IFREG | 0o644
	a.Size = size
	a.Nlink = 1
	a.Blksize = 4096
	a.Mtime, a.Ctime, a.Atime = n.created, n.created, n.created
	a.Blocks = n.blocks()
}

// info looks the VDI up by name. A VDI of that name with another ID is a
// new VDI, and this inode is stale: ESTALE makes the kernel look the path
// up again (and find the new inode) before it gives up.
func (n *vdiNode) info(ctx context.Context) (proto.VDIInfo, syscall.Errno) {
	info, err := n.fs.lookupVDI(ctx, n.name)
	if err != nil {
		return info, toErrno(err)
	}
	if info.ID != n.id {
		return info, syscall.ESTALE
	}
	return info, 0
}

// refresh reloads the VDI's size from the cluster.
func (n *vdiNode) refresh(ctx context.Context) syscall.Errno {
	info, errno := n.info(ctx)
	if errno != 0 {
		return errno
	}
	n.size.Store(info.Size)
	return 0
}

// Getattr reports size and allocation.
func (n *vdiNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	ctx, cancel := n.fs.ctx(ctx)
	defer cancel()
	n.waitSizeFix(ctx)
	if n.fs.forStat() {
		n.writeBack(0) // st_blocks counts the cached writes too (cached.go)
	}
	info, errno := n.info(ctx)
	if errno != 0 {
		return errno
	}
	n.size.Store(info.Size)
	// Resized elsewhere: stat shows it. Only for a stat(2), which holds
	// no lock of the file's: the kernel holds the inode lock across the
	// GETATTR of a SEEK_END, which would hold up the truncate; an open
	// file's size is the one it was opened with. Not while this mount
	// holds the write lock: the size is this mount's.
	if n.fs.forStat() && !(info.Locked && info.Mount == n.fs.c.Mount().Shown()) {
		n.setKernelSize()
	}
	if _, _, err := n.allocMap(ctx, false); err != nil {
		return toErrno(err)
	}
	n.fill(&out.Attr)
	out.SetTimeout(attrTTL)
	return 0
}

// Open takes the VDI's write lock for a writable open, and decides whether
// the kernel may keep the file's cached pages (see keepCache). An inode
// whose name now belongs to another VDI (deleted and created again) fails
// with ESTALE, so that the open goes to the new VDI's inode instead.
func (n *vdiNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if n.fs.ownRequest(ctx) {
		// sheepfs's own open for a write-back (cached.go, wbhelper.go):
		// the file is open for writing here, so the cache holds its data.
		return &handle{}, fuse.FOPEN_KEEP_CACHE, 0
	}
	ctx, cancel := n.fs.ctx(ctx)
	defer cancel()
	h := &handle{write: flags&syscall.O_ACCMODE != syscall.O_RDONLY,
		sync: flags&(syscall.O_SYNC|syscall.O_DSYNC) != 0, direct: flags&syscall.O_DIRECT != 0}
	n.errMu.Lock()
	h.errs = n.wbErrs // errors before this open are not its own
	n.errMu.Unlock()
	keep := false
	if h.write {
		w, done := n.fs.writersOf(n.name)
		if w.n == 0 {
			info, err := n.fs.c.Lock(ctx, n.name)
			if err != nil {
				done()
				if errs.Is(err, errs.Busy) {
					// The program sees only EBUSY: say who writes.
					n.fs.logf("busy "+n.name, "open vdi/%s for writing: %v (one writer at a time; a live migration's destination opens it read-only until the hand-over, as qemu does with auto-read-only=on)", n.name, err)
				}
				return nil, 0, toErrno(err)
			}
			if info.ID != n.id {
				_ = n.fs.c.Unlock(ctx, n.name)
				done()
				return nil, 0, syscall.ESTALE
			}
			w.id = n.id
			// Our lock is the one grant since our last open: the
			// cache holds what we left. A rollback counts as a
			// grant, so after one the cache goes.
			keep = n.keepCache(info.WriteGen, info.WriteGen-1)
			// No writer of ours since the last close, which wrote
			// its pages back: the cluster's size is the size (it
			// may have been resized meanwhile, even if not written).
			n.size.Store(info.Size)
			n.setKernelSize()
		} else if w.id != n.id {
			done()
			return nil, 0, syscall.ESTALE
		} else {
			keep = true // we hold the lock: nobody else writes
		}
		w.n++
		n.writeOpens.Add(1)
		done()
		if flags&syscall.O_TRUNC != 0 {
			if errno := n.resize(ctx, 0); errno != 0 {
				n.release(context.Background(), h) // not the open's: a signal may end it
				return nil, 0, errno
			}
		}
	} else {
		info, errno := n.info(ctx)
		if errno != 0 {
			return nil, 0, errno
		}
		ours := info.Locked && info.Mount == n.fs.c.Mount().Shown()
		if !info.Locked || ours {
			keep = n.keepCache(info.WriteGen, info.WriteGen)
		} else {
			n.keepCache(0, 1) // being written elsewhere: never trust it
		}
		if !ours {
			// Changed elsewhere (written, resized, rolled back): take
			// its size with its data. Our own writer's size is ours.
			n.size.Store(info.Size)
			n.setKernelSize()
		}
	}
	if keep {
		return h, fuse.FOPEN_KEEP_CACHE, 0
	}
	// Without KEEP_CACHE the kernel drops the file's cached pages.
	return h, 0, 0
}

// keepCache records that the page cache is valid as of write generation
// gen, and reports whether it was valid as of want (so nothing changed
// elsewhere since this mount last had the file open). Generations count the
// write locks granted and the rollbacks of this VDI (this inode's ID): a
// VDI of the same name created anew has a new inode and an empty cache.
func (n *vdiNode) keepCache(gen, want uint64) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	ok := n.cacheGen == want && gen != 0
	n.cacheGen = gen
	return ok
}

// release ends a write handle, and the write lock with the last. The
// unlock waits for the cluster up to a minute, or until until ends.
func (n *vdiNode) release(until context.Context, h *handle) {
	if !h.write {
		return
	}
	n.writeOpens.Add(-1)
	w, done := n.fs.writersOf(n.name)
	defer done()
	w.n--
	if w.n == 0 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		defer context.AfterFunc(until, cancel)()
		_ = n.fs.c.Unlock(ctx, n.name)
	}
}

// Release drops the write lock after the last writer closes. The kernel
// never interrupts a RELEASE, so its context ends only with the kernel's
// connection (an unmount): then the unlock is left to the gateway, which
// drops a client's locks with its connection when this process ends. A
// cluster without a quorum would otherwise hold the exit for a minute.
func (n *vdiNode) Release(ctx context.Context, fh gofs.FileHandle) syscall.Errno {
	if h, ok := fh.(*handle); ok {
		n.release(ctx, h)
	}
	return 0
}

// Read reads from the VDI; reads past the end return what exists.
func (n *vdiNode) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return n.read(ctx, dest, off)
}

// Write writes to the VDI, growing it when the write ends past the end
// (as a regular file does). A write that ends past the largest VDI size
// fails whole with EFBIG and changes nothing (size.go says what the kernel
// makes of that).
func (n *vdiNode) Write(ctx context.Context, fh gofs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	ctx, cancel := n.fs.ctx(ctx)
	defer cancel()
	h, _ := fh.(*handle)
	if h == nil || !h.write {
		return 0, syscall.EBADF
	}
	if off < 0 {
		return 0, syscall.EINVAL
	}
	n32, errno := n.write(ctx, h, data, off)
	if errno != 0 && n.fs.writeback && !h.direct {
		// A write-back of cached writes: the kernel tells its error
		// to one close only, which sheepfs's own files may take.
		n.wbError(errno)
	}
	return n32, errno
}

func (n *vdiNode) write(ctx context.Context, h *handle, data []byte, off int64) (uint32, syscall.Errno) {
	end := uint64(off) + uint64(len(data))
	if err := checkSize(n.name, end); err != nil {
		n.sizeRefused()
		return 0, toErrno(err)
	}
	if end > n.size.Load() {
		if errno := n.grow(ctx, end); errno != 0 {
			return 0, errno
		}
	}
	sync := n.synced.beginWrite() || h.sync
	err := n.fs.hold(ctx, n.name, n.id, func() error { return n.fs.c.WriteAt(ctx, n.id, data, off, sync) })
	if !sync || err != nil {
		n.synced.changed()
	}
	if err != nil {
		return 0, toErrno(err)
	}
	n.kernelGrew(end)
	n.allocChanged()
	n.fs.lr.wrote(n.id, off, int64(len(data)))
	return uint32(len(data)), 0
}

// grow makes the VDI at least size bytes. Writes past the end may arrive
// in any order, so a grow never shrinks.
func (n *vdiNode) grow(ctx context.Context, size uint64) syscall.Errno {
	if err := checkSize(n.name, size); err != nil {
		return toErrno(err)
	}
	var info proto.VDIInfo
	err := n.fs.hold(ctx, n.name, n.id, func() error {
		return n.fs.c.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDIResize, Name: n.name, Size: size, Grow: true}, &info)
	})
	n.synced.changed()
	if err != nil {
		return toErrno(err)
	}
	for {
		cur := n.size.Load()
		if info.Size <= cur || n.size.CompareAndSwap(cur, info.Size) {
			break
		}
	}
	n.allocChanged()
	return 0
}

// resize sets the VDI's size.
func (n *vdiNode) resize(ctx context.Context, size uint64) syscall.Errno {
	if size == n.size.Load() {
		return 0
	}
	var info proto.VDIInfo
	err := n.fs.c.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDIResize, Name: n.name, Size: size, Mount: n.fs.c.Mount()}, &info)
	n.synced.changed() // a shrink discards the tail: a flush syncs it
	if err != nil {
		return toErrno(err)
	}
	n.size.Store(info.Size)
	n.allocChanged()
	return 0
}

// Fsync makes every write so far durable on all replicas; if every change
// since the last flush was a synced write, there is nothing to flush
// (syncedWrites).
func (n *vdiNode) Fsync(ctx context.Context, fh gofs.FileHandle, flags uint32) syscall.Errno {
	ctx, cancel := n.fs.ctx(ctx)
	defer cancel()
	flushed, err := n.synced.fsync(func() error {
		return n.fs.hold(ctx, n.name, n.id, func() error { return n.fs.c.Flush(ctx, n.id) })
	})
	switch {
	case err != nil:
		n.fs.countFsync("failed")
	case flushed:
		n.fs.countFsync("flushed")
	default:
		n.fs.countFsync("synced")
	}
	return toErrno(err)
}

// Setattr changes the size (grow, or shrink discarding the tail). Mode,
// owner and times are kept nowhere (fill makes them up): a change of them
// fails with EPERM, as vfat refuses what it cannot store, where success
// would claim a change that is not there (fixedAttrs). The truncate of a
// size fix (size.go) resizes nothing and answers with the cluster's size.
func (n *vdiNode) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	ctx, cancel := n.fs.ctx(ctx)
	defer cancel()
	if _, ok := in.GetSize(); ok && n.fs.ownRequest(ctx) {
		if errno := n.refresh(ctx); errno != 0 {
			return errno
		}
		n.fill(&out.Attr)
		n.setKernel(out.Size)
		return 0
	}
	var cur fuse.Attr
	n.fill(&cur)
	if errno := fixedAttrs(in, &cur); errno != 0 {
		return errno
	}
	size, ok := in.GetSize()
	if ok {
		if errno := n.resize(ctx, size); errno != 0 {
			return errno
		}
	}
	n.fill(&out.Attr)
	if ok {
		n.setKernel(out.Size) // the kernel takes the size of a truncate's answer
	}
	return 0
}

// fixedAttrs refuses (EPERM) a setattr that would change what a VDI file
// cannot keep: its mode and owner, unless to what cur has already, and its
// times, unless to now.
//
// Times set to now (touch) succeed and change nothing: touch makes a file
// exist, and calls utimensat on one that exists. Times set to given values
// (touch -d, cp -p, rsync -t) fail, like chmod and chown (cp
// --preserve=mode fails at its fchmod); plain cp, dd, truncate and
// qemu-img set no mode, owner or time. Under the writeback cache the
// kernel itself sends the mtime it keeps, with the ctime and never the
// atime (FUSE files are noatime), when it writes the inode back (fsync,
// close): that must succeed, so a utimensat that sets only the mtime,
// which looks the same there, succeeds too and changes nothing.
func fixedAttrs(in *fuse.SetAttrIn, cur *fuse.Attr) syscall.Errno {
	if mode, ok := in.GetMode(); ok && mode&0o7777 != cur.Mode&0o7777 {
		return syscall.EPERM
	}
	if uid, ok := in.GetUID(); ok && uid != cur.Uid {
		return syscall.EPERM
	}
	if gid, ok := in.GetGID(); ok && gid != cur.Gid {
		return syscall.EPERM
	}
	v := in.Valid
	givenAtime := v&fuse.FATTR_ATIME != 0 && v&fuse.FATTR_ATIME_NOW == 0
	givenMtime := v&fuse.FATTR_MTIME != 0 && v&fuse.FATTR_MTIME_NOW == 0 && v&fuse.FATTR_CTIME == 0
	if givenAtime || givenMtime {
		return syscall.EPERM
	}
	return 0
}

// Lseek answers SEEK_DATA and SEEK_HOLE from the VDI's allocated objects,
// once the kernel has written back what it holds from off on (cached.go).
func (n *vdiNode) Lseek(ctx context.Context, fh gofs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	n.writeBack(off)
	return n.lseek(ctx, off, whence)
}

// Allocate supports punch hole and zero range; other modes (plain
// preallocation) are refused with EOPNOTSUPP, since a thin VDI cannot
// promise space.
func (n *vdiNode) Allocate(ctx context.Context, fh gofs.FileHandle, off uint64, length uint64, mode uint32) syscall.Errno {
	ctx, cancel := n.fs.ctx(ctx)
	defer cancel()
	h, _ := fh.(*handle)
	if h == nil || !h.write {
		return syscall.EBADF
	}
	var keep bool
	switch mode &^ fallocKeepSize {
	case fallocPunchHole:
		if mode&fallocKeepSize == 0 {
			return syscall.EOPNOTSUPP
		}
	case fallocZeroRange:
		keep = true
		if end := off + length; mode&fallocKeepSize == 0 {
			if end > n.size.Load() {
				if errno := n.grow(ctx, end); errno != 0 {
					return errno
				}
			}
			defer n.kernelGrew(end)
		}
	default:
		return syscall.EOPNOTSUPP
	}
	size := n.size.Load()
	if off >= size {
		return 0
	}
	length = min(length, size-off)
	err := n.fs.hold(ctx, n.name, n.id, func() error { return n.fs.c.Discard(ctx, n.id, int64(off), int64(length), keep) })
	n.synced.changed()
	if err != nil {
		return toErrno(err)
	}
	n.allocChanged()
	return 0
}
