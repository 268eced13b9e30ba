package objstore

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

// flip inverts one byte of oid's file at off, behind the store's back.
func flip(t testing.TB, s *Store, oid ids.ObjectID, off int64) {
	t.Helper()
	f, err := os.OpenFile(s.objPath(oid), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := []byte{0}
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func mustCorrupt(t testing.TB, what string, err error) {
	t.Helper()
	wantKind(t, what, err, errs.Corrupt)
}

// TestRotIsFound: a byte changed in an object's data or in its checksums
// fails every read of that block, aligned or not, sparse or not, and a
// change that covers the block in part, while other blocks still read;
// a whole-block overwrite makes the block good again.
func TestRotIsFound(t *testing.T) {
	s := open(t, t.TempDir(), Options{ObjectSize: testObjSize})
	const oid = ids.ObjectID(0x77)
	data := pattern(oid, 0, testObjSize, 1)
	mustWrite(t, s, oid, 0, data, 1, 1)
	flip(t, s, oid, 3*SumBlock+100) // block 3
	buf := make([]byte, testObjSize)
	for _, r := range []struct{ off, n int64 }{{0, testObjSize}, {3 * SumBlock, SumBlock}, {3*SumBlock + 100, 1}, {3*SumBlock - 10, 20}} {
		_, err := s.Read(oid, r.off, buf[:r.n])
		mustCorrupt(t, "read of a rotten block", err)
	}
	if got, _ := mustRead(t, s, oid, 4*SumBlock, SumBlock); !bytes.Equal(got, data[4*SumBlock:5*SumBlock]) {
		t.Fatal("a good block reads wrong")
	}
	_, _, err := s.ReadSparse(oid, make([]byte, testObjSize), 64)
	mustCorrupt(t, "sparse read of a rotten object", err)
	mustCorrupt(t, "partial write over a rotten block", s.Write(oid, 3*SumBlock+8, []byte("x"), 2, 1))
	mustCorrupt(t, "partial punch over a rotten block", s.Punch(oid, 3*SumBlock+8, 8, 2, 1))
	if s.Corruptions() == 0 {
		t.Fatal("no corruption counted")
	}
	mustWrite(t, s, oid, 3*SumBlock, data[3*SumBlock:4*SumBlock], 3, 1)
	if got, _ := mustRead(t, s, oid, 0, testObjSize); !bytes.Equal(got, data) {
		t.Fatal("overwritten block reads wrong")
	}

	// The checksums themselves. Reads check against the copy of the
	// trailer the open descriptor keeps (the data is still right); a
	// check reads the file as it is now, and so does every read after it.
	flip(t, s, oid, testObjSize+5*entrySize+1) // block 5's prev
	flip(t, s, oid, testObjSize+5*entrySize+5) // and cur
	if got, _ := mustRead(t, s, oid, 5*SumBlock, SumBlock); !bytes.Equal(got, data[5*SumBlock:6*SumBlock]) {
		t.Fatal("a good block reads wrong")
	}
	_, _, err = s.Check(oid, make([]byte, testObjSize))
	mustCorrupt(t, "check of an object whose checksum changed", err)
	_, err = s.Read(oid, 5*SumBlock, buf[:SumBlock])
	mustCorrupt(t, "read of a block whose checksum changed", err)
}

// TestHolesAndZeros: never-written blocks, punched blocks and blocks
// written with zeros all read as zeros and verify; a block that lost its
// data behind the store's back (punched) does not.
func TestHolesAndZeros(t *testing.T) {
	s := open(t, t.TempDir(), Options{ObjectSize: testObjSize})
	const oid = ids.ObjectID(0x78)
	mustWrite(t, s, oid, SumBlock, pattern(oid, SumBlock, 2*SumBlock, 1), 1, 1)
	mustWrite(t, s, oid, 5*SumBlock, make([]byte, SumBlock), 2, 1)
	if err := s.Punch(oid, SumBlock+100, 200, 3, 1); err != nil {
		t.Fatal(err)
	}
	got, _ := mustRead(t, s, oid, 0, testObjSize)
	want := make([]byte, testObjSize)
	copy(want[SumBlock:], pattern(oid, SumBlock, 2*SumBlock, 1))
	clear(want[SumBlock+100 : SumBlock+300])
	if !bytes.Equal(got, want) {
		t.Fatal("object reads wrong")
	}
	if _, _, err := s.ReadSparse(oid, make([]byte, testObjSize), 64); err != nil {
		t.Fatal(err)
	}
	// Block 2's data punched away behind the store's back.
	f, err := os.OpenFile(s.objPath(oid), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, SumBlock), 2*SumBlock); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, err = s.Read(oid, 2*SumBlock, make([]byte, SumBlock))
	mustCorrupt(t, "read of a block zeroed behind the store's back", err)
	_, _, err = s.ReadSparse(oid, make([]byte, testObjSize), 64)
	mustCorrupt(t, "sparse read", err)
}

// TestMisplacedData: another object's file in this one's place, a block
// copied to another place in its object, and a truncated file all fail.
func TestMisplacedData(t *testing.T) {
	s := open(t, t.TempDir(), Options{ObjectSize: testObjSize})
	const a, b = ids.ObjectID(0x100), ids.ObjectID(0x201)
	mustWrite(t, s, a, 0, pattern(a, 0, testObjSize, 1), 1, 1)
	mustWrite(t, s, b, 0, pattern(b, 0, testObjSize, 1), 1, 1)
	buf := make([]byte, testObjSize)

	// a's block 1 copied over its block 2, checksum entry and all.
	raw, _ := os.ReadFile(s.objPath(a))
	copy(raw[2*SumBlock:3*SumBlock], raw[SumBlock:2*SumBlock])
	copy(raw[testObjSize+2*entrySize:testObjSize+3*entrySize], raw[testObjSize+entrySize:testObjSize+2*entrySize])
	if err := os.WriteFile(s.objPath(a), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := s.Read(a, 2*SumBlock, buf[:SumBlock])
	mustCorrupt(t, "a block in another block's place", err)

	// b's whole file replaced by a copy of a's, reopened.
	mustWrite(t, s, a, 0, pattern(a, 0, testObjSize, 2), 2, 1)
	raw, _ = os.ReadFile(s.objPath(a))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.objPath(b), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	s = open(t, s.dir, Options{ObjectSize: testObjSize})
	_, err = s.Read(b, 0, buf)
	mustCorrupt(t, "another object's file", err)

	// a truncated while open: its data and its checksums are gone.
	if err := os.Truncate(s.objPath(a), testObjSize/2); err != nil {
		t.Fatal(err)
	}
	_, err = s.Read(a, 0, buf[:SumBlock])
	mustCorrupt(t, "a truncated file", err)
	_, err = s.Read(a, testObjSize-SumBlock, buf[:SumBlock])
	mustCorrupt(t, "a truncated file, past its end", err)
}

// TestChecksumsAcrossCrashes: a process killed between a write's checksum
// entries and its data (or with the data written in part, at page
// boundaries) leaves every block matching one of its two sums: nothing
// reads as rot after the restart, and a second crash in the same place,
// after more writes, does not either.
func TestChecksumsAcrossCrashes(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{ObjectSize: testObjSize})
	const oid = ids.ObjectID(0x99)
	old := pattern(oid, 0, testObjSize, 1)
	mustWrite(t, s, oid, 0, old, 1, 1)
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	for round := range 3 {
		// What a write does, stopped after the entries and the first
		// of its four blocks: the process dies there.
		h, _, err := s.acquire(oid)
		if err != nil {
			t.Fatal(err)
		}
		next := pattern(oid, 0, 4*SumBlock, byte(10+round))
		if err := s.settleOnce(oid, h); err != nil {
			t.Fatal(err)
		}
		if err := s.changeSummed(oid, h, 2*SumBlock, 4*SumBlock, next, func() error {
			_, err := h.f.WriteAt(next[:SumBlock], 2*SumBlock)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		s.release(h)
		s.crash()
		s = open(t, dir, Options{ObjectSize: testObjSize})
		got, _ := mustRead(t, s, oid, 0, testObjSize)
		want := bytes.Clone(old)
		copy(want[2*SumBlock:], next[:SumBlock])
		if !bytes.Equal(got, want) {
			t.Fatalf("round %d: object reads wrong after the crash", round)
		}
		old = want
		// A write elsewhere settles the entries before counting on them.
		mustWrite(t, s, oid, 0, old[:SumBlock], ids.Version(round+2), 1)
	}
}

// TestOldStoreGainsChecksums: a store from before checksums (format 1,
// files of data only) opens with every object checksummed, durably.
func TestOldStoreGainsChecksums(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{ObjectSize: testObjSize})
	const a, b = ids.ObjectID(0x300), ids.ObjectID(0x401)
	da := pattern(a, 0, testObjSize, 1)
	mustWrite(t, s, a, 0, da, 1, 1)
	mustWrite(t, s, b, 100, []byte("short"), 1, 1)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Make it an old store: no trailers (b even shorter), format 1.
	os.Truncate(s.objPath(a), testObjSize)
	os.Truncate(s.objPath(b), 105)
	markFormat1(t, dir)

	s = open(t, dir, Options{ObjectSize: testObjSize})
	if got, _ := mustRead(t, s, a, 0, testObjSize); !bytes.Equal(got, da) {
		t.Fatal("a reads wrong")
	}
	if got, _ := mustRead(t, s, b, 100, 5); string(got) != "short" {
		t.Fatalf("b reads %q", got)
	}
	for _, oid := range []ids.ObjectID{a, b} {
		if fi, err := os.Stat(s.objPath(oid)); err != nil || fi.Size() != s.fileSize() {
			t.Fatalf("%v: %v, %v", oid, fi, err)
		}
	}
	flip(t, s, a, 7)
	_, err := s.Read(a, 0, make([]byte, 8))
	mustCorrupt(t, "rot after the upgrade", err)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The format is recorded: reopening checks, it does not recompute.
	s = open(t, dir, Options{ObjectSize: testObjSize})
	_, err = s.Read(a, 0, make([]byte, 8))
	mustCorrupt(t, "rot after a reopen", err)
}

// markFormat1 records in the closed store at dir that its object files
// have no checksums (a store from before them).
func markFormat1(t *testing.T, dir string) {
	t.Helper()
	db, err := bolt.Open(dir+"/index.db", 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(configBucket).Put(keyFormat, binary.BigEndian.AppendUint64(nil, formatNoSums))
	})
	if err != nil {
		t.Fatal(err)
	}
}

// FuzzTrailer: whatever the checksum entries hold, a read returns the
// object's data or errs.Corrupt, never other bytes, and nothing panics.
func FuzzTrailer(f *testing.F) {
	f.Add([]byte{}, uint16(0))
	f.Add(bytes.Repeat([]byte{0xff}, 64), uint16(3))
	f.Add(make([]byte, 8), uint16(1))
	f.Fuzz(func(t *testing.T, junk []byte, at uint16) {
		s := open(t, t.TempDir(), Options{ObjectSize: testObjSize})
		const oid = ids.ObjectID(0x5)
		data := pattern(oid, 0, testObjSize, 1)
		mustWrite(t, s, oid, 0, data, 1, 1)
		fl, err := os.OpenFile(s.objPath(oid), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		off := testObjSize + int64(at)%s.trailerSize()
		junk = junk[:min(int64(len(junk)), s.fileSize()-off)]
		if _, err := fl.WriteAt(junk, off); err != nil {
			t.Fatal(err)
		}
		fl.Close()
		blk := make([]byte, SumBlock)
		for b := int64(0); b < testObjSize/SumBlock; b++ {
			_, err := s.Read(oid, b*SumBlock, blk)
			switch {
			case err != nil && !errs.Is(err, errs.Corrupt):
				t.Fatalf("block %d: %v", b, err)
			case err == nil && !bytes.Equal(blk, data[b*SumBlock:(b+1)*SumBlock]):
				t.Fatalf("block %d: a read returned bytes that are not the object's", b)
			}
		}
		buf := make([]byte, testObjSize)
		if _, err := s.Read(oid, 0, buf); err == nil && !bytes.Equal(buf, data) {
			t.Fatal("a read returned bytes that are not the object's")
		} else if err != nil && !errs.Is(err, errs.Corrupt) {
			t.Fatal(err)
		}
	})
}

// TestLostWriteIsFound: a block that reads back as it was before its last
// write (a disk that lost the write), or as zeros after a write into a
// hole, fails: at once in the process that wrote it, and after a Sync and
// a reopen.
func TestLostWriteIsFound(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{ObjectSize: testObjSize})
	const oid = ids.ObjectID(0x501)
	v1 := pattern(oid, 0, 2*SumBlock, 1)
	v2 := pattern(oid, 0, SumBlock, 2)
	mustWrite(t, s, oid, 0, v1, 1, 1)
	mustWrite(t, s, oid, 0, v2, 2, 1) // block 0 again; block 1 was a hole before
	put := func(b []byte, off int64) {
		t.Helper()
		f, err := os.OpenFile(s.objPath(oid), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, SumBlock)
	put(v1[:SumBlock], 0) // block 0 as before its last write
	_, err := s.Read(oid, 0, buf)
	mustCorrupt(t, "a lost write, in the writing process", err)
	put(v2, 0)
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, Options{ObjectSize: testObjSize})
	put(v1[:SumBlock], 0)
	put(make([]byte, SumBlock), SumBlock) // block 1 back to the hole it was
	for b := int64(0); b < 2; b++ {
		_, err = s.Read(oid, b*SumBlock, buf)
		mustCorrupt(t, fmt.Sprintf("block %d as before its last write, after a reopen", b), err)
	}
}

// TestMigrationRedone: a store from before checksums whose migration a
// crash stopped in the middle of a file (full size, no checksums yet)
// opens with every object readable.
func TestMigrationRedone(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{ObjectSize: testObjSize})
	const oid = ids.ObjectID(0x601)
	data := pattern(oid, 0, testObjSize, 1)
	mustWrite(t, s, oid, 0, data, 1, 1)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Format 1, the file extended to full size but its checksums zero.
	raw, _ := os.ReadFile(s.objPath(oid))
	clear(raw[testObjSize:])
	os.WriteFile(s.objPath(oid), raw, 0o644)
	markFormat1(t, dir)
	s = open(t, dir, Options{ObjectSize: testObjSize})
	if got, _ := mustRead(t, s, oid, 0, testObjSize); !bytes.Equal(got, data) {
		t.Fatal("object reads wrong after the migration was redone")
	}
}

