package server

import (
	"errors"
	"maps"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
)

// TestFlushWaitsForEarlierFlush: a flush that starts while an earlier one
// is syncing the nodes its caller wrote to does not return before that
// sync is done (else an fsync could return before its write is durable).
func TestFlushWaitsForEarlierFlush(t *testing.T) {
	var d dirtyNodes
	d.mark([]cluster.Member{{ID: "x"}})
	started, release := make(chan struct{}), make(chan struct{})
	go d.flush(func(set map[ids.NodeID]bool) error {
		close(started)
		<-release
		delete(set, "x")
		return nil
	})
	<-started
	second := make(chan error, 1)
	go func() {
		second <- d.flush(func(map[ids.NodeID]bool) error { return nil })
	}()
	select {
	case <-second:
		t.Fatal("second flush returned while the first was still syncing node x")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if err := <-second; err != nil {
		t.Fatal(err)
	}
}

// TestFlushKeepsFailedNodes: nodes a failed flush did not sync stay marked.
func TestFlushKeepsFailedNodes(t *testing.T) {
	var d dirtyNodes
	d.mark([]cluster.Member{{ID: "x"}, {ID: "y"}})
	failed := errors.New("y is down")
	err := d.flush(func(set map[ids.NodeID]bool) error {
		delete(set, "x")
		return failed
	})
	if !errors.Is(err, failed) {
		t.Fatalf("flush: %v", err)
	}
	var got map[ids.NodeID]bool
	d.flush(func(set map[ids.NodeID]bool) error {
		got = map[ids.NodeID]bool{}
		for id := range set {
			got[id] = true
		}
		return nil
	})
	if len(got) != 1 || !got["y"] {
		t.Fatalf("after a failed flush the next one syncs %v, want only y", got)
	}
}

func TestBootSet(t *testing.T) {
	var none *bootSet
	none.add("a", 3) // a nil set gathers nothing, and does not panic

	var b bootSet
	b.add("a", 3)
	b.add("a", 3)
	b.add("b", 0) // unknown boot: nothing to check
	b.add("c", 5)
	b.add("c", 7) // answered in two boots: the first write may be gone
	got := map[uint64]uint64{}
	for _, nb := range b.list() {
		got[nb.Node] = nb.Boot
	}
	want := map[uint64]uint64{proto.NodeHash("a"): 3, proto.NodeHash("c"): bootChanged}
	if !maps.Equal(got, want) {
		t.Fatalf("list = %v, want %v", got, want)
	}
}
