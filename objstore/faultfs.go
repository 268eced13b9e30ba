package objstore

import (
	"os"
	"strconv"
	"sync"
	"syscall"
)

// FaultFS wraps an FS and makes chosen operations fail, in the manner of
// pebble's vfs/errorfs: tests (of this package and of others, and the
// daemon's fault drills) open a Store with a FaultFS and arm write or sync
// faults. Every other operation passes through to the wrapped FS. The
// zero value wraps OSFS() with no fault armed. A FaultFS is safe for
// concurrent use.
type FaultFS struct {
	fs FS

	mu       sync.Mutex
	read     fault
	write    fault
	sync     fault
	injected int
	corrupt  bool             // reads return their data with its first byte inverted
	tearMin  int              // a write of at least this many bytes is torn (0: none)
	tearThen func()           // called after the torn write (a test's kill)
	undos    map[uint64]*undo // TrackDurability: unsynced changes by inode
	// io is held shared by every write and sync through f while
	// durability is tracked, and exclusively by PowerLoss: a sync that
	// returned success is never undone, and none returns after.
	io sync.RWMutex
}

// undo is what a file's unsynced changes overwrote, for PowerLoss.
type undo struct {
	fd   int   // a descriptor of the file of its own (the file may be renamed or closed)
	size int64 // its size at its last sync
	recs []undoRec
}

type undoRec struct {
	off int64
	old []byte
}

// TrackDurability makes f remember, for every file, what each write,
// punch and truncation since the file's last sync replaced, so that
// PowerLoss can undo them. Only file contents are modelled: creations,
// renames and removals stay as they are.
func (f *FaultFS) TrackDurability() {
	f.mu.Lock()
	if f.undos == nil {
		f.undos = make(map[uint64]*undo)
	}
	f.mu.Unlock()
}

// PowerLoss undoes every change of a file's contents made since that
// file's last sync (fdatasync or fsync through f), as a power loss might,
// and forgets them. Writes and syncs in flight finish first; a running
// daemon's drill kills the process right after (PowerLossAndDie).
func (f *FaultFS) PowerLoss() error {
	f.io.Lock()
	defer f.io.Unlock()
	return f.powerLoss()
}

// PowerLossAndDie is PowerLoss for a running daemon: once writes and
// syncs in flight are done, it undoes the unsynced changes and calls die
// (which kills the process) before any other write or sync goes on.
func (f *FaultFS) PowerLossAndDie(die func()) error {
	f.io.Lock()
	if err := f.powerLoss(); err != nil {
		f.io.Unlock()
		return err
	}
	die()
	f.io.Unlock() // if die returned
	return nil
}

func (f *FaultFS) powerLoss() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var first error
	for ino, u := range f.undos {
		for i := len(u.recs) - 1; i >= 0; i-- {
			r := u.recs[i]
			if _, err := syscall.Pwrite(u.fd, r.old, r.off); err != nil && first == nil {
				first = err
			}
		}
		if err := syscall.Ftruncate(u.fd, u.size); err != nil && first == nil {
			first = err
		}
		_ = syscall.Close(u.fd)
		delete(f.undos, ino)
	}
	return first
}

// remember records what a change of [off, off+n) of file is about to
// replace, if durability is tracked.
func (f *FaultFS) remember(file File, off, n int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fi, ino, ok := f.tracked(file)
	if !ok {
		return
	}
	u := f.undos[ino]
	if u == nil {
		// A new open file description: one without O_DIRECT.
		fd, err := syscall.Open("/proc/self/fd/"+strconv.Itoa(int(file.Fd())), syscall.O_RDWR|syscall.O_CLOEXEC, 0)
		if err != nil {
			return
		}
		u = &undo{fd: fd, size: fi.Size()}
		f.undos[ino] = u
	}
	old := make([]byte, max(0, min(n, fi.Size()-off)))
	m, _ := syscall.Pread(u.fd, old, off)
	u.recs = append(u.recs, undoRec{off: off, old: old[:max(m, 0)]})
}

// tracked returns file's metadata and inode if durability is tracked.
// f.mu is held.
func (f *FaultFS) tracked(file File) (os.FileInfo, uint64, bool) {
	if f.undos == nil {
		return nil, 0, false
	}
	fi, err := file.Stat()
	if err != nil {
		return nil, 0, false
	}
	return fi, fi.Sys().(*syscall.Stat_t).Ino, true
}

// synced forgets file's unsynced changes: they are durable now.
func (f *FaultFS) synced(file File) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ino, ok := f.tracked(file)
	if u := f.undos[ino]; ok && u != nil {
		_ = syscall.Close(u.fd)
		delete(f.undos, ino)
	}
}

// CorruptReads makes every read through f return its data with the first
// byte inverted, as a disk returning bad data would, until Heal.
func (f *FaultFS) CorruptReads() {
	f.mu.Lock()
	f.corrupt = true
	f.mu.Unlock()
}

// TearWrite arms a torn write: the next write of at least min bytes
// writes its first half (rounded down to 4 KiB) and 1 KiB more, ending
// inside a block, and then calls then (a test's kill of the process) and
// fails with EIO if then returns.
func (f *FaultFS) TearWrite(min int, then func()) {
	f.mu.Lock()
	f.tearMin, f.tearThen = min, then
	f.mu.Unlock()
}

// tear reports whether a write of n bytes is to be torn, disarming it.
func (f *FaultFS) tear(n int) (func(), bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.tearMin == 0 || n < f.tearMin {
		return nil, false
	}
	then := f.tearThen
	f.tearMin, f.tearThen = 0, nil
	f.injected++
	return then, true
}

// fault is one armed failure rule.
type fault struct {
	err   error // nil when disarmed
	skip  int   // successful calls still to let through
	every bool  // keep failing after the first failure
}