// TestPatch: a repair from another copy replaces only the blocks that fail
// here: a block this copy wrote and the other lacks stays.
func TestPatch(t *testing.T) {
	a := open(t, t.TempDir(), Options{ObjectSize: testObjSize})
	b := open(t, t.TempDir(), Options{ObjectSize: testObjSize})
	const oid = ids.ObjectID(0x701)
	data := pattern(oid, 0, testObjSize, 1)
	mustWrite(t, a, oid, 0, data, 1, 1)
	mustWrite(t, b, oid, 0, data, 1, 1)
	newer := pattern(oid, 5*SumBlock, SumBlock, 9)
	mustWrite(t, a, oid, 5*SumBlock, newer, 2, 1) // a write b has not seen yet
	flip(t, a, oid, 2*SumBlock+7)                 // rot in a's block 2
	buf := make([]byte, testObjSize)
	exts, _, err := b.ReadSparse(oid, buf, 64)
	if err != nil {
		t.Fatal(err)
	}
	n, err := a.Patch(oid, exts, buf[:testObjSize])
	if err != nil || n != 1 {
		t.Fatalf("Patch = %d, %v; want 1 block", n, err)
	}
	want := bytes.Clone(data)
	copy(want[5*SumBlock:], newer)
	if got, _ := mustRead(t, a, oid, 0, testObjSize); !bytes.Equal(got, want) {
		t.Fatal("patched copy reads wrong (lost its own newer block, or kept the rot)")
	}
}

