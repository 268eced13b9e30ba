package vdi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/sheepfs/sheepfs/ids"
)

// snapVol is one volume of TestRandomSnapshots: a writable (a VDI or a
// clone) or a read-only snapshot, with the bytes it must read.
type snapVol struct {
	name  string
	disk  int // the writable it is, or was a snapshot of
	v     *Volume
	model *objModel
	sum   uint32 // a snapshot's model's checksum when it was taken
}

// objModel is the bytes a volume must read, one slice per object. A
// snapshot, clone or rollback shares the slices, and whoever changes an
// object copies it first: models of snapshots cost what the volumes' own
// copies on write cost, not a copy of the whole VDI.
type objModel struct {
	objs  [][]byte
	owned []bool // objs[i] may be changed in place
}

func newObjModel(size int64) *objModel {
	m := &objModel{}
	for off := int64(0); off < size; off += ObjectSize {
		m.objs = append(m.objs, make([]byte, min(ObjectSize, size-off)))
		m.owned = append(m.owned, true)
	}
	return m
}

// share returns a model of the same bytes.
func (m *objModel) share() *objModel {
	clear(m.owned)
	return &objModel{objs: slices.Clone(m.objs), owned: make([]bool, len(m.objs))}
}

func (m *objModel) own(idx uint32) []byte {
	if !m.owned[idx] {
		m.objs[idx] = slices.Clone(m.objs[idx])
		m.owned[idx] = true
	}
	return m.objs[idx]
}

func (m *objModel) write(off int64, data []byte) {
	_ = span(off, len(data), func(idx uint32, objOff int64, lo, hi int) error {
		copy(m.own(idx)[objOff:], data[lo:hi])
		return nil
	})
}

func (m *objModel) zero(off int64, n int) {
	_ = span(off, n, func(idx uint32, objOff int64, lo, hi int) error {
		clear(m.own(idx)[objOff : objOff+int64(hi-lo)])
		return nil
	})
}

// sum returns a checksum of the model's bytes.
func (m *objModel) sum() uint32 {
	var c uint32
	for _, o := range m.objs {
		c = crc32.Update(c, crc32.IEEETable, o)
	}
	return c
}

var errDiffers = errors.New("differs")

// diff returns the first offset from which got, read at off, differs from
// the model, and the bytes there; at is -1 if they are equal.
func (m *objModel) diff(off int64, got []byte) (at int64, g, w byte) {
	at = -1
	_ = span(off, len(got), func(idx uint32, objOff int64, lo, hi int) error {
		want := m.objs[idx][objOff : objOff+int64(hi-lo)]
		if bytes.Equal(got[lo:hi], want) {
			return nil
		}
		i := 0
		for got[lo+i] == want[i] {
			i++
		}
		at, g, w = off+int64(lo+i), got[lo+i], want[i]
		return errDiffers
	})
	return at, g, w
}

