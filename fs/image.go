package fs

import (
	"context"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/vdi"
)

// image is what a VDI file and a snapshot file share: the handle their
// data is read through, the size, and the allocation map behind st_blocks
// and SEEK_DATA/SEEK_HOLE.
type image struct {
	fs   *FS
	id   ids.VDIID
	size atomic.Uint64
	// fixed: the content never changes (a snapshot), so the allocation
	// map, once fetched, stays true.
	fixed bool

	mu        sync.Mutex // guards the fields below, and vdiNode.cacheGen and fix
	allocAt   time.Time
	allocBits []byte
	allocN    uint32
	allocGen  uint64 // counts allocChanged calls
}

// allocMap returns the image's allocation bitmap, fetched at most once per
// attrTTL (once for good if fixed) unless fresh is set.
func (m *image) allocMap(ctx context.Context, fresh bool) ([]byte, uint32, error) {
	m.mu.Lock()
	if !fresh && m.allocBits != nil && (m.fixed || time.Since(m.allocAt) < attrTTL) {
		bm, cnt := m.allocBits, m.allocN
		m.mu.Unlock()
		return bm, cnt, nil
	}
	gen := m.allocGen
	m.mu.Unlock()
	bm, cnt, err := m.fs.c.AllocMap(ctx, m.id)
	if err != nil {
		return nil, 0, err
	}
	m.mu.Lock()
	m.allocBits, m.allocN, m.allocAt = bm, cnt, time.Now()
	if m.allocGen != gen {
		// Changed while it was fetched: the map may miss the change,
		// so it is not kept for the next call.
		m.allocAt = time.Time{}
	}
	m.mu.Unlock()
	return bm, cnt, nil
}

// allocChanged makes the next allocMap ask the cluster again.
func (m *image) allocChanged() {
	m.mu.Lock()
	m.allocAt = time.Time{}
	m.allocGen++
	m.mu.Unlock()
}

// blocks is st_blocks (512-byte units) from the last allocation map: every
// allocated object counts whole.
func (m *image) blocks() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return uint64(popcount(m.allocBits)) * vdi.ObjectSize / 512
}

func popcount(b []byte) int {
	c := 0
	for _, x := range b {
		for ; x != 0; x &= x - 1 {
			c++
		}
	}
	return c
}

// read reads from the image; reads past the end return what exists.
func (m *image) read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	ctx, cancel := m.fs.ctx(ctx)
	defer cancel()
	size := int64(m.size.Load())
	if off >= size || off < 0 {
		return fuse.ReadResultData(nil), 0
	}
	l := min(int64(len(dest)), size-off)
	if m.fs.lr.read(ctx, m.id, dest[:l], off) {
		return fuse.ReadResultData(dest[:l]), 0
	}
	err := m.fs.hold(ctx, "", m.id, func() error { return m.fs.c.ReadAt(ctx, m.id, dest[:l], off) })
	if err != nil {
		return nil, toErrno(err)
	}
	return fuse.ReadResultData(dest[:l]), 0
}

// lseek answers SEEK_DATA and SEEK_HOLE from the image's allocated objects.
func (m *image) lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	ctx, cancel := m.fs.ctx(ctx)
	defer cancel()
	const seekData, seekHole = 3, 4
	if whence != seekData && whence != seekHole {
		return 0, syscall.EINVAL
	}
	size := m.size.Load()
	if off >= size {
		return 0, syscall.ENXIO
	}
	// The cached map (at most attrTTL old) is enough: a write through this
	// mount drops it, and a VDI that another mount is writing has no stable
	// layout to copy anyway (its data reaches this mount at reopen).
	bm, cnt, err := m.allocMap(ctx, false)
	if err != nil {
		return 0, toErrno(err)
	}
	allocated := func(i uint64) bool { return i < uint64(cnt) && bm[i/8]&(1<<(i%8)) != 0 }
	for i := off / vdi.ObjectSize; i*vdi.ObjectSize < size; i++ {
		if allocated(i) == (whence == seekData) {
			return max(off, i*vdi.ObjectSize), 0
		}
	}
	if whence == seekData {
		return 0, syscall.ENXIO
	}
	return size, 0
}
