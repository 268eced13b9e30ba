// Package objstore is a node's local object store: the replicas of the
// fixed-size objects placed on this node, one sparse file per object, with
// a small bbolt index of each object's version and epoch.
//
// Layout under the store's directory:
//
//	index.db            bbolt: ObjectID -> Meta (see index.go); no data
//	index.db.log        the index changes of the Syncs since the last
//	                    checkpoint into index.db (see indexlog.go)
//	obj/XX/<oid>        one sparse file of ObjectSize bytes per object;
//	                    <oid> is ObjectID.String() (16 hex digits) and XX
//	                    its last two hex digits (the ID's low byte)
//	obj/XX/<oid>.tmp    an object being created; removed by Open
//
// Durability is that of a disk with a volatile write cache: Write, Punch
// and Remove take effect at once for users of the Store and become
// durable at the next successful Sync. Sync makes object data durable
// before it logs the index changes, so after a crash the index never
// claims a version whose data was lost; it may claim an older one (a crash between
// the two), which only makes this replica look staler than it is. Objects
// created since the last Sync come back from a crash with version 0.
//
// A Store is safe for concurrent use. Operations on different objects,
// and reads of one object, run in parallel; changes of one object run one
// at a time (see Write); no I/O is done under the store-wide mutex.
//
// Every 4 KiB block has a checksum, kept after the object's data in the
// same file and verified on every read: see sums.go.
package objstore

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

// DefaultObjectSize is the object size, in bytes, used when
// Options.ObjectSize is zero: 4 MiB.
const DefaultObjectSize = 4 << 20

// defaultMaxOpenFiles is used when Options.MaxOpenFiles is zero.
const defaultMaxOpenFiles = 256

// Options configure a Store. The zero value is a good default.
type Options struct {
	// ObjectSize is the size of every object, in bytes. 0 means
	// DefaultObjectSize. It is recorded in the index when the store is
	// created; Open fails with errs.Invalid if it is negative or differs
	// from the recorded size.
	ObjectSize int64

	// MaxOpenFiles bounds the LRU cache of open object file descriptors.
	// 0 means 256; negative is errs.Invalid. Operations in flight keep
	// the descriptors they use open beyond the bound until they finish. A
	// cache miss costs an open(2).
	MaxOpenFiles int

	// IndexPath is where the index lives; empty means dir/index.db. A
	// node with several disks keeps each disk's index with its other
	// metadata, off the data disks.
	IndexPath string

	// FS is the filesystem holding the object files, the seam for fault
	// injection (see FaultFS). nil means OSFS(). The index (IndexPath)
	// is always opened by bbolt on the real filesystem.
	FS FS

	// Replacing, if set, is called before and after an object's file is
	// replaced by another or removed, under the object's lock: a mount
	// that reads the file directly learns of it there (package
	// localread).
	Replacing func(oid ids.ObjectID)
}

// Meta is what the index keeps for each object.
type Meta struct {
	// Version is the highest version written to this replica. Objects
	// found on disk without an index entry (created, then a crash before
	// Sync) have version 0.
	Version ids.Version
	// Epoch is the epoch of the last Write or Punch.
	Epoch ids.Epoch
}

// Store is the object store in one directory. Make one with Open; its
// methods are safe for concurrent use. Only one Store, in any process,
// may have a directory open at a time.
type Store struct {
	dir      string
	objDir   string
	fs       FS
	objSize  int64
	onChange func(ids.ObjectID) // Options.Replacing, or nil
	noDirect atomic.Bool        // O_DIRECT is not supported here
	db       *bolt.DB
	stripes  [nStripes]stripe // per-object locks, see lock

	// closeMu is held shared by every operation and exclusively by Close,
	// which thus waits for operations in flight.
	closeMu sync.RWMutex
	closed  bool

	mu        sync.Mutex // guards the fields below; never held during I/O
	objects   map[ids.ObjectID]objInfo
	fds       fdCache
	dirty     map[ids.ObjectID]dirtyEntry // changes since the last Sync
	spare     map[ids.ObjectID]dirtyEntry // an emptied batch map, for reuse
	dirtyDirs [256]bool                   // obj/XX gained or lost entries since the last Sync
	stale     map[ids.ObjectID]struct{}   // written since Usage last measured them
	journaled map[ids.ObjectID]struct{}   // blocks in the log since the last checkpoint, file perhaps not synced
	used      int64                       // sum of objects[*].alloc
	batch     uint64                      // number of the batch dirty collects

	missing  []ids.ObjectID // in the index but without a file at Open
	damaged  []ids.ObjectID // files Open found damaged and removed
	noSums   bool           // Open: the files have no checksums yet (format 1)
	corrupt  atomic.Uint64  // damaged copies found (Corruptions)
	replayed int            // journaled blocks Open wrote back (Replayed)

	afterVerify func() // tests: called after a change verified a block it covers in part

	log     *indexLog  // the index log; guarded by syncMu
	syncMu  sync.Mutex // serialises syncBatch; guards durable and syncErr
	durable uint64     // every batch numbered below this is durable
	syncErr error      // sticky: a failed fdatasync or fsync
}

