package vdi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

const testVID ids.VDIID = 7

// pattern returns n bytes that differ with seed and position (with a
// period of 4093 bytes, prime, so that object boundaries fall on different
// bytes).
func pattern(seed byte, n int) []byte {
	const period = 4093
	b := make([]byte, n)
	for i := range min(n, period) {
		b[i] = seed + byte(i*7) + byte(i>>9)
	}
	for i := period; i < n; i *= 2 {
		copy(b[i:], b[:i])
	}
	return b
}

func mustWrite(t testing.TB, v *Volume, data []byte, off int64) {
	t.Helper()
	if err := v.WriteAt(context.Background(), wr(v), data, off); err != nil {
		t.Fatalf("WriteAt(%d bytes at %d): %v", len(data), off, err)
	}
}

func mustRead(t testing.TB, v *Volume, n int, off int64) []byte {
	t.Helper()
	buf := bytes.Repeat([]byte{0xa5}, n) // never zero: unallocated must be cleared
	if err := v.ReadAt(context.Background(), buf, off); err != nil {
		t.Fatalf("ReadAt(%d bytes at %d): %v", n, off, err)
	}
	return buf
}

func allocBits(t *testing.T, v *Volume) []bool {
	t.Helper()
	bm, n, err := v.AllocMap(context.Background())
	if err != nil {
		t.Fatalf("AllocMap: %v", err)
	}
	if want := NumObjects(v.Info().Size); n != want || len(bm) != int(want+7)/8 {
		t.Fatalf("AllocMap: %d objects in %d bytes, want %d", n, len(bm), want)
	}
	bits := make([]bool, n)
	for i := range bits {
		bits[i] = bm[i/8]&(1<<(i%8)) != 0
	}
	return bits
}

func TestNumObjects(t *testing.T) {
	for _, tt := range []struct {
		size uint64
		want uint32
	}{{0, 0}, {1, 1}, {ObjectSize - 1, 1}, {ObjectSize, 1}, {ObjectSize + 1, 2}, {64 << 40, 1 << 24}} {
		if got := NumObjects(tt.size); got != tt.want {
			t.Errorf("NumObjects(%d) = %d, want %d", tt.size, got, tt.want)
		}
	}
}

func TestRangeChecks(t *testing.T) {
	const size = 3*ObjectSize + 1000
	ctx := context.Background()
	tests := []struct {
		name string
		off  int64
		n    int64
		kind errs.Kind // Other: no error
	}{
		{"start", 0, 512, errs.Other},
		{"last byte", size - 1, 1, errs.Other},
		{"up to the end", size - 4096, 4096, errs.Other},
		{"empty at the end", size, 0, errs.Other},
		{"whole", 0, size, errs.Other},
		{"one past the end", size - 4096, 4097, errs.TooLarge},
		{"starting at the end", size, 1, errs.TooLarge},
		{"far past the end", 1 << 40, 4096, errs.TooLarge},
		{"empty past the end", size + 1, 0, errs.TooLarge},
		{"max offset", 1<<63 - 1, 1, errs.TooLarge},
		{"negative offset", -1, 512, errs.Invalid},
		{"min offset", -1 << 63, 512, errs.Invalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake()
			v := Open(f, Info{ID: testVID, Size: size, Copies: 2})
			check := func(what string, err error) {
				t.Helper()
				if tt.kind == errs.Other {
					if err != nil {
						t.Errorf("%s: %v", what, err)
					}
					return
				}
				if !errs.Is(err, tt.kind) {
					t.Errorf("%s: %v (kind %v), want kind %v", what, err, errs.KindOf(err), tt.kind)
				}
			}
			if tt.n <= 8*ObjectSize {
				check("WriteAt", v.WriteAt(ctx, wr(v), make([]byte, tt.n), tt.off))
				check("ReadAt", v.ReadAt(ctx, make([]byte, tt.n), tt.off))
			}
			check("Discard", v.Discard(ctx, wr(v), tt.off, tt.n, false))
			check("Discard keep", v.Discard(ctx, wr(v), tt.off, tt.n, true))
			if tt.kind != errs.Other && f.count(opCreate)+f.count(opWrite)+f.count(opPunch)+f.count(opRemove) != 0 {
				t.Errorf("a rejected request reached the store: %v", f.calls)
			}
		})
	}
	t.Run("negative discard length", func(t *testing.T) {
		v := Open(newFake(), Info{ID: testVID, Size: size, Copies: 1})
		if err := v.Discard(ctx, wr(v), 4096, -1, false); !errs.Is(err, errs.Invalid) {
			t.Errorf("Discard(4096, -1): %v, want an invalid error", err)
		}
	})
	t.Run("shrunk by SetInfo", func(t *testing.T) {
		v := Open(newFake(), Info{ID: testVID, Size: size, Copies: 1})
		mustWrite(t, v, []byte("x"), 2*ObjectSize)
		v.SetInfo(Info{ID: testVID, Size: ObjectSize, Copies: 1})
		if err := v.ReadAt(ctx, make([]byte, 1), 2*ObjectSize); !errs.Is(err, errs.TooLarge) {
			t.Errorf("read past the new end: %v, want too large", err)
		}
	})
}

