// Package vdi turns a virtual disk image into objects: it maps byte ranges of
// a VDI onto its data objects, keeps the VDI's index (which VDI owns each
// object; zero for an unallocated one), and allocates objects on first write.
// The index itself is stored as index objects, replicated like data, and
// read into memory lazily, one page at a time.
package vdi

import (
	"context"
	"encoding/binary"
	"slices"
	"sync"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

// ObjectSize is the size of every object, in bytes (4 MiB).
const ObjectSize = 4 << 20

// entrySize is the size of one index entry (an owner VDIID), in bytes.
const entrySize = 4

// EntriesPerIndexObject is how many entries one index object holds.
const EntriesPerIndexObject = ObjectSize / entrySize

// pageEntries is how many index entries are read into memory at once
// (16 KiB, covering 16 GiB of VDI).
const pageEntries = 4096

// Objects is the replicated object store as a VDI sees it: the side that
// reads and flushes. Implementations place each object on copies nodes and
// keep the replicas equal. What changes objects is a Writer, given to each
// changing call of a Volume, so that a gateway decides per request, and
// visibly, which writer's fence a change must pass.
type Objects interface {
	// Read fills buf from object oid at off. errs.NotFound if no replica
	// has the object.
	Read(ctx context.Context, oid ids.ObjectID, copies int, off int64, buf []byte) error
	// Flush makes every write acknowledged so far durable on every replica.
	Flush(ctx context.Context) error
}

// Writer changes objects on every replica, on behalf of one writer.
type Writer interface {
	// Write writes data at off in object oid on every replica. A replica
	// that lacks the object fetches it from the others first; if no
	// replica has it, it is created zero-filled.
	Write(ctx context.Context, oid ids.ObjectID, copies int, off int64, data []byte) error
	// Create makes oid a new object on every replica, holding data at off
	// and zeros elsewhere, replacing any old copy a replica may hold.
	Create(ctx context.Context, oid ids.ObjectID, copies int, off int64, data []byte) error
	// Punch makes [off, off+length) of the object read as zeros.
	Punch(ctx context.Context, oid ids.ObjectID, copies int, off, length int64) error
	// Remove deletes the object from every replica; absent is no error.
	Remove(ctx context.Context, oid ids.ObjectID, copies int) error
}

// Info is the cluster metadata a Volume needs.
type Info struct {
	// ID is the image: its objects and index are named after it.
	ID     ids.VDIID
	Size   uint64 // bytes
	Copies int
	// Chain lists the images whose indexes ID's index inherits from,
	// nearest first: an entry the image has not set is its parent's.
	Chain []ids.VDIID
}

// Equal reports whether a and b describe the same volume.
func (a Info) Equal(b Info) bool {
	return a.ID == b.ID && a.Size == b.Size && a.Copies == b.Copies && slices.Equal(a.Chain, b.Chain)
}

// On disk, an index entry is the owner of the object, 0 for "not set here:
// ask the parent", or holeEntry for "unallocated, whatever the parent
// says". In memory, pages hold the resolved owner, 0 for a hole.
const holeEntry = 0xffffffff

// NumObjects returns how many objects a VDI of size bytes spans.
func NumObjects(size uint64) uint32 {
	return uint32((size + ObjectSize - 1) / ObjectSize)
}

// Volume is a VDI opened on a gateway. Safe for concurrent use: reads and
// writes of different objects run in parallel.
type Volume struct {
	objs Objects

	mu     sync.Mutex
	info   Info
	pages  map[uint32]*page                            // index pages loaded so far, by page number
	alloc  map[uint32]*allocWait                       // objects being allocated
	copied func(from ids.VDIID)                        // see OnCopy
	moved  func(idx uint32, old ids.VDIID, known bool) // see OnOwnerChange
}

// OnCopy sets fn to be called after a write copied an object of image from
// (an ancestor) into this volume's image: from's object may now be
// referenced by nothing.
func (v *Volume) OnCopy(fn func(from ids.VDIID)) {
	v.mu.Lock()
	v.copied = fn
	v.mu.Unlock()
}

// OnOwnerChange sets fn to be called after object idx's owner changed in
// memory (a first write, a copy-on-write, a discard), with the owner it had
// if its page was loaded (known): a reader of old's object for idx learns
// there that it no longer reads the VDI.
func (v *Volume) OnOwnerChange(fn func(idx uint32, old ids.VDIID, known bool)) {
	v.mu.Lock()
	v.moved = fn
	v.mu.Unlock()
}

type page struct {
	ready   chan struct{} // closed once loaded
	err     error
	entries [pageEntries]ids.VDIID
}

// loaded reports whether the page has been read successfully.
func (p *page) loaded() bool {
	select {
	case <-p.ready:
		return p.err == nil
	default:
		return false
	}
}

type allocWait struct{ done chan struct{} }

// Open returns a Volume for the VDI described by info. It reads nothing yet.
func Open(objs Objects, info Info) *Volume {
	return &Volume{objs: objs, info: info, pages: map[uint32]*page{}, alloc: map[uint32]*allocWait{}}
}

// Info returns the volume's metadata.
func (v *Volume) Info() Info {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.info
}

// SetInfo updates the volume's metadata: a new size after a resize, or a
// new image. A new image whose parent is the old one (the VDI went on after
// a snapshot) resolves to the same owners, so the loaded index stays; any
// other change of image drops it.
func (v *Volume) SetInfo(info Info) {
	v.mu.Lock()
	if info.ID != v.info.ID && (len(info.Chain) == 0 || info.Chain[0] != v.info.ID) {
		clear(v.pages)
	}
	v.info = info
	v.mu.Unlock()
}

// indexLoc returns where entry idx of vid's index lives.
func indexLoc(vid ids.VDIID, idx uint32) (ids.ObjectID, int64) {
	return ids.IndexObject(vid, idx/EntriesPerIndexObject), int64(idx%EntriesPerIndexObject) * entrySize
}

// Owner returns the image owning object idx (0 if unallocated), loading
// its index page if needed.
func (v *Volume) Owner(ctx context.Context, idx uint32) (ids.VDIID, error) {
	pn := idx / pageEntries
	v.mu.Lock()
	p := v.pages[pn]
	if p == nil {
		p = &page{ready: make(chan struct{})}
		v.pages[pn] = p
		v.mu.Unlock()
		p.err = v.loadPage(ctx, pn, p)
		close(p.ready)
		if p.err != nil {
			v.mu.Lock()
			delete(v.pages, pn)
			v.mu.Unlock()
		}
	} else {
		v.mu.Unlock()
	}
	select {
	case <-p.ready:
	case <-ctx.Done():
		return 0, errs.E(errs.IO, "load index: %w", ctx.Err())
	}
	if p.err != nil {
		return 0, p.err
	}
	v.mu.Lock()
	o := p.entries[idx%pageEntries]
	v.mu.Unlock()
	return o, nil
}

func (v *Volume) loadPage(ctx context.Context, pn uint32, p *page) error {
	v.mu.Lock()
	info := v.info
	v.mu.Unlock()
	buf := make([]byte, pageEntries*entrySize)
	for _, img := range append([]ids.VDIID{info.ID}, info.Chain...) {
		if err := v.readPage(ctx, img, info.Copies, pn, buf); err != nil {
			return err
		}
		unset := 0
		for i := range p.entries {
			if p.entries[i] != 0 {
				continue
			}
			switch e := binary.LittleEndian.Uint32(buf[i*entrySize:]); {
			case e == holeEntry:
				p.entries[i] = holeEntry
			case e > uint32(ids.MaxVDIID):
				return errs.E(errs.IO, "index of image %v: entry %d is %#x, not a VDI ID", img, pn*pageEntries+uint32(i), e)
			case e == 0:
				unset++
			default:
				p.entries[i] = ids.VDIID(e)
			}
		}
		if unset == 0 {
			break
		}
	}
	for i, e := range p.entries {
		if e == holeEntry {
			p.entries[i] = 0
		}
	}
	return nil
}

// readPage reads page pn of image img's own index into buf: zeros where
// the index object does not exist.
func (v *Volume) readPage(ctx context.Context, img ids.VDIID, copies int, pn uint32, buf []byte) error {
	oid, off := indexLoc(img, pn*pageEntries)
	err := v.objs.Read(ctx, oid, copies, off, buf)
	if errs.Is(err, errs.NotFound) {
		clear(buf) // no index object yet: nothing set
		return nil
	}
	if err != nil {
		return errs.E(errs.KindOf(err), "read index of image %v: %w", img, err)
	}
	return nil
}

// setOwner records owner for object idx in the stored index and in memory.
func (v *Volume) setOwner(ctx context.Context, w Writer, idx uint32, owner ids.VDIID) error {
	v.mu.Lock()
	info := v.info
	v.mu.Unlock()
	oid, off := indexLoc(info.ID, idx)
	var b [entrySize]byte
	e := uint32(owner)
	if owner == 0 {
		e = holeEntry
	}
	binary.LittleEndian.PutUint32(b[:], e)
	err := w.Write(ctx, oid, info.Copies, off, b[:])
	if err != nil {
		return errs.E(errs.KindOf(err), "update index of VDI %v: %w", info.ID, err)
	}
	v.mu.Lock()
	var old ids.VDIID
	known := false
	if p := v.pages[idx/pageEntries]; p != nil {
		old, known = p.entries[idx%pageEntries], p.loaded()
		p.entries[idx%pageEntries] = owner
	}
	moved := v.moved
	v.mu.Unlock()
	if moved != nil && (old != owner || !known) {
		moved(idx, old, known)
	}
	return nil
}

// span calls fn for each object-sized piece of [off, off+n).
func span(off int64, n int, fn func(idx uint32, objOff int64, lo, hi int) error) error {
	done := 0
	for done < n {
		pos := off + int64(done)
		idx := uint32(pos / ObjectSize)
		objOff := pos % ObjectSize
		l := int(min(int64(n-done), ObjectSize-objOff))
		if err := fn(idx, objOff, done, done+l); err != nil {
			return err
		}
		done += l
	}
	return nil
}

func (v *Volume) checkRange(off int64, n int64) error {
	v.mu.Lock()
	size := v.info.Size
	v.mu.Unlock()
	if off < 0 || n < 0 {
		return errs.E(errs.Invalid, "negative offset %d or length %d", off, n)
	}
	if uint64(off)+uint64(n) > size {
		return errs.E(errs.TooLarge, "range [%d, %d) is past the end of the %d-byte VDI", off, off+n, size)
	}
	return nil
}

// ReadAt fills buf from the VDI at off. Unallocated ranges read as zeros.
func (v *Volume) ReadAt(ctx context.Context, buf []byte, off int64) error {
	if err := v.checkRange(off, int64(len(buf))); err != nil {
		return err
	}
	info := v.Info()
	return span(off, len(buf), func(idx uint32, objOff int64, lo, hi int) error {
		owner, err := v.Owner(ctx, idx)
		if err != nil {
			return err
		}
		if owner == 0 {
			clear(buf[lo:hi])
			return nil
		}
		err = v.objs.Read(ctx, ids.DataObject(owner, idx), info.Copies, objOff, buf[lo:hi])
		if err != nil {
			return errs.E(errs.KindOf(err), "read VDI %v object %d: %w", info.ID, idx, err)
		}
		return nil
	})
}

// WriteAt writes data to the VDI at off through w, allocating objects on
// first write.
func (v *Volume) WriteAt(ctx context.Context, w Writer, data []byte, off int64) error {
	if err := v.checkRange(off, int64(len(data))); err != nil {
		return err
	}
	info := v.Info()
	return span(off, len(data), func(idx uint32, objOff int64, lo, hi int) error {
		oid := ids.DataObject(info.ID, idx)
		for {
			owner, err := v.Owner(ctx, idx)
			if err != nil {
				return err
			}
			if owner == info.ID {
				return w.Write(ctx, oid, info.Copies, objOff, data[lo:hi])
			}
			// Allocate: one writer per object; the others wait and
			// then write into the allocated object. The entry is read
			// again under the lock that guards the allocation map, so
			// an allocation that finished meanwhile is seen.
			v.mu.Lock()
			if p := v.pages[idx/pageEntries]; p != nil && p.loaded() && p.entries[idx%pageEntries] == info.ID {
				v.mu.Unlock()
				continue
			}
			if aw := v.alloc[idx]; aw != nil {
				v.mu.Unlock()
				select {
				case <-aw.done:
					continue
				case <-ctx.Done():
					return errs.E(errs.IO, "write: %w", ctx.Err())
				}
			}
			aw := &allocWait{done: make(chan struct{})}
			v.alloc[idx] = aw
			v.mu.Unlock()
			err = v.allocate(ctx, w, idx, owner, info, objOff, data[lo:hi])
			v.mu.Lock()
			delete(v.alloc, idx)
			v.mu.Unlock()
			close(aw.done)
			return err
		}
	})
}

// allocate creates object idx of the VDI with data at objOff, then points
// the index at it. owner is the current entry: 0 for a hole, or an
// ancestor whose object is copied first (copy on write).
func (v *Volume) allocate(ctx context.Context, w Writer, idx uint32, owner ids.VDIID, info Info, objOff int64, data []byte) error {
	oid := ids.DataObject(info.ID, idx)
	if owner != 0 && owner != info.ID {
		whole := make([]byte, ObjectSize)
		if err := v.objs.Read(ctx, ids.DataObject(owner, idx), info.Copies, 0, whole); err != nil && !errs.Is(err, errs.NotFound) {
			return errs.E(errs.KindOf(err), "copy-on-write of object %d from VDI %v: %w", idx, owner, err)
		}
		copy(whole[objOff:], data)
		objOff, data = 0, whole
	}
	if err := w.Create(ctx, oid, info.Copies, objOff, data); err != nil {
		return err
	}
	if err := v.setOwner(ctx, w, idx, info.ID); err != nil {
		return err
	}
	if owner != 0 {
		v.mu.Lock()
		fn := v.copied
		v.mu.Unlock()
		if fn != nil {
			fn(owner)
		}
	}
	return nil
}

// Discard makes [off, off+length) read as zeros. Whole objects owned by
// this VDI are removed and unmapped, unless keep is set (zero range keeps
// the space allocated); partial ones are punched. Changes go through w.
func (v *Volume) Discard(ctx context.Context, w Writer, off, length int64, keep bool) error {
	if err := v.checkRange(off, length); err != nil {
		return err
	}
	info := v.Info()
	for pos := off; pos < off+length; {
		idx := uint32(pos / ObjectSize)
		objOff := pos % ObjectSize
		l := min(off+length-pos, ObjectSize-objOff)
		pos += l
		owner, err := v.Owner(ctx, idx)
		if err != nil {
			return err
		}
		switch {
		case owner == 0:
			continue
		case owner != info.ID && l == ObjectSize && !keep:
			// Shared with an ancestor: just stop pointing at it.
			if err := v.setOwner(ctx, w, idx, 0); err != nil {
				return err
			}
		case owner != info.ID:
			// Shared with an ancestor: write zeros through copy on write.
			if err := v.WriteAt(ctx, w, make([]byte, l), int64(idx)*ObjectSize+objOff); err != nil {
				return err
			}
		case l == ObjectSize && !keep:
			if err := v.setOwner(ctx, w, idx, 0); err != nil {
				return err
			}
			if err := w.Remove(ctx, ids.DataObject(info.ID, idx), info.Copies); err != nil {
				return err
			}
		default:
			if err := w.Punch(ctx, ids.DataObject(info.ID, idx), info.Copies, objOff, l); err != nil {
				return err
			}
		}
	}
	return nil
}

// Free unmaps object idx and, if the volume owns it, removes it: what
// Discard does to a whole object, also for a last object that the VDI's
// size cuts short. The index is updated first, so a failure in between
// leaves an unreferenced object, never a reference to a missing one.
// Changes go through w.
func (v *Volume) Free(ctx context.Context, w Writer, idx uint32) error {
	owner, err := v.Owner(ctx, idx)
	if err != nil || owner == 0 {
		return err
	}
	if err := v.setOwner(ctx, w, idx, 0); err != nil {
		return err
	}
	info := v.Info()
	if owner != info.ID {
		return nil
	}
	return w.Remove(ctx, ids.DataObject(info.ID, idx), info.Copies)
}

// Flush makes every write acknowledged so far durable on all replicas.
func (v *Volume) Flush(ctx context.Context) error { return v.objs.Flush(ctx) }

// AllocMap returns a bitmap with one bit per object of the VDI (bit i of
// byte i/8 set if object i is allocated) and the number of objects.
func (v *Volume) AllocMap(ctx context.Context) ([]byte, uint32, error) {
	n := NumObjects(v.Info().Size)
	bm := make([]byte, (n+7)/8)
	for idx := uint32(0); idx < n; idx++ {
		owner, err := v.Owner(ctx, idx)
		if err != nil {
			return nil, 0, err
		}
		if owner != 0 {
			bm[idx/8] |= 1 << (idx % 8)
		}
	}
	return bm, n, nil
}

// Objects calls fn with every allocated object of the VDI that it owns
// itself (not those shared from an ancestor), then with its index objects.
func (v *Volume) OwnObjects(ctx context.Context, fn func(oid ids.ObjectID) error) error {
	info := v.Info()
	n := NumObjects(info.Size)
	for idx := uint32(0); idx < n; idx++ {
		owner, err := v.Owner(ctx, idx)
		if err != nil {
			return err
		}
		if owner == info.ID {
			if err := fn(ids.DataObject(info.ID, idx)); err != nil {
				return err
			}
		}
	}
	for c := uint32(0); c*EntriesPerIndexObject < max(n, 1); c++ {
		if err := fn(ids.IndexObject(info.ID, c)); err != nil {
			return err
		}
	}
	return nil
}

// OwnEntry reads, from the stored index of image img (copies replicas),
// whether the entry of object idx names img itself: whether img's own
// index references its data object idx. It reads the index, not a cache;
// an index object that cannot be read (or is not found) is an error.
func OwnEntry(ctx context.Context, objs Objects, img ids.VDIID, copies int, idx uint32) (bool, error) {
	oid, off := indexLoc(img, idx)
	var b [entrySize]byte
	// No index object is an error too: the replicas that answered may be
	// new holders that have not fetched it yet.
	if err := objs.Read(ctx, oid, copies, off, b[:]); err != nil {
		return false, err
	}
	return binary.LittleEndian.Uint32(b[:]) == uint32(img), nil
}

// Reads calls fn with every object a read of the VDI may use: each
// allocated data object (its own, or an ancestor's it shares), then the
// index objects of its image and of its ancestors (which may not exist).
func (v *Volume) Reads(ctx context.Context, fn func(oid ids.ObjectID) error) error {
	_, err := v.ReadsFrom(ctx, 0, NumObjects(v.Info().Size)+1, fn)
	return err
}

// ReadsFrom is Reads in pages: it looks at objects [from, from+count) and
// returns where the next page starts, or 0 when this page reached the end
// (the index objects come with the last page).
func (v *Volume) ReadsFrom(ctx context.Context, from, count uint32, fn func(oid ids.ObjectID) error) (uint32, error) {
	info := v.Info()
	n := NumObjects(info.Size)
	end := n
	if count < n-min(from, n) {
		end = from + count
	}
	for idx := from; idx < end; idx++ {
		owner, err := v.Owner(ctx, idx)
		if err != nil {
			return 0, err
		}
		if owner != 0 {
			if err := fn(ids.DataObject(owner, idx)); err != nil {
				return 0, err
			}
		}
	}
	if end < n {
		return end, nil
	}
	for _, img := range append([]ids.VDIID{info.ID}, info.Chain...) {
		for c := uint32(0); c*EntriesPerIndexObject < max(n, 1); c++ {
			if err := fn(ids.IndexObject(img, c)); err != nil {
				return 0, err
			}
		}
	}
	return 0, nil
}

// Forget drops the cached index so that the next access reads it again
// (after another gateway may have changed it).
func (v *Volume) Forget() {
	v.mu.Lock()
	clear(v.pages)
	v.mu.Unlock()
}