// objInfo is what the Store keeps in memory for each object.
type objInfo struct {
	Meta
	alloc   int64 // bytes allocated on disk when last measured
	settled bool  // its checksum entries are settled (see settle)
}

// dirtyEntry is a change to the index awaiting Sync.
type dirtyEntry struct {
	meta    Meta
	data    bool    // the object file needs fdatasync
	removed bool    // delete the index entry
	blocks  []int32 // blocks changed by small writes only: Sync journals them (unless data)
}

// Small writes are journaled: the blocks they change go into the index
// log's record with the Sync's index changes, and their object file is
// not fdatasynced by that Sync (see indexlog.go). An object with more than
// maxJournalBlocks blocks changed since the last Sync, or changed by a
// creation, a punch, a repair or a direct write, is fdatasynced instead,
// as is every object past maxJournalBytes of journaled blocks in a Sync.
const (
	maxJournalBlocks = 16
	maxJournalBytes  = 8 << 20
)

// addBlocks records that blocks [b0, b1) changed; b0 == b1 records a
// change that the object's file must be fdatasynced for.
func (e *dirtyEntry) addBlocks(b0, b1 int64) {
	if e.data {
		return
	}
	for b := b0; b < b1; b++ {
		if !slices.Contains(e.blocks, int32(b)) {
			e.blocks = append(e.blocks, int32(b))
		}
	}
	if b0 == b1 || len(e.blocks) > maxJournalBlocks {
		e.data, e.blocks = true, nil
	}
}

// nStripes is the number of per-object lock stripes (a power of two).
const nStripes = 1024

// stripe is a lock padded to a cache line.
type stripe struct {
	sync.RWMutex
	_ [64 - unsafe.Sizeof(sync.RWMutex{})%64]byte
}

// lock returns the lock of oid's stripe. Reads, writes, punches, syncs and
// measures hold it shared (writes and punches also lock the blocks they
// change); creation, removal, settling, collapsing, repairs and second
// looks at a block that failed its checksum hold it exclusively, so these
// never race with I/O on the same object.
func (s *Store) lock(oid ids.ObjectID) *sync.RWMutex {
	return &s.stripes[(uint64(oid)*0x9e3779b97f4a7c15)>>54].RWMutex
}

// errAbsent is acquire's "no such object"; callers turn it into an
// errs.NotFound with context.
var errAbsent = errors.New("absent")

// fanout returns the fan-out directory number of oid: its low byte, so
// obj/XX is the last two hex digits of the object's name.
func fanout(oid ids.ObjectID) int { return int(oid & 0xff) }

const hexDigits = "0123456789abcdef"

func fanoutName(i int) string { return string([]byte{hexDigits[i>>4], hexDigits[i&15]}) }

// objPath returns the path of oid's file.
func (s *Store) objPath(oid ids.ObjectID) string {
	return filepath.Join(s.objDir, fanoutName(fanout(oid)), oid.String())
}

// replacing tells Options.Replacing that oid's file is about to change.
func (s *Store) replacing(oid ids.ObjectID) {
	if s.onChange != nil {
		s.onChange(oid)
	}
}

// Path returns the file of object oid, for a mount on this machine that
// reads it directly (package localread). errs.NotFound if the store has
// no such object.
func (s *Store) Path(oid ids.ObjectID) (string, error) {
	s.mu.Lock()
	_, ok := s.objects[oid]
	s.mu.Unlock()
	if !ok {
		return "", notFound("path", oid)
	}
	return s.objPath(oid), nil
}

// allocOf returns the bytes a file occupies on disk.
func allocOf(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}

// diskErr classifies a disk error: ENOSPC and EDQUOT are errs.NoSpace,
// everything else errs.IO. format and args say what failed.
func diskErr(err error, format string, args ...any) error {
	k := errs.IO
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		k = errs.NoSpace
	}
	return errs.E(k, format+": %w", append(args, err)...)
}

func objErr(op string, oid ids.ObjectID, err error) error {
	if errs.Is(err, errs.Corrupt) {
		return err
	}
	return diskErr(err, "objstore: %s %v", op, oid)
}

func notFound(op string, oid ids.ObjectID) error {
	return errs.E(errs.NotFound, "objstore: %s: object %v", op, oid)
}

// begin admits an operation unless the store is closed; end finishes it.
func (s *Store) begin(op string) error {
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return errs.E(errs.Closed, "objstore: %s %s", op, s.dir)
	}
	return nil
}

func (s *Store) end() { s.closeMu.RUnlock() }

// checkRange validates [off, off+n) against the object size.
func (s *Store) checkRange(op string, oid ids.ObjectID, off, n int64) error {
	if off < 0 || n < 0 || off > s.objSize || n > s.objSize-off {
		return errs.E(errs.Invalid, "objstore: %s %v: range %d+%d outside the object's %d bytes",
			op, oid, off, n, s.objSize)
	}
	return nil
}