func TestUnallocatedReadsZeros(t *testing.T) {
	f := newFake()
	v := Open(f, Info{ID: testVID, Size: 4 * ObjectSize, Copies: 3})
	got := mustRead(t, v, 2*ObjectSize+100, ObjectSize-50)
	if !bytes.Equal(got, make([]byte, len(got))) {
		t.Fatalf("unallocated range does not read as zeros")
	}
	// Only the index was looked at, once (one page covers it all).
	if n := f.count(opRead); n != 1 {
		t.Errorf("%d reads from the store, want 1 (the index page)", n)
	}
	if bits := allocBits(t, v); slices.Contains(bits, true) {
		t.Errorf("AllocMap of a fresh VDI: %v", bits)
	}
}

// TestWriteSpansObjects writes across two object boundaries and checks
// where the bytes land.
func TestWriteSpansObjects(t *testing.T) {
	f := newFake()
	v := Open(f, Info{ID: testVID, Size: 4 * ObjectSize, Copies: 2})
	off := int64(ObjectSize - 100)
	data := pattern(1, ObjectSize+200)
	mustWrite(t, v, data, off)

	if got := mustRead(t, v, len(data), off); !bytes.Equal(got, data) {
		t.Fatalf("read back differs")
	}
	if got := mustRead(t, v, 10, off-10); !bytes.Equal(got, make([]byte, 10)) {
		t.Errorf("bytes before the write: %x", got)
	}
	o0, o1, o2 := f.object(ids.DataObject(testVID, 0)), f.object(ids.DataObject(testVID, 1)), f.object(ids.DataObject(testVID, 2))
	switch {
	case o0 == nil || o1 == nil || o2 == nil:
		t.Fatalf("objects 0, 1, 2 present: %v %v %v", o0 != nil, o1 != nil, o2 != nil)
	case !bytes.Equal(o0[ObjectSize-100:], data[:100]):
		t.Errorf("object 0 tail wrong")
	case !bytes.Equal(o0[:ObjectSize-100], make([]byte, ObjectSize-100)):
		t.Errorf("object 0 head not zero")
	case !bytes.Equal(o1, data[100:100+ObjectSize]):
		t.Errorf("object 1 wrong")
	case !bytes.Equal(o2[:100], data[100+ObjectSize:]):
		t.Errorf("object 2 head wrong")
	}
	if o := f.object(ids.DataObject(testVID, 3)); o != nil {
		t.Errorf("object 3 was created")
	}
	if got, want := allocBits(t, v), []bool{true, true, true, false}; !slices.Equal(got, want) {
		t.Errorf("AllocMap %v, want %v", got, want)
	}
}

