package vdi

import (
	"bytes"
	"context"
	"sync"
	"testing"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

// Regression tests for bugs found in review; each names what it guards.

// Was a bug: Forget() during an allocation makes setOwner believe the index
// object does not exist (chunks was cleared), so it Creates it afresh:
// every other entry of that index object is wiped, and the data of every
// other allocated object in the chunk (up to 4 TiB of VDI) reads as zeros.
// The server calls Forget periodically (volumeFor, indexTTL) on volumes
// whose lock is not held by the node, while requests are in flight.
func TestRegressForgetDuringAllocationWipesIndex(t *testing.T) {
	f := newFake()
	v := Open(f, Info{ID: testVID, Size: 4 * ObjectSize, Copies: 2})
	mustWrite(t, v, []byte("precious"), 0) // object 0, and the index object

	var once sync.Once
	f.setHooks(nil, func(op string, oid ids.ObjectID) {
		if op == opCreate && oid == ids.DataObject(testVID, 2) {
			once.Do(v.Forget) // the gateway refreshes its cached index
		}
	})
	mustWrite(t, v, []byte("new"), 2*ObjectSize)
	f.setHooks(nil, nil)

	if e := f.entry(testVID, 0); e != testVID {
		t.Errorf("stored index entry 0 = %v after allocating object 2, want %v", e, testVID)
	}
	w := Open(f, v.Info())
	if got := mustRead(t, w, 8, 0); string(got) != "precious" {
		t.Errorf("object 0 reads %q after allocating object 2, want %q", got, "precious")
	}
}

// Was a bug: the same wipe without Forget: a Volume that read the index while
// its object did not exist yet keeps that page (all zeros) and believes the
// index object absent. If another Volume of the VDI (another gateway, before
// the write lock moved) then creates it, the first Volume's next allocation
// Creates the index object again, wiping the other's entries.
func TestRegressStaleIndexPageRecreatesIndex(t *testing.T) {
	f := newFake()
	info := Info{ID: testVID, Size: 4 * ObjectSize, Copies: 2}
	a := Open(f, info)
	mustRead(t, a, 1, 0) // no index object yet: a caches an empty page
	b := Open(f, info)
	mustWrite(t, b, []byte("from b"), 0)
	mustWrite(t, a, []byte("from a"), ObjectSize)

	if e := f.entry(testVID, 0); e != testVID {
		t.Errorf("stored index entry 0 (written through b) = %v, want %v", e, testVID)
	}
	if got := mustRead(t, Open(f, info), 6, 0); string(got) != "from b" {
		t.Errorf("object 0 reads %q, want %q", got, "from b")
	}
}

// Was a bug: in WriteAt, a writer reads the owner (0 or an ancestor), drops
// v.mu, and only then looks for an allocation in progress. If another
// writer allocates the object completely in between, the first finds no
// allocation in progress and allocates again with its stale owner:
// Create replaces the object, and the other writer's acknowledged data is
// lost. The window is a few instructions, so this only shows under
// stress; with -race it takes seconds to minutes.
func TestRegressConcurrentFirstWritesRace(t *testing.T) {
	const writers, piece = 8, 512
	for round := range 300 {
		f := newFake()
		v := Open(f, Info{ID: testVID, Size: ObjectSize, Copies: 1})
		mustRead(t, v, 1, 0) // load the index page
		var wg sync.WaitGroup
		start := make(chan struct{})
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				if err := v.WriteAt(context.Background(), wr(v), bytes.Repeat([]byte{byte(w + 1)}, piece), int64(w)*piece); err != nil {
					t.Errorf("WriteAt: %v", err)
				}
			}()
		}
		close(start)
		wg.Wait()
		got := mustRead(t, v, writers*piece, 0)
		for w := range writers {
			if !bytes.Equal(got[w*piece:(w+1)*piece], bytes.Repeat([]byte{byte(w + 1)}, piece)) {
				t.Fatalf("round %d: writer %d's acknowledged data is lost; object created %d times",
					round, w, f.created(ids.DataObject(testVID, 0)))
			}
		}
	}
}

// Was a bug: ReadAt's error path formats v.info.ID without v.mu, racing with
// SetInfo (a resize while reads fail). The race detector reports it.
func TestRegressReadErrorRacesSetInfo(t *testing.T) {
	f := newFake()
	v := Open(f, Info{ID: testVID, Size: 2 * ObjectSize, Copies: 1})
	mustWrite(t, v, []byte("x"), 0)
	f.setHooks(func(op string, oid ids.ObjectID) error {
		if op == opRead && !oid.IsIndex() {
			return errs.E(errs.IO, "injected")
		}
		return nil
	}, nil)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for range 100 {
			_ = v.ReadAt(context.Background(), make([]byte, 1), 0)
		}
	}()
	go func() {
		defer wg.Done()
		for i := range 100 {
			v.SetInfo(Info{ID: testVID, Size: uint64(2*ObjectSize + i), Copies: 1})
		}
	}()
	wg.Wait()
}