// acquire returns an open handle of oid, with a reference taken, and what
// the store knows of it (its Meta, whether it is settled); errAbsent if
// the object does not exist. The caller holds oid's stripe lock and must
// release the handle.
func (s *Store) acquire(oid ids.ObjectID) (*handle, objInfo, error) {
	s.mu.Lock()
	info, ok := s.objects[oid]
	if !ok {
		s.mu.Unlock()
		return nil, objInfo{}, errAbsent
	}
	if h := s.fds.get(oid); h != nil {
		s.mu.Unlock()
		return h, info, nil
	}
	s.mu.Unlock()
	f, err := s.fs.OpenFile(s.objPath(oid), os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		// Removed behind the store's back: the copy is damaged.
		return nil, objInfo{}, s.corruptErr(oid, "file missing")
	}
	if err != nil {
		return nil, objInfo{}, err
	}
	s.mu.Lock()
	h, dup, victim := s.fds.add(oid, f)
	s.mu.Unlock()
	closeFiles(dup, victim)
	return h, info, nil
}

// release drops the reference acquire took.
func (s *Store) release(h *handle) {
	s.mu.Lock()
	last := s.fds.release(h)
	s.mu.Unlock()
	if last {
		h.close()
	}
}

// closeFiles closes descriptors that left the cache. Their close errors
// carry nothing we need: a writeback error stays recorded on the inode and
// is reported by the next fdatasync, which Sync makes on a fresh
// descriptor if need be.
func closeFiles(f File, h *handle) {
	if f != nil {
		_ = f.Close()
	}
	if h != nil {
		h.close()
	}
}

// noteLocked records a completed change of oid: of blocks [b0, b1) by a
// small write that Sync may journal, or (b0 == b1) one its file must be
// fdatasynced for. s.mu is held.
func (s *Store) noteLocked(oid ids.ObjectID, ver ids.Version, epoch ids.Epoch, b0, b1 int64) {
	info := s.objects[oid]
	info.Version = max(info.Version, ver)
	info.Epoch = epoch
	s.objects[oid] = info
	e := s.dirty[oid]
	if e.removed {
		e = dirtyEntry{}
	}
	e.meta = info.Meta
	e.addBlocks(b0, b1)
	s.dirty[oid] = e
	s.stale[oid] = struct{}{}
}

// Large writes skip the page cache: a block-aligned write of at least
// directMin bytes from a block-aligned buffer goes to the object through a
// descriptor opened with O_DIRECT. A replica then does not copy the data
// into its page cache (and write it back later): with several replicas on
// one machine that copy was the largest CPU cost of a sequential write.
// Small writes stay buffered, where they cost a memory copy instead of a
// device round trip. Filesystems without O_DIRECT (tmpfs) turn it off.
const (
	directMin   = 256 << 10
	directAlign = 4096
	// ioChunk bounds one read or write of a whole object's copy (a
	// recovery's): a client's small I/O waits behind at most this much
	// of it in the device's queue.
	ioChunk = 512 << 10
)

// directOK reports whether a write of data at off may go with O_DIRECT.
func (s *Store) directOK(off int64, data []byte) bool {
	return len(data) >= directMin && off%directAlign == 0 && len(data)%directAlign == 0 &&
		uintptr(unsafe.Pointer(unsafe.SliceData(data)))%directAlign == 0 && !s.noDirect.Load()
}

// openDirectWrite opens path for O_DIRECT writes; nil if it cannot (a
// filesystem that refuses O_DIRECT turns the path off for the store).
func (s *Store) openDirectWrite(path string) File {
	f, err := s.fs.OpenFile(path, os.O_WRONLY|syscall.O_DIRECT, 0)
	if err != nil {
		if errors.Is(err, syscall.EINVAL) {
			s.noDirect.Store(true)
		}
		return nil
	}
	return f
}

// writeDirectTo writes data at off through the O_DIRECT descriptor f and
// reports whether it did (on failure the caller writes buffered).
func (s *Store) writeDirectTo(f File, off int64, data []byte) bool {
	if n, err := f.WriteAt(data, off); err != nil || n != len(data) {
		if errors.Is(err, syscall.EINVAL) {
			s.noDirect.Store(true)
		}
		return false
	}
	return true
}

// writeDirect writes data at off into object oid with O_DIRECT if the write
// qualifies (its path is worked out only then), and
// reports whether it did. On any failure it reports false, and the caller
// writes through the page cache instead; a filesystem that refuses
// O_DIRECT turns the path off for the store.
func (s *Store) writeDirect(oid ids.ObjectID, off int64, data []byte) bool {
	if !s.directOK(off, data) {
		return false
	}
	f := s.openDirectWrite(s.objPath(oid))
	if f == nil {
		return false
	}
	defer f.Close()
	return s.writeDirectTo(f, off, data) // on failure the buffered retry rewrites all of it
}

// Missing returns the objects that the index listed but whose files were
// gone when the store was opened (a disk wiped or replaced behind the
// store's back): the node no longer has them. The list is returned once.
func (s *Store) Missing() []ids.ObjectID {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.missing
	s.missing = nil
	return m
}