// TestFirstWriteAllocates checks that the first write to an object creates
// it and sets its index entry, and later writes only write.
func TestFirstWriteAllocates(t *testing.T) {
	f := newFake()
	v := Open(f, Info{ID: testVID, Size: 8 * ObjectSize, Copies: 2})
	oid := ids.DataObject(testVID, 5)
	mustWrite(t, v, []byte("hello"), 5*ObjectSize+10)
	if n := f.created(oid); n != 1 {
		t.Fatalf("object created %d times, want 1", n)
	}
	if e := f.entry(testVID, 5); e != testVID {
		t.Fatalf("stored index entry 5 = %v, want %v", e, testVID)
	}
	if f.object(ids.IndexObject(testVID, 0)) == nil {
		t.Errorf("index object was not stored")
	}
	if got := allocBits(t, v); !got[5] || slices.Contains(got[:5], true) || slices.Contains(got[6:], true) {
		t.Errorf("AllocMap %v, want only object 5", got)
	}
	f.resetCounts()
	mustWrite(t, v, []byte("world"), 5*ObjectSize+ObjectSize-5)
	mustWrite(t, v, []byte("again"), 5*ObjectSize+10)
	if n := f.count(opCreate); n != 0 {
		t.Errorf("%d creations rewriting an allocated object", n)
	}
	if n := f.count(opWrite); n != 2 {
		t.Errorf("%d writes, want 2 (no index updates)", n)
	}
	// A second object: the index object exists now and is written, not
	// created again.
	mustWrite(t, v, []byte("x"), 0)
	if n := f.created(ids.IndexObject(testVID, 0)); n != 0 {
		t.Errorf("index object created again")
	}
	if e := f.entry(testVID, 5); e != testVID {
		t.Errorf("entry 5 lost after allocating object 0: %v", e)
	}
	if got := mustRead(t, v, 5, 5*ObjectSize+10); string(got) != "again" {
		t.Errorf("read %q", got)
	}
	// The index survives a new Volume.
	w := Open(f, v.Info())
	if got := mustRead(t, w, 5, 5*ObjectSize+ObjectSize-5); string(got) != "world" {
		t.Errorf("reopened volume reads %q", got)
	}
	if got := allocBits(t, w); !got[0] || !got[5] {
		t.Errorf("reopened AllocMap %v", got)
	}
}

// waitGoroutines waits until n goroutines are blocked in state (as
// runtime.Stack prints it, such as "select") with frame somewhere in their
// stack. It is how a test knows that writers wait, without sleeping for a
// guessed time.
func waitGoroutines(t *testing.T, n int, state, frame string) {
	t.Helper()
	buf := make([]byte, 1<<20)
	deadline := time.Now().Add(time.Minute) // a guard against hanging, not a measure
	for {
		got := 0
		for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
			head, _, _ := strings.Cut(g, "\n")
			if strings.Contains(head, "["+state) && strings.Contains(g, frame) {
				got++
			}
		}
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines blocked in %s in %s, want %d", got, state, frame, n)
		}
		runtime.Gosched()
	}
}

// TestConcurrentFirstWrites has many goroutines write disjoint pieces of
// the same unallocated objects at once: each object is created once, the
// other writers wait for it and then write into it, and every piece is
// kept. The allocating writer is held in Create until all the others
// wait, so that they all meet the allocation in progress.
//
// BUG: without that hold (writers running free), a writer can allocate a
// second time and lose another's data; see TestBugConcurrentFirstWritesRace.
func TestConcurrentFirstWrites(t *testing.T) {
	const objects, writers, piece = 4, 16, 4096
	f := newFake()
	v := Open(f, Info{ID: testVID, Size: objects * ObjectSize, Copies: 2})
	mustRead(t, v, 1, 0) // load the index page
	release := make(chan struct{})
	f.setHooks(nil, func(op string, oid ids.ObjectID) {
		if op == opCreate && !oid.IsIndex() {
			<-release
		}
	})
	var wg sync.WaitGroup
	for o := range objects {
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				off := int64(o)*ObjectSize + int64(w)*piece*7
				if err := v.WriteAt(context.Background(), wr(v), pattern(byte(o*writers+w), piece), off); err != nil {
					t.Errorf("WriteAt: %v", err)
				}
			}()
		}
	}
	waitGoroutines(t, objects, "chan receive", "(*fakeObjects).Create")
	waitGoroutines(t, objects*(writers-1), "select", "(*Volume).WriteAt")
	close(release)
	wg.Wait()
	f.setHooks(nil, nil)
	for o := range objects {
		oid := ids.DataObject(testVID, uint32(o))
		if n := f.created(oid); n != 1 {
			t.Errorf("object %d created %d times, want 1", o, n)
		}
		for w := range writers {
			off := int64(o)*ObjectSize + int64(w)*piece*7
			if got := mustRead(t, v, piece, off); !bytes.Equal(got, pattern(byte(o*writers+w), piece)) {
				t.Errorf("object %d lost writer %d's piece", o, w)
			}
		}
	}
	if n := f.count(opWrite); n != objects*(writers-1)+objects {
		t.Errorf("%d writes, want %d (the waiters' data, and one index entry per object)", n, objects*(writers-1)+objects)
	}
}

