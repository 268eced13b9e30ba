package fs

import (
	"runtime"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// rawFS stands between the kernel and go-fuse's node filesystem (the
// bridge), so that a new sheepfs process can serve a FUSE connection that
// an earlier one served (takeover.go). It keeps two things the bridge
// would otherwise tie to the process that made them:
//
//   - Node IDs. The bridge uses inode numbers as node IDs (ExternalNodeID),
//     and sheepfs's inode numbers come from VDI and snapshot IDs, so a
//     node ID stays meaningful in every process. rawFS counts the
//     references the kernel holds through this process's replies (one per
//     entry reply, less what FORGET gives back); a request naming a node
//     this process never gave out is first resolved by node ID (a LOOKUP
//     of "." that the root answers: resolve.go). A FORGET of more
//     references than this process gave is passed on as what it gave.
//     (READDIRPLUS, whose entries would count too, is turned off.)
//   - File handles. The kernel's handle is the bridge's with the open's
//     kind (write, sync, directory) and the process's generation in the
//     high bits. A handle of another generation (from an earlier process)
//     is opened again in this one, with the same kind, at its first use,
//     and released with it.
//
// rawFS also tells Getattr whether a GETATTR is a stat(2) (cached.go).
type rawFS struct {
	b   fuse.RawFileSystem
	f   *FS
	gen uint64 // this process's generation, 1 to fhGenMax

	reopen sync.Mutex // held while a handle of another generation is opened again

	mu   sync.Mutex
	refs map[uint64]uint64 // node ID -> references the kernel got from this process
	old  map[uint64]uint64 // handle of another generation -> the bridge's handle
}

// File handle layout: the bridge's handle in the low 32 bits, the kind in
// the next 8, the generation in the top 24.
const (
	fhWrite    = 1 << 32
	fhSync     = 2 << 32
	fhDir      = 4 << 32
	fhKindMask = 0xff << 32
	fhGenShift = 40
	fhGenMax   = 1<<24 - 1
)

func newRawFS(b fuse.RawFileSystem, f *FS, gen uint64) *rawFS {
	return &rawFS{b: b, f: f, gen: gen, refs: map[uint64]uint64{}, old: map[uint64]uint64{}}
}

// entry counts the reference an entry reply gives the kernel.
// attrsExpired as an entry's attribute timeout (in ns) makes it 0: the
// kernel asks for the attributes at their next use (GETATTR).
const attrsExpired = 1

func (r *rawFS) entry(st fuse.Status, out *fuse.EntryOut) fuse.Status {
	if out.AttrValid == 0 && out.AttrValidNsec == attrsExpired {
		// The bridge takes a zero timeout for none set.
		out.AttrValidNsec = 0
	}
	if st == fuse.OK && out.NodeId != 0 && out.NodeId != fuse.FUSE_ROOT_ID {
		r.mu.Lock()
		r.refs[out.NodeId]++
		r.mu.Unlock()
	}
	return st
}

// node makes sure the bridge knows node id, resolving it if this process
// never gave it out.
func (r *rawFS) node(cancel <-chan struct{}, h *fuse.InHeader, id uint64) fuse.Status {
	if id == fuse.FUSE_ROOT_ID || id == 0 {
		return fuse.OK
	}
	r.mu.Lock()
	known := r.refs[id] > 0
	r.mu.Unlock()
	if known {
		return fuse.OK
	}
	in := *h
	in.NodeId = id
	var out fuse.EntryOut
	return r.entry(r.b.Lookup(cancel, &in, ".", &out), &out)
}

// encode makes the kernel's handle of the bridge's handle fh.
func (r *rawFS) encode(fh uint64, kind uint64) uint64 {
	return r.gen<<fhGenShift | kind | fh&0xffffffff
}

// openKind is the kind of a file opened with flags.
func openKind(flags uint32) uint64 {
	var k uint64
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		k |= fhWrite
	}
	if flags&(syscall.O_SYNC|syscall.O_DSYNC) != 0 {
		k |= fhSync
	}
	return k
}

