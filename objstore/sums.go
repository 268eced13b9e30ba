package objstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

// Checksums. Every 4 KiB block of an object has a CRC-32C, kept in a
// trailer at the end of the object's own file, after its ObjectSize bytes
// of data: 8 bytes per block (1024 blocks, 8 KiB for a 4 MiB object).
// Read verifies every block it returns, and a block that fails is
// errs.Corrupt, never data. See docs/ARCHITECTURE.md, "Checksums".
//
// Why 4 KiB: it is the page and the guest's usual block. A 4 KiB read or
// write then checksums exactly its own bytes, and only writes that are not
// block-aligned read anything back to checksum a whole block. Why in the
// object's file: one fdatasync makes data and checksums durable together,
// and a 4 KiB overwrite rewrites 8 bytes of trailer, not a large record.
//
// A trailer entry holds two sums, prev and cur; a block is good if it
// matches either. A write stores {prev: the block's sum before, cur: its
// new sum} before it writes the data, so a process killed between the two
// (or during the data write, which the kernel tears only at page
// boundaries) leaves every block matching one of them: a crash never
// looks like rot. The first change to an object after Open settles its
// entries (each becomes {m, m}, m the sum its block matches) so that
// "the sum before" is known for every block without reading it.
//
// A sum covers the block's index and the object's ID as well as its
// bytes, so a block written to the wrong place, or another object's file
// put in this one's place, fails too. A block of zeros sums to 0 wherever
// it is: holes and never-written blocks, whose trailer is a hole too,
// need no entry.

// SumBlock is the size of a checksummed block.
const SumBlock = 4096

// entrySize is the bytes of one trailer entry: prev and cur, little-endian.
const entrySize = 8

// SumEntry is entrySize, for a reader of the files (VerifyCurrent): block
// b's entry is at ObjectSize + b*SumEntry in an object's file.
const SumEntry = entrySize

var (
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
	zeroSum    = crc32.Checksum(make([]byte, SumBlock), castagnoli)
)

// blockSum is the sum of block idx of object oid holding b (SumBlock
// bytes): 0 for zeros, and otherwise a CRC-32C mixed with where the block
// belongs.
func blockSum(oid ids.ObjectID, idx int64, b []byte) uint32 {
	v := crc32.Checksum(b, castagnoli) ^ zeroSum
	if v == 0 {
		return 0
	}
	return v ^ placeMix(oid, idx)
}

// placeMix is a hash of a block's place (object and index).
func placeMix(oid ids.ObjectID, idx int64) uint32 {
	x := uint64(oid)*0x9e3779b97f4a7c15 ^ uint64(idx)*0xbf58476d1ce4e5b9
	x ^= x >> 31
	x *= 0x94d049bb133111eb
	x ^= x >> 29
	return uint32(x) | 1
}

// entry is a block's trailer entry.
type entry struct{ prev, cur uint32 }

func (e entry) matches(v uint32) bool { return v == e.cur || v == e.prev }

// good reports whether a block summing to v is good: it matches cur, or,
// for an object not settled since the store opened (a crash may have
// stopped a change between its entry and its data), prev.
func (e entry) good(v uint32, settled bool) bool {
	return v == e.cur || !settled && v == e.prev
}

// trailerSize is the bytes of an object's trailer.
func (s *Store) trailerSize() int64 { return s.objSize / SumBlock * entrySize }

// fileSize is the size of an object's file: data and trailer.
func (s *Store) fileSize() int64 { return s.objSize + s.trailerSize() }

// corruptErr reports a damaged copy of oid.
func (s *Store) corruptErr(oid ids.ObjectID, format string, args ...any) error {
	s.corrupt.Add(1)
	return errs.E(errs.Corrupt, "objstore: object %v: "+format, append([]any{oid}, args...)...)
}

// Corruptions returns how many times a read or write found a damaged copy
// since the store was opened.
func (s *Store) Corruptions() uint64 { return s.corrupt.Load() }

// trailer is the checksum trailer of an object (or a copy of it): entry
// b at bytes [b*entrySize, (b+1)*entrySize), as in the file.
type trailer []byte