func TestDiscard(t *testing.T) {
	const size = 4 * ObjectSize
	ctx := context.Background()
	setup := func(t *testing.T) (*fakeObjects, *Volume) {
		f := newFake()
		v := Open(f, Info{ID: testVID, Size: size, Copies: 2})
		mustWrite(t, v, pattern(3, 3*ObjectSize), 0) // objects 0-2
		f.resetCounts()
		return f, v
	}
	t.Run("whole object", func(t *testing.T) {
		f, v := setup(t)
		if err := v.Discard(ctx, wr(v), ObjectSize, ObjectSize, false); err != nil {
			t.Fatal(err)
		}
		if f.object(ids.DataObject(testVID, 1)) != nil || f.count(opRemove) != 1 {
			t.Errorf("object 1 not removed (%d removes)", f.count(opRemove))
		}
		if e := f.entry(testVID, 1); e != holeEntry {
			t.Errorf("stored entry 1 = %v, want a hole", e)
		}
		if got, want := allocBits(t, v), []bool{true, false, true, false}; !slices.Equal(got, want) {
			t.Errorf("AllocMap %v, want %v", got, want)
		}
		if got := mustRead(t, v, ObjectSize+2, ObjectSize-1); !bytes.Equal(got[1:ObjectSize+1], make([]byte, ObjectSize)) ||
			got[0] != pattern(3, ObjectSize)[ObjectSize-1] || got[ObjectSize+1] != pattern(3, 2*ObjectSize+1)[2*ObjectSize] {
			t.Errorf("discarded object does not read as zeros, or its neighbours changed")
		}
		// Writing again allocates again.
		mustWrite(t, v, []byte("back"), ObjectSize+8)
		if got := mustRead(t, v, 12, ObjectSize); !bytes.Equal(got, append(make([]byte, 8), "back"...)) {
			t.Errorf("rewritten object reads %q", got)
		}
	})
	t.Run("partial", func(t *testing.T) {
		f, v := setup(t)
		if err := v.Discard(ctx, wr(v), ObjectSize-100, 300, false); err != nil {
			t.Fatal(err)
		}
		if f.count(opRemove) != 0 || f.count(opPunch) != 2 {
			t.Errorf("removes %d, punches %d; want 0, 2", f.count(opRemove), f.count(opPunch))
		}
		want := pattern(3, 3*ObjectSize)
		clear(want[ObjectSize-100 : ObjectSize+200])
		if got := mustRead(t, v, len(want), 0); !bytes.Equal(got, want) {
			t.Errorf("partial discard: contents wrong")
		}
		if got, want := allocBits(t, v), []bool{true, true, true, false}; !slices.Equal(got, want) {
			t.Errorf("AllocMap %v, want %v", got, want)
		}
	})
	t.Run("zero range keeps", func(t *testing.T) {
		f, v := setup(t)
		if err := v.Discard(ctx, wr(v), 0, 2*ObjectSize, true); err != nil {
			t.Fatal(err)
		}
		if f.count(opRemove) != 0 || f.object(ids.DataObject(testVID, 0)) == nil {
			t.Errorf("zero range removed objects")
		}
		if got := mustRead(t, v, 2*ObjectSize, 0); !bytes.Equal(got, make([]byte, 2*ObjectSize)) {
			t.Errorf("zeroed range not zero")
		}
		if got, want := allocBits(t, v), []bool{true, true, true, false}; !slices.Equal(got, want) {
			t.Errorf("AllocMap %v, want %v (keep)", got, want)
		}
		if e := f.entry(testVID, 0); e != testVID {
			t.Errorf("entry 0 = %v after zero range", e)
		}
	})
	t.Run("unallocated", func(t *testing.T) {
		f, v := setup(t)
		if err := v.Discard(ctx, wr(v), 3*ObjectSize, ObjectSize, false); err != nil {
			t.Fatal(err)
		}
		if n := f.count(opRemove) + f.count(opPunch) + f.count(opWrite) + f.count(opCreate); n != 0 {
			t.Errorf("discard of a hole made %d store calls", n)
		}
	})
	t.Run("everything", func(t *testing.T) {
		f, v := setup(t)
		if err := v.Discard(ctx, wr(v), 0, size, false); err != nil {
			t.Fatal(err)
		}
		if f.count(opRemove) != 3 {
			t.Errorf("%d removes, want 3", f.count(opRemove))
		}
		if got := allocBits(t, v); slices.Contains(got, true) {
			t.Errorf("AllocMap %v after discarding everything", got)
		}
	})
}