// handle returns the bridge's handle for the kernel's handle fh of node
// h.NodeId, opening it again if it is another generation's.
func (r *rawFS) handle(cancel <-chan struct{}, h *fuse.InHeader, fh uint64) (uint64, fuse.Status) {
	if fh == 0 {
		return 0, fuse.OK
	}
	if fh>>fhGenShift == r.gen {
		return fh & 0xffffffff, fuse.OK
	}
	r.mu.Lock()
	b, ok := r.old[fh]
	r.mu.Unlock()
	if ok {
		return b, fuse.OK
	}
	r.reopen.Lock() // rare (once per handle of an earlier process): one at a time
	defer r.reopen.Unlock()
	r.mu.Lock()
	b, ok = r.old[fh]
	r.mu.Unlock()
	if ok {
		return b, fuse.OK
	}
	if st := r.node(cancel, h, h.NodeId); st != fuse.OK {
		return 0, st
	}
	kind := fh & fhKindMask
	in := fuse.OpenIn{InHeader: *h, Flags: syscall.O_RDONLY}
	if kind&fhWrite != 0 {
		in.Flags = syscall.O_RDWR
	}
	if kind&fhSync != 0 {
		in.Flags |= syscall.O_DSYNC
	}
	var out fuse.OpenOut
	var st fuse.Status
	if kind&fhDir != 0 {
		st = r.b.OpenDir(cancel, &in, &out)
	} else {
		st = r.b.Open(cancel, &in, &out)
	}
	if st != fuse.OK {
		return 0, st
	}
	r.mu.Lock()
	r.old[fh] = out.Fh
	r.mu.Unlock()
	return out.Fh, fuse.OK
}

// release drops the kernel's handle fh: the bridge's handle, or nil if
// there is none to release (another generation's, never used here).
func (r *rawFS) release(fh uint64) (uint64, bool) {
	if fh>>fhGenShift == r.gen {
		return fh & 0xffffffff, true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.old[fh]
	delete(r.old, fh)
	return b, ok
}

func (r *rawFS) String() string      { return "sheepfs" }
func (r *rawFS) SetDebug(debug bool) { r.b.SetDebug(debug) }
func (r *rawFS) Init(s *fuse.Server) { r.b.Init(s) }
func (r *rawFS) OnUnmount()          { r.b.OnUnmount() }

func (r *rawFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	if st := r.node(cancel, h, h.NodeId); st != fuse.OK {
		return st
	}
	return r.entry(r.b.Lookup(cancel, h, name, out), out)
}

func (r *rawFS) Forget(nodeid, nlookup uint64) {
	r.mu.Lock()
	n := min(nlookup, r.refs[nodeid])
	if r.refs[nodeid] -= n; r.refs[nodeid] == 0 {
		delete(r.refs, nodeid)
	}
	r.mu.Unlock()
	if n > 0 {
		r.b.Forget(nodeid, n)
	}
}

func (r *rawFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	if st := r.node(cancel, &in.InHeader, in.NodeId); st != fuse.OK {
		return st
	}
	if in.Flags()&fuse.FUSE_GETATTR_FH != 0 {
		fh, st := r.handle(cancel, &in.InHeader, in.Fh_)
		if st != fuse.OK {
			return st
		}
		c := *in
		c.Fh_ = fh
		return r.b.GetAttr(cancel, &c, out)
	}
	// A stat(2) (cached.go): mark the thread for Getattr.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid := unix.Gettid()
	r.f.stats.add(tid)
	defer r.f.stats.remove(tid)
	return r.b.GetAttr(cancel, in, out)
}

func (r *rawFS) Statx(cancel <-chan struct{}, in *fuse.StatxIn, out *fuse.StatxOut) fuse.Status {
	if st := r.node(cancel, &in.InHeader, in.NodeId); st != fuse.OK {
		return st
	}
	c := *in
	if c.GetattrFlags&fuse.FUSE_GETATTR_FH != 0 {
		fh, st := r.handle(cancel, &in.InHeader, in.Fh)
		if st != fuse.OK {
			return st
		}
		c.Fh = fh
	}
	return r.b.Statx(cancel, &c, out)
}

func (r *rawFS) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	if st := r.node(cancel, &in.InHeader, in.NodeId); st != fuse.OK {
		return st
	}
	c := *in
	if fh, ok := in.GetFh(); ok {
		b, st := r.handle(cancel, &in.InHeader, fh)
		if st != fuse.OK {
			return st
		}
		c.Fh = b
	}
	return r.b.SetAttr(cancel, &c, out)
}

func (r *rawFS) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	if st := r.node(cancel, &in.InHeader, in.NodeId); st != fuse.OK {
		return st
	}
	return r.entry(r.b.Mknod(cancel, in, name, out), out)
}

func (r *rawFS) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	if st := r.node(cancel, &in.InHeader, in.NodeId); st != fuse.OK {
		return st
	}
	return r.entry(r.b.Mkdir(cancel, in, name, out), out)
}

func (r *rawFS) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	if st := r.node(cancel, h, h.NodeId); st != fuse.OK {
		return st
	}
	return r.b.Unlink(cancel, h, name)
}

