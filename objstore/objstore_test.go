package objstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

var seedFlag = flag.Uint64("seed", 0, "seed for randomised tests (0: SHEEP_SEED or the clock)")

func open(t testing.TB, dir string, opts Options) *Store {
	t.Helper()
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil && !errs.Is(err, errs.Closed) {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func mustWrite(t testing.TB, s *Store, oid ids.ObjectID, off int64, data []byte, ver ids.Version, epoch ids.Epoch) {
	t.Helper()
	if err := s.Write(oid, off, data, ver, epoch); err != nil {
		t.Fatalf("Write(%v, %d, %d bytes): %v", oid, off, len(data), err)
	}
}

func mustRead(t testing.TB, s *Store, oid ids.ObjectID, off, n int64) ([]byte, Meta) {
	t.Helper()
	buf := make([]byte, n)
	m, err := s.Read(oid, off, buf)
	if err != nil {
		t.Fatalf("Read(%v, %d, %d): %v", oid, off, n, err)
	}
	return buf, m
}

func mustSync(t testing.TB, s *Store) {
	t.Helper()
	if err := s.Sync(); err != nil {
		t.Fatalf("Sync: %v", err)
	}
}

func wantKind(t testing.TB, what string, err error, k errs.Kind) {
	t.Helper()
	if k == errs.Other {
		if err != nil {
			t.Fatalf("%s: unexpected error %v", what, err)
		}
		return
	}
	if !errs.Is(err, k) {
		t.Fatalf("%s: error %v, want kind %q", what, err, k)
	}
}

// pattern returns n nonzero bytes that depend on oid, the position and a
// salt, so misplaced or stale data shows.
func pattern(oid ids.ObjectID, off int64, n int, salt byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte((uint64(oid)*131+uint64(off+int64(i))*7+uint64(salt)*13)%255) + 1
	}
	return b
}

func isZero(b []byte) bool { return bytes.Count(b, []byte{0}) == len(b) }

// diskUsage walks obj/ and sums st_blocks*512 of the object files.
func diskUsage(t testing.TB, dir string) int64 {
	t.Helper()
	var sum int64
	err := filepath.WalkDir(filepath.Join(dir, "obj"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		sum += allocOf(fi)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

const testObjSize = 64 << 10

func TestBounds(t *testing.T) {
	s := open(t, t.TempDir(), Options{ObjectSize: testObjSize})
	const oid = ids.ObjectID(0x1234)
	mustWrite(t, s, oid, 0, []byte{1}, 1, 1)
	fresh := ids.ObjectID(0x99)
	for _, tc := range []struct {
		name   string
		off, n int64
		want   errs.Kind
	}{
		{"negative offset", -1, 10, errs.Invalid},
		{"very negative offset", math.MinInt64, 1, errs.Invalid},
		{"past end", testObjSize - 10, 11, errs.Invalid},
		{"offset past end", testObjSize + 1, 0, errs.Invalid},
		{"exactly at end", testObjSize - 10, 10, errs.Other},
		{"zero length at end", testObjSize, 0, errs.Other},
		{"zero length at start", 0, 0, errs.Other},
		{"whole object", 0, testObjSize, errs.Other},
		{"larger than object", 0, testObjSize + 1, errs.Invalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := pattern(oid, 0, int(tc.n), 1)
			wantKind(t, "write", s.Write(oid, tc.off, data, 2, 1), tc.want)
			_, err := s.Read(oid, tc.off, make([]byte, tc.n))
			wantKind(t, "read", err, tc.want)
			wantKind(t, "punch", s.Punch(oid, tc.off, tc.n, 2, 1), tc.want)
			// A rejected write must not create the object.
			err = s.Write(fresh, tc.off, data, 1, 1)
			wantKind(t, "write to new object", err, tc.want)
			if _, serr := s.Stat(fresh); err != nil && !errs.Is(serr, errs.NotFound) {
				t.Fatalf("rejected write created the object: Stat: %v", serr)
			}
			if err == nil {
				if err := s.Remove(fresh); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
	// Overflowing ranges.
	wantKind(t, "punch overflow", s.Punch(oid, 1, math.MaxInt64, 3, 1), errs.Invalid)
	wantKind(t, "punch negative length", s.Punch(oid, 10, -1, 3, 1), errs.Invalid)
}

func TestNotFound(t *testing.T) {
	s := open(t, t.TempDir(), Options{ObjectSize: testObjSize})
	const oid = ids.ObjectID(42)
	_, err := s.Read(oid, 0, make([]byte, 10))
	wantKind(t, "read", err, errs.NotFound)
	_, err = s.Stat(oid)
	wantKind(t, "stat", err, errs.NotFound)
	wantKind(t, "punch", s.Punch(oid, 0, 10, 1, 1), errs.NotFound)
	wantKind(t, "remove", s.Remove(oid), errs.Other)
	if err != nil && !bytes.Contains([]byte(err.Error()), []byte(oid.String())) {
		t.Errorf("error %q does not name the object", err)
	}
}

func TestZeros(t *testing.T) {
	s := open(t, t.TempDir(), Options{ObjectSize: testObjSize})
	const oid = ids.ObjectID(7)
	data := pattern(oid, 1000, 100, 0)
	mustWrite(t, s, oid, 1000, data, 1, 1)
	buf, _ := mustRead(t, s, oid, 0, testObjSize)
	if !isZero(buf[:1000]) || !isZero(buf[1100:]) {
		t.Fatal("bytes outside the first write are not zero")
	}
	if !bytes.Equal(buf[1000:1100], data) {
		t.Fatal("written bytes differ")
	}
	if b, _ := mustRead(t, s, oid, 5000, 3000); !isZero(b) {
		t.Fatal("unwritten range not zero")
	}
	// The object file is the full size, and sparse.
	fi, err := os.Stat(s.objPath(oid))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != s.fileSize() {
		t.Fatalf("file size %d, want %d", fi.Size(), s.fileSize())
	}
	if allocOf(fi) >= testObjSize {
		t.Fatalf("file is not sparse: %d bytes allocated", allocOf(fi))
	}
}

func TestVersionMax(t *testing.T) {
	s := open(t, t.TempDir(), Options{ObjectSize: testObjSize})
	const oid = ids.ObjectID(9)
	steps := []struct {
		punch bool
		ver   ids.Version
		epoch ids.Epoch
		want  Meta
	}{
		{false, 5, 1, Meta{5, 1}},
		{false, 3, 2, Meta{5, 2}},
		{true, 7, 3, Meta{7, 3}},
		{true, 1, 4, Meta{7, 4}},
		{false, 7, 4, Meta{7, 4}},
		{false, 8, 2, Meta{8, 2}}, // the epoch is the last write's, even if lower
	}
	for i, st := range steps {
		if st.punch {
			if err := s.Punch(oid, 0, 100, st.ver, st.epoch); err != nil {
				t.Fatal(err)
			}
		} else {
			mustWrite(t, s, oid, 0, []byte("x"), st.ver, st.epoch)
		}
		m, err := s.Stat(oid)
		if err != nil {
			t.Fatal(err)
		}
		if _, rm := mustRead(t, s, oid, 0, 1); m != st.want || rm != st.want {
			t.Fatalf("step %d: Stat %+v, Read %+v, want %+v", i, m, rm, st.want)
		}
	}
}

func TestPunch(t *testing.T) {
	const size = 1 << 20
	dir := t.TempDir()
	s := open(t, dir, Options{ObjectSize: size})
	const oid = ids.ObjectID(0x300)
	data := pattern(oid, 0, size, 1)
	mustWrite(t, s, oid, 0, data, 1, 1)
	used1, free1, err := s.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if used1 < size || free1 <= 0 {
		t.Fatalf("after writing %d bytes: used %d free %d", size, used1, free1)
	}
	if err := s.Punch(oid, 256<<10, 512<<10, 2, 1); err != nil {
		t.Fatal(err)
	}
	if err := s.Punch(oid, 100, 5000, 3, 1); err != nil { // unaligned
		t.Fatal(err)
	}
	buf, m := mustRead(t, s, oid, 0, size)
	if m != (Meta{3, 1}) {
		t.Fatalf("meta %+v", m)
	}
	want := bytes.Clone(data)
	clear(want[256<<10 : 768<<10])
	clear(want[100:5100])
	if !bytes.Equal(buf, want) {
		t.Fatal("punched object reads wrong")
	}
	used2, _, err := s.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if used1-used2 < 512<<10 {
		t.Fatalf("Usage went from %d to %d after punching 512 KiB", used1, used2)
	}
	if real := diskUsage(t, dir); used2 != real {
		t.Fatalf("Usage says %d, the files hold %d", used2, real)
	}
}

func TestRemove(t *testing.T) {
	const size = 1 << 20
	dir := t.TempDir()
	s := open(t, dir, Options{ObjectSize: size})
	a, b := ids.ObjectID(0x1_0000_0001), ids.ObjectID(0x1_0000_0002)
	mustWrite(t, s, a, 0, pattern(a, 0, size, 0), 1, 1)
	mustWrite(t, s, b, 0, pattern(b, 0, 4096, 0), 1, 1)
	mustSync(t, s)
	used1, _, err := s.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(a); err != nil {
		t.Fatal(err)
	}
	used2, _, err := s.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if used1-used2 < size {
		t.Fatalf("Usage went from %d to %d after removing a %d-byte object", used1, used2, size)
	}
	if real := diskUsage(t, dir); used2 != real {
		t.Fatalf("Usage says %d, the files hold %d", used2, real)
	}
	_, err = s.Stat(a)
	wantKind(t, "stat removed", err, errs.NotFound)
	_, err = s.Read(a, 0, make([]byte, 1))
	wantKind(t, "read removed", err, errs.NotFound)
	if _, err := os.Stat(s.objPath(a)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("file of removed object: %v", err)
	}
	if err := s.Remove(a); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	if got := collect(t, s); len(got) != 1 || got[b] != (Meta{1, 1}) {
		t.Fatalf("ForEach: %v", got)
	}
	// Removal survives a reopen.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, Options{ObjectSize: size})
	if got := collect(t, s); len(got) != 1 {
		t.Fatalf("ForEach after reopen: %v", got)
	}
	// A removed object can be created again, from zeros.
	mustWrite(t, s, a, 10, []byte("new"), 1, 2)
	if buf, _ := mustRead(t, s, a, 0, 4096); !isZero(buf[:10]) || string(buf[10:13]) != "new" || !isZero(buf[13:]) {
		t.Fatal("recreated object holds old data")
	}
}

func collect(t testing.TB, s *Store) map[ids.ObjectID]Meta {
	t.Helper()
	got := map[ids.ObjectID]Meta{}
	if err := s.ForEach(func(oid ids.ObjectID, m Meta) error {
		if _, dup := got[oid]; dup {
			return fmt.Errorf("%v reported twice", oid)
		}
		got[oid] = m
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestForEachStops(t *testing.T) {
	s := open(t, t.TempDir(), Options{ObjectSize: testObjSize})
	for i := range 10 {
		mustWrite(t, s, ids.ObjectID(i), 0, []byte{1}, 1, 1)
	}
	stop := errors.New("stop")
	n := 0
	err := s.ForEach(func(oid ids.ObjectID, m Meta) error {
		n++
		// fn may call the store.
		if _, err := s.Stat(oid); err != nil {
			return err
		}
		if n == 3 {
			return stop
		}
		return nil
	})
	if err != stop || n != 3 {
		t.Fatalf("ForEach returned %v after %d calls", err, n)
	}
}

func TestReopen(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{ObjectSize: testObjSize})
	want := map[ids.ObjectID]Meta{}
	for i := range 20 {
		oid := ids.DataObject(ids.VDIID(i%3+1), uint32(i))
		mustWrite(t, s, oid, int64(i*100), pattern(oid, int64(i*100), 3000, 1), ids.Version(i+1), ids.Epoch(i%4))
		want[oid] = Meta{ids.Version(i + 1), ids.Epoch(i % 4)}
	}
	mustSync(t, s)
	// Changes after the Sync are made durable by Close.
	late := ids.IndexObject(5, 0)
	mustWrite(t, s, late, 0, []byte("late"), 99, 9)
	want[late] = Meta{99, 9}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, Options{ObjectSize: testObjSize})
	if got := collect(t, s); !maps.Equal(got, want) {
		t.Fatalf("after reopen ForEach = %v, want %v", got, want)
	}
	for i := range 20 {
		oid := ids.DataObject(ids.VDIID(i%3+1), uint32(i))
		buf, m := mustRead(t, s, oid, int64(i*100), 3000)
		if !bytes.Equal(buf, pattern(oid, int64(i*100), 3000, 1)) || m != want[oid] {
			t.Fatalf("object %v: wrong data or meta %+v", oid, m)
		}
	}
	if buf, _ := mustRead(t, s, late, 0, 4); string(buf) != "late" {
		t.Fatalf("late object reads %q", buf)
	}
}

// TestCrash reopens a store that was not closed: the object files are all
// there (same page cache), the index is as of the last Sync, and Open
// reconciles the two.
func TestCrash(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{ObjectSize: testObjSize})
	a, b, c, d := ids.ObjectID(0xa), ids.ObjectID(0xb), ids.ObjectID(0xc), ids.ObjectID(0xd)
	mustWrite(t, s, a, 0, []byte("a1"), 3, 1)
	mustWrite(t, s, c, 0, []byte("c1"), 5, 1)
	mustWrite(t, s, d, 0, []byte("d1"), 6, 1)
	mustSync(t, s)
	mustWrite(t, s, a, 0, []byte("a2"), 9, 2) // newer than the index
	mustWrite(t, s, b, 0, []byte("b1"), 4, 2) // created since the Sync
	if err := s.Remove(c); err != nil {       // removed since the Sync
		t.Fatal(err)
	}
	s.crash()
	// A leftover temp file, as if the crash hit during a creation.
	tmp := filepath.Join(dir, "obj", "0e", ids.ObjectID(0xe).String()+".tmp")
	if err := os.WriteFile(tmp, []byte("half"), 0o644); err != nil {
		t.Fatal(err)
	}
	// An index entry whose file vanished.
	if err := os.Remove(s.objPath(d)); err != nil {
		t.Fatal(err)
	}

	s = open(t, dir, Options{ObjectSize: testObjSize})
	want := map[ids.ObjectID]Meta{
		a: {3, 1}, // the data is newer, the index is not: looks stale, never fresher
		b: {0, 0}, // found on disk, not in the index
	}
	if got := collect(t, s); !maps.Equal(got, want) {
		t.Fatalf("after crash ForEach = %v, want %v", got, want)
	}
	if buf, _ := mustRead(t, s, a, 0, 2); string(buf) != "a2" {
		t.Fatalf("a reads %q", buf)
	}
	if buf, _ := mustRead(t, s, b, 0, 2); string(buf) != "b1" {
		t.Fatalf("b reads %q", buf)
	}
	if _, err := os.Stat(tmp); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("temp file not removed: %v", err)
	}
	// The reconciliation is itself durable.
	s.crash()
	s = open(t, dir, Options{ObjectSize: testObjSize})
	if got := collect(t, s); !maps.Equal(got, want) {
		t.Fatalf("after second crash ForEach = %v, want %v", got, want)
	}
}

func TestReconcileLeavesStrangersAndDropsShortFiles(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{ObjectSize: testObjSize})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	oid := ids.ObjectID(0x4242)
	short := s.objPath(oid)
	if err := os.WriteFile(short, []byte("short"), 0o644); err != nil {
		t.Fatal(err)
	}
	stranger := filepath.Join(dir, "obj", "00", "README")
	misplaced := filepath.Join(dir, "obj", "00", ids.ObjectID(0x4243).String())
	for _, p := range []string{stranger, misplaced} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s = open(t, dir, Options{ObjectSize: testObjSize})
	// A file shorter than an object with its checksums is damaged: the
	// store does not have that object (recovery fetches it again).
	if got := collect(t, s); len(got) != 0 {
		t.Fatalf("ForEach = %v", got)
	}
	if d := s.Damaged(); !slices.Equal(d, []ids.ObjectID{oid}) || s.Corruptions() != 1 {
		t.Fatalf("Damaged() = %v, %d corruptions", d, s.Corruptions())
	}
	if _, err := os.Stat(short); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("damaged file left: %v", err)
	}
	for _, p := range []string{stranger, misplaced} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("stranger file %s: %v", p, err)
		}
	}
	// An object file larger than the object size is refused.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(short, make([]byte, s.fileSize()+1), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Open(dir, Options{ObjectSize: testObjSize})
	wantKind(t, "open with oversized object", err, errs.Invalid)
}

func TestOpenOptions(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{ObjectSize: testObjSize})
	if s.ObjectSize() != testObjSize {
		t.Fatalf("ObjectSize %d", s.ObjectSize())
	}
	old := lockTimeout
	lockTimeout = 50 * time.Millisecond
	defer func() { lockTimeout = old }()
	_, err := Open(dir, Options{ObjectSize: testObjSize})
	wantKind(t, "second Open", err, errs.Busy)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err = Open(dir, Options{})
	wantKind(t, "open with other object size", err, errs.Invalid)
	_, err = Open(dir, Options{ObjectSize: -1})
	wantKind(t, "negative object size", err, errs.Invalid)
	_, err = Open(dir, Options{ObjectSize: testObjSize, MaxOpenFiles: -1})
	wantKind(t, "negative MaxOpenFiles", err, errs.Invalid)
	s = open(t, t.TempDir(), Options{})
	if s.ObjectSize() != DefaultObjectSize {
		t.Fatalf("default ObjectSize %d", s.ObjectSize())
	}
}

func TestClosed(t *testing.T) {
	s := open(t, t.TempDir(), Options{ObjectSize: testObjSize})
	mustWrite(t, s, 1, 0, []byte{1}, 1, 1)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := s.Read(1, 0, make([]byte, 1))
	wantKind(t, "Read", err, errs.Closed)
	_, err = s.Stat(1)
	wantKind(t, "Stat", err, errs.Closed)
	wantKind(t, "Write", s.Write(1, 0, []byte{1}, 1, 1), errs.Closed)
	wantKind(t, "Punch", s.Punch(1, 0, 1, 1, 1), errs.Closed)
	wantKind(t, "Remove", s.Remove(1), errs.Closed)
	wantKind(t, "Sync", s.Sync(), errs.Closed)
	wantKind(t, "ForEach", s.ForEach(func(ids.ObjectID, Meta) error { return nil }), errs.Closed)
	_, _, err = s.Usage()
	wantKind(t, "Usage", err, errs.Closed)
	wantKind(t, "Close", s.Close(), errs.Closed)
}

// TestConcurrent writes disjoint ranges of the same and of different
// objects from many goroutines through a 4-descriptor cache, with Sync,
// Read, Usage and ForEach running alongside, then checks every byte.
func TestConcurrent(t *testing.T) {
	const (
		size    = 256 << 10
		chunk   = 4 << 10
		nObj    = 16
		writers = 8
		rounds  = 3
	)
	dir := t.TempDir()
	s := open(t, dir, Options{ObjectSize: size, MaxOpenFiles: 4})
	oid := func(i int) ids.ObjectID { return ids.DataObject(1, uint32(i)) }

	var wg sync.WaitGroup
	errc := make(chan error, 100)
	report := func(err error) {
		select {
		case errc <- err:
		default:
		}
	}
	done := make(chan struct{})
	var bg sync.WaitGroup
	for range 2 {
		bg.Go(func() { // syncers
			for {
				select {
				case <-done:
					return
				default:
				}
				if err := s.Sync(); err != nil {
					report(fmt.Errorf("Sync: %w", err))
					return
				}
			}
		})
	}
	bg.Go(func() { // a third syncer, pausing
		for {
			select {
			case <-done:
				return
			default:
			}
			if err := s.Sync(); err != nil {
				report(fmt.Errorf("Sync: %w", err))
				return
			}
			time.Sleep(100 * time.Microsecond)
		}
	})
	for r := range 2 {
		bg.Go(func() { // readers: every byte is zero or what some write put there
			rng := rand.New(rand.NewPCG(uint64(r), 1))
			buf := make([]byte, 3*chunk)
			for {
				select {
				case <-done:
					return
				default:
				}
				i := rng.IntN(nObj)
				off := rng.Int64N(size - int64(len(buf)))
				_, err := s.Read(oid(i), off, buf)
				if errs.Is(err, errs.NotFound) {
					continue
				}
				if err != nil {
					report(fmt.Errorf("Read: %w", err))
					return
				}
				for j, c := range buf {
					p := off + int64(j)
					if c != 0 && !slicesContain(c, oid(i), p, rounds) {
						report(fmt.Errorf("object %d byte %d reads %d", i, p, c))
						return
					}
				}
			}
		})
	}
	bg.Go(func() { // usage and listing
		for {
			select {
			case <-done:
				return
			default:
			}
			if _, _, err := s.Usage(); err != nil {
				report(fmt.Errorf("Usage: %w", err))
				return
			}
			if err := s.ForEach(func(ids.ObjectID, Meta) error { return nil }); err != nil {
				report(fmt.Errorf("ForEach: %w", err))
				return
			}
			time.Sleep(time.Millisecond)
		}
	})
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 2))
			for round := range rounds {
				// This writer's chunks of every object, in random order.
				var jobs [][2]int
				for i := range nObj {
					for c := w; c < size/chunk; c += writers {
						jobs = append(jobs, [2]int{i, c})
					}
				}
				rng.Shuffle(len(jobs), func(a, b int) { jobs[a], jobs[b] = jobs[b], jobs[a] })
				for _, j := range jobs {
					off := int64(j[1] * chunk)
					ver := ids.Version(round*writers + w + 1)
					if err := s.Write(oid(j[0]), off, pattern(oid(j[0]), off, chunk, byte(round)), ver, 1); err != nil {
						report(fmt.Errorf("Write: %w", err))
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(done)
	bg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}

	check := func() {
		t.Helper()
		for i := range nObj {
			buf, m := mustRead(t, s, oid(i), 0, size)
			if want := pattern(oid(i), 0, size, rounds-1); !bytes.Equal(buf, want) {
				t.Fatalf("object %d: wrong data", i)
			}
			if want := ids.Version(rounds * writers); m.Version != want {
				t.Fatalf("object %d: version %d, want %d", i, m.Version, want)
			}
		}
	}
	check()
	mustSync(t, s)
	if used, real := usage(t, s), diskUsage(t, dir); used != real {
		t.Fatalf("Usage says %d, the files hold %d", used, real)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, Options{ObjectSize: size, MaxOpenFiles: 4})
	check()
}

func usage(t testing.TB, s *Store) int64 {
	t.Helper()
	used, _, err := s.Usage()
	if err != nil {
		t.Fatalf("Usage: %v", err)
	}
	return used
}

// slicesContain reports whether byte c at position p of oid is what some
// round of TestConcurrent writes there.
func slicesContain(c byte, oid ids.ObjectID, p int64, rounds int) bool {
	for r := range rounds {
		if pattern(oid, p, 1, byte(r))[0] == c {
			return true
		}
	}
	return false
}

// TestConcurrentCreateRemove races creations, removals, writes and syncs
// of a few objects; the store must stay consistent with its files.
func TestConcurrentCreateRemove(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{ObjectSize: testObjSize, MaxOpenFiles: 2})
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 3))
			for range 300 {
				oid := ids.ObjectID(rng.IntN(4))
				var err error
				switch rng.IntN(6) {
				case 0:
					err = s.Remove(oid)
				case 1:
					err = s.Sync()
				case 2:
					err = s.Punch(oid, 0, 4096, 1, 1)
				case 3:
					_, err = s.Read(oid, 0, make([]byte, 100))
				default:
					err = s.Write(oid, rng.Int64N(testObjSize-100), []byte("hello"), 1, 1)
				}
				if err != nil && !errs.Is(err, errs.NotFound) {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	mustSync(t, s)
	got := collect(t, s)
	for i := range 4 {
		oid := ids.ObjectID(i)
		_, err := os.Stat(s.objPath(oid))
		if _, ok := got[oid]; ok != (err == nil) {
			t.Fatalf("object %v: in store %v, file: %v", oid, ok, err)
		}
	}
	if used, real := usage(t, s), diskUsage(t, dir); used != real {
		t.Fatalf("Usage says %d, the files hold %d", used, real)
	}
	s.crash()
	s = open(t, dir, Options{ObjectSize: testObjSize})
	if got2 := collect(t, s); !maps.Equal(got, got2) {
		t.Fatalf("after crash %v, before %v", got2, got)
	}
}

// TestSyncDurable checks that a Write followed by Sync is durable even
// while other goroutines Sync (and share work): each goroutine writes its
// own object and syncs, over and over; then the store crashes, and every
// object must come back with the version its last Sync covered.
func TestSyncDurable(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{ObjectSize: testObjSize, MaxOpenFiles: 4})
	const workers = 8
	last := make([]ids.Version, workers)
	var wg sync.WaitGroup
	for g := range workers {
		wg.Go(func() {
			oid := ids.ObjectID(g)
			for v := ids.Version(1); v <= 60; v++ {
				if err := s.Write(oid, int64(v)*8, []byte("durable!"), v, 1); err != nil {
					t.Error(err)
					return
				}
				if g%2 == 0 || v%5 == 0 { // some write several times per Sync
					if err := s.Sync(); err != nil {
						t.Error(err)
						return
					}
					// The index on disk covers this write now, whoever
					// did the work.
					if m, ok := committed(t, s, oid); !ok || m.Version < v {
						t.Errorf("object %d: Sync returned after version %d, index has %+v (%v)", g, v, m, ok)
						return
					}
					last[g] = v
				}
			}
		})
	}
	wg.Wait()
	s.crash()
	s = open(t, dir, Options{ObjectSize: testObjSize})
	for g := range workers {
		m, err := s.Stat(ids.ObjectID(g))
		if err != nil {
			t.Fatal(err)
		}
		if m.Version < last[g] {
			t.Errorf("object %d: version %d after crash, but Sync returned after version %d", g, m.Version, last[g])
		}
	}
}

