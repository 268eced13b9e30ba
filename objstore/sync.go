package objstore

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/sheepfs/sheepfs/ids"
)

// maxSyncWorkers bounds the fdatasync calls one Sync makes in parallel.
const maxSyncWorkers = 16

// Sync makes durable every Write, Punch, creation and Remove that
// completed before Sync was called: it journals the blocks of objects
// changed only by small writes since the last Sync (reads them back, up to
// maxJournalBlocks per object and maxJournalBytes in all), fdatasyncs the
// other object files written or punched since (up to 16 at a time), fsyncs
// the obj/XX directories that gained or lost entries, then appends the
// pending index updates with the journaled blocks to the index log as one
// record and fdatasyncs it (indexlog.go). A flush of small writes thus
// costs one fdatasync. Operations may go on meanwhile; those that complete
// after Sync was called are left for the next Sync. Concurrent calls share
// work: a Sync that finds its changes already made durable by another
// returns at once.
//
// Errors: errs.Closed after Close. errs.NoSpace or errs.IO if an object
// or directory cannot be opened or the index cannot be committed; the
// changes stay pending and a later Sync retries them. If an fdatasync or
// fsync itself fails, Linux may already have dropped the data it could
// not write, so no later Sync can promise durability: that error is
// sticky, returned by every later Sync and by Close, and the index is not
// committed. Close and reopen the store to go on; it then holds the
// versions of the last successful Sync, so the objects involved look
// stale and recovery refreshes them from other replicas.
func (s *Store) Sync() error {
	if err := s.begin("sync"); err != nil {
		return err
	}
	defer s.end()
	s.mu.Lock()
	target := s.batch
	s.mu.Unlock()
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	if s.syncErr != nil {
		return s.syncErr
	}
	if s.durable > target {
		return nil // another Sync, called after us, did our work
	}
	return s.syncBatch()
}

// syncBatch closes the current batch of changes and makes it durable.
// s.syncMu is held.
func (s *Store) syncBatch() error {
	s.mu.Lock()
	batch := s.dirty
	if s.spare != nil {
		s.dirty, s.spare = s.spare, nil
	} else {
		s.dirty = make(map[ids.ObjectID]dirtyEntry)
	}
	dirs := s.dirtyDirs
	s.dirtyDirs = [256]bool{}
	seq := s.batch
	s.batch++
	s.mu.Unlock()

	journal := s.capture(batch)
	fatal, err := s.syncObjects(batch)
	for i := range dirs {
		if err != nil {
			break
		}
		if dirs[i] {
			fatal, err = s.syncDir(filepath.Join(s.objDir, fanoutName(i)))
		}
	}
	if err == nil {
		fatal, err = s.log.append(batch, journal)
	}
	if fatal {
		s.syncErr = err
		return err
	}
	if err != nil {
		s.requeue(batch, dirs)
		return err
	}
	if len(journal) > 0 {
		s.mu.Lock()
		for oid := range journal {
			s.journaled[oid] = struct{}{}
		}
		s.mu.Unlock()
	}
	// The changes are durable: each object's blocks match their cur.
	for oid, e := range batch {
		if (e.data || len(e.blocks) > 0) && !e.removed {
			s.collapse(oid)
		}
	}
	clear(batch)
	s.mu.Lock()
	s.spare = batch
	s.mu.Unlock()
	s.durable = seq + 1
	if s.log.off >= logMax {
		// The batches are durable in the log whatever this does: a
		// failed checkpoint is tried again at the next Sync, unless an
		// fdatasync failed.
		if fatal, err := s.checkpoint(nil); fatal {
			s.syncErr = err
		}
	}
	return nil
}

// checkpoint fdatasyncs the objects whose journaled blocks the log holds,
// then commits the log's batches to the index and starts the log again.
// fatal reports that an fdatasync itself failed. s.syncMu is held (or the
// store is being opened or closed).
func (s *Store) checkpoint(badKeys [][]byte) (fatal bool, err error) {
	s.mu.Lock()
	batch := make(map[ids.ObjectID]dirtyEntry, len(s.journaled))
	for oid := range s.journaled {
		batch[oid] = dirtyEntry{data: true}
	}
	s.mu.Unlock()
	if fatal, err := s.syncObjects(batch); err != nil {
		return fatal, err
	}
	// Only a Sync adds to journaled, and it holds syncMu as we do.
	s.mu.Lock()
	clear(s.journaled)
	s.mu.Unlock()
	return false, s.log.checkpoint(s.db, badKeys)
}

// capture reads back the blocks that batch's objects changed by small
// writes only, with their checksums, for Sync to journal. An object whose
// blocks cannot be taken (unreadable, not matching their checksum, past
// maxJournalBytes in all) gets its data set instead: Sync fdatasyncs it.
// An object removed since has nothing to journal.
func (s *Store) capture(batch map[ids.ObjectID]dirtyEntry) map[ids.ObjectID][]logBlock {
	var out map[ids.ObjectID][]logBlock
	total := 0
	for oid, e := range batch {
		if e.data || e.removed || len(e.blocks) == 0 {
			continue
		}
		var bs []logBlock
		if total+len(e.blocks)*SumBlock <= maxJournalBytes {
			bs = s.captureObject(oid, e.blocks)
		}
		if bs == nil {
			e.data, e.blocks = true, nil
			batch[oid] = e
			continue
		}
		if out == nil {
			out = make(map[ids.ObjectID][]logBlock)
		}
		out[oid] = bs
		total += len(bs) * SumBlock
	}
	return out
}

