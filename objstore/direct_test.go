package objstore

import (
	"bytes"
	"testing"
	"unsafe"

	"github.com/sheepfs/sheepfs/ids"
)

// alignedBuf returns n bytes starting on a directAlign boundary.
func alignedBuf(n int) []byte {
	b := make([]byte, n+directAlign)
	skip := (directAlign - int(uintptr(unsafe.Pointer(&b[0]))%directAlign)) % directAlign
	return b[skip : skip+n]
}

// TestDirectAndBufferedWritesMix: large aligned writes (which go around the
// page cache where the filesystem allows) and small buffered writes to the
// same object, in any order, read back as the last write of each byte.
func TestDirectAndBufferedWritesMix(t *testing.T) {
	s := open(t, t.TempDir(), Options{ObjectSize: 4 << 20})
	oid := ids.DataObject(1, 0)
	model := make([]byte, 4<<20)
	write := func(off int64, data []byte) {
		t.Helper()
		if err := s.Write(oid, off, data, 1, 1); err != nil {
			t.Fatalf("write %d bytes at %d: %v", len(data), off, err)
		}
		copy(model[off:], data)
		got := make([]byte, len(model))
		if _, err := s.Read(oid, 0, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, model) {
			t.Fatalf("after writing %d bytes at %d the object differs from the model", len(data), off)
		}
	}
	fill := func(b []byte, v byte) []byte {
		for i := range b {
			b[i] = v + byte(i%251)
		}
		return b
	}
	write(0, fill(make([]byte, 100), 1))              // creates the object, buffered
	write(1<<20, fill(alignedBuf(1<<20), 2))          // direct
	write(1<<20+4096, fill(make([]byte, 10), 3))      // buffered, inside the direct range
	write(1<<20, fill(alignedBuf(512<<10), 4))        // direct over a dirty cached page
	write(3<<20, fill(alignedBuf(1<<20), 5))          // direct, to the end of the object
	write(3<<20+1, fill(make([]byte, directMin), 6))  // unaligned: buffered
	write(2<<20, fill(alignedBuf(directMin-4096), 7)) // too small: buffered
	write(0, fill(alignedBuf(4<<20), 8))              // the whole object, direct
	write(4<<20-4096, fill(make([]byte, 4096), 9))    // buffered, last page
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, s.dir, Options{ObjectSize: 4 << 20})
	got := make([]byte, len(model))
	if _, err := s.Read(oid, 0, got); err != nil || !bytes.Equal(got, model) {
		t.Fatalf("after reopen: %v, equal %v", err, bytes.Equal(got, model))
	}
}

// TestDirectCreate: an object whose first write is large and aligned (the
// create path, through the temp file) reads back that write and zeros
// elsewhere, also after a reopen.
func TestDirectCreate(t *testing.T) {
	s := open(t, t.TempDir(), Options{ObjectSize: 4 << 20})
	oid := ids.DataObject(1, 7)
	data := alignedBuf(1 << 20)
	for i := range data {
		data[i] = byte(i%253) + 1
	}
	if err := s.Write(oid, 1<<20, data, 1, 1); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 4<<20)
	copy(want[1<<20:], data)
	check := func(when string) {
		t.Helper()
		got := make([]byte, len(want))
		if _, err := s.Read(oid, 0, got); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: %v, equal %v", when, err, bytes.Equal(got, want))
		}
	}
	check("after create")
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = open(t, s.dir, Options{ObjectSize: 4 << 20})
	check("after reopen")
}
