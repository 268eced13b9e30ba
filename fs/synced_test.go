package fs

import (
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// TestSyncedWritesPattern: single writes each followed by an fsync go out
// synced once two fsyncs in a row followed at most one write, and their fsyncs flush nothing; a burst sends
// its first write synced and the rest plain, and its fsync flushes and
// ends the run; a fresh file's first fsync flushes; a failed flush is
// tried again at the next fsync.
func TestSyncedWritesPattern(t *testing.T) {
	var s syncedWrites
	flushes := 0
	flush := func() error { flushes++; return nil }
	step := func(writes int, wantSynced []bool, wantFlush bool) {
		t.Helper()
		for i := range writes {
			synced := s.beginWrite()
			if synced != wantSynced[i] {
				t.Fatalf("write %d of %d: synced %v, want %v", i, writes, synced, wantSynced[i])
			}
			if !synced {
				s.changed()
			}
		}
		before := flushes
		flushed, err := s.fsync(flush)
		if err != nil || flushed != wantFlush || flushes != before+map[bool]int{true: 1}[wantFlush] {
			t.Fatalf("fsync after %d writes: flushed %v (%d calls), err %v; want flushed %v", writes, flushed, flushes-before, err, wantFlush)
		}
	}
	step(0, nil, true) // nothing known of earlier writes: flush (an fsync after no write counts in the run)
	step(1, []bool{false}, true)
	step(1, []bool{true}, false)
	step(1, []bool{true}, false)
	step(3, []bool{true, false, false}, true)
	step(1, []bool{false}, true) // the burst ended the run
	step(1, []bool{false}, true)
	step(1, []bool{true}, false)

	// A failed write clears clean like a plain one.
	if !s.beginWrite() {
		t.Fatal("want a synced write")
	}
	s.changed()
	if flushed, _ := s.fsync(flush); !flushed {
		t.Fatal("fsync after a failed synced write did not flush")
	}
	// A failed flush is tried again.
	s.changed()
	bad := errors.New("no")
	if flushed, err := s.fsync(func() error { return bad }); !flushed || err != bad {
		t.Fatalf("failing flush: flushed %v, err %v", flushed, err)
	}
	if flushed, _ := s.fsync(flush); !flushed {
		t.Fatal("the fsync after a failed flush did not flush")
	}
}

// TestSyncedWritesRace: writers and fsyncers at once. Every write answered
// before an fsync began is durable when that fsync returns: synced when
// the cluster took it, or covered by a flush, which makes durable every
// write the cluster took before the flush began.
func TestSyncedWritesRace(t *testing.T) {
	var (
		s        syncedWrites
		mu       sync.Mutex
		done     []bool // per write: taken by the cluster
		answered []bool // per write: answered to the kernel
		durable  []bool // per write: durable
	)
	flush := func() error {
		mu.Lock()
		var taken []int
		for i, d := range done {
			if d {
				taken = append(taken, i)
			}
		}
		mu.Unlock()
		time.Sleep(50 * time.Microsecond) // the flush is under way
		mu.Lock()
		defer mu.Unlock()
		for _, i := range taken {
			durable[i] = true
		}
		return nil
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for range 600 {
				synced := s.beginWrite()
				mu.Lock()
				i := len(done)
				done = append(done, false)
				answered = append(answered, false)
				durable = append(durable, false)
				mu.Unlock()
				// The cluster takes the write (a later flush covers
				// it), then the kernel is answered.
				fail := rng.IntN(50) == 0
				mu.Lock()
				done[i] = !fail
				durable[i] = synced && !fail
				mu.Unlock()
				if !synced || fail {
					s.changed()
				}
				mu.Lock()
				answered[i] = !fail
				mu.Unlock()
			}
		})
	}
	for range 2 {
		wg.Go(func() {
			for range 1000 {
				mu.Lock()
				var before []int
				for i, a := range answered {
					if a {
						before = append(before, i)
					}
				}
				mu.Unlock()
				if _, err := s.fsync(flush); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for _, i := range before {
					if !durable[i] {
						mu.Unlock()
						t.Errorf("write %d was answered before an fsync that returned without it durable", i)
						return
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}