// TestCollapseSparesUnsyncedChanges: a Sync's collapse leaves alone an
// object changed after the Sync took its batch: that change is not durable
// yet, and until it is its block keeps the sum from before it (a power
// loss may bring the old bytes back).
func TestCollapseSparesUnsyncedChanges(t *testing.T) {
	s := open(t, t.TempDir(), Options{ObjectSize: testObjSize})
	const oid = ids.ObjectID(0x801)
	v1, v2 := pattern(oid, 0, SumBlock, 1), pattern(oid, 0, SumBlock, 2)
	mustWrite(t, s, oid, 0, v1, 1, 1)
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, s, oid, 0, v2, 2, 1) // after the batch: not durable
	s.collapse(oid)                   // what a Sync of the earlier batch would do now
	h, _, err := s.acquire(oid)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := s.readTrailer(oid, h.f) // as on disk
	s.release(h)
	if err != nil {
		t.Fatal(err)
	}
	es := []entry{tr.get(0)}
	if es[0].prev != blockSum(oid, 0, v1) || es[0].cur != blockSum(oid, 0, v2) {
		t.Fatalf("entry %+v after a collapse, want the sums of the old and the new bytes", es[0])
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	h, _, _ = s.acquire(oid)
	tr, _ = s.readTrailer(oid, h.f)
	s.release(h)
	es[0] = tr.get(0)
	if es[0].prev != es[0].cur {
		t.Fatalf("entry %+v after the Sync that made the change durable, want it collapsed", es[0])
	}
}