func (r *rawFS) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	if st := r.node(cancel, h, h.NodeId); st != fuse.OK {
		return st
	}
	return r.b.Rmdir(cancel, h, name)
}

func (r *rawFS) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	if st := r.node(cancel, &in.InHeader, in.NodeId); st != fuse.OK {
		return st
	}
	if st := r.node(cancel, &in.InHeader, in.Newdir); st != fuse.OK {
		return st
	}
	return r.b.Rename(cancel, in, oldName, newName)
}

func (r *rawFS) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	if st := r.node(cancel, &in.InHeader, in.NodeId); st != fuse.OK {
		return st
	}
	if st := r.node(cancel, &in.InHeader, in.Oldnodeid); st != fuse.OK {
		return st
	}
	return r.entry(r.b.Link(cancel, in, name, out), out)
}

func (r *rawFS) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	if st := r.node(cancel, h, h.NodeId); st != fuse.OK {
		return st
	}
	return r.entry(r.b.Symlink(cancel, h, target, name, out), out)
}

func (r *rawFS) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	if st := r.node(cancel, h, h.NodeId); st != fuse.OK {
		return nil, st
	}
	return r.b.Readlink(cancel, h)
}

func (r *rawFS) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	if st := r.node(cancel, &in.InHeader, in.NodeId); st != fuse.OK {
		return st
	}
	return r.b.Access(cancel, in)
}

func (r *rawFS) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	if st := r.node(cancel, h, h.NodeId); st != fuse.OK {
		return 0, st
	}
	return r.b.GetXAttr(cancel, h, attr, dest)
}

func (r *rawFS) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	if st := r.node(cancel, h, h.NodeId); st != fuse.OK {
		return 0, st
	}
	return r.b.ListXAttr(cancel, h, dest)
}

func (r *rawFS) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	if st := r.node(cancel, &in.InHeader, in.NodeId); st != fuse.OK {
		return st
	}
	return r.b.SetXAttr(cancel, in, attr, data)
}

func (r *rawFS) RemoveXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string) fuse.Status {
	if st := r.node(cancel, h, h.NodeId); st != fuse.OK {
		return st
	}
	return r.b.RemoveXAttr(cancel, h, attr)
}

func (r *rawFS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	if st := r.node(cancel, &in.InHeader, in.NodeId); st != fuse.OK {
		return st
	}
	st := r.entry(r.b.Create(cancel, in, name, out), &out.EntryOut)
	if st == fuse.OK {
		out.Fh = r.encode(out.Fh, openKind(in.Flags))
	}
	return st
}

func (r *rawFS) Tmpfile(cancel <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) fuse.Status {
	return fuse.ENOSYS
}

func (r *rawFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if st := r.node(cancel, &in.InHeader, in.NodeId); st != fuse.OK {
		return st
	}
	st := r.b.Open(cancel, in, out)
	if st == fuse.OK {
		out.Fh = r.encode(out.Fh, openKind(in.Flags))
	}
	return st
}

func (r *rawFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if st := r.node(cancel, &in.InHeader, in.NodeId); st != fuse.OK {
		return st
	}
	st := r.b.OpenDir(cancel, in, out)
	if st == fuse.OK {
		out.Fh = r.encode(out.Fh, fhDir)
	}
	return st
}

func (r *rawFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	if st := r.node(cancel, &in.InHeader, in.NodeId); st != fuse.OK {
		return nil, st
	}
	fh, st := r.handle(cancel, &in.InHeader, in.Fh)
	if st != fuse.OK {
		return nil, st
	}
	c := *in
	c.Fh = fh
	return r.b.Read(cancel, &c, buf)
}

func (r *rawFS) Lseek(cancel <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) fuse.Status {
	if st := r.node(cancel, &in.InHeader, in.NodeId); st != fuse.OK {
		return st
	}
	fh, st := r.handle(cancel, &in.InHeader, in.Fh)
	if st != fuse.OK {
		return st
	}
	c := *in
	c.Fh = fh
	return r.b.Lseek(cancel, &c, out)
}

func (r *rawFS) lk(cancel <-chan struct{}, in *fuse.LkIn) (*fuse.LkIn, fuse.Status) {
	if st := r.node(cancel, &in.InHeader, in.NodeId); st != fuse.OK {
		return nil, st
	}
	fh, st := r.handle(cancel, &in.InHeader, in.Fh)
	if st != fuse.OK {
		return nil, st
	}
	c := *in
	c.Fh = fh
	return &c, fuse.OK
}

func (r *rawFS) GetLk(cancel <-chan struct{}, in *fuse.LkIn, out *fuse.LkOut) fuse.Status {
	c, st := r.lk(cancel, in)
	if st != fuse.OK {
		return st
	}
	return r.b.GetLk(cancel, c, out)
}

