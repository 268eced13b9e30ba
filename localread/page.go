// Package localread lets a mount read a VDI's data straight from the
// object files of the daemon on its own machine, instead of asking the
// daemon for every read.
//
// The daemon grants a lease on one object of one VDI (server: OpVDILease)
// when its own copy is current: the object is placed on it, it does not
// doubt its copy, and the object belongs to the image itself (a write
// changes it in place) or the image is read-only. The lease names the
// object's file and carries a stamp from the daemon's page, a small file
// that both processes map: a global counter, which the daemon bumps before
// anything that could make any lease wrong takes effect (a new cluster
// state, a lost disk, its own start and stop), and one counter per slot
// of objects, bumped around an object's file being replaced or removed
// and after its copy comes into doubt; and it shows that it lives (a lock
// that ends with its process, and a heartbeat). The mount reads the file,
// checks every block against its checksum, and then checks that the stamp
// still holds and the daemon lives: if so, nothing that could have
// changed what it read happened before its read ended. Anything else (a stamp that moved, a checksum
// that fails, an error) sends the read to the daemon as before.
//
// See docs/ARCHITECTURE.md, "Local reads".
package localread

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

// Slots is the number of per-object counters: an object's file replaced
// or removed moves the stamps of the objects that share its slot too,
// which costs them one read through the daemon each.
const Slots = 4096

// The page: header words, then Slots counters, all little-endian uint64
// (the machine's order: both ends are on one machine).
const (
	wMagic   = 0 // magic
	wInst    = 1 // the daemon instance's random ID
	wGlobal  = 2 // the global counter
	wDead    = 3 // non-zero once the instance has stopped
	wBeat    = 4 // the daemon's wall clock at its last beat, in ns
	hdrWords = 8
	size     = (hdrWords + Slots) * 8
	magic    = 0x3152444c50454853 // "SHEPLDR1"
)

// Stamp is what a lease checks: the instance of the page, its global
// counter and the counter of the object's slot when the lease was made.
type Stamp struct {
	Inst, Global, Slot uint64
}

// slot is oid's counter.
func slot(oid ids.ObjectID) int {
	return hdrWords + int((uint64(oid)*0x9e3779b97f4a7c15)>>(64-12))
}

func word(mem []byte, i int) *atomic.Uint64 {
	return (*atomic.Uint64)(unsafe.Pointer(&mem[i*8]))
}

// Page is the daemon's side.
type Page struct {
	path string
	mem  []byte
	inst uint64
	f    *os.File // open, with the lock that shows the daemon alive, until the process ends
}

// The daemon holds a read lock (an open file description lock) on the
// page's first byte for as long as its process lives: the kernel drops it
// when the process ends, killed or not, as it closes the process's files,
// its listening ports among them. The cluster marks a node down when its
// port refuses, and needs a round of agreement after that before a write
// elsewhere is acknowledged; a mount checks the lock after each read. The
// heartbeat covers a stopped process, which keeps its lock.
var aliveLock = unix.Flock_t{Type: unix.F_RDLCK, Whence: 0, Start: 0, Len: 1}

// Create makes a new page at path for this daemon instance. A page left
// there by an earlier instance (killed, or stopped) is retired first, so
// that no lease a mount holds from it is taken as good from now on.
func Create(path string) (*Page, error) {
	retire(path)
	var b [8]byte
	var inst uint64
	for inst == 0 {
		if _, err := rand.Read(b[:]); err != nil {
			return nil, errs.E(errs.IO, "local reads: %w", err)
		}
		inst = binary.LittleEndian.Uint64(b[:])
	}
	tmp := path + ".tmp"
	_ = os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, errs.E(errs.IO, "local reads: %w", err)
	}
	fail := func(err error) (*Page, error) {
		f.Close()
		_ = os.Remove(tmp)
		return nil, errs.E(errs.IO, "local reads: %s: %w", tmp, err)
	}
	if err := f.Truncate(size); err != nil {
		return fail(err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail(err)
	}
	// The lock on a descriptor of its own: the mapping holds f's open
	// file description, and with it any lock taken through it, until it
	// is unmapped.
	lf, err := os.OpenFile(tmp, os.O_RDWR, 0)
	if err != nil {
		_ = unix.Munmap(mem)
		return fail(err)
	}
	lk := aliveLock
	if err := unix.FcntlFlock(lf.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
		lf.Close()
		_ = unix.Munmap(mem)
		return fail(err)
	}
	f.Close()
	f = lf
	word(mem, wInst).Store(inst)
	word(mem, wGlobal).Store(1)
	word(mem, wBeat).Store(uint64(time.Now().UnixNano()))
	word(mem, wMagic).Store(magic)
	if err := os.Rename(tmp, path); err != nil {
		_ = unix.Munmap(mem)
		return fail(err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		abs = path
	}
	return &Page{path: abs, mem: mem, inst: inst, f: f}, nil
}

// retire marks the page at path, if there is one, as no longer kept.
func retire(path string) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || fi.Size() != size {
		return
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return
	}
	word(mem, wDead).Store(1)
	word(mem, wGlobal).Add(1)
	_ = unix.Munmap(mem)
}

