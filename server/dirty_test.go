package server

import (
	"errors"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/errs"
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
	go d.flush(func(set *flushSet) error {
		close(started)
		<-release
		set.synced("x")
		return nil
	})
	<-started
	second := make(chan error, 1)
	go func() {
		second <- d.flush(func(*flushSet) error { return nil })
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
	err := d.flush(func(set *flushSet) error {
		set.synced("x")
		return failed
	})
	if !errors.Is(err, failed) {
		t.Fatalf("flush: %v", err)
	}
	var got map[ids.NodeID]bool
	d.flush(func(set *flushSet) error {
		got = maps.Clone(set.nodes)
		return nil
	})
	if len(got) != 1 || !got["y"] {
		t.Fatalf("after a failed flush the next one syncs %v, want only y", got)
	}
}

// TestFlushPassesOverOnlyCoveredNodes: a flush passes over a node it
// cannot sync only once every write that node took has a copy on a node
// synced since; a write whose replicas are all down or gone makes the
// flush wait (NotReady) and stays marked.
func TestFlushPassesOverOnlyCoveredNodes(t *testing.T) {
	ms := func(ids ...ids.NodeID) []cluster.Member {
		var out []cluster.Member
		for _, id := range ids {
			out = append(out, cluster.Member{ID: id})
		}
		return out
	}
	var d dirtyNodes
	d.markWrite(ms("a", "b", "c"))
	d.markWrite(ms("c", "b", "a")) // the same group in another order
	d.markWrite(ms("c", "d"))
	d.mark(ms("f")) // named by a client: no group
	if n := len(d.set.groups); n != 2 {
		t.Fatalf("%d groups, want 2: %v", n, d.set.groups)
	}

	// Only a is synced; b, c, d and f cannot be.
	err := d.flush(func(set *flushSet) error {
		set.synced("a")
		return passOver(set)
	})
	if errs.KindOf(err) != errs.NotReady {
		t.Fatalf("flush with {c, d} unsynced: %v, want NotReady", err)
	}
	// b (its only group has a) and f (no group) were passed over; c
	// and d wait, with their group.
	if got := slices.Sorted(maps.Keys(d.set.nodes)); !slices.Equal(got, []ids.NodeID{"c", "d"}) {
		t.Fatalf("left for the next flush: %v, want [c d]", got)
	}
	if len(d.set.groups) != 1 {
		t.Fatalf("groups left: %v, want only {c, d}", d.set.groups)
	}

	// d is back and synced: c is covered, and passed over.
	err = d.flush(func(set *flushSet) error {
		set.synced("d")
		return passOver(set)
	})
	if err != nil {
		t.Fatalf("flush with d synced: %v", err)
	}
	if !d.set.empty() {
		t.Fatalf("left after a complete flush: %+v", d.set)
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