// errNoJournal sends an object to the fdatasync path instead of the
// journal.
var errNoJournal = errors.New("not journaled")

// captureObject reads blocks of oid, each under its block lock so that no
// change is half made, and returns them with their current sums; nil if
// one cannot be read or does not match its sum, or the object is gone.
func (s *Store) captureObject(oid ids.ObjectID, blocks []int32) []logBlock {
	var out []logBlock
	err := s.withObject(oid, "journal", false, func() error { return errAbsent }, func(h *handle, _ objInfo) error {
		// Removed or replaced (re-created) since the batch was taken:
		// this file is not the one the small writes went to. (Those
		// take the stripe lock exclusively, so none runs now.)
		s.mu.Lock()
		later, ok := s.dirty[oid]
		s.mu.Unlock()
		if ok && (later.data || later.removed) {
			return errNoJournal
		}
		// A block's entry does not change while its lock is held.
		es, ok, err := s.sums(oid, h, false)
		if err != nil || !ok {
			return errNoJournal
		}
		buf := make([]byte, len(blocks)*SumBlock)
		for i, b := range blocks {
			blk := int64(b)
			data := buf[i*SumBlock : (i+1)*SumBlock : (i+1)*SumBlock]
			h.lockBlocks(blk, blk+1)
			_, err := h.f.ReadAt(data, blk*SumBlock)
			cur := es.get(blk).cur
			h.unlockBlocks(blk, blk+1)
			if err != nil || blockSum(oid, blk, data) != cur {
				return errNoJournal // unreadable, not settled, or damaged: fdatasync it
			}
			out = append(out, logBlock{block: blk, sum: cur, data: data})
		}
		return nil
	})
	if err != nil {
		return nil
	}
	return out
}

// requeue returns the changes of a failed batch to the pending ones,
// under any newer change of the same object.
func (s *Store) requeue(batch map[ids.ObjectID]dirtyEntry, dirs [256]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for oid, e := range batch {
		if newer, ok := s.dirty[oid]; ok {
			if !newer.removed && !e.removed {
				if e.data {
					newer.addBlocks(0, 0)
				}
				for _, b := range e.blocks {
					newer.addBlocks(int64(b), int64(b)+1)
				}
				s.dirty[oid] = newer
			}
			continue
		}
		s.dirty[oid] = e
	}
	for i, d := range dirs {
		s.dirtyDirs[i] = s.dirtyDirs[i] || d
	}
}

// syncObjects fdatasyncs the object files of batch that hold unsynced
// data. fatal reports that an fdatasync itself failed.
func (s *Store) syncObjects(batch map[ids.ObjectID]dirtyEntry) (fatal bool, err error) {
	var oids []ids.ObjectID
	for oid, e := range batch {
		if e.data && !e.removed {
			oids = append(oids, oid)
		}
	}
	var (
		next     atomic.Int64
		mu       sync.Mutex
		firstErr error
		anyFatal bool
		wg       sync.WaitGroup
	)
	work := func() {
		for {
			i := next.Add(1) - 1
			if i >= int64(len(oids)) {
				return
			}
			if fatal, err := s.syncObject(oids[i]); err != nil {
				mu.Lock()
				if firstErr == nil || fatal && !anyFatal {
					firstErr = err
				}
				anyFatal = anyFatal || fatal
				mu.Unlock()
				return
			}
		}
	}
	workers := min(len(oids), maxSyncWorkers)
	for range workers - 1 {
		wg.Go(work)
	}
	if workers > 0 {
		work()
	}
	wg.Wait()
	return anyFatal, firstErr
}

// syncObject fdatasyncs oid's file, reopening it if its descriptor left
// the cache (fdatasync flushes the inode, whichever descriptor wrote), and
// refreshes its allocated size (a failed fstat leaves that to the next
// Usage).
func (s *Store) syncObject(oid ids.ObjectID) (fatal bool, err error) {
	l := s.lock(oid)
	l.RLock()
	defer l.RUnlock()
	h, _, err := s.acquire(oid)
	if err == errAbsent {
		return false, nil // removed since: nothing to sync
	}
	if err != nil {
		return false, objErr("sync", oid, err)
	}
	if err = h.f.Sync(); err != nil {
		s.release(h)
		return true, objErr("sync", oid, err)
	}
	// Writeback may change the blocks a file holds (ext4 allocates
	// extent-tree blocks, drops delalloc reservations): measure again now
	// that the file is clean.
	fi, err := h.f.Stat()
	s.mu.Lock()
	last := s.fds.release(h)
	if err == nil {
		s.setAllocLocked(oid, allocOf(fi))
	} else {
		s.stale[oid] = struct{}{}
	}
	s.mu.Unlock()
	if last {
		h.close()
	}
	return false, nil
}

// syncDir fsyncs a directory. fatal reports that the fsync itself failed.
func (s *Store) syncDir(dir string) (fatal bool, err error) {
	f, err := s.fs.OpenFile(dir, os.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return false, diskErr(err, "objstore: sync directory %s", dir)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close() // the sync error is the one to report
		return true, diskErr(err, "objstore: sync directory %s", dir)
	}
	if err := f.Close(); err != nil {
		return false, diskErr(err, "objstore: sync directory %s", dir)
	}
	return false, nil
}