// hit reports the error the next call must fail with, or nil.
func (r *fault) hit() error {
	if r.err == nil {
		return nil
	}
	if r.skip > 0 {
		r.skip--
		return nil
	}
	err := r.err
	if !r.every {
		r.err = nil
	}
	return err
}

var (
	_ FS   = (*FaultFS)(nil)
	_ File = (*faultFile)(nil)
)

// NewFaultFS returns a FaultFS that passes everything to fs until a fault
// is armed. A nil fs means OSFS().
func NewFaultFS(fs FS) *FaultFS {
	if fs == nil {
		fs = OSFS()
	}
	return &FaultFS{fs: fs}
}

// FailWrite arms a write fault: after n more successful writes (File.WriteAt
// or File.Punch on files opened through f), the next one fails with err
// (for example syscall.ENOSPC or syscall.EIO, wrapped in an *os.PathError
// as the OS would) without touching the file. If every is true, all later
// writes fail too until Heal. A nil err disarms the write fault.
func (f *FaultFS) FailWrite(n int, err error, every bool) {
	f.mu.Lock()
	f.write = fault{err: err, skip: n, every: every}
	f.mu.Unlock()
}

// FailRead arms a read fault, with the same rules as FailWrite, on
// File.ReadAt of files opened through f.
func (f *FaultFS) FailRead(n int, err error, every bool) {
	f.mu.Lock()
	f.read = fault{err: err, skip: n, every: every}
	f.mu.Unlock()
}

// FailSync arms a sync fault, with the same rules as FailWrite, on
// File.Sync of files and directories opened through f. The failed sync
// does not reach the wrapped file.
func (f *FaultFS) FailSync(n int, err error, every bool) {
	f.mu.Lock()
	f.sync = fault{err: err, skip: n, every: every}
	f.mu.Unlock()
}

// Heal disarms all faults.
func (f *FaultFS) Heal() {
	f.mu.Lock()
	f.corrupt, f.tearMin, f.tearThen = false, 0, nil
	f.read, f.write, f.sync = fault{}, fault{}, fault{}
	f.mu.Unlock()
}

// Injected returns how many operations have failed by injection so far, so
// a test can check that its fault really fired.
func (f *FaultFS) Injected() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.injected
}

// inner returns the wrapped FS.
func (f *FaultFS) inner() FS {
	if f.fs == nil {
		return osFS{}
	}
	return f.fs
}

func (f *FaultFS) check(r *fault, op, name string) error {
	f.mu.Lock()
	err := r.hit()
	if err != nil {
		f.injected++
	}
	f.mu.Unlock()
	if err != nil {
		return &os.PathError{Op: op, Path: name, Err: err}
	}
	return nil
}

// OpenFile opens name through the wrapped FS; the File it returns obeys
// the armed faults.
func (f *FaultFS) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	file, err := f.inner().OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &faultFile{File: file, fs: f, name: name}, nil
}

// Rename passes through.
func (f *FaultFS) Rename(oldpath, newpath string) error { return f.inner().Rename(oldpath, newpath) }

// Remove passes through.
func (f *FaultFS) Remove(name string) error { return f.inner().Remove(name) }

// MkdirAll passes through.
func (f *FaultFS) MkdirAll(path string, perm os.FileMode) error {
	return f.inner().MkdirAll(path, perm)
}

// ReadDir passes through.
func (f *FaultFS) ReadDir(name string) ([]os.DirEntry, error) { return f.inner().ReadDir(name) }

// Statfs passes through.
func (f *FaultFS) Statfs(path string) (total, free int64, err error) {
	return f.inner().Statfs(path)
}

type faultFile struct {
	File
	fs   *FaultFS
	name string
}

func (f *faultFile) ReadAt(p []byte, off int64) (int, error) {
	if err := f.fs.check(&f.fs.read, "read", f.name); err != nil {
		return 0, err
	}
	n, err := f.File.ReadAt(p, off)
	f.fs.mu.Lock()
	corrupt := f.fs.corrupt
	if corrupt && n > 0 {
		f.fs.injected++
	}
	f.fs.mu.Unlock()
	if corrupt && n > 0 {
		p[0] ^= 0xff
	}
	return n, err
}

func (f *faultFile) WriteAt(p []byte, off int64) (int, error) {
	if err := f.fs.check(&f.fs.write, "write", f.name); err != nil {
		return 0, err
	}
	if then, ok := f.fs.tear(len(p)); ok {
		n := len(p)/2&^4095 + 1024
		_, _ = f.File.WriteAt(p[:n], off)
		if then != nil {
			then()
		}
		return n, &os.PathError{Op: "write", Path: f.name, Err: syscall.EIO}
	}
	f.fs.io.RLock()
	defer f.fs.io.RUnlock()
	f.fs.remember(f.File, off, int64(len(p)))
	return f.File.WriteAt(p, off)
}

func (f *faultFile) Punch(off, length int64) error {
	if err := f.fs.check(&f.fs.write, "fallocate", f.name); err != nil {
		return err
	}
	f.fs.io.RLock()
	defer f.fs.io.RUnlock()
	f.fs.remember(f.File, off, length)
	return f.File.Punch(off, length)
}

func (f *faultFile) Truncate(size int64) error {
	f.fs.io.RLock()
	defer f.fs.io.RUnlock()
	f.fs.remember(f.File, size, 1<<40)
	return f.File.Truncate(size)
}

func (f *faultFile) Sync() error {
	if err := f.fs.check(&f.fs.sync, "sync", f.name); err != nil {
		return err
	}
	f.fs.io.RLock()
	defer f.fs.io.RUnlock()
	err := f.File.Sync()
	if err == nil {
		f.fs.synced(f.File)
	}
	return err
}
