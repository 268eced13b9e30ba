package objstore

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

// Extent is a byte range of an object.
type Extent struct {
	Off, Len int64
}

// ReadSparse reads the allocated ranges of object oid (as SEEK_DATA and
// SEEK_HOLE find them) into buf, one after the other, and returns them in
// order with the object's Meta (taken before the data, as Read's). buf
// must hold ObjectSize bytes. At most maxExtents ranges are returned (at
// least 1): past that, the rest of the object from the last range's start
// is one range, holes included. An object with no data returns no ranges.
// Whole block-aligned ranges are read with O_DIRECT where the filesystem
// allows it (recovery reads an object once: it need not stay cached).
//
// Errors: errs.NotFound if the object does not exist, errs.Invalid if buf
// is short, errs.IO if the disk fails, errs.Closed after Close.
func (s *Store) ReadSparse(oid ids.ObjectID, buf []byte, maxExtents int) ([]Extent, Meta, error) {
	exts, m, _, err := s.readSparse(oid, buf, maxExtents)
	return exts, m, err
}

// Check reads all of object oid into buf (ObjectSize bytes) and verifies
// it as ReadSparse does. It returns the object's Meta and a digest of its
// block checksums: two copies with the same bytes have the same digest.
// errs.Corrupt if a block fails; other errors as ReadSparse's.
func (s *Store) Check(oid ids.ObjectID, buf []byte) (Meta, uint32, error) {
	// The file as it is now under its name, not a cached descriptor of
	// one removed or replaced behind the store's back.
	if err := s.begin("check"); err != nil {
		return Meta{}, 0, err
	}
	l := s.lock(oid)
	l.Lock()
	s.forget(oid)
	l.Unlock()
	s.end()
	_, m, sums, err := s.readSparse(oid, buf, 1024)
	if err != nil {
		return m, 0, err
	}
	raw := make([]byte, 4*len(sums))
	for i, v := range sums {
		binary.LittleEndian.PutUint32(raw[4*i:], v)
	}
	return m, crc32.Checksum(raw, castagnoli), nil
}

func (s *Store) readSparse(oid ids.ObjectID, buf []byte, maxExtents int) ([]Extent, Meta, []uint32, error) {
	if int64(len(buf)) < s.objSize {
		return nil, Meta{}, nil, errs.E(errs.Invalid, "objstore: sparse read %v: buffer of %d bytes, object of %d", oid, len(buf), s.objSize)
	}
	maxExtents = max(maxExtents, 1)
	if err := s.begin("read"); err != nil {
		return nil, Meta{}, nil, err
	}
	defer s.end()
	var (
		exts []Extent
		m    Meta
		sums []uint32
	)
	err := s.look(oid, "read", func(h *handle, info objInfo) error {
		var err error
		exts, sums, err = s.readSparseFrom(oid, h, info, buf, maxExtents)
		m = info.Meta
		return err
	})
	if err != nil {
		return nil, Meta{}, nil, err
	}
	return exts, m, sums, nil
}

// readSparseFrom is readSparse on oid's handle h, under its stripe lock;
// a *mismatch for a block that fails its checksum.
func (s *Store) readSparseFrom(oid ids.ObjectID, h *handle, info objInfo, buf []byte, maxExtents int) ([]Extent, []uint32, error) {
	exts, err := dataExtents(int(h.f.Fd()), s.objSize, maxExtents)
	if err != nil {
		return nil, nil, objErr("map", oid, err)
	}
	direct := s.openDirect(s.objPath(oid), buf, exts)
	if direct != nil {
		defer direct.Close()
	}
	pos := int64(0)
	for _, e := range exts {
		dst := buf[pos : pos+e.Len]
		pos += e.Len
		// In pieces of ioChunk: a client's small read waits behind at
		// most one of them in the device's queue, not a whole object.
		for off := int64(0); off < e.Len; off += ioChunk {
			part := dst[off:min(e.Len, off+ioChunk)]
			var n int
			if direct != nil && (e.Off+off)%directAlign == 0 && len(part)%directAlign == 0 {
				n, err = direct.ReadAt(part, e.Off+off)
			} else {
				n, err = h.f.ReadAt(part, e.Off+off)
			}
			if err != nil && n == len(part) {
				err = nil // io.EOF at the very end
			}
			if err != nil {
				return nil, nil, objErr("read", oid, err)
			}
		}
	}
	// Every block, holes included, against its checksum: a recovery
	// never spreads a damaged copy.
	es, _, err := s.sums(oid, h, false)
	if err != nil {
		return nil, nil, err
	}
	sums := s.extentSums(oid, exts, buf)
	for b, v := range sums {
		if !es.get(int64(b)).good(v, info.settled) {
			return nil, nil, &mismatch{int64(b)}
		}
	}
	return exts, sums, nil
}

// openDirect opens path for O_DIRECT reads if buf is block-aligned and the
// store has not found O_DIRECT unsupported; nil otherwise.
func (s *Store) openDirect(path string, buf []byte, exts []Extent) File {
	if len(exts) == 0 || s.noDirect.Load() || uintptr(unsafe.Pointer(unsafe.SliceData(buf)))%directAlign != 0 {
		return nil
	}
	f, err := s.fs.OpenFile(path, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		if errors.Is(err, syscall.EINVAL) {
			s.noDirect.Store(true)
		}
		return nil
	}
	return f
}

// dataExtents lists the allocated ranges of the file fd within [0, size),
// at most max of them (the last then runs to the end).
func dataExtents(fd int, size int64, max int) ([]Extent, error) {
	var exts []Extent
	off := int64(0)
	for off < size {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break
		}
		if err != nil {
			return nil, &os.PathError{Op: "lseek", Path: "object", Err: err}
		}
		if data >= size {
			break
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, &os.PathError{Op: "lseek", Path: "object", Err: err}
		}
		hole = min(hole, size)
		if len(exts) == max-1 {
			hole = size
		}
		exts = append(exts, Extent{Off: data, Len: hole - data})
		off = hole
	}
	return exts, nil
}

// ReplaceSparse is Replace for a whole object given as its allocated
// ranges: exts (sorted, disjoint, inside the object) hold data one after
// the other, and everything else is a hole. The new copy is exactly as
// sparse as the ranges say. Errors as for Replace, and errs.Invalid for
// bad ranges or data of the wrong length.
func (s *Store) ReplaceSparse(oid ids.ObjectID, exts []Extent, data []byte, ver ids.Version, epoch ids.Epoch) error {
	var end, total int64
	for _, e := range exts {
		if e.Len <= 0 || e.Off < end || e.Off+e.Len > s.objSize {
			return errs.E(errs.Invalid, "objstore: replace %v: bad range [%d, +%d)", oid, e.Off, e.Len)
		}
		end = e.Off + e.Len
		total += e.Len
	}
	if total != int64(len(data)) {
		return errs.E(errs.Invalid, "objstore: replace %v: %d bytes for ranges of %d", oid, len(data), total)
	}
	return s.replace(oid, exts, data, ver, epoch)
}
