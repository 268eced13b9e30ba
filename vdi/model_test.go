package vdi

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/ids"
)

var seedFlag = flag.Uint64("seed", 0, "seed for randomised tests (0: from $VDI_SEED, else the clock)")

// testSeed returns the seed for a randomised test and logs it so a failure
// can be replayed with -seed=N or VDI_SEED=N.
func testSeed(t *testing.T) uint64 {
	t.Helper()
	seed := *seedFlag
	if seed == 0 {
		if s := os.Getenv("VDI_SEED"); s != "" {
			v, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				t.Fatalf("VDI_SEED=%q: %v", s, err)
			}
			seed = v
		}
	}
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay with -seed=%d or VDI_SEED=%d)", seed, seed, seed)
	return seed
}

// TestRandomModel runs random writes, reads and discards against a Volume
// and against a plain byte slice of the same size, and compares every read.
// Half the runs start as a clone whose index points at a parent VDI's
// objects. Volumes are reopened (and their caches dropped) along the way:
// the index must live in the objects. At the end the stored objects must
// match the model exactly, nothing may leak, and the parent must be as it
// was.
func TestRandomModel(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 0xd15c))
	const (
		parent ids.VDIID = 1
		child  ids.VDIID = 2
		size             = 64 << 20
		nobj             = size / ObjectSize
		steps            = 500
	)
	ctx := context.Background()
	randomData := randomBytes(rng)

	f := newFake()
	model := make([]byte, size)
	var parentData map[uint32][]byte
	if rng.IntN(2) == 0 {
		// A clone: some objects shared with the parent.
		pv := Open(f, Info{ID: parent, Size: size, Copies: 2})
		parentData = map[uint32][]byte{}
		owners := map[uint32]ids.VDIID{}
		for idx := range uint32(nobj) {
			if rng.IntN(2) == 0 {
				d := randomData(ObjectSize)
				mustWrite(t, pv, d, int64(idx)*ObjectSize)
				parentData[idx] = d
				owners[idx] = parent
				copy(model[int(idx)*ObjectSize:], d)
			}
		}
		f.put(ids.IndexObject(child, 0), indexWith(owners))
		t.Logf("a clone sharing %d of %d objects with its parent", len(owners), nobj)
	}

	v := Open(f, Info{ID: child, Size: size, Copies: 2})
	// randomRange picks a range: small, across an object boundary, large,
	// or whole objects.
	randomRange := func() (int64, int) {
		switch r := rng.IntN(100); {
		case r < 50:
			n := 1 + rng.IntN(8192)
			return rng.Int64N(size - int64(n) + 1), n
		case r < 80:
			b := int64(1+rng.IntN(nobj-1)) * ObjectSize
			off := b - int64(rng.IntN(8192))
			n := int(b-off) + rng.IntN(8192)
			return off, min(n, int(size-off))
		case r < 88:
			n := 1 + rng.IntN(ObjectSize+ObjectSize/2)
			return rng.Int64N(size - int64(n) + 1), n
		default:
			first := rng.IntN(nobj)
			count := 1 + rng.IntN(min(2, nobj-first))
			return int64(first) * ObjectSize, count * ObjectSize
		}
	}
	zeroObject := make([]byte, ObjectSize)
	counts := map[string]int{}
	check := func(step int, what string, off int64, n int) {
		t.Helper()
		got := make([]byte, n)
		if err := v.ReadAt(ctx, got, off); err != nil {
			t.Fatalf("step %d (%s): ReadAt(%d, %d): %v", step, what, off, n, err)
		}
		if want := model[off : off+int64(n)]; !bytes.Equal(got, want) {
			i := 0
			for got[i] == want[i] {
				i++
			}
			t.Fatalf("step %d (%s): ReadAt(%d, %d) differs from byte %d (VDI offset %d, object %d): got %#x, want %#x",
				step, what, off, n, i, off+int64(i), (off+int64(i))/ObjectSize, got[i], want[i])
		}
	}
	for step := range steps {
		switch r := rng.IntN(100); {
		case r < 40:
			off, n := randomRange()
			d := randomData(n)
			if err := v.WriteAt(ctx, wr(v), d, off); err != nil {
				t.Fatalf("step %d: WriteAt(%d, %d): %v", step, off, n, err)
			}
			copy(model[off:], d)
			counts["write"]++
			if rng.IntN(4) == 0 {
				check(step, "read after write", off, n)
			}
		case r < 75:
			off, n := randomRange()
			check(step, "read", off, n)
			counts["read"]++
		case r < 92:
			off, n := randomRange()
			keep := rng.IntN(3) == 0
			if err := v.Discard(ctx, wr(v), off, int64(n), keep); err != nil {
				t.Fatalf("step %d: Discard(%d, %d, keep %v): %v", step, off, n, keep, err)
			}
			clear(model[off : off+int64(n)])
			counts[fmt.Sprintf("discard keep=%v", keep)]++
			if rng.IntN(4) == 0 {
				check(step, "read after discard", off, n)
			}
		case r < 95:
			bm, n, err := v.AllocMap(ctx)
			if err != nil || n != nobj {
				t.Fatalf("step %d: AllocMap: %d objects, %v", step, n, err)
			}
			for idx := range nobj {
				obj := model[idx*ObjectSize : (idx+1)*ObjectSize]
				if bm[idx/8]&(1<<(idx%8)) == 0 && !bytes.Equal(obj, zeroObject) {
					t.Fatalf("step %d: object %d holds data but AllocMap says unallocated", step, idx)
				}
			}
			counts["allocmap"]++
		case r < 97:
			v.Forget()
			counts["forget"]++
		default:
			v = Open(f, v.Info()) // another gateway opens the VDI
			counts["reopen"]++
		}
		if step == steps/2 {
			v = Open(f, v.Info())
			check(step, "whole VDI after reopening", 0, size)
		}
	}
	check(steps, "whole VDI at the end", 0, size)
	t.Logf("operations: %v", counts)

	// What is stored matches the model, object by object.
	for idx := range uint32(nobj) {
		entry := f.entry(child, idx)
		obj := f.object(ids.DataObject(child, idx))
		want := model[int(idx)*ObjectSize : int(idx+1)*ObjectSize]
		switch entry {
		case child:
			if obj == nil || !bytes.Equal(obj, want) {
				t.Errorf("object %d: stored data differs from the model (present %v)", idx, obj != nil)
			}
		case 0, holeEntry:
			if obj != nil {
				t.Errorf("object %d is unmapped but still stored (leaked)", idx)
			}
			if !bytes.Equal(want, zeroObject) {
				t.Errorf("object %d is unmapped but the model holds data", idx)
			}
		case parent:
			if obj != nil {
				t.Errorf("object %d is shared with the parent but the child stores one too (leaked)", idx)
			}
			if !bytes.Equal(parentData[idx], want) {
				t.Errorf("object %d is shared but the model differs from the parent's data", idx)
			}
		default:
			t.Errorf("object %d: index entry %v", idx, entry)
		}
	}
	for idx, d := range parentData {
		if got := f.object(ids.DataObject(parent, idx)); !bytes.Equal(got, d) {
			t.Errorf("the parent's object %d changed", idx)
		}
	}
}

// randomBytes returns a maker of n random bytes, cut from 1 MiB of rng's
// bytes at random places (cheaper than n fresh ones each time).
func randomBytes(rng *rand.Rand) func(n int) []byte {
	src := make([]byte, 1<<20)
	for i := 0; i < len(src); i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			src[i+j] = byte(v >> (8 * j))
		}
	}
	return func(n int) []byte {
		b := make([]byte, n)
		for done := 0; done < n; {
			done += copy(b[done:], src[rng.IntN(len(src)):])
		}
		return b
	}
}
