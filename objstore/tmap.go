package objstore

import (
	"fmt"
	"os"
	"runtime/debug"

	"golang.org/x/sys/unix"
)

// The trailer mapped into memory.
//
// A change writes its blocks' checksum entries to the file before their
// data (sums.go). With the trailer mapped (MAP_SHARED), that write is a
// store into the file's pages in the page cache: the same pages a pwrite
// would fill, as visible to a process that opens the file after this one
// is killed, written back and fdatasynced with the rest of the file, but
// without a system call. It was the one system call that checksums add to
// a 4 KiB write, about 5 % of the daemons' CPU in random writes
// (docs/BENCHMARKS.md, The cost of checksums).
//
// A mapped page faults when the file no longer reaches it (cut short
// behind the store's back) or when it is a hole (the store writes whole
// trailers, but the file may have been changed behind its back) and the
// disk is full: the stores into it run with the runtime's panic on
// fault, so the fault is an error, and the handle goes back to pwrite,
// which reports such a failure the usual way. Only regular files of the
// operating system are mapped: FaultFS's writes must go through FaultFS.

// mapAfter is how many changes a handle makes with pwrite before it maps
// its trailer: a handle that changes its object once before it leaves the
// cache (a working set larger than the cache) costs no mmap and munmap.
const mapAfter = 2

// trailerMap returns h's trailer, mapped from its mapAfter-th change on;
// nil before, or if it cannot be (then storeSums uses pwrite).
func (s *Store) trailerMap(h *handle) []byte {
	h.tmu.Lock()
	defer h.tmu.Unlock()
	if h.tmap != nil || h.noMap {
		return h.tmap
	}
	if h.changes++; h.changes < mapAfter {
		return nil
	}
	h.noMap = true // unless mapped below
	f, ok := h.f.(*osFile)
	if !ok || s.objSize%int64(os.Getpagesize()) != 0 {
		return nil
	}
	m, err := unix.Mmap(int(f.Fd()), s.objSize, int(s.trailerSize()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil
	}
	h.tmap, h.noMap = m, false
	return m
}

// unmapTrailer gives h's mapping back, once nobody uses h.
func (h *handle) unmapTrailer() {
	if h.tmap != nil {
		_ = unix.Munmap(h.tmap)
		h.tmap = nil
	}
}

// storeMapped writes entries [b0, b1) of es, h's copy, to h's mapped
// trailer and reports whether it did; after a fault h writes its entries
// with pwrite from then on.
func (s *Store) storeMapped(h *handle, es entries, b0, b1 int64) bool {
	m := s.trailerMap(h)
	if m == nil {
		return false
	}
	if setMapped(m, es, b0, b1) == nil {
		return true
	}
	h.tmu.Lock()
	h.noMap = true // the mapping stays until h is closed: others may be copying
	h.tmu.Unlock()
	return false
}

// setMapped stores entries [b0, b1) of es into the mapped trailer m, each
// as one 8-byte store, so that a kill leaves every entry old or new, never
// half of each (as a pwrite, whose copy a kill does not interrupt, did). A
// fault (the file cut short, the disk full) is an error, not a crash.
func setMapped(m []byte, es entries, b0, b1 int64) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("mapped checksums: %v", r)
		}
	}()
	t := trailer(m)
	for b := b0; b < b1; b++ {
		t.set(b, es.get(b))
	}
	return nil
}
