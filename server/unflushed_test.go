package server

import (
	"fmt"
	"slices"
	"testing"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/ids"
)

func rms(idsIn ...ids.NodeID) []replicaMark {
	out := make([]replicaMark, 0, len(idsIn))
	for _, id := range idsIn {
		out = append(out, replicaMark{id: id, store: "s-" + string(id), boot: 7})
	}
	return out
}

func synced(idsIn ...ids.NodeID) []syncedNode {
	out := make([]syncedNode, 0, len(idsIn))
	for _, id := range idsIn {
		out = append(out, syncedNode{m: cluster.Member{ID: id, Store: "s-" + string(id)}, boot: 7})
	}
	return out
}

// TestUnflushedPerVDI: a sync covers the writes of every VDI on the node
// it synced, and a VDI waits only for its own writes.
func TestUnflushedPerVDI(t *testing.T) {
	var u unflushed
	u.mark(1, rms("c", "a", "b"))
	u.mark(1, rms("a", "b", "c")) // the same group
	u.mark(1, rms("d"))
	u.mark(2, rms("e"))
	start := u.ticket()
	if n := len(u.waiting(1, start)); n != 2 {
		t.Fatalf("VDI 1 waits for %d groups, want 2", n)
	}
	u.cover(u.ticket(), synced("b", "d"))
	if gs := u.waiting(1, start); len(gs) != 0 {
		t.Fatalf("VDI 1 still waits for %v after b and d synced", gs)
	}
	if gs := u.waiting(2, start); len(gs) != 1 || gs[0].String() != "{e}" {
		t.Fatalf("VDI 2 waits for %v, want {e}", gs)
	}
	if gs := u.waiting(3, start); len(gs) != 0 {
		t.Fatalf("VDI 3 wrote nothing and waits for %v", gs)
	}
}

// TestUnflushedTickets: a sync covers only the writes marked before its
// ticket, and a flush waits only for the writes marked before it began.
func TestUnflushedTickets(t *testing.T) {
	var u unflushed
	u.mark(1, rms("a"))
	ts := u.ticket() // a sync goes out
	u.mark(1, rms("a"))
	start := u.ticket() // a flush begins
	u.cover(ts, synced("a"))
	gs := u.waiting(1, start)
	if len(gs) != 1 {
		t.Fatalf("the write after the sync's ticket is not waited for: %v", gs)
	}
	if gs[0].first <= ts {
		t.Fatalf("the group's first uncovered write is %d, at or before the sync's ticket %d", gs[0].first, ts)
	}
	// A write after the flush began is not the flush's to wait for.
	u.cover(u.ticket(), synced("a"))
	u.mark(1, rms("b"))
	if gs := u.waiting(1, start); len(gs) != 0 {
		t.Fatalf("the flush waits for %v, marked after it began", gs)
	}
	if gs := u.waiting(1, u.ticket()); len(gs) != 1 {
		t.Fatalf("a later flush does not wait for b's write: %v", gs)
	}
}

// TestUnflushedOtherBoot: a node that syncs in another boot or with
// another Store covers nothing it took before; a group all of whose
// nodes did is lost, and reported once.
func TestUnflushedOtherBoot(t *testing.T) {
	var u unflushed
	u.mark(1, rms("a", "b"))
	start := u.ticket()
	u.cover(u.ticket(), []syncedNode{{m: cluster.Member{ID: "a", Store: "s-a"}, boot: 9}})
	if gs := u.dropLost(1, start, nil); len(gs) != 0 {
		t.Fatalf("lost with b not heard from: %v", gs)
	}
	u.cover(u.ticket(), []syncedNode{{m: cluster.Member{ID: "b", Store: "new"}, boot: 7}})
	if gs := u.waiting(1, start); len(gs) != 1 {
		t.Fatalf("covered by nodes in another boot or Store: %v", gs)
	}
	if gs := u.dropLost(1, start, nil); len(gs) != 1 {
		t.Fatalf("not lost: %v", u.waiting(1, start))
	}
	if gs := u.waiting(1, start); len(gs) != 0 {
		t.Fatalf("still waiting after the loss was taken: %v", gs)
	}

	// Nodes that left the cluster make a group lost only when asked.
	u.mark(1, rms("c"))
	start = u.ticket()
	none := func(ids.NodeID) bool { return false }
	if gs := u.dropLost(1, start, nil); len(gs) != 0 {
		t.Fatalf("lost without asking about members: %v", gs)
	}
	if gs := u.dropLost(1, start, none); len(gs) != 1 {
		t.Fatalf("not lost with c no member: %v", gs)
	}
}

// TestUnflushedBounded: past maxGroups, a VDI's new groups are kept per
// node, so that each of their nodes must be synced.
func TestUnflushedBounded(t *testing.T) {
	var u unflushed
	for i := range maxGroups {
		u.mark(1, rms(ids.NodeID(fmt.Sprintf("n%d", i)), "x"))
	}
	u.mark(1, rms("p", "q", "r"))
	u.mark(1, rms("p", "q", "s"))
	if n := len(u.vdis[1].groups); n != maxGroups+4 {
		t.Fatalf("%d groups, want %d (p, q, r and s on their own)", n, maxGroups+4)
	}
	start := u.ticket()
	u.cover(u.ticket(), synced("x", "p"))
	var left []string
	for _, g := range u.waiting(1, start) {
		left = append(left, g.String())
	}
	slices.Sort(left)
	if fmt.Sprint(left) != "[{q} {r} {s}]" {
		t.Fatalf("left: %v, want q, r and s", left)
	}
}

// TestUnflushedSplitNotLost: a group kept split past maxGroups waits for
// its node, but its node gone is no loss to report: the write may be on
// another node of its own group.
func TestUnflushedSplitNotLost(t *testing.T) {
	var u unflushed
	for i := range maxGroups {
		u.mark(1, rms(ids.NodeID(fmt.Sprintf("n%d", i)), "x"))
	}
	u.mark(1, rms("p", "q"))
	start := u.ticket()
	u.cover(u.ticket(), synced("x", "p"))
	none := func(ids.NodeID) bool { return false }
	if gs := u.dropLost(1, start, none); len(gs) != 0 {
		t.Fatalf("split groups reported lost: %v", gs)
	}
	if u.waits(1, start) {
		t.Fatalf("still waiting after q left: %v", u.waiting(1, start))
	}
}

// TestUnflushedLostKept: a loss kept by a flush that is not the client's
// is taken, once, by the client's.
func TestUnflushedLostKept(t *testing.T) {
	var u unflushed
	if why := u.takeLost(1); why != "" {
		t.Fatalf("a loss with none kept: %q", why)
	}
	u.setLost(1, "first")
	u.setLost(1, "second")
	if why := u.takeLost(1); why != "first" {
		t.Fatalf("took %q, want the first loss", why)
	}
	if why := u.takeLost(1); why != "" {
		t.Fatalf("took %q again", why)
	}
	if len(u.vdis) != 0 {
		t.Fatalf("kept after the loss was taken: %v", u.vdis)
	}
}