// ListIndex returns the objects recorded in the index file at path, which
// no Store has open: what a disk held, after the disk itself is gone.
func ListIndex(path string) ([]ids.ObjectID, error) {
	db, _, err := openIndex(path, DefaultObjectSize)
	if err != nil {
		// Any object size will do for listing: retry without the check.
		db, err = bolt.Open(path, 0o644, &bolt.Options{Timeout: lockTimeout, ReadOnly: true})
		if err != nil {
			return nil, diskErr(err, "objstore: open index %s", path)
		}
	}
	defer db.Close()
	metas, _, err := loadIndex(db)
	if err != nil {
		return nil, err
	}
	if err := readLog(path+".log", db, metas); err != nil {
		return nil, err
	}
	out := make([]ids.ObjectID, 0, len(metas))
	for oid := range metas {
		out = append(out, oid)
	}
	return out, nil
}

// ObjectSize returns the size of every object, in bytes.
func (s *Store) ObjectSize() int64 { return s.objSize }

// Write writes data at off inside object oid, creating the object if it
// does not exist: a sparse file of ObjectSize bytes that reads as zeros
// except for data, made as a temp file in the same directory and renamed
// into place, so a crash never leaves a half-made object under its name.
// The object's version becomes max(old version, ver) and its epoch epoch,
// visible at once to Read, Stat and ForEach, durable after Sync.
//
// Errors: errs.Invalid unless 0 <= off and off+len(data) <= ObjectSize;
// errs.NoSpace if the disk is full; errs.IO for other disk failures;
// errs.Closed after Close. A failed Write leaves the Meta unchanged and
// does not create the object; bytes outside [off, off+len(data)) are
// untouched, bytes inside may be partly written.
//
// Writes run in parallel, to one object too, except writes (and punches)
// covering a common block, which run one at a time. A read that races a
// write of its blocks may find a block not matching its sum yet; it then
// looks again once no change of the object is in flight (see mismatch).
// A Write costs one pwrite(2), its data's, when the object's descriptor
// is cached and its trailer mapped (tmap.go: the checksum entries go
// first, as a copy into the mapping); two otherwise.
func (s *Store) Write(oid ids.ObjectID, off int64, data []byte, ver ids.Version, epoch ids.Epoch) error {
	return s.write(oid, off, data, ver, epoch, true)
}

// Update is Write for an object that must exist already: it fails with
// errs.NotFound instead of creating oid.
func (s *Store) Update(oid ids.ObjectID, off int64, data []byte, ver ids.Version, epoch ids.Epoch) error {
	return s.write(oid, off, data, ver, epoch, false)
}

func (s *Store) write(oid ids.ObjectID, off int64, data []byte, ver ids.Version, epoch ids.Epoch, create bool) error {
	if err := s.checkRange("write", oid, off, int64(len(data))); err != nil {
		return err
	}
	if err := s.begin("write"); err != nil {
		return err
	}
	defer s.end()
	n := int64(len(data))
	var creator func() error
	if create {
		creator = func() error { return s.create(oid, off, data, ver, epoch) }
	}
	return s.change(oid, off, n, "write", creator, func(h *handle) error {
		// A small buffered write is journaled by the next Sync (b0 == b1:
		// its file is fdatasynced instead).
		b0, b1 := off/SumBlock, (off+n+SumBlock-1)/SumBlock
		if n == 0 {
			b1 = b0
		}
		if n > 0 {
			err := s.changeSummed(oid, h, off, n, data, func() error {
				if s.writeDirect(oid, off, data) {
					b1 = b0
					return nil
				}
				_, err := h.f.WriteAt(data, off)
				return err
			})
			if err != nil {
				return err
			}
		}
		s.mu.Lock()
		s.noteLocked(oid, ver, epoch, b0, b1)
		s.mu.Unlock()
		return nil
	})
}

// errExclusive asks change to try again under the exclusive stripe lock.
var errExclusive = errors.New("needs the exclusive lock")

// change runs do, a change of [off, off+n) of object oid, on its handle
// under the shared stripe lock and a lock of the blocks it covers, so that
// changes of different blocks of one object run in parallel (do records
// the change once it is made). It starts again under the exclusive lock
// when the object must first be created (absent: create, or errs.NotFound
// if create is nil) or settled, when its copy of the checksums is suspect
// (see Store.sums), or when do found a block failing its checksum: under
// the exclusive lock, with nothing in flight, that is damage.
func (s *Store) change(oid ids.ObjectID, off, n int64, op string, create func() error, do func(h *handle) error) error {
	err := s.changeOnce(oid, off, n, op, false, create, do)
	var m *mismatch
	if err == errExclusive || errors.As(err, &m) {
		err = s.changeOnce(oid, off, n, op, true, create, do)
	}
	return s.damage(oid, err)
}

func (s *Store) changeOnce(oid ids.ObjectID, off, n int64, op string, excl bool, create func() error, do func(h *handle) error) error {
	return s.withObject(oid, op, excl, func() error {
		if create == nil {
			return notFound(op, oid)
		}
		if !excl {
			return errExclusive
		}
		return create()
	}, func(h *handle, info objInfo) error {
		if excl {
			if err := s.settleOnce(oid, h); err != nil {
				return err
			}
		} else if !info.settled {
			return errExclusive
		}
		if _, ok, err := s.sums(oid, h, excl); err != nil {
			return err
		} else if !ok {
			return errExclusive
		}
		b0, b1 := off/SumBlock, (off+n+SumBlock-1)/SumBlock
		h.lockBlocks(b0, b1)
		defer h.unlockBlocks(b0, b1)
		return do(h)
	})
}