// committed returns oid's entry in the durable index: bbolt and the
// index log, as the files hold them now.
func committed(t testing.TB, s *Store, oid ids.ObjectID) (m Meta, ok bool) {
	t.Helper()
	metas := map[ids.ObjectID]Meta{}
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(objectsBucket).Get(binary.BigEndian.AppendUint64(nil, uint64(oid)))
		if len(v) == metaSize {
			metas[oid] = decodeMeta(v)
		}
		return nil
	})
	if err == nil {
		// And the index log, as the file holds it now.
		err = readLog(s.log.path, s.db, metas)
	}
	if err != nil {
		t.Error(err)
	}
	m, ok = metas[oid]
	return m, ok
}

func TestFaultFSCounts(t *testing.T) {
	var ffs FaultFS // the zero value wraps the OS
	f, err := ffs.OpenFile(filepath.Join(t.TempDir(), "f"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	write := func() error { _, err := f.WriteAt([]byte("x"), 0); return err }
	ffs.FailWrite(2, syscall.EIO, false)
	for i, want := range []bool{false, false, true, false, false} {
		if err := write(); (err != nil) != want || want && !errors.Is(err, syscall.EIO) {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	ffs.FailWrite(1, syscall.ENOSPC, true)
	for i, want := range []bool{false, true, true, true} {
		if err := write(); (err != nil) != want {
			t.Fatalf("every: write %d: %v", i, err)
		}
	}
	if err := f.Punch(0, 1); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("punch: %v", err)
	}
	ffs.FailSync(0, syscall.EIO, false)
	if err := f.Sync(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("sync: %v", err)
	}
	ffs.Heal()
	if err := write(); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if ffs.Injected() != 6 {
		t.Fatalf("Injected %d, want 6", ffs.Injected())
	}
}

func TestReplace(t *testing.T) {
	dir := t.TempDir()
	ffs := NewFaultFS(nil)
	s := open(t, dir, Options{ObjectSize: testObjSize, MaxOpenFiles: 2, FS: ffs})
	const a, b = ids.ObjectID(0xa), ids.ObjectID(0xb)
	mustWrite(t, s, a, 0, pattern(a, 0, testObjSize, 1), 9, 1)
	mustRead(t, s, a, 0, 1) // a's descriptor is cached: Replace must drop it

	// A replacement on a full disk leaves the old object.
	ffs.FailWrite(0, syscall.ENOSPC, false)
	wantKind(t, "Replace on a full disk", s.Replace(a, 0, []byte("new"), 3, 2), errs.NoSpace)
	if buf, m := mustRead(t, s, a, 0, testObjSize); !bytes.Equal(buf, pattern(a, 0, testObjSize, 1)) || m != (Meta{9, 1}) {
		t.Fatalf("failed Replace changed the object: %+v", m)
	}

	if err := s.Replace(a, 100, []byte("new"), 3, 2); err != nil {
		t.Fatal(err)
	}
	if err := s.Replace(b, 0, []byte("b"), 4, 2); err != nil { // absent: created
		t.Fatal(err)
	}
	check := func() {
		t.Helper()
		buf, m := mustRead(t, s, a, 0, testObjSize)
		if m != (Meta{3, 2}) { // exactly ver, even below the old version
			t.Fatalf("meta after Replace %+v", m)
		}
		if !isZero(buf[:100]) || string(buf[100:103]) != "new" || !isZero(buf[103:]) {
			t.Fatal("replaced object holds old data")
		}
		if buf, m := mustRead(t, s, b, 0, 1); string(buf) != "b" || m != (Meta{4, 2}) {
			t.Fatalf("b: %q %+v", buf, m)
		}
	}
	check()
	if used, real := usage(t, s), diskUsage(t, dir); used != real {
		t.Fatalf("Usage says %d, the files hold %d", used, real)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, Options{ObjectSize: testObjSize})
	check()
}

func TestFaultNoSpace(t *testing.T) {
	dir := t.TempDir()
	ffs := NewFaultFS(nil)
	s := open(t, dir, Options{ObjectSize: testObjSize, FS: ffs})
	const a, b = ids.ObjectID(0xa), ids.ObjectID(0xb)
	old := pattern(a, 0, testObjSize, 1)
	mustWrite(t, s, a, 0, old, 1, 1)
	mustSync(t, s)

	ffs.FailWrite(0, syscall.ENOSPC, false)
	err := s.Write(a, 4096, pattern(a, 4096, 4096, 2), 2, 2)
	wantKind(t, "write on a full disk", err, errs.NoSpace)
	if !errors.Is(err, syscall.ENOSPC) || !bytes.Contains([]byte(err.Error()), []byte(a.String())) {
		t.Fatalf("error %q lacks the cause or the object", err)
	}
	if ffs.Injected() != 1 {
		t.Fatalf("%d faults injected, want 1", ffs.Injected())
	}
	if buf, m := mustRead(t, s, a, 0, testObjSize); !bytes.Equal(buf, old) || m != (Meta{1, 1}) {
		t.Fatalf("failed write changed the object: meta %+v", m)
	}

	// Creation on a full disk leaves nothing behind.
	ffs.FailWrite(0, syscall.ENOSPC, true)
	wantKind(t, "create on a full disk", s.Write(b, 0, []byte("b"), 1, 1), errs.NoSpace)
	wantKind(t, "punch on a full disk", s.Punch(a, 0, 10, 3, 3), errs.NoSpace)
	_, err = s.Stat(b)
	wantKind(t, "stat of failed creation", err, errs.NotFound)
	ents, err := os.ReadDir(filepath.Dir(s.objPath(b)))
	if err != nil || len(ents) != 0 {
		t.Fatalf("files left by a failed creation: %v %v", ents, err)
	}

	// The disk has room again: the store goes on.
	ffs.Heal()
	mustWrite(t, s, a, 4096, pattern(a, 4096, 4096, 2), 2, 2)
	mustWrite(t, s, b, 0, []byte("b"), 1, 1)
	mustSync(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, Options{ObjectSize: testObjSize})
	want := bytes.Clone(old)
	copy(want[4096:], pattern(a, 4096, 4096, 2))
	if buf, m := mustRead(t, s, a, 0, testObjSize); !bytes.Equal(buf, want) || m != (Meta{2, 2}) {
		t.Fatalf("after reopen: wrong data or meta %+v", m)
	}

	// EIO on a write is errs.IO.
	ffs2 := NewFaultFS(OSFS())
	s2 := open(t, t.TempDir(), Options{ObjectSize: testObjSize, FS: ffs2})
	mustWrite(t, s2, a, 0, []byte("x"), 1, 1)
	ffs2.FailWrite(0, syscall.EIO, false)
	wantKind(t, "write with EIO", s2.Write(a, 0, []byte("y"), 2, 1), errs.IO)
}

func TestFaultSync(t *testing.T) {
	dir := t.TempDir()
	ffs := NewFaultFS(nil)
	s := open(t, dir, Options{ObjectSize: testObjSize, FS: ffs})
	const a, b = ids.ObjectID(0xa), ids.ObjectID(0xb)
	mustWrite(t, s, a, 0, []byte("a"), 5, 1)
	mustSync(t, s)
	mustWrite(t, s, a, 0, []byte("A"), 6, 2)
	mustWrite(t, s, b, 0, []byte("b"), 7, 2)

	ffs.FailSync(0, syscall.EIO, false)
	err := s.Sync()
	wantKind(t, "Sync with EIO", err, errs.IO)
	if ffs.Injected() != 1 {
		t.Fatalf("%d faults injected, want 1", ffs.Injected())
	}
	// Sticky: the lost writeback cannot be made durable by retrying.
	wantKind(t, "second Sync", s.Sync(), errs.IO)
	// Reads and writes still work.
	mustWrite(t, s, a, 1, []byte("!"), 8, 2)
	if buf, _ := mustRead(t, s, a, 0, 2); string(buf) != "A!" {
		t.Fatalf("read %q", buf)
	}
	wantKind(t, "Close", s.Close(), errs.IO)

	// The index was not committed: a keeps its last durable version, b
	// (never durable) comes back with version 0.
	s = open(t, dir, Options{ObjectSize: testObjSize})
	want := map[ids.ObjectID]Meta{a: {5, 1}, b: {}}
	if got := collect(t, s); !maps.Equal(got, want) {
		t.Fatalf("after failed sync ForEach = %v, want %v", got, want)
	}
	mustSync(t, s)
}

// TestFaultSyncDirectory fails the fsync of a directory after a creation.
func TestFaultSyncDirectory(t *testing.T) {
	ffs := NewFaultFS(nil)
	s := open(t, t.TempDir(), Options{ObjectSize: testObjSize, FS: ffs})
	mustWrite(t, s, 1, 0, []byte("a"), 1, 1)
	ffs.FailSync(1, syscall.EIO, false) // the object's fdatasync passes, the directory's fails
	wantKind(t, "Sync", s.Sync(), errs.IO)
	if ffs.Injected() != 1 {
		t.Fatalf("%d faults injected, want 1", ffs.Injected())
	}
	wantKind(t, "Close", s.Close(), errs.IO)
}

// TestModel runs random operations against the store and a model of it,
// comparing every read. Replay a failure with -seed=N or SHEEP_SEED=N.
func TestModel(t *testing.T) {
	seed := *seedFlag
	if seed == 0 {
		if v := os.Getenv("SHEEP_SEED"); v != "" {
			var err error
			if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
				t.Fatalf("SHEEP_SEED: %v", err)
			}
		}
	}
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay with -seed=%d or SHEEP_SEED=%d)", seed, seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed>>32))
	ops := 4000
	if testing.Short() {
		ops = 500
	}

	const size = 32 << 10
	dir := t.TempDir()
	ffs := NewFaultFS(nil)
	opts := Options{ObjectSize: size, MaxOpenFiles: 2, FS: ffs}
	s := open(t, dir, opts)
	data := map[ids.ObjectID][]byte{}
	meta := map[ids.ObjectID]Meta{}
	committed := map[ids.ObjectID]Meta{} // the index as of the last Sync
	randRange := func() (int64, int64) {
		switch rng.IntN(4) {
		case 0:
			return 0, size
		case 1:
			n := rng.Int64N(size + 1)
			return size - n, n
		default:
			off := rng.Int64N(size + 1)
			return off, rng.Int64N(size - off + 1)
		}
	}
	for i := range ops {
		oid := ids.ObjectID(rng.IntN(6)) << 7 // several share a fan-out directory
		_, exists := data[oid]
		ver, epoch := ids.Version(rng.IntN(100)+1), ids.Epoch(rng.IntN(5))
		switch op := rng.IntN(100); {
		case op < 40:
			off, n := randRange()
			buf := make([]byte, n)
			for j := range buf {
				buf[j] = byte(rng.UintN(256))
			}
			if err := s.Write(oid, off, buf, ver, epoch); err != nil {
				t.Fatalf("op %d: Write: %v", i, err)
			}
			if !exists {
				data[oid] = make([]byte, size)
			}
			copy(data[oid][off:], buf)
			meta[oid] = Meta{max(meta[oid].Version, ver), epoch}
		case op < 43:
			// A write or punch on a full disk changes nothing.
			off, n := randRange()
			punch := rng.IntN(2) == 0
			before := ffs.Injected()
			ffs.FailWrite(0, syscall.ENOSPC, false)
			var err error
			if punch {
				err = s.Punch(oid, off, n, ver, epoch)
			} else {
				err = s.Write(oid, off, make([]byte, n), ver, epoch)
			}
			ffs.Heal()
			what := fmt.Sprintf("op %d: Write/Punch(%v, %d, %d) on a full disk", i, oid, off, n)
			switch {
			case punch && !exists:
				wantKind(t, what, err, errs.NotFound)
			case n == 0: // no I/O, so no failure
				wantKind(t, what, err, errs.Other)
				if !exists {
					data[oid] = make([]byte, size)
				}
				meta[oid] = Meta{max(meta[oid].Version, ver), epoch}
			default:
				wantKind(t, what, err, errs.NoSpace)
				if ffs.Injected() != before+1 {
					t.Fatalf("%s: fault did not fire", what)
				}
			}
		case op < 50:
			off, n := randRange()
			err := s.Punch(oid, off, n, ver, epoch)
			if !exists {
				wantKind(t, fmt.Sprintf("op %d: Punch", i), err, errs.NotFound)
				continue
			}
			if err != nil {
				t.Fatalf("op %d: Punch: %v", i, err)
			}
			clear(data[oid][off : off+n])
			meta[oid] = Meta{max(meta[oid].Version, ver), epoch}
		case op < 58:
			if err := s.Remove(oid); err != nil {
				t.Fatalf("op %d: Remove: %v", i, err)
			}
			delete(data, oid)
			delete(meta, oid)
		case op < 78:
			off, n := randRange()
			buf := make([]byte, n)
			m, err := s.Read(oid, off, buf)
			if !exists {
				wantKind(t, fmt.Sprintf("op %d: Read", i), err, errs.NotFound)
				continue
			}
			if err != nil {
				t.Fatalf("op %d: Read: %v", i, err)
			}
			if !bytes.Equal(buf, data[oid][off:off+n]) || m != meta[oid] {
				t.Fatalf("op %d: Read(%v, %d, %d) differs from the model (meta %+v, want %+v)", i, oid, off, n, m, meta[oid])
			}
		case op < 88:
			mustSync(t, s)
			committed = maps.Clone(meta)
		case op < 92:
			if err := s.Close(); err != nil {
				t.Fatalf("op %d: Close: %v", i, err)
			}
			s = open(t, dir, opts)
			committed = maps.Clone(meta)
		case op < 96:
			s.crash()
			s = open(t, dir, opts)
			for oid := range meta {
				meta[oid] = committed[oid] // zero if it was never committed
			}
			committed = maps.Clone(meta) // Open commits its reconciliation
		default:
			used, _, err := s.Usage()
			if err != nil {
				t.Fatalf("op %d: Usage: %v", i, err)
			}
			if real := diskUsage(t, dir); used != real {
				t.Fatalf("op %d: Usage says %d, the files hold %d", i, used, real)
			}
		}
	}
	if got := collect(t, s); !maps.Equal(got, meta) {
		t.Fatalf("ForEach = %v, model %v", got, meta)
	}
	for oid, want := range data {
		if buf, _ := mustRead(t, s, oid, 0, size); !bytes.Equal(buf, want) {
			t.Fatalf("object %v differs from the model", oid)
		}
	}
}

// Benchmarks. Random offsets are drawn before the timer starts.

func benchStore(b *testing.B, nObj int, fill bool) (*Store, []ids.ObjectID) {
	s := open(b, b.TempDir(), Options{})
	oids := make([]ids.ObjectID, nObj)
	buf := make([]byte, 1<<20)
	for i := range oids {
		oids[i] = ids.DataObject(1, uint32(i))
		if !fill {
			mustWrite(b, s, oids[i], 0, buf[:1], 1, 1)
			continue
		}
		for off := int64(0); off < DefaultObjectSize; off += int64(len(buf)) {
			mustWrite(b, s, oids[i], off, buf, 1, 1)
		}
	}
	mustSync(b, s)
	return s, oids
}

type target struct {
	oid ids.ObjectID
	off int64
}

func targets(oids []ids.ObjectID, size int64, n int) []target {
	rng := rand.New(rand.NewPCG(1, 2))
	ts := make([]target, n)
	for i := range ts {
		ts[i] = target{oids[rng.IntN(len(oids))], rng.Int64N(DefaultObjectSize/size) * size}
	}
	return ts
}

func benchWrite(b *testing.B, size int64) {
	s, oids := benchStore(b, 64, false)
	ts := targets(oids, size, 4096)
	data := pattern(1, 0, int(size), 1)
	b.SetBytes(size)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		t := ts[i%len(ts)]
		if err := s.Write(t.oid, t.off, data, ids.Version(i), 1); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkWrite4K: random 4 KiB writes in 64 existing 4 MiB objects (page
// cache, no Sync).
func BenchmarkWrite4K(b *testing.B) { benchWrite(b, 4<<10) }

// BenchmarkWrite1M: random 1 MiB writes in 64 existing 4 MiB objects.
func BenchmarkWrite1M(b *testing.B) { benchWrite(b, 1<<20) }

// BenchmarkRead4K: random 4 KiB reads of 16 fully written 4 MiB objects.
func BenchmarkRead4K(b *testing.B) {
	s, oids := benchStore(b, 16, true)
	ts := targets(oids, 4<<10, 4096)
	buf := make([]byte, 4<<10)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		t := ts[i%len(ts)]
		if _, err := s.Read(t.oid, t.off, buf); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkWrite4KParallel: BenchmarkWrite4K from GOMAXPROCS goroutines.
func BenchmarkWrite4KParallel(b *testing.B) {
	s, oids := benchStore(b, 64, false)
	data := pattern(1, 0, 4096, 1)
	b.SetBytes(4096)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(rand.Uint64(), 0))
		for pb.Next() {
			oid := oids[rng.IntN(len(oids))]
			if err := s.Write(oid, rng.Int64N(1024)*4096, data, 1, 1); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkWrite4KSync: a 4 KiB write followed by Sync (the journal
// record and its fdatasync): the cost of a guest flush per write.
func BenchmarkWrite4KSync(b *testing.B) { benchWriteSync(b, false) }

// BenchmarkWrite4KSyncTail: BenchmarkWrite4KSync over 64 whole objects
// (256 MiB) for long enough to fill the index log several times, with
// the latency of each write and Sync: p50, p99, p99.9 and the slowest,
// where the log's checkpoints show. Run it with -benchtime=20000x.
func BenchmarkWrite4KSyncTail(b *testing.B) {
	lat := benchWriteSync(b, true)
	slices.Sort(lat)
	at := func(q float64) float64 { return float64(lat[min(len(lat)-1, int(q*float64(len(lat))))].Microseconds()) }
	b.ReportMetric(at(0.5), "p50-µs")
	b.ReportMetric(at(0.99), "p99-µs")
	b.ReportMetric(at(0.999), "p99.9-µs")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "max-µs")
}

// benchWriteSync makes 4 KiB random writes over 64 objects (written whole
// first if fill), each followed by Sync, and returns their latencies.
func benchWriteSync(b *testing.B, fill bool) []time.Duration {
	s, oids := benchStore(b, 64, fill)
	ts := targets(oids, 4<<10, 4096)
	data := pattern(1, 0, 4096, 1)
	b.SetBytes(4096)
	lat := make([]time.Duration, 0, b.N)
	i := 0
	for b.Loop() {
		t := ts[i%len(ts)]
		start := time.Now()
		if err := s.Write(t.oid, t.off, data, ids.Version(i+2), 1); err != nil {
			b.Fatal(err)
		}
		if err := s.Sync(); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		i++
	}
	return lat
}