func (r *rawFS) SetLk(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	c, st := r.lk(cancel, in)
	if st != fuse.OK {
		return st
	}
	return r.b.SetLk(cancel, c)
}

func (r *rawFS) SetLkw(cancel <-chan struct{}, in *fuse.LkIn) fuse.Status {
	c, st := r.lk(cancel, in)
	if st != fuse.OK {
		return st
	}
	return r.b.SetLkw(cancel, c)
}

func (r *rawFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	fh, ok := r.release(in.Fh)
	if !ok || r.node(cancel, &in.InHeader, in.NodeId) != fuse.OK {
		return
	}
	c := *in
	c.Fh = fh
	r.b.Release(cancel, &c)
}

func (r *rawFS) ReleaseDir(in *fuse.ReleaseIn) {
	fh, ok := r.release(in.Fh)
	if !ok || r.node(nil, &in.InHeader, in.NodeId) != fuse.OK {
		return
	}
	c := *in
	c.Fh = fh
	r.b.ReleaseDir(&c)
}

func (r *rawFS) write(cancel <-chan struct{}, in *fuse.WriteIn) (*fuse.WriteIn, fuse.Status) {
	if st := r.node(cancel, &in.InHeader, in.NodeId); st != fuse.OK {
		return nil, st
	}
	fh, st := r.handle(cancel, &in.InHeader, in.Fh)
	if st != fuse.OK {
		return nil, st
	}
	c := *in
	c.Fh = fh
	return &c, fuse.OK
}

func (r *rawFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	c, st := r.write(cancel, in)
	if st != fuse.OK {
		return 0, st
	}
	return r.b.Write(cancel, c, data)
}

func (r *rawFS) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	c, st := r.write(cancel, in)
	if st != fuse.OK {
		return 0, st
	}
	return r.b.Writev(cancel, c, data)
}

func (r *rawFS) CopyFileRange(cancel <-chan struct{}, in *fuse.CopyFileRangeIn) (uint32, fuse.Status) {
	return 0, fuse.ENOSYS // the kernel copies through reads and writes
}

func (r *rawFS) Ioctl(cancel <-chan struct{}, in *fuse.IoctlIn, inbuf []byte, out *fuse.IoctlOut, outbuf []byte) fuse.Status {
	return fuse.Status(syscall.ENOTTY)
}

func (r *rawFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	if st := r.node(cancel, &in.InHeader, in.NodeId); st != fuse.OK {
		return st
	}
	fh, st := r.handle(cancel, &in.InHeader, in.Fh)
	if st != fuse.OK {
		return st
	}
	c := *in
	c.Fh = fh
	return r.b.Flush(cancel, &c)
}

func (r *rawFS) fsync(cancel <-chan struct{}, in *fuse.FsyncIn) (*fuse.FsyncIn, fuse.Status) {
	if st := r.node(cancel, &in.InHeader, in.NodeId); st != fuse.OK {
		return nil, st
	}
	fh, st := r.handle(cancel, &in.InHeader, in.Fh)
	if st != fuse.OK {
		return nil, st
	}
	c := *in
	c.Fh = fh
	return &c, fuse.OK
}

func (r *rawFS) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	c, st := r.fsync(cancel, in)
	if st != fuse.OK {
		return st
	}
	return r.b.Fsync(cancel, c)
}

func (r *rawFS) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status {
	c, st := r.fsync(cancel, in)
	if st != fuse.OK {
		return st
	}
	return r.b.FsyncDir(cancel, c)
}

func (r *rawFS) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	if st := r.node(cancel, &in.InHeader, in.NodeId); st != fuse.OK {
		return st
	}
	fh, st := r.handle(cancel, &in.InHeader, in.Fh)
	if st != fuse.OK {
		return st
	}
	c := *in
	c.Fh = fh
	return r.b.Fallocate(cancel, &c)
}

func (r *rawFS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	if st := r.node(cancel, &in.InHeader, in.NodeId); st != fuse.OK {
		return st
	}
	fh, st := r.handle(cancel, &in.InHeader, in.Fh)
	if st != fuse.OK {
		return st
	}
	c := *in
	c.Fh = fh
	return r.b.ReadDir(cancel, &c, out)
}

func (r *rawFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return fuse.ENOSYS // turned off at INIT: its entries would hand out references
}

func (r *rawFS) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	if st := r.node(cancel, h, h.NodeId); st != fuse.OK {
		return st
	}
	return r.b.StatFs(cancel, h, out)
}