// withObject runs fn on oid's handle under oid's stripe lock, held
// exclusively if excl, shared otherwise; absent if the object does not
// exist.
func (s *Store) withObject(oid ids.ObjectID, op string, excl bool, absent func() error, fn func(h *handle, info objInfo) error) error {
	l := s.lock(oid)
	if excl {
		l.Lock()
		defer l.Unlock()
	} else {
		l.RLock()
		defer l.RUnlock()
	}
	h, info, err := s.acquire(oid)
	if err == errAbsent {
		return absent()
	}
	if err != nil {
		return objErr(op, oid, err)
	}
	defer s.release(h)
	return fn(h, info)
}

// changeSummed changes [off, off+n) of oid's file f with do (which writes
// data there, or zeros if data is nil), checksum entries first. Blocks the
// range covers in part are read and verified first: a change never
// blesses rot. The caller (change) holds oid's stripe lock and the lock
// of the blocks the range covers, and has settled oid.
func (s *Store) changeSummed(oid ids.ObjectID, h *handle, off, n int64, data []byte, do func() error) error {
	es, _, err := s.sums(oid, h, false) // change checked it
	if err != nil {
		return err
	}
	b0, b1 := off/SumBlock, (off+n+SumBlock-1)/SumBlock
	// The new sum of each block: of its new bytes, read back and
	// verified first for a block the change covers in part.
	var edge []byte
	for b := b0; b < b1; b++ {
		bs := b * SumBlock
		var v uint32
		switch {
		case bs >= off && bs+SumBlock <= off+n:
			if data != nil {
				v = blockSum(oid, b, data[bs-off:bs+SumBlock-off])
			}
		default:
			if edge == nil {
				edge = make([]byte, SumBlock)
			}
			if err := s.readBlocks(oid, h, b, edge, true); err != nil { // change settled it
				return err
			}
			if s.afterVerify != nil {
				s.afterVerify()
			}
			lo, hi := max(bs, off), min(bs+SumBlock, off+n)
			if data != nil {
				copy(edge[lo-bs:hi-bs], data[lo-off:hi-off])
			} else {
				clear(edge[lo-bs : hi-bs])
			}
			v = blockSum(oid, b, edge)
		}
		es.set(b, entry{prev: es.get(b).cur, cur: v})
	}
	if err := s.storeSums(h, es, b0, b1); err != nil {
		s.unsettle(oid) // some entries may be new, their blocks old
		return objErr("write checksums of", oid, err)
	}
	if err := do(); err != nil {
		// The blocks may hold the old bytes or the new: settle again
		// before the next change counts on cur.
		s.unsettle(oid)
		return objErr("write", oid, err)
	}
	return nil
}

// unsettle marks oid's entries as not known to match cur.
func (s *Store) unsettle(oid ids.ObjectID) {
	s.mu.Lock()
	if info, ok := s.objects[oid]; ok {
		info.settled = false
		s.objects[oid] = info
	}
	s.mu.Unlock()
}

// settleOnce settles oid's entries (see settle) on its first change since
// the store was opened. The caller holds oid's stripe lock exclusively.
func (s *Store) settleOnce(oid ids.ObjectID, h *handle) error {
	s.mu.Lock()
	done := s.objects[oid].settled
	s.mu.Unlock()
	if done {
		return nil
	}
	if err := s.settle(oid, h); err != nil {
		return err
	}
	s.mu.Lock()
	if info, ok := s.objects[oid]; ok {
		info.settled = true
		s.objects[oid] = info
	}
	s.mu.Unlock()
	return nil
}

// create makes object oid holding data at off. The caller holds oid's
// stripe lock exclusively and has seen that oid does not exist.
func (s *Store) create(oid ids.ObjectID, off int64, data []byte, ver ids.Version, epoch ids.Epoch) error {
	return s.createExtents(oid, []Extent{{Off: off, Len: int64(len(data))}}, data, ver, epoch)
}