// TestRandomSnapshots runs random writes, discards, frees and reads on a
// family of images with inherited indexes, as the cluster makes them:
// writables go on in a new image at each snapshot (SetInfo, keeping the
// loaded index), snapshots are opened on the old image, clones start from
// a snapshot, and a rollback moves a writable to a new image under one of
// its snapshots (SetInfo, dropping the loaded index). Every read is
// compared with a byte model per volume; snapshots must never change, and
// volumes opened afresh must read what long-lived ones read.
//
// The family is restarted a few times (a new store), so that chains stay
// short and the in-memory store small.
func TestRandomSnapshots(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 0x5a95))
	const (
		size     = 2*ObjectSize + 3*4093 // three objects, the last one short
		nobj     = 3
		episodes = 4
		steps    = 500
		maxSnaps = 3
		maxDisks = 2
	)
	ctx := context.Background()
	randomData := randomBytes(rng)
	// randomRange picks a range: small, across an object boundary, large,
	// whole objects, or up to the end. Data moves mostly in small ranges
	// (4 MiB objects are slow to copy under the race detector); discards
	// mostly in large ones.
	randomRange := func(large bool) (int64, int) {
		// Thresholds: small, boundary, whole objects; the rest up to the end.
		p := [3]int{62, 96, 98}
		if large {
			p = [3]int{30, 60, 80}
		}
		switch r := rng.IntN(100); {
		case r < p[0]:
			n := 1 + rng.IntN(8192)
			return rng.Int64N(size - int64(n) + 1), n
		case r < p[1]:
			b := int64(1+rng.IntN(nobj-1)) * ObjectSize
			off := b - int64(rng.IntN(8192))
			return off, int(b-off) + rng.IntN(8192)
		case r < p[2]:
			first := rng.IntN(nobj - 1) // whole objects: not the short last one
			return int64(first) * ObjectSize, (1 + rng.IntN(nobj-1-first)) * ObjectSize
		default:
			off := rng.Int64N(size)
			return off, int(size - off)
		}
	}
	counts := map[string]int{}
	big := bytes.Repeat([]byte{0xa5}, size)

	for ep := range episodes {
		f := newFake()
		indexReads := 0
		f.setHooks(nil, func(op string, oid ids.ObjectID) {
			if op == opRead && oid.IsIndex() {
				indexReads++
			}
		})
		next := ids.VDIID(1)
		newID := func() ids.VDIID { next++; return next - 1 }
		infoOf := func(id ids.VDIID, chain []ids.VDIID) Info {
			return Info{ID: id, Size: size, Copies: 2, Chain: chain}
		}
		disks := []*snapVol{{name: "d0", v: Open(f, infoOf(newID(), nil)), model: newObjModel(size)}}
		var snaps []*snapVol
		ndisks := 1

		fail := func(step int, format string, args ...any) {
			t.Helper()
			var fam []string
			for _, s := range append(slices.Clone(disks), snaps...) {
				i := s.v.Info()
				fam = append(fam, fmt.Sprintf("%s: image %v chain %v", s.name, i.ID, i.Chain))
			}
			t.Fatalf("episode %d step %d: %s\nfamily: %v", ep, step, fmt.Sprintf(format, args...), fam)
		}
		// check reads [off, off+n) of s through v and compares it with
		// s's model.
		check := func(step int, what string, s *snapVol, v *Volume, off int64, n int) {
			t.Helper()
			// Unallocated ranges must be cleared: small reads go into a
			// buffer that is never zero, large ones into the last
			// large read's buffer.
			got := big[:n]
			if n <= 1<<16 {
				got = bytes.Repeat([]byte{0xa5}, n)
			}
			if err := v.ReadAt(ctx, got, off); err != nil {
				fail(step, "%s: %s: ReadAt(%d, %d): %v", what, s.name, off, n, err)
			}
			if at, g, w := s.model.diff(off, got); at >= 0 {
				owner, _ := Open(f, v.Info()).Owner(ctx, uint32(at/ObjectSize))
				fail(step, "%s: %s: ReadAt(%d, %d) differs at VDI offset %d (object %d, owner %v): got %#x, want %#x",
					what, s.name, off, n, at, at/ObjectSize, owner, g, w)
			}
		}
		// checkAll reads every volume whole, opened afresh.
		checkAll := func(step int, what string) {
			t.Helper()
			for _, s := range append(slices.Clone(disks), snaps...) {
				check(step, what+", opened afresh", s, Open(f, s.v.Info()), 0, size)
			}
		}
		// collect removes the objects of images that no volume can reach
		// any more (dropped snapshots and writables, images left by a
		// rollback): nothing may read them.
		collect := func() {
			reach := map[ids.VDIID]bool{}
			for _, s := range append(slices.Clone(disks), snaps...) {
				i := s.v.Info()
				reach[i.ID] = true
				for _, c := range i.Chain {
					reach[c] = true
				}
			}
			f.mu.Lock()
			for oid := range f.objs {
				if !reach[oid.VDI()] {
					delete(f.objs, oid)
				}
			}
			f.mu.Unlock()
		}

		for step := range steps {
			d := disks[rng.IntN(len(disks))]
			switch r := rng.IntN(1000); {
			case r < 330:
				off, n := randomRange(false)
				data := randomData(n)
				if err := d.v.WriteAt(ctx, wr(d.v), data, off); err != nil {
					fail(step, "%s: WriteAt(%d, %d): %v", d.name, off, n, err)
				}
				d.model.write(off, data)
				counts["write"]++
				if rng.IntN(4) == 0 {
					check(step, "read after write", d, d.v, off, n)
				}
			case r < 380:
				off, n := randomRange(true)
				keep := rng.IntN(3) == 0
				if err := d.v.Discard(ctx, wr(d.v), off, int64(n), keep); err != nil {
					fail(step, "%s: Discard(%d, %d, keep %v): %v", d.name, off, n, keep, err)
				}
				d.model.zero(off, n)
				counts[fmt.Sprintf("discard keep=%v", keep)]++
				if rng.IntN(4) == 0 {
					check(step, "read after discard", d, d.v, off, n)
				}
			case r < 386:
				idx := uint32(rng.IntN(nobj))
				if err := d.v.Free(ctx, wr(d.v), idx); err != nil {
					fail(step, "%s: Free(%d): %v", d.name, idx, err)
				}
				d.model.zero(int64(idx)*ObjectSize, int(min(ObjectSize, size-int64(idx)*ObjectSize)))
				counts["free"]++
			case r < 950:
				s := d
				if len(snaps) > 0 && rng.IntN(2) == 0 {
					s = snaps[rng.IntN(len(snaps))]
				}
				off, n := randomRange(false)
				v := s.v
				if rng.IntN(4) == 0 {
					v = Open(f, v.Info()) // another gateway, nothing cached
				}
				check(step, "read", s, v, off, n)
				counts["read"]++
			case r < 960:
				// Snapshot: the snapshot keeps d's image, d goes on in
				// a new one whose index inherits from it.
				if len(snaps) == maxSnaps {
					i := rng.IntN(len(snaps))
					snaps = slices.Delete(snaps, i, i+1)
					collect()
				}
				off, n := randomRange(false)
				check(step, "before the snapshot", d, d.v, off, n) // loads d's index
				old := d.v.Info()
				s := &snapVol{name: fmt.Sprintf("%s@%v", d.name, old.ID), disk: d.disk, v: Open(f, old), model: d.model.share()}
				s.sum = s.model.sum()
				snaps = append(snaps, s)
				d.v.SetInfo(infoOf(newID(), append([]ids.VDIID{old.ID}, old.Chain...)))
				indexReads = 0
				check(step, "after the snapshot", d, d.v, off, n)
				if indexReads != 0 {
					fail(step, "%s read its index %d times after a snapshot: SetInfo dropped the loaded index", d.name, indexReads)
				}
				off, n = randomRange(false)
				check(step, "new snapshot", s, s.v, off, n)
				counts["snapshot"]++
			case r < 964:
				if len(snaps) == 0 {
					continue
				}
				s := snaps[rng.IntN(len(snaps))]
				if len(disks) == maxDisks {
					i := rng.IntN(len(disks))
					disks = slices.Delete(disks, i, i+1)
					collect()
				}
				si := s.v.Info()
				c := &snapVol{name: fmt.Sprintf("d%d", ndisks), disk: ndisks, model: s.model.share(),
					v: Open(f, infoOf(newID(), append([]ids.VDIID{si.ID}, si.Chain...)))}
				ndisks++
				disks = append(disks, c)
				off, n := randomRange(false)
				check(step, "new clone", c, c.v, off, n)
				counts["clone"]++
			case r < 970:
				// Rollback to one of d's snapshots: d goes on in a
				// new image under it; its old image is left behind.
				var mine []*snapVol
				for _, s := range snaps {
					if s.disk == d.disk {
						mine = append(mine, s)
					}
				}
				if len(mine) == 0 {
					continue
				}
				s := mine[rng.IntN(len(mine))]
				off, n := randomRange(false)
				check(step, "before the rollback", d, d.v, off, n) // loads d's index
				si := s.v.Info()
				d.v.SetInfo(infoOf(newID(), append([]ids.VDIID{si.ID}, si.Chain...)))
				d.model = s.model.share()
				collect()
				indexReads = 0
				check(step, "after the rollback to "+s.name, d, d.v, off, n)
				if indexReads == 0 {
					fail(step, "%s did not read its index after a rollback: SetInfo kept the old image's", d.name)
				}
				counts["rollback"]++
			case r < 995:
				s := d
				if len(snaps) > 0 && rng.IntN(2) == 0 {
					s = snaps[rng.IntN(len(snaps))]
				}
				s.v.Forget()
				counts["forget"]++
			default:
				// Snapshots never change, whatever the writables do.
				s := d
				if len(snaps) > 0 {
					s = snaps[rng.IntN(len(snaps))]
				}
				check(step, "whole", s, s.v, 0, size)
				counts["read whole"]++
			}
		}
		checkAll(steps, "at the end")
		for _, s := range snaps { // the models themselves stayed put
			if s.model.sum() != s.sum {
				t.Fatalf("episode %d: the model of snapshot %s changed: the test shares models wrongly", ep, s.name)
			}
		}
		var longest int
		for _, s := range append(slices.Clone(disks), snaps...) {
			longest = max(longest, len(s.v.Info().Chain))
		}
		t.Logf("episode %d: %d images, longest chain %d, %d objects stored", ep, next-1, longest, len(f.objs))
	}
	t.Logf("operations: %v", counts)
}