// Path is the page's file, for leases.
func (p *Page) Path() string { return p.path }

// Stamp returns the stamp a lease on oid made now checks. Take it before
// checking that the copy is current: a change after it moves it.
func (p *Page) Stamp(oid ids.ObjectID) Stamp {
	return Stamp{Inst: p.inst, Global: p.Global(), Slot: word(p.mem, slot(oid)).Load()}
}

// Global returns the global counter, the part of a stamp that no object
// of its own moves: take it before anything a lease depends on is looked
// at.
func (p *Page) Global() uint64 { return word(p.mem, wGlobal).Load() }

// Bump moves the stamps of oid's slot: call it before oid's file is
// replaced or removed, or its copy doubted.
func (p *Page) Bump(oid ids.ObjectID) {
	if p != nil {
		word(p.mem, slot(oid)).Add(1)
	}
}

// BumpAll moves every stamp: call it before a change that could make any
// lease wrong takes effect.
func (p *Page) BumpAll() {
	if p != nil {
		word(p.mem, wGlobal).Add(1)
	}
}

// BeatEvery is how often a daemon shows it is alive (Beat), and MaxQuiet
// how long a mount takes it for alive after its last beat. A killed or
// stopped daemon's copies stop getting writes only once the cluster marks
// it down (1.5 s or more later), so a lease ends before they can fall
// behind: the mount then reads through the daemon, and waits for it. The
// daemon beats only while its cluster state stays fresh for MaxQuiet more
// (cluster/fresh.go: a second after its last confirmation).
const (
	BeatEvery = 100 * time.Millisecond
	MaxQuiet  = 400 * time.Millisecond
)

// Beat shows that the daemon was alive, and its leases good, at now (a
// time taken before it made sure of that); call it every BeatEvery.
func (p *Page) Beat(now time.Time) {
	if p != nil {
		word(p.mem, wBeat).Store(uint64(now.UnixNano()))
	}
}

// Retire marks the page as no longer kept: no lease from it holds after
// this. The page stays mapped (Bump may still be called) until the
// process ends.
func (p *Page) Retire() {
	if p != nil {
		word(p.mem, wDead).Store(1)
		word(p.mem, wGlobal).Add(1)
	}
}

// View is a mount's read-only map of a daemon's page.
type View struct {
	mem  []byte
	inst uint64
	f    *os.File // for the daemon's lock
}

// OpenView maps the page at path, which must belong to instance inst.
func OpenView(path string, inst uint64) (*View, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, errs.E(errs.IO, "local reads: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, errs.E(errs.IO, "local reads: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Size() != size {
		f.Close()
		return nil, errs.E(errs.Invalid, "local reads: %s is not a page (%d bytes)", path, fi.Size())
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, errs.E(errs.IO, "local reads: map %s: %w", path, err)
	}
	v := &View{mem: mem, inst: inst, f: f}
	if word(mem, wMagic).Load() != magic || word(mem, wInst).Load() != inst {
		v.Close()
		return nil, errs.E(errs.Invalid, "local reads: %s is not the page of instance %x", path, inst)
	}
	return v, nil
}

// Inst is the instance the view belongs to.
func (v *View) Inst() uint64 { return v.inst }

// Holds reports whether a lease on oid stamped s is still good: nothing
// that could change what it reads happened since the stamp was taken, and
// the daemon is alive (its process holds its lock, and it beat within
// MaxQuiet: a stopped process keeps its lock). A wall clock set back makes
// it false until the daemon beats again. Check it after the read.
func (v *View) Holds(oid ids.ObjectID, s Stamp) bool {
	quiet := time.Now().UnixNano() - int64(word(v.mem, wBeat).Load())
	return s.Inst == v.inst && word(v.mem, wDead).Load() == 0 &&
		word(v.mem, wGlobal).Load() == s.Global && word(v.mem, slot(oid)).Load() == s.Slot &&
		quiet >= 0 && quiet < int64(MaxQuiet) && v.locked()
}

// Moved reports whether the stamp moved since s was taken: a cheap look
// before a read, to ask for a new lease at once. Only Holds, after the
// read, vouches for what it read.
func (v *View) Moved(oid ids.ObjectID, s Stamp) bool {
	return s.Inst != v.inst || word(v.mem, wGlobal).Load() != s.Global || word(v.mem, slot(oid)).Load() != s.Slot
}

// locked reports whether a process holds the daemon's lock on the page.
func (v *View) locked() bool {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 1}
	if err := unix.FcntlFlock(v.f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		return false
	}
	return lk.Type != unix.F_UNLCK
}

// Dead reports whether the daemon retired the page.
func (v *View) Dead() bool { return word(v.mem, wDead).Load() != 0 }

// Close unmaps the view.
func (v *View) Close() {
	if v.mem != nil {
		_ = unix.Munmap(v.mem)
		v.mem = nil
		v.f.Close()
	}
}

func (s Stamp) String() string {
	return fmt.Sprintf("%x/%d/%d", s.Inst, s.Global, s.Slot)
}