// createExtents makes object oid holding the extents exts, whose bytes
// are data one after the other, and zeros (holes) elsewhere. The caller
// holds oid's stripe lock exclusively.
func (s *Store) createExtents(oid ids.ObjectID, exts []Extent, data []byte, ver ids.Version, epoch ids.Epoch) error {
	path := s.objPath(oid)
	tmp := path + ".tmp"
	f, err := s.fs.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return objErr("create", oid, err)
	}
	var t trailer
	err = f.Truncate(s.fileSize())
	if err == nil {
		// The checksums, before the data: the new copy is renamed into
		// place only whole.
		t = make(trailer, s.trailerSize())
		for b, v := range s.extentSums(oid, exts, data) {
			t.set(int64(b), entry{v, v})
		}
		err = s.writeTrailer(f, t, 0, s.objSize/SumBlock)
	}
	var direct File // opened for the first large aligned piece
	pos := int64(0)
	for _, e := range exts {
		if err != nil {
			break
		}
		d := data[pos : pos+e.Len]
		pos += e.Len
		// In pieces, as ReadSparse reads.
		for off := int64(0); off < int64(len(d)) && err == nil; off += ioChunk {
			part := d[off:min(int64(len(d)), off+ioChunk)]
			if direct == nil && s.directOK(e.Off+off, part) {
				direct = s.openDirectWrite(tmp)
			}
			if direct == nil || !s.directOK(e.Off+off, part) || !s.writeDirectTo(direct, e.Off+off, part) {
				_, err = f.WriteAt(part, e.Off+off)
			}
		}
	}
	if direct != nil {
		_ = direct.Close()
	}
	if err == nil {
		err = s.keepJournaled(oid)
	}
	if err == nil {
		s.replacing(oid)
		err = s.fs.Rename(tmp, path)
		s.replacing(oid)
	}
	if err != nil {
		// Best effort: the next Open removes a leftover temp file.
		_ = f.Close()
		_ = s.fs.Remove(tmp)
		return objErr("create", oid, err)
	}
	s.mu.Lock()
	s.objects[oid] = objInfo{settled: true}
	s.noteLocked(oid, ver, epoch, 0, 0)
	s.dirtyDirs[fanout(oid)] = true
	h, dup, victim := s.fds.add(oid, f)
	if dup == nil { // nobody else has h yet
		h.sums = make(entries, len(t)/entrySize)
		for b := range h.sums {
			h.sums.set(int64(b), t.get(int64(b)))
		}
	}
	last := s.fds.release(h)
	s.mu.Unlock()
	closeFiles(dup, victim)
	if last {
		h.close()
	}
	return nil
}

// Read reads len(buf) bytes at off of object oid into buf; ranges never
// written read as zeros. It returns the object's Meta, taken before the
// data is read: a concurrent Write may make the data newer than the Meta
// says, never older.
//
// Errors: errs.Invalid unless 0 <= off and off+len(buf) <= ObjectSize;
// errs.NotFound if the object does not exist; errs.IO if the disk fails;
// errs.Closed after Close. The contents of buf are unspecified on error.
func (s *Store) Read(oid ids.ObjectID, off int64, buf []byte) (Meta, error) {
	if err := s.checkRange("read", oid, off, int64(len(buf))); err != nil {
		return Meta{}, err
	}
	if err := s.begin("read"); err != nil {
		return Meta{}, err
	}
	defer s.end()
	var m Meta
	err := s.look(oid, "read", func(h *handle, info objInfo) error {
		m = info.Meta
		return s.readVerified(oid, h, off, buf, info.settled)
	})
	if err != nil {
		return Meta{}, err
	}
	return m, nil
}

// look runs fn, a read of object oid, on its handle under the shared
// stripe lock, and again under the exclusive lock, with the copy of the
// checksums fresh, if fn found a block failing its checksum: a write of
// that block may have been in flight (see mismatch); then it is damage.
func (s *Store) look(oid ids.ObjectID, op string, fn func(h *handle, info objInfo) error) error {
	err := s.lookOnce(oid, op, false, fn)
	var m *mismatch
	if errors.As(err, &m) {
		err = s.lookOnce(oid, op, true, fn)
	}
	return s.damage(oid, err)
}

func (s *Store) lookOnce(oid ids.ObjectID, op string, excl bool, fn func(h *handle, info objInfo) error) error {
	return s.withObject(oid, op, excl, func() error { return notFound(op, oid) }, func(h *handle, info objInfo) error {
		if excl {
			if _, _, err := s.sums(oid, h, true); err != nil {
				return err
			}
		}
		return fn(h, info)
	})
}

// readVerified reads buf at off from oid's file f, verifying every block
// it touches: a block-aligned read goes straight into buf, another through
// a scratch buffer of whole blocks.
func (s *Store) readVerified(oid ids.ObjectID, h *handle, off int64, buf []byte, settled bool) error {
	n := int64(len(buf))
	if n == 0 {
		return nil
	}
	b0, b1 := off/SumBlock, (off+n+SumBlock-1)/SumBlock
	if off%SumBlock == 0 && n%SumBlock == 0 {
		return s.readBlocks(oid, h, b0, buf, settled)
	}
	tmp, put := scratch((b1 - b0) * SumBlock)
	defer put()
	if err := s.readBlocks(oid, h, b0, tmp, settled); err != nil {
		return err
	}
	copy(buf, tmp[off-b0*SumBlock:])
	return nil
}

// Stat returns the Meta of object oid: errs.NotFound if it does not
// exist, errs.Closed after Close. It does no I/O.
func (s *Store) Stat(oid ids.ObjectID) (Meta, error) {
	if err := s.begin("stat"); err != nil {
		return Meta{}, err
	}
	defer s.end()
	s.mu.Lock()
	info, ok := s.objects[oid]
	s.mu.Unlock()
	if !ok {
		return Meta{}, notFound("stat", oid)
	}
	return info.Meta, nil
}

// zeros backs Punch on filesystems that cannot punch holes.
var zeros [64 << 10]byte