func TestOwnObjects(t *testing.T) {
	f := newFake()
	v := Open(f, Info{ID: testVID, Size: 6 * ObjectSize, Copies: 1})
	mustWrite(t, v, []byte("a"), 1*ObjectSize)
	mustWrite(t, v, []byte("b"), 4*ObjectSize+9)
	var got []ids.ObjectID
	if err := v.OwnObjects(context.Background(), func(oid ids.ObjectID) error { got = append(got, oid); return nil }); err != nil {
		t.Fatal(err)
	}
	want := []ids.ObjectID{ids.DataObject(testVID, 1), ids.DataObject(testVID, 4), ids.IndexObject(testVID, 0)}
	if !slices.Equal(got, want) {
		t.Errorf("OwnObjects = %v, want %v", got, want)
	}
	stop := errors.New("stop")
	n := 0
	err := v.OwnObjects(context.Background(), func(ids.ObjectID) error { n++; return stop })
	if !errors.Is(err, stop) || n != 1 {
		t.Errorf("OwnObjects with a failing callback: %v after %d calls", err, n)
	}
	// A VDI big enough for two index objects lists both.
	big := Open(newFake(), Info{ID: testVID, Size: (EntriesPerIndexObject + 1) * ObjectSize, Copies: 1})
	got = nil
	if err := big.OwnObjects(context.Background(), func(oid ids.ObjectID) error { got = append(got, oid); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := []ids.ObjectID{ids.IndexObject(testVID, 0), ids.IndexObject(testVID, 1)}; !slices.Equal(got, want) {
		t.Errorf("OwnObjects of an empty 2-chunk VDI = %v, want %v", got, want)
	}
}

// TestCopyOnWrite opens VDI 2 whose index points at VDI 1's objects: it
// reads them, and its first write to one copies the whole object.
func TestCopyOnWrite(t *testing.T) {
	const parent, child ids.VDIID = 1, 2
	const size = 4 * ObjectSize
	f := newFake()
	pv := Open(f, Info{ID: parent, Size: size, Copies: 2})
	base := pattern(9, 2*ObjectSize)
	mustWrite(t, pv, base, 0) // parent objects 0 and 1
	// The child shares objects 0 and 1 and, through a missing parent
	// object, 3.
	f.put(ids.IndexObject(child, 0), indexWith(map[uint32]ids.VDIID{0: parent, 1: parent, 3: parent}))
	parent0 := f.object(ids.DataObject(parent, 0))
	f.resetCounts()

	cv := Open(f, Info{ID: child, Size: size, Copies: 2})
	if got := mustRead(t, cv, len(base), 0); !bytes.Equal(got, base) {
		t.Fatalf("child does not read the parent's data")
	}
	if got, want := allocBits(t, cv), []bool{true, true, false, true}; !slices.Equal(got, want) {
		t.Errorf("child AllocMap %v, want %v (shared objects count)", got, want)
	}
	var own []ids.ObjectID
	collect := func(oid ids.ObjectID) error { own = append(own, oid); return nil }
	if err := cv.OwnObjects(context.Background(), collect); err != nil || !slices.Equal(own, []ids.ObjectID{ids.IndexObject(child, 0)}) {
		t.Errorf("child OwnObjects = %v, %v; want only its index", own, err)
	}

	mustWrite(t, cv, []byte("CHILD"), 100)
	want := bytes.Clone(base)
	copy(want[100:], "CHILD")
	if got := mustRead(t, cv, len(want), 0); !bytes.Equal(got, want) {
		t.Errorf("child after its write reads wrong data")
	}
	c0 := f.object(ids.DataObject(child, 0))
	if c0 == nil || !bytes.Equal(c0, want[:ObjectSize]) {
		t.Errorf("child object 0 is not a whole copy of the parent's plus the write")
	}
	if !bytes.Equal(f.object(ids.DataObject(parent, 0)), parent0) {
		t.Errorf("the parent's object changed")
	}
	if got := mustRead(t, pv, ObjectSize, 0); !bytes.Equal(got, base[:ObjectSize]) {
		t.Errorf("the parent reads changed data")
	}
	if e0, e1 := f.entry(child, 0), f.entry(child, 1); e0 != child || e1 != parent {
		t.Errorf("child entries %v, %v; want %v, %v", e0, e1, child, parent)
	}
	own = nil
	if err := cv.OwnObjects(context.Background(), collect); err != nil ||
		!slices.Equal(own, []ids.ObjectID{ids.DataObject(child, 0), ids.IndexObject(child, 0)}) {
		t.Errorf("child OwnObjects = %v, %v", own, err)
	}

	// The parent's object 3 does not exist: reading it is an error (the
	// index says it is there), and a write copies zeros.
	if err := cv.ReadAt(context.Background(), make([]byte, 10), 3*ObjectSize); !errs.Is(err, errs.NotFound) {
		t.Errorf("read of a shared object that is gone: %v, want not found", err)
	}
	mustWrite(t, cv, []byte("z"), 3*ObjectSize+1)
	if got := mustRead(t, cv, 3, 3*ObjectSize); !bytes.Equal(got, []byte{0, 'z', 0}) {
		t.Errorf("copy-on-write of a missing object reads %q", got)
	}

	// Discarding part of a shared object copies it and zeroes the part;
	// the parent is untouched.
	if err := cv.Discard(context.Background(), wr(cv), ObjectSize+10, 20, false); err != nil {
		t.Fatal(err)
	}
	if e := f.entry(child, 1); e != child {
		t.Errorf("entry 1 after discard = %v", e)
	}
	want1 := bytes.Clone(base[ObjectSize:])
	clear(want1[10:30])
	if got := mustRead(t, cv, ObjectSize, ObjectSize); !bytes.Equal(got, want1) {
		t.Errorf("child object 1 after partial discard wrong")
	}
	if got := mustRead(t, pv, ObjectSize, ObjectSize); !bytes.Equal(got, base[ObjectSize:]) {
		t.Errorf("parent object 1 changed by the child's discard")
	}
}

// TestStoreErrors injects failures: each surfaces with its kind, leaves the
// index as it was, and a retry after the failure stops succeeds.
func TestStoreErrors(t *testing.T) {
	ctx := context.Background()
	injected := errs.E(errs.IO, "injected")
	failOn := func(op string, index bool) func(string, ids.ObjectID) error {
		return func(o string, oid ids.ObjectID) error {
			if o == op && oid.IsIndex() == index {
				return injected
			}
			return nil
		}
	}
	tests := []struct {
		name  string
		fresh bool // no object allocated before the failure
		fail  func(string, ids.ObjectID) error
		do    func(v *Volume) error
	}{
		{"index read", true, failOn(opRead, true), func(v *Volume) error { return v.ReadAt(ctx, make([]byte, 10), 0) }},
		{"index read on write", true, failOn(opRead, true), func(v *Volume) error { return v.WriteAt(ctx, wr(v), []byte("x"), 0) }},
		{"index read on allocmap", true, failOn(opRead, true), func(v *Volume) error { _, _, err := v.AllocMap(ctx); return err }},
		{"data read", false, failOn(opRead, false), func(v *Volume) error { return v.ReadAt(ctx, make([]byte, 10), ObjectSize) }},
		{"data create", true, failOn(opCreate, false), func(v *Volume) error { return v.WriteAt(ctx, wr(v), []byte("x"), 0) }},
		{"index first write", true, failOn(opWrite, true), func(v *Volume) error { return v.WriteAt(ctx, wr(v), []byte("x"), 0) }},
		{"data write", false, failOn(opWrite, false), func(v *Volume) error { return v.WriteAt(ctx, wr(v), []byte("x"), ObjectSize) }},
		{"index write", false, failOn(opWrite, true), func(v *Volume) error { return v.WriteAt(ctx, wr(v), []byte("x"), 2*ObjectSize) }},
		{"remove", false, failOn(opRemove, false), func(v *Volume) error { return v.Discard(ctx, wr(v), ObjectSize, ObjectSize, false) }},
		{"punch", false, failOn(opPunch, false), func(v *Volume) error { return v.Discard(ctx, wr(v), ObjectSize, 10, false) }},
		{"flush", false, failOn(opFlush, false), func(v *Volume) error { return v.Flush(ctx) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake()
			v := Open(f, Info{ID: testVID, Size: 4 * ObjectSize, Copies: 2})
			if !tt.fresh {
				mustWrite(t, v, pattern(5, ObjectSize), ObjectSize) // object 1, and the index
			}
			v = Open(f, v.Info()) // nothing cached
			f.setHooks(tt.fail, nil)
			err := tt.do(v)
			if !errs.Is(err, errs.IO) || !errors.Is(err, injected) {
				t.Fatalf("%v (kind %v), want the injected I/O error", err, errs.KindOf(err))
			}
			f.setHooks(nil, nil)
			if err := tt.do(v); err != nil {
				t.Fatalf("retry after the failure: %v", err)
			}
		})
	}
	t.Run("failed allocation leaves no entry", func(t *testing.T) {
		f := newFake()
		v := Open(f, Info{ID: testVID, Size: 4 * ObjectSize, Copies: 2})
		f.setHooks(failOn(opCreate, false), nil)
		if err := v.WriteAt(ctx, wr(v), []byte("x"), 0); err == nil {
			t.Fatal("write succeeded")
		}
		f.setHooks(nil, nil)
		if bits := allocBits(t, v); bits[0] {
			t.Errorf("object 0 marked allocated after its creation failed")
		}
		if got := mustRead(t, v, 1, 0); got[0] != 0 {
			t.Errorf("reads %q", got)
		}
	})
	t.Run("cancelled context", func(t *testing.T) {
		v := Open(newFake(), Info{ID: testVID, Size: ObjectSize, Copies: 1})
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		f := v.objs.(*fakeObjects)
		f.setHooks(func(string, ids.ObjectID) error { return cctx.Err() }, nil)
		if err := v.ReadAt(cctx, make([]byte, 1), 0); !errors.Is(err, context.Canceled) {
			t.Errorf("ReadAt with a cancelled context: %v", err)
		}
	})
}

func ExampleVolume() {
	v := Open(newFake(), Info{ID: 1, Size: 8 << 20, Copies: 1})
	ctx := context.Background()
	_ = v.WriteAt(ctx, wr(v), []byte("sheep"), ObjectSize-2) // spans objects 0 and 1
	buf := make([]byte, 5)
	_ = v.ReadAt(ctx, buf, ObjectSize-2)
	bm, n, _ := v.AllocMap(ctx)
	fmt.Printf("%s %08b %d\n", buf, bm[0], n)
	// Output: sheep 00000011 2
}

// TestReadsInPages: ReadsFrom in pages of any size lists what Reads does,
// the index objects with the last page; OwnEntry tells the VDI's own
// objects from the others.
func TestReadsInPages(t *testing.T) {
	f := newFake()
	v := Open(f, Info{ID: testVID, Size: 10 * ObjectSize, Copies: 2})
	for _, idx := range []int64{0, 3, 4, 9} {
		mustWrite(t, v, pattern(byte(idx), 100), idx*ObjectSize)
	}
	var all []ids.ObjectID
	if err := v.Reads(context.Background(), func(oid ids.ObjectID) error { all = append(all, oid); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(all) != 5 { // four data objects, one index object
		t.Fatalf("Reads: %v", all)
	}
	for _, size := range []uint32{1, 3, 4, 10, 100} {
		var got []ids.ObjectID
		from := uint32(0)
		for pages := 0; ; pages++ {
			next, err := v.ReadsFrom(context.Background(), from, size, func(oid ids.ObjectID) error { got = append(got, oid); return nil })
			if err != nil {
				t.Fatal(err)
			}
			if next == 0 {
				break
			}
			if next <= from || pages > 20 {
				t.Fatalf("page size %d: next %d after %d", size, next, from)
			}
			from = next
		}
		if !slices.Equal(got, all) {
			t.Errorf("pages of %d: %v, want %v", size, got, all)
		}
	}
	for idx, want := range map[uint32]bool{0: true, 3: true, 1: false, 9: true} {
		if own, err := OwnEntry(context.Background(), f, testVID, 2, idx); err != nil || own != want {
			t.Errorf("OwnEntry(%d) = %v, %v; want %v", idx, own, err, want)
		}
	}
}
