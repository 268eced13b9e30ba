package objstore

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

// cachedHandle returns oid's cached handle, or nil.
func cachedHandle(s *Store, oid ids.ObjectID) *handle {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fds.m[oid]
}

// TestTrailerMapped: on the operating system's files a change writes its
// entries through the mapped trailer; they are in the file (as a pwrite
// would have put them), and a store opened after a crash verifies every
// block.
func TestTrailerMapped(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{ObjectSize: testObjSize})
	const a = ids.ObjectID(0xa)
	want := pattern(a, 0, testObjSize, 1)
	mustWrite(t, s, a, 0, want, 1, 1)
	for i, off := range []int64{4096, 8192, 20000, testObjSize - 4096} {
		p := pattern(a, off, 4096, byte(2+i))
		mustWrite(t, s, a, off, p, ids.Version(2+i), 1)
		copy(want[off:], p)
	}
	h := cachedHandle(s, a)
	if h == nil || h.tmap == nil || h.noMap {
		t.Fatalf("the trailer is not mapped")
	}
	raw, err := os.ReadFile(s.objPath(a))
	if err != nil {
		t.Fatal(err)
	}
	onDisk := trailer(raw[testObjSize:])
	for b := range int64(testObjSize / SumBlock) {
		if got, copied := onDisk.get(b), h.sums.get(b); got != copied {
			t.Fatalf("block %d: entry %+v in the file, %+v in the store's copy", b, got, copied)
		}
	}
	s.crash()
	s = open(t, dir, Options{ObjectSize: testObjSize})
	defer s.Close()
	if got, _ := mustRead(t, s, a, 0, testObjSize); !bytes.Equal(got, want) {
		t.Fatalf("after a crash the object reads otherwise than written")
	}
}

// TestTrailerMappedFileCutShort: an object file cut short behind the
// store's back while its trailer is mapped makes the next change's copy
// fault. That is an error or a pwrite, never a crash, and the handle maps
// nothing again.
func TestTrailerMappedFileCutShort(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{ObjectSize: testObjSize})
	defer s.Close()
	const a = ids.ObjectID(0xa)
	mustWrite(t, s, a, 0, pattern(a, 0, testObjSize, 1), 1, 1)
	for i := range int64(mapAfter) {
		mustWrite(t, s, a, 4096, pattern(a, 4096, 4096, byte(2+i)), ids.Version(2+i), 1)
	}
	if h := cachedHandle(s, a); h == nil || h.tmap == nil {
		t.Fatalf("the trailer is not mapped")
	}
	if err := os.Truncate(s.objPath(a), testObjSize); err != nil {
		t.Fatal(err)
	}
	err := s.Write(a, 8192, pattern(a, 8192, 4096, 9), 9, 1)
	if err != nil && !errs.Is(err, errs.IO) && !errs.Is(err, errs.Corrupt) {
		t.Fatalf("write to a file cut short: %v", err)
	}
	if h := cachedHandle(s, a); h != nil && !h.noMap {
		t.Fatalf("the handle still writes through its mapping after a fault")
	}
	// Read and check go on: what they say of the copy is theirs.
	_, _ = s.Read(a, 0, make([]byte, 4096))
}

// TestTrailerMappedDiskFull: on a full disk (a small tmpfs), a write to a
// trailer page that is a hole (punched here: the store writes whole
// trailers) faults; the write fails with errs.NoSpace, as through pwrite,
// and the object is unchanged.
func TestTrailerMappedDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=24m"); err != nil {
		t.Skipf("no tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	const size = 4 << 20 // two pages of trailer
	s := open(t, dir, Options{ObjectSize: size})
	defer s.Close()
	const a = ids.ObjectID(0xa)
	first := pattern(a, 0, 4096, 1)
	mustWrite(t, s, a, 0, first, 1, 1)
	for i := range int64(mapAfter) {
		mustWrite(t, s, a, 4096, pattern(a, 4096, 4096, byte(2+i)), ids.Version(2+i), 1)
	}
	h := cachedHandle(s, a)
	if h == nil || h.tmap == nil {
		t.Fatalf("the trailer is not mapped")
	}
	// The second trailer page holds the entries of blocks never written
	// (zeros): a hole reads the same.
	if err := unix.Fallocate(int(h.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, size+4096, 4096); err != nil {
		t.Fatal(err)
	}
	fill, err := os.Create(filepath.Join(dir, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	defer fill.Close()
	for _, chunk := range []int{1 << 20, 4096} {
		for {
			if _, err := fill.Write(make([]byte, chunk)); err != nil {
				if !errors.Is(err, unix.ENOSPC) {
					t.Fatal(err)
				}
				break
			}
		}
	}
	off := int64(size - 4096) // its entry is on the second trailer page
	err = s.Write(a, off, pattern(a, off, 4096, 9), 9, 1)
	wantKind(t, "a write whose entry needs a new page of a full disk", err, errs.NoSpace)
	if h := cachedHandle(s, a); h != nil && !h.noMap {
		t.Fatalf("the handle still writes through its mapping after a fault")
	}
	if got, m := mustRead(t, s, a, 0, 4096); !bytes.Equal(got, first) || m.Version != 1+mapAfter {
		t.Fatalf("the object changed: version %d", m.Version)
	}
	if got, _ := mustRead(t, s, a, off, 4096); !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatalf("the failed write's block is not zeros")
	}
}