// Punch makes [off, off+length) of object oid read as zeros and frees its
// disk blocks (fallocate PUNCH_HOLE|KEEP_SIZE; on filesystems without hole
// punching it writes zeros instead). Like Write, it sets the version to
// max(old version, ver) and the epoch to epoch, durable after Sync; a
// zero length changes only the Meta.
//
// Errors: errs.Invalid unless 0 <= off, 0 <= length and off+length <=
// ObjectSize; errs.NotFound if the object does not exist; errs.NoSpace or
// errs.IO if the disk fails (the Meta is then unchanged); errs.Closed
// after Close.
func (s *Store) Punch(oid ids.ObjectID, off, length int64, ver ids.Version, epoch ids.Epoch) error {
	if err := s.checkRange("punch", oid, off, length); err != nil {
		return err
	}
	if err := s.begin("punch"); err != nil {
		return err
	}
	defer s.end()
	return s.change(oid, off, length, "punch", nil, func(h *handle) error {
		alloc := int64(-1)
		if length > 0 {
			err := s.changeSummed(oid, h, off, length, nil, func() error {
				err := h.f.Punch(off, length)
				if errors.Is(err, unix.EOPNOTSUPP) {
					err = writeZeros(h.f, off, length)
				}
				return err
			})
			if err != nil {
				return err
			}
			fi, err := h.f.Stat()
			if err != nil {
				return objErr("punch", oid, err)
			}
			alloc = allocOf(fi)
		}
		s.mu.Lock()
		s.noteLocked(oid, ver, epoch, 0, 0)
		if alloc >= 0 {
			s.setAllocLocked(oid, alloc)
		}
		s.mu.Unlock()
		return nil
	})
}

// setAllocLocked records a fresh measure of oid's allocated bytes. s.mu is
// held.
func (s *Store) setAllocLocked(oid ids.ObjectID, alloc int64) {
	info := s.objects[oid]
	s.used += alloc - info.alloc
	info.alloc = alloc
	s.objects[oid] = info
}