func (t trailer) get(b int64) entry {
	return entry{binary.LittleEndian.Uint32(t[b*entrySize:]), binary.LittleEndian.Uint32(t[b*entrySize+4:])}
}

// set stores entry b: prev, then cur, little-endian, as one 8-byte store
// (into a mapped trailer, a kill leaves the entry whole: tmap.go).
func (t trailer) set(b int64, e entry) {
	binary.LittleEndian.PutUint64(t[b*entrySize:], uint64(e.cur)<<32|uint64(e.prev))
}

// readTrailer reads the whole trailer of oid's file f. A short one (the
// file was truncated) is errs.Corrupt.
func (s *Store) readTrailer(oid ids.ObjectID, f File) (trailer, error) {
	t := make(trailer, s.trailerSize())
	n, err := f.ReadAt(t, s.objSize)
	if n < len(t) {
		if err == io.EOF || err == nil {
			return nil, s.corruptErr(oid, "file truncated (checksums missing)")
		}
		return nil, objErr("read checksums of", oid, err)
	}
	return t, nil
}

// writeTrailer writes entries [b0, b1) of t to their place in f.
func (s *Store) writeTrailer(f File, t trailer, b0, b1 int64) error {
	_, err := f.WriteAt(t[b0*entrySize:b1*entrySize], s.objSize+b0*entrySize)
	return err
}

// entries is the copy of an object's trailer that its open handle keeps:
// each entry packed as prev<<32 | cur, read and written atomically, since
// writes of different blocks of one object run in parallel with each
// other and with reads.
type entries []atomic.Uint64

func (es entries) get(b int64) entry {
	v := es[b].Load()
	return entry{uint32(v >> 32), uint32(v)}
}

func (es entries) set(b int64, e entry) { es[b].Store(uint64(e.prev)<<32 | uint64(e.cur)) }

// sums returns the copy of oid's trailer that its handle h keeps, reading
// it from the file at first use: reads and writes then cost no system call
// for their checksums. The caller holds oid's stripe lock. The copy is
// changed with the file: a change sets its blocks' entries here, then in
// the file, under a lock of those blocks (lockBlocks), so outside the
// blocks being changed it is what the file holds.
//
// Except after a failed write of entries, which drops the copy: one read
// again from the file while other changes were in flight (their entries
// set in the dropped copy and perhaps not yet in the file) may lack
// theirs. Such a copy is suspect. fresh (the caller holds the stripe lock
// exclusively, so nothing is in flight) reads the copy again if it is
// suspect; otherwise ok reports whether it is not.
//
// A descriptor that leaves the cache takes its copy with it (MaxOpenFiles
// bounds them: 8 KiB each for 4 MiB objects), and Check forgets the
// handle first, so a check reads the trailer as it is on disk.
func (s *Store) sums(oid ids.ObjectID, h *handle, fresh bool) (es entries, ok bool, err error) {
	h.tmu.Lock()
	defer h.tmu.Unlock()
	if h.sums == nil || fresh && h.suspect {
		t, err := s.readTrailer(oid, h.f)
		if err != nil {
			return nil, false, err
		}
		es := make(entries, len(t)/entrySize)
		for b := range es {
			es.set(int64(b), t.get(int64(b)))
		}
		h.sums, h.suspect = es, len(h.busy) > 0
	}
	return h.sums, !h.suspect, nil
}

// entryBufs holds buffers for entries on their way to the file.
var entryBufs = sync.Pool{New: func() any { b := make([]byte, 8<<10); return &b }}

