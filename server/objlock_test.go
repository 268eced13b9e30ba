package server

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/ids"
)

// TestObjLocks: holders of one object's lock run one at a time, other
// objects are not held up, a waiter gives up when its context ends, and
// nothing stays in the table afterwards.
func TestObjLocks(t *testing.T) {
	var l objLocks
	ctx := context.Background()
	var mu sync.Mutex
	in, most := 0, 0
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				unlock, err := l.lock(ctx, 1)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				in++
				most = max(most, in)
				mu.Unlock()
				time.Sleep(10 * time.Microsecond)
				mu.Lock()
				in--
				mu.Unlock()
				unlock()
			}
		})
	}
	wg.Wait()
	if most != 1 {
		t.Fatalf("%d holders of one object's lock at once", most)
	}

	unlock, err := l.lock(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	other, err := l.lock(ctx, ids.ObjectID(2))
	if err != nil {
		t.Fatalf("another object's lock: %v", err)
	}
	other()
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := l.lock(short, 1); err == nil {
		t.Fatal("took a held lock")
	}
	unlock()
	if n := l.held(); n != 0 {
		t.Fatalf("%d objects left in the table", n)
	}
}
