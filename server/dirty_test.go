package server

import (
	"errors"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/ids"
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
