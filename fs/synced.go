package fs

import (
	"sync"
	"sync/atomic"
)

// syncedWrites decides, for one file, which writes go out synced and which
// fsyncs have nothing to flush. A file written and fsynced one write at a
// time (a database's log, a guest's synced writes) has each such write
// sent synced (durable when answered), and the fsync after it answered
// without asking the cluster: one trip per write and fsync, not two.
//
// The first write after an fsync goes out synced once syncRunMin fsyncs in
// a row each followed at most one write; the others are plain, so a burst
// between two fsyncs costs at most one synced write, and ends the run.
// clean says every change since the last flush was a synced write; it
// starts false (a new sheepfs on a mount taken over knows nothing of its
// predecessor's writes) and is cleared after every other change is done,
// whether it succeeded or not. fsync takes it under mu, so an fsync that
// finds it set waits for an earlier one's flush to end: any change
// answered before an fsync began is then covered by a flush or was synced.
type syncedWrites struct {
	mu        sync.Mutex   // one fsync at a time
	clean     atomic.Bool  // every change since the last flush was a synced write
	sinceSync atomic.Int32 // writes since the last fsync began
	syncRun   atomic.Int32 // fsyncs in a row that each followed at most one write
}

// syncRunMin is how many fsyncs in a row must each follow a single write
// before the first write after an fsync is sent synced.
const syncRunMin = 2

// beginWrite says whether a write about to be sent goes out synced.
func (s *syncedWrites) beginWrite() bool {
	return s.sinceSync.Add(1) == 1 && s.syncRun.Load() >= syncRunMin
}

// changed records a change that is done and was not a synced write, or
// that failed.
func (s *syncedWrites) changed() { s.clean.Store(false) }

// fsync makes every change so far durable: with flush, unless each was a
// synced write. It reports whether flush was called, and its error.
func (s *syncedWrites) fsync(flush func() error) (bool, error) {
	if s.sinceSync.Swap(0) <= 1 {
		if s.syncRun.Load() < syncRunMin {
			s.syncRun.Add(1)
		}
	} else {
		s.syncRun.Store(0)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.clean.Swap(true) {
		return false, nil
	}
	err := flush()
	if err != nil {
		s.clean.Store(false)
	}
	return true, err
}