// storeSums writes entries [b0, b1) of es, h's copy, to h's file: into
// its mapped trailer (tmap.go), or with pwrite. If the pwrite fails, the
// file may hold some of them: the copy is dropped, to be read again.
func (s *Store) storeSums(h *handle, es entries, b0, b1 int64) error {
	if s.storeMapped(h, es, b0, b1) {
		return nil
	}
	p := entryBufs.Get().(*[]byte)
	defer entryBufs.Put(p)
	n := (b1 - b0) * entrySize
	if int64(cap(*p)) < n {
		*p = make([]byte, n)
	}
	t := trailer((*p)[:n])
	for b := b0; b < b1; b++ {
		t.set(b-b0, es.get(b))
	}
	_, err := h.f.WriteAt(t, s.objSize+b0*entrySize)
	if err != nil {
		h.tmu.Lock()
		h.sums = nil
		h.tmu.Unlock()
	}
	return err
}

// lockBlocks waits until no other change of h's object covers a block of
// [b0, b1), and takes them; unlockBlocks gives them back. A change holds
// its blocks from setting their entries in the copy until its data is
// written.
func (h *handle) lockBlocks(b0, b1 int64) {
	h.tmu.Lock()
	for slices.ContainsFunc(h.busy, func(r blockRange) bool { return r.b0 < b1 && b0 < r.b1 }) {
		h.freed.Wait()
	}
	h.busy = append(h.busy, blockRange{b0, b1})
	h.tmu.Unlock()
}

func (h *handle) unlockBlocks(b0, b1 int64) {
	h.tmu.Lock()
	if i := slices.Index(h.busy, blockRange{b0, b1}); i >= 0 {
		h.busy = slices.Delete(h.busy, i, i+1)
	}
	h.tmu.Unlock()
	h.freed.Broadcast()
}

// blockRange is blocks [b0, b1) of an object.
type blockRange struct{ b0, b1 int64 }

// mismatch is a block that fails its checksum. Under the shared stripe
// lock it may be a change in flight (its entry set, its data not yet
// written, or a read of a page the write is filling): the caller looks
// again under the exclusive lock, where it is damage.
type mismatch struct{ block int64 }

func (m *mismatch) Error() string { return fmt.Sprintf("block %d fails its checksum", m.block) }

// damage turns a mismatch into errs.Corrupt (counted); other errors are
// returned as they are.
func (s *Store) damage(oid ids.ObjectID, err error) error {
	var m *mismatch
	if errors.As(err, &m) {
		return s.corruptErr(oid, "block %d (bytes %d-%d) fails its checksum", m.block, m.block*SumBlock, (m.block+1)*SumBlock-1)
	}
	return err
}

// verify checks data, the whole blocks b0... of oid, against their
// entries: a *mismatch for the first that fails.
func verify(oid ids.ObjectID, b0 int64, data []byte, es entries, settled bool) error {
	for i := range int64(len(data)) / SumBlock {
		b := data[i*SumBlock : (i+1)*SumBlock]
		if v := blockSum(oid, b0+i, b); !es.get(b0+i).good(v, settled) {
			return &mismatch{b0 + i}
		}
	}
	return nil
}

// blockBufs holds SumBlock-aligned scratch buffers for reads and writes
// that are not block-aligned.
var blockBufs sync.Pool

// scratch returns a buffer of n bytes (a multiple of SumBlock) and the
// function that gives it back.
func scratch(n int64) ([]byte, func()) {
	if p, ok := blockBufs.Get().(*[]byte); ok && int64(cap(*p)) >= n {
		b := (*p)[:n]
		return b, func() { blockBufs.Put(p) }
	}
	b := alignedBlocks(int(max(n, 64<<10)))
	p := &b
	return b[:n], func() { blockBufs.Put(p) }
}

// readBlocks reads whole blocks b0... of oid's file into dst (a whole
// number of blocks) and verifies them (see entry.good for settled): a
// *mismatch for a block that fails. A read past the end of the file
// (truncated) is errs.Corrupt.
func (s *Store) readBlocks(oid ids.ObjectID, h *handle, b0 int64, dst []byte, settled bool) error {
	n, err := h.f.ReadAt(dst, b0*SumBlock)
	if n < len(dst) {
		if err == io.EOF || err == nil {
			return s.corruptErr(oid, "file truncated (data at %d missing)", b0*SumBlock+int64(n))
		}
		return objErr("read", oid, err)
	}
	es, _, err := s.sums(oid, h, false)
	if err != nil {
		return err
	}
	return verify(oid, b0, dst, es, settled)
}

