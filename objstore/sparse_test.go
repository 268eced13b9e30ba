package objstore

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

// TestSparseCopy: an object read as its allocated ranges and written
// elsewhere with ReplaceSparse reads back identical, is as sparse as its
// source, and takes the given version; bad ranges are refused.
func TestSparseCopy(t *testing.T) {
	const size = 1 << 20
	src := open(t, t.TempDir(), Options{ObjectSize: size})
	dst := open(t, t.TempDir(), Options{ObjectSize: size})
	rng := rand.New(rand.NewPCG(1, 2))
	a, b := ids.DataObject(1, 1), ids.DataObject(1, 2)
	chunk := func(n int) []byte {
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		return p
	}
	mustWrite(t, src, a, 0, chunk(4096), 1, 1)
	mustWrite(t, src, a, 256<<10, chunk(300<<10), 2, 1) // O_DIRECT-sized
	mustWrite(t, src, a, size-100, chunk(100), 3, 1)    // unaligned tail
	mustWrite(t, src, b, 0, nil, 1, 1)                  // all hole

	for _, oid := range []ids.ObjectID{a, b} {
		buf := make([]byte, size)
		exts, m, err := src.ReadSparse(oid, buf, 1024)
		if err != nil {
			t.Fatalf("ReadSparse(%v): %v", oid, err)
		}
		var total int64
		for _, e := range exts {
			total += e.Len
		}
		if err := dst.ReplaceSparse(oid, exts, buf[:total], m.Version, 5); err != nil {
			t.Fatalf("ReplaceSparse(%v): %v", oid, err)
		}
		want, _ := mustRead(t, src, oid, 0, size)
		got, gm := mustRead(t, dst, oid, 0, size)
		if !bytes.Equal(got, want) {
			t.Fatalf("%v: copy differs from its source", oid)
		}
		if gm.Version != m.Version || gm.Epoch != 5 {
			t.Fatalf("%v: copy has %+v, want version %d epoch 5", oid, gm, m.Version)
		}
		mustSync(t, src)
		mustSync(t, dst)
		su, _, _ := src.Usage()
		du, _, _ := dst.Usage()
		t.Logf("%v: %d ranges, %d bytes; source stores use %d bytes, copies %d", oid, len(exts), total, su, du)
		if oid == b && len(exts) != 0 {
			t.Fatalf("all-hole object has ranges %v", exts)
		}
	}
	su, _, _ := src.Usage()
	du, _, _ := dst.Usage()
	if du > su+64<<10 {
		t.Fatalf("copies use %d bytes, their sources %d: holes were filled", du, su)
	}

	// One range at most: the rest of the object is one range.
	buf := make([]byte, size)
	exts, _, err := src.ReadSparse(a, buf, 1)
	if err != nil || len(exts) != 1 || exts[0].Off != 0 || exts[0].Len != size {
		t.Fatalf("ReadSparse(max 1) = %v, %v; want one range over the object", exts, err)
	}

	for _, bad := range [][]Extent{{{Off: 10, Len: 0}}, {{Off: 100, Len: 10}, {Off: 50, Len: 10}}, {{Off: size - 1, Len: 2}}} {
		var n int64
		for _, e := range bad {
			n += max(e.Len, 0)
		}
		if err := dst.ReplaceSparse(a, bad, make([]byte, n), 9, 9); !errs.Is(err, errs.Invalid) {
			t.Fatalf("ReplaceSparse(%v) = %v, want Invalid", bad, err)
		}
	}
	if err := dst.ReplaceSparse(a, []Extent{{Off: 0, Len: 10}}, make([]byte, 9), 9, 9); !errs.Is(err, errs.Invalid) {
		t.Fatalf("ReplaceSparse with short data = %v, want Invalid", err)
	}
	if _, _, err := src.ReadSparse(ids.DataObject(9, 9), buf, 8); !errs.Is(err, errs.NotFound) {
		t.Fatalf("ReadSparse of a missing object = %v, want NotFound", err)
	}
}
