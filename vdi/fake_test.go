package vdi

import (
	"context"
	"encoding/binary"
	"sync"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

// fakeObjects is an in-memory Objects: every object is a full ObjectSize
// buffer. It counts calls per operation (and creations per object), can
// fail chosen calls with an injected error, and can run a hook before a
// call, which is how tests step into the middle of an operation.
//
// Write to an absent index object creates it zero-filled, as the real
// store does when no replica has it. It is stricter than the real store
// for data objects, to catch misuse: a Write to an absent data object
// fails errs.NotFound (data objects are made by Create), and ranges
// outside an object fail errs.Invalid.
type fakeObjects struct {
	mu      sync.Mutex
	objs    map[ids.ObjectID][]byte
	calls   map[string]int
	creates map[ids.ObjectID]int

	// fail, if set, is asked before every call; a non-nil error is
	// returned instead of doing the call.
	fail func(op string, oid ids.ObjectID) error
	// before, if set, runs before every call (without the lock held).
	before func(op string, oid ids.ObjectID)
}

var _ Objects = (*fakeObjects)(nil)

func newFake() *fakeObjects {
	return &fakeObjects{objs: map[ids.ObjectID][]byte{}, calls: map[string]int{}, creates: map[ids.ObjectID]int{}}
}

// Operation names, as counted in calls.
const (
	opRead   = "read"
	opWrite  = "write"
	opCreate = "create"
	opPunch  = "punch"
	opRemove = "remove"
	opFlush  = "flush"
)

func (f *fakeObjects) enter(op string, oid ids.ObjectID, copies int, off, n int64) error {
	f.mu.Lock()
	f.calls[op]++
	fail, before := f.fail, f.before
	f.mu.Unlock()
	if before != nil {
		before(op, oid)
	}
	if fail != nil {
		if err := fail(op, oid); err != nil {
			return err
		}
	}
	if op == opFlush {
		return nil
	}
	if copies < 1 {
		return errs.E(errs.Invalid, "fake: %s %v with %d copies", op, oid, copies)
	}
	if !oid.Valid() {
		return errs.E(errs.Invalid, "fake: %s of malformed object ID %v", op, oid)
	}
	if off < 0 || n < 0 || off+n > ObjectSize {
		return errs.E(errs.Invalid, "fake: %s %v [%d, %d) outside the object", op, oid, off, off+n)
	}
	return nil
}

func (f *fakeObjects) Read(ctx context.Context, oid ids.ObjectID, copies int, off int64, buf []byte) error {
	if err := f.enter(opRead, oid, copies, off, int64(len(buf))); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	o, ok := f.objs[oid]
	if !ok {
		return errs.E(errs.NotFound, "fake: object %v", oid)
	}
	copy(buf, o[off:])
	return nil
}

func (f *fakeObjects) Write(ctx context.Context, oid ids.ObjectID, copies int, off int64, data []byte) error {
	if err := f.enter(opWrite, oid, copies, off, int64(len(data))); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	o, ok := f.objs[oid]
	if !ok && !oid.IsIndex() {
		return errs.E(errs.NotFound, "fake: write to absent data object %v", oid)
	}
	if !ok {
		o = make([]byte, ObjectSize)
		f.objs[oid] = o
	}
	copy(o[off:], data)
	return nil
}

func (f *fakeObjects) Create(ctx context.Context, oid ids.ObjectID, copies int, off int64, data []byte) error {
	if err := f.enter(opCreate, oid, copies, off, int64(len(data))); err != nil {
		return err
	}
	o := make([]byte, ObjectSize)
	copy(o[off:], data)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.objs[oid] = o
	f.creates[oid]++
	return nil
}

func (f *fakeObjects) Punch(ctx context.Context, oid ids.ObjectID, copies int, off, length int64) error {
	if err := f.enter(opPunch, oid, copies, off, length); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if o, ok := f.objs[oid]; ok {
		clear(o[off : off+length])
	}
	return nil
}

func (f *fakeObjects) Remove(ctx context.Context, oid ids.ObjectID, copies int) error {
	if err := f.enter(opRemove, oid, copies, 0, 0); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.objs, oid)
	return nil
}

func (f *fakeObjects) Flush(ctx context.Context) error { return f.enter(opFlush, 0, 0, 0, 0) }

// count returns how many calls of op were made.
func (f *fakeObjects) count(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

// resetCounts zeroes the call counters.
func (f *fakeObjects) resetCounts() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.calls)
	clear(f.creates)
}

// created returns how many times oid was created.
func (f *fakeObjects) created(oid ids.ObjectID) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.creates[oid]
}

// object returns a copy of oid's bytes, or nil if it is absent.
func (f *fakeObjects) object(oid ids.ObjectID) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	o, ok := f.objs[oid]
	if !ok {
		return nil
	}
	return append([]byte(nil), o...)
}

// put stores an object directly, bypassing the counters.
func (f *fakeObjects) put(oid ids.ObjectID, data []byte) {
	o := make([]byte, ObjectSize)
	copy(o, data)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.objs[oid] = o
}

// entry returns index entry idx of VDI vid as stored (0 if the index
// object is absent).
func (f *fakeObjects) entry(vid ids.VDIID, idx uint32) ids.VDIID {
	oid, off := indexLoc(vid, idx)
	o := f.object(oid)
	if o == nil {
		return 0
	}
	return ids.VDIID(binary.LittleEndian.Uint32(o[off:]))
}

// setHooks installs fail and before under the lock.
func (f *fakeObjects) setHooks(fail func(op string, oid ids.ObjectID) error, before func(op string, oid ids.ObjectID)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail, f.before = fail, before
}

// indexWith returns the bytes of an index object whose entries are the
// given owners (entry i = owners[i]).
func indexWith(owners map[uint32]ids.VDIID) []byte {
	b := make([]byte, ObjectSize)
	for idx, o := range owners {
		binary.LittleEndian.PutUint32(b[int(idx)*entrySize:], uint32(o))
	}
	return b
}

// wr returns the Writer of a test volume: its own store, unfenced.
func wr(v *Volume) Writer { return v.objs.(Writer) }