// settle makes every entry of oid's file f hold one sum, the one its block
// matches, so that a change may take an entry's cur as the block's sum
// before it. Blocks that match neither are left as they are: reads find
// them. The caller holds oid's stripe lock.
func (s *Store) settle(oid ids.ObjectID, h *handle) error {
	es, _, err := s.sums(oid, h, true)
	if err != nil {
		return err
	}
	var block [SumBlock]byte
	lo, hi := int64(-1), int64(0) // the entries changed
	for b := range s.objSize / SumBlock {
		e := es.get(b)
		if e.prev == e.cur {
			continue
		}
		if _, err := h.f.ReadAt(block[:], b*SumBlock); err != nil {
			return objErr("read", oid, err)
		}
		if v := blockSum(oid, b, block[:]); e.matches(v) {
			es.set(b, entry{v, v})
			if lo < 0 {
				lo = b
			}
			hi = b + 1
		}
	}
	if lo >= 0 {
		if err := s.storeSums(h, es, lo, hi); err != nil {
			return objErr("write checksums of", oid, err)
		}
	}
	return nil
}

// collapse makes every entry of oid, a settled object whose changes are
// durable (Sync calls it after their fdatasync, and it does nothing if the
// object changed since), hold its cur alone: a
// block that later reads back as what it held before its last write (a
// disk that lost that write) then fails, and the next start has nothing
// to settle.
func (s *Store) collapse(oid ids.ObjectID) {
	l := s.lock(oid)
	l.Lock()
	defer l.Unlock()
	h, info, err := s.acquire(oid)
	if err != nil {
		return // removed meanwhile, or unreadable: a read will say
	}
	defer s.release(h)
	s.mu.Lock()
	_, changedSince := s.dirty[oid]
	s.mu.Unlock()
	if !info.settled || changedSince {
		// Changed after the Sync took its batch: that change is not
		// durable yet, and its block needs the sum from before it
		// until it is. The next Sync collapses it.
		return
	}
	es, _, err := s.sums(oid, h, true)
	if err != nil {
		return
	}
	lo, hi := int64(-1), int64(0) // the entries changed
	for b := range s.objSize / SumBlock {
		if e := es.get(b); e.prev != e.cur {
			es.set(b, entry{e.cur, e.cur})
			if lo < 0 {
				lo = b
			}
			hi = b + 1
		}
	}
	if lo >= 0 {
		// On failure the copy is dropped and the file keeps two sums
		// where it had them: still correct.
		_ = s.storeSums(h, es, lo, hi)
	}
}

// extentSums returns the sum of every block of object oid holding the
// extents exts (sorted, disjoint), whose bytes are data one after the
// other, and zeros elsewhere.
func (s *Store) extentSums(oid ids.ObjectID, exts []Extent, data []byte) []uint32 {
	sums := make([]uint32, s.objSize/SumBlock) // holes sum to 0
	var partial map[int64][]byte
	pos := int64(0)
	for _, e := range exts {
		d := data[pos : pos+e.Len]
		pos += e.Len
		for b := e.Off / SumBlock; b*SumBlock < e.Off+e.Len; b++ {
			bs, be := b*SumBlock, (b+1)*SumBlock
			if bs >= e.Off && be <= e.Off+e.Len {
				sums[b] = blockSum(oid, b, d[bs-e.Off:be-e.Off])
				continue
			}
			if partial == nil {
				partial = make(map[int64][]byte)
			}
			pb := partial[b]
			if pb == nil {
				pb = make([]byte, SumBlock)
				partial[b] = pb
			}
			lo, hi := max(bs, e.Off), min(be, e.Off+e.Len)
			copy(pb[lo-bs:], d[lo-e.Off:hi-e.Off])
		}
	}
	for b, pb := range partial {
		sums[b] = blockSum(oid, b, pb)
	}
	return sums
}