// TestParallelChangesOfOneObject: writers change the same blocks of one
// object at once, each its own bytes of every block (so each block's sum
// depends on all of them), with punches and readers alongside. No read
// or write fails or counts damage, every byte ends as its writer's last
// write left it, and so it reads after a crash.
func TestParallelChangesOfOneObject(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{ObjectSize: testObjSize, MaxOpenFiles: 2})
	const (
		oid     = ids.ObjectID(0x4242)
		writers = 4
		part    = SumBlock / 8 // each writer's bytes of a block
		blocks  = 16
		rounds  = 40
	)
	mustWrite(t, s, oid, 0, make([]byte, SumBlock), 1, 1)
	// Widen the window between a change's reading of a block it covers
	// in part and its new entry for that block.
	s.afterVerify = func() { time.Sleep(50 * time.Microsecond) }
	want := make([]byte, testObjSize)
	var wg sync.WaitGroup
	errc := make(chan error, writers+2)
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for r := range rounds {
				// Blocks b0..b1 of this writer's bytes, one write each.
				b0 := rng.Int64N(blocks - 3)
				for b := b0; b < b0+3; b++ {
					off := b*SumBlock + int64(w)*part
					data := bytes.Repeat([]byte{byte(1 + w*rounds + r)}, part)
					if err := s.Write(oid, off, data, ids.Version(2+r), 1); err != nil {
						errc <- err
						return
					}
					copy(want[off:], data) // this writer's bytes only
				}
			}
		})
	}
	done := make(chan struct{})
	var bg sync.WaitGroup
	bg.Go(func() { // readers of whole and partial blocks
		buf := make([]byte, blocks*SumBlock)
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			if _, err := s.Read(oid, int64(i%7)*100, buf[:blocks*SumBlock-1000]); err != nil {
				errc <- err
				return
			}
		}
	})
	bg.Go(func() { // a punch of bytes nobody writes, in the same blocks
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			b := int64(i % blocks)
			if err := s.Punch(oid, b*SumBlock+writers*part, part, 1, 1); err != nil {
				errc <- err
				return
			}
			_ = s.Sync()
		}
	})
	wg.Wait()
	close(done)
	bg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if n := s.Corruptions(); n != 0 {
		t.Fatalf("%d damaged copies counted in changes that never damaged anything", n)
	}
	check := func(when string) {
		got, _ := mustRead(t, s, oid, 0, testObjSize)
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: object reads wrong", when)
		}
	}
	check("after the changes")
	s.crash()
	s = open(t, dir, Options{ObjectSize: testObjSize})
	check("after a crash")
}

