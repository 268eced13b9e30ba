package objstore

import (
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
// completed before Sync was called: it fdatasyncs each object file written
// or punched since the last Sync (up to 16 at a time), fsyncs the obj/XX
// directories that gained or lost entries, then appends the pending index
// updates to the index log as one record and fdatasyncs it (indexlog.go). Operations may go on meanwhile;
// those that complete after Sync was called are left for the next Sync.
// Concurrent calls share work: a Sync that finds its changes already
// made durable by another returns at once.
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
		fatal, err = s.log.append(batch)
	}
	if fatal {
		s.syncErr = err
		return err
	}
	if err != nil {
		s.requeue(batch, dirs)
		return err
	}
	// The changes are durable: each object's blocks match their cur.
	for oid, e := range batch {
		if e.data && !e.removed {
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
		// failed checkpoint is tried again at the next Sync.
		_ = s.log.checkpoint(s.db, nil)
	}
	return nil
}

// requeue returns the changes of a failed batch to the pending ones,
// under any newer change of the same object.
func (s *Store) requeue(batch map[ids.ObjectID]dirtyEntry, dirs [256]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for oid, e := range batch {
		if newer, ok := s.dirty[oid]; ok {
			if !newer.removed && e.data && !e.removed {
				newer.data = true
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
		closeFiles(h.f, nil)
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