func writeZeros(f File, off, length int64) error {
	for length > 0 {
		n := min(length, int64(len(zeros)))
		if _, err := f.WriteAt(zeros[:n], off); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

// Remove deletes object oid: its file at once, its index entry at the
// next Sync. Removing an absent object is not an error. Errors: errs.IO
// if the file cannot be removed (the object then still exists);
// errs.Closed after Close.
func (s *Store) Remove(oid ids.ObjectID) error {
	if err := s.begin("remove"); err != nil {
		return err
	}
	defer s.end()
	l := s.lock(oid)
	l.Lock()
	defer l.Unlock()
	if _, ok := s.forget(oid); !ok {
		return nil
	}
	if err := s.keepJournaled(oid); err != nil {
		return err
	}
	s.replacing(oid)
	defer s.replacing(oid)
	if err := s.fs.Remove(s.objPath(oid)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return objErr("remove", oid, err)
	}
	s.mu.Lock()
	s.used -= s.objects[oid].alloc // used is the sum of the recorded allocs
	delete(s.objects, oid)
	delete(s.stale, oid)
	s.dirty[oid] = dirtyEntry{removed: true}
	s.dirtyDirs[fanout(oid)] = true
	s.mu.Unlock()
	return nil
}

// keepJournaled fdatasyncs oid's file before it is removed or replaced if
// the index log holds blocks of it that the file may not have on disk yet:
// until the next checkpoint drops them from the log, and until the unlink
// or rename is durable, a power loss may bring that file back, and it must
// then hold them (the checkpoint cannot sync a file no longer at its
// path). The caller holds oid's stripe lock exclusively.
func (s *Store) keepJournaled(oid ids.ObjectID) error {
	s.mu.Lock()
	_, ok := s.journaled[oid]
	s.mu.Unlock()
	if !ok {
		return nil
	}
	f, err := s.fs.OpenFile(s.objPath(oid), os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err == nil {
		err = f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return objErr("sync journaled", oid, err)
	}
	return nil
}

// forget closes oid's cached descriptor, if any, before the file is
// removed or replaced, and returns what the store knew of it. The caller
// holds oid's stripe lock exclusively, so nobody else uses the descriptor.
func (s *Store) forget(oid ids.ObjectID) (objInfo, bool) {
	s.mu.Lock()
	info, ok := s.objects[oid]
	h := s.fds.remove(oid)
	s.mu.Unlock()
	if h != nil {
		h.close()
	}
	return info, ok
}

// ForEach calls fn for every object in the store with its Meta, in no
// particular order, and stops at the first error fn returns, returning
// it. It iterates over a snapshot taken when it starts (about 24 bytes
// per object), so fn may call the Store; objects written or removed
// meanwhile may or may not be reported. errs.Closed after Close.
func (s *Store) ForEach(fn func(oid ids.ObjectID, m Meta) error) error {
	if err := s.begin("foreach"); err != nil {
		return err
	}
	type entry struct {
		oid ids.ObjectID
		m   Meta
	}
	s.mu.Lock()
	snap := make([]entry, 0, len(s.objects))
	for oid, info := range s.objects {
		snap = append(snap, entry{oid, info.Meta})
	}
	s.mu.Unlock()
	s.end() // fn may call the Store: do not hold closeMu across it
	for _, e := range snap {
		if err := fn(e.oid, e.m); err != nil {
			return err
		}
	}
	return nil
}

// Usage returns the bytes allocated on disk by object files (the sum of
// their st_blocks*512; holes cost nothing) and the bytes free for
// unprivileged users on the filesystem holding the store (statfs
// f_bavail*f_bsize). used is a running figure: Usage re-measures only the
// objects written since its last call (one fstat each), and Punch and
// Remove update it at once. Errors: errs.IO if a file or the filesystem
// cannot be measured; errs.Closed after Close.
func (s *Store) Usage() (used, free int64, err error) {
	if err := s.begin("usage"); err != nil {
		return 0, 0, err
	}
	defer s.end()
	s.mu.Lock()
	stale := s.stale
	s.stale = make(map[ids.ObjectID]struct{})
	s.mu.Unlock()
	for oid := range stale {
		if err := s.measure(oid); err != nil {
			s.mu.Lock()
			for oid := range stale {
				s.stale[oid] = struct{}{}
			}
			s.mu.Unlock()
			return 0, 0, err
		}
		delete(stale, oid)
	}
	if _, free, err = s.fs.Statfs(s.dir); err != nil {
		return 0, 0, diskErr(err, "objstore: usage %s", s.dir)
	}
	s.mu.Lock()
	used = s.used
	s.mu.Unlock()
	return used, free, nil
}

// measure refreshes the allocated size of oid.
func (s *Store) measure(oid ids.ObjectID) error {
	l := s.lock(oid)
	l.RLock()
	defer l.RUnlock()
	h, _, err := s.acquire(oid)
	if err == errAbsent {
		return nil
	}
	if err != nil {
		return objErr("usage", oid, err)
	}
	fi, err := h.f.Stat()
	s.mu.Lock()
	last := s.fds.release(h)
	if err == nil {
		s.setAllocLocked(oid, allocOf(fi))
	}
	s.mu.Unlock()
	if last {
		h.close()
	}
	if err != nil {
		return objErr("usage", oid, err)
	}
	return nil
}

// Close makes everything durable as Sync does, then closes every file and
// the index. It waits for operations in flight; later calls of any method,
// Close included, return errs.Closed. Files and index are closed even if
// the final sync fails, and that error is returned; reopening the store
// then recovers a consistent state, as after a crash.
func (s *Store) Close() error {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return errs.E(errs.Closed, "objstore: close %s", s.dir)
	}
	s.closed = true
	s.closeMu.Unlock()
	s.syncMu.Lock()
	err := s.syncErr
	if err == nil {
		err = s.syncBatch()
	}
	if err == nil && len(s.log.pending) > 0 {
		_, err = s.checkpoint(nil)
	}
	s.syncMu.Unlock()
	s.closeAll()
	if cerr := s.log.f.Close(); cerr != nil && err == nil {
		err = diskErr(cerr, "objstore: close index log %s", s.dir)
	}
	if cerr := s.db.Close(); cerr != nil && err == nil {
		err = diskErr(cerr, "objstore: close index %s", s.dir)
	}
	return err
}

// closeAll closes every cached descriptor. No operation is in flight.
func (s *Store) closeAll() {
	s.mu.Lock()
	idle := s.fds.removeAll()
	s.mu.Unlock()
	for _, h := range idle {
		h.close()
	}
}

// crash closes the store the way a killed process leaves it: no
// fdatasync, no index commit. Object data stays in the page cache, so a
// reopened store sees every completed write, but index changes since the
// last Sync are lost. For tests.
func (s *Store) crash() {
	s.closeMu.Lock()
	s.closed = true
	s.closeMu.Unlock()
	s.closeAll()
	_ = s.log.f.Close() // a crash reports nothing
	_ = s.db.Close()
}

// Replace makes oid a fresh object that holds data at off and zeros
// elsewhere, whatever it held before, with version exactly ver. Like the
// creating Write it goes through a temp file and a rename, so a crash
// leaves either the old object or the new one. Gateways use it for a newly
// allocated object, and recovery for a copy pulled from a fresher replica.
// Errors as for Write.
//
// Caveat: like every change, the new version reaches the index only at the
// next Sync. If ver is lower than the object's old version and the node
// crashes before that Sync, the new data comes back labelled with the old,
// higher version. Sync right after a version-lowering Replace.
func (s *Store) Replace(oid ids.ObjectID, off int64, data []byte, ver ids.Version, epoch ids.Epoch) error {
	if err := s.checkRange("replace", oid, off, int64(len(data))); err != nil {
		return err
	}
	return s.replace(oid, []Extent{{Off: off, Len: int64(len(data))}}, data, ver, epoch)
}

// replace is Replace and ReplaceSparse once their arguments are checked.
func (s *Store) replace(oid ids.ObjectID, exts []Extent, data []byte, ver ids.Version, epoch ids.Epoch) error {
	if err := s.begin("replace"); err != nil {
		return err
	}
	defer s.end()
	l := s.lock(oid)
	l.Lock()
	defer l.Unlock()
	old, existed := s.forget(oid)
	if err := s.createExtents(oid, exts, data, ver, epoch); err != nil {
		return err
	}
	if existed {
		s.mu.Lock()
		s.used -= old.alloc
		s.mu.Unlock()
	}
	return nil
}