// alignedBlocks returns n zeroed bytes aligned for O_DIRECT.
func alignedBlocks(n int) []byte {
	b := make([]byte, n+directAlign)
	skip := (directAlign - int(uintptr(unsafe.Pointer(unsafe.SliceData(b)))%directAlign)) % directAlign
	return b[skip : skip+n : skip+n]
}

// Patch repairs object oid from another copy of it: exts (sorted,
// disjoint) hold that copy's bytes, data one after the other, zeros
// elsewhere, and the caller has verified them. Every block of oid that
// fails its checksum here is replaced by the other copy's block; blocks
// that are good here stay, so a write this copy has and the other does not
// yet is kept. The version and epoch do not change. It returns how many
// blocks it replaced. errs.Corrupt if the file is missing or not the size
// of an object with its checksums (then only a whole Replace helps).
func (s *Store) Patch(oid ids.ObjectID, exts []Extent, data []byte) (int, error) {
	if err := s.begin("patch"); err != nil {
		return 0, err
	}
	defer s.end()
	l := s.lock(oid)
	l.Lock()
	defer l.Unlock()
	h, _, err := s.acquire(oid)
	if err == errAbsent {
		return 0, notFound("patch", oid)
	}
	if err != nil {
		return 0, objErr("patch", oid, err)
	}
	defer s.release(h)
	if fi, err := h.f.Stat(); err != nil {
		return 0, objErr("patch", oid, err)
	} else if fi.Size() != s.fileSize() {
		return 0, s.corruptErr(oid, "file of %d bytes, not %d", fi.Size(), s.fileSize())
	}
	if err := s.settleOnce(oid, h); err != nil {
		return 0, err
	}
	nb := s.objSize / SumBlock
	es, _, err := s.sums(oid, h, true)
	if err != nil {
		return 0, err
	}
	theirs := s.extentSums(oid, exts, data)
	block := make([]byte, SumBlock)
	patched := 0
	for b := int64(0); b < nb; b++ {
		if _, err := h.f.ReadAt(block, b*SumBlock); err != nil {
			return patched, objErr("read", oid, err)
		}
		if es.get(b).good(blockSum(oid, b, block), true) {
			continue
		}
		// Their block: from the extents, zeros in their holes.
		clear(block)
		pos := int64(0)
		for _, e := range exts {
			lo, hi := max(e.Off, b*SumBlock), min(e.Off+e.Len, (b+1)*SumBlock)
			if lo < hi {
				copy(block[lo-b*SumBlock:], data[pos+lo-e.Off:pos+hi-e.Off])
			}
			pos += e.Len
		}
		v := theirs[b]
		es.set(b, entry{v, v})
		if err := s.storeSums(h, es, b, b+1); err != nil {
			s.unsettle(oid)
			return patched, objErr("write checksums of", oid, err)
		}
		if _, err := h.f.WriteAt(block, b*SumBlock); err != nil {
			s.unsettle(oid)
			return patched, objErr("write", oid, err)
		}
		patched++
	}
	if patched > 0 {
		s.mu.Lock()
		info := s.objects[oid]
		e := s.dirty[oid]
		e.meta = info.Meta
		e.addBlocks(0, 0)
		s.dirty[oid] = e
		s.stale[oid] = struct{}{}
		s.mu.Unlock()
	}
	return patched, nil
}

// VerifyCurrent reports whether data, whole blocks from block b0 of object
// oid's file, match the current sums in sums, their entries as the file
// holds them (entrySize bytes per block from b0). A block that matches only
// the sum from before its last change (a crash between a change's entry and
// its data, in an object the store has not settled since) does not count:
// a mount reading the file directly (package localread) leaves such cases
// to the store.
func VerifyCurrent(oid ids.ObjectID, b0 int64, data, sums []byte) bool {
	if len(data)%SumBlock != 0 || len(sums) != len(data)/SumBlock*entrySize {
		return false
	}
	t := trailer(sums)
	for i := int64(0); i < int64(len(data)/SumBlock); i++ {
		if blockSum(oid, b0+i, data[i*SumBlock:(i+1)*SumBlock]) != t.get(i).cur {
			return false
		}
	}
	return true
}