// TestVerifyCurrent: what a mount reading an object's file directly
// checks (package localread). Blocks as written verify, holes too; a block
// flipped, a block from another place, or a block that matches only the
// sum from before its last change do not.
func TestVerifyCurrent(t *testing.T) {
	var changes []ids.ObjectID
	s := open(t, t.TempDir(), Options{ObjectSize: testObjSize, Replacing: func(oid ids.ObjectID) { changes = append(changes, oid) }})
	const oid = ids.ObjectID(0x77)
	data := pattern(oid, 0, testObjSize, 1)
	mustWrite(t, s, oid, 0, data[:8*SumBlock], 1, 1) // blocks 0-7; the rest a hole
	if len(changes) != 2 || changes[0] != oid || changes[1] != oid {
		t.Fatalf("creating the object told Replacing %v, want it before and after the rename", changes)
	}
	file := func() ([]byte, []byte) {
		b, err := os.ReadFile(s.objPath(oid))
		if err != nil {
			t.Fatal(err)
		}
		return b[:testObjSize], b[testObjSize:]
	}
	d, tr := file()
	if !VerifyCurrent(oid, 0, d, tr) {
		t.Fatal("the object as written does not verify")
	}
	if !VerifyCurrent(oid, 2, d[2*SumBlock:4*SumBlock], tr[2*entrySize:4*entrySize]) {
		t.Fatal("blocks 2-3 do not verify")
	}
	if VerifyCurrent(oid, 3, d[2*SumBlock:4*SumBlock], tr[3*entrySize:5*entrySize]) {
		t.Fatal("blocks 2-3 verify as blocks 3-4")
	}
	if VerifyCurrent(oid+1, 0, d, tr) {
		t.Fatal("the object verifies as another")
	}
	if VerifyCurrent(oid, 0, d[:SumBlock+1], tr[:2*entrySize]) {
		t.Fatal("a piece of a block verifies")
	}
	d[SumBlock+5] ^= 1
	if VerifyCurrent(oid, 1, d[SumBlock:2*SumBlock], tr[entrySize:2*entrySize]) {
		t.Fatal("a flipped block verifies")
	}
	// Block 1 rewritten: its old bytes match the entry's prev only.
	old := bytes.Clone(data[SumBlock : 2*SumBlock])
	mustWrite(t, s, oid, SumBlock, pattern(oid, SumBlock, SumBlock, 2), 2, 1)
	_, tr = file()
	if VerifyCurrent(oid, 1, old, tr[entrySize:2*entrySize]) {
		t.Fatal("the block before its last write verifies")
	}
	changes = nil
	if err := s.Remove(oid); err != nil {
		t.Fatal(err)
	}
	if len(changes) != 2 {
		t.Fatalf("removing the object told Replacing %v, want it before and after", changes)
	}
}
