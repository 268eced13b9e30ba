// Package recovery plans how a cluster gets every object back to its copies
// after membership changes: which local copies a node must doubt, which
// objects each other node must fetch from it, and which copies are no
// longer placed. It is pure: epochs, rings and object lists in, decisions
// out. server/ carries the plans out.
//
// The rule everything rests on: a write at epoch e reaches exactly the
// *writers* of its object at e, the up members of the object's placement
// (the gateway acknowledges it only when all of them have it). So a copy
// that node X held current at epoch F is still current at epoch T if, at
// every epoch after F up to T, X was a member with the same data directory
// (Member.Store), in the same boot of its machine (Member.Boot: a write
// acknowledged but not yet flushed may be gone after a restart of the
// machine, and the flush then failed), and either one of the object's
// writers or the object had no writers at all (nothing could be written). The last epoch of that run
// is the copy's *valid* epoch: T for a current copy, earlier for one that
// missed writes (or may have), 0 for one nothing vouches for.
//
// Each node knows the epoch F up to which its recovery was complete (every
// object it was a writer of at F, it held current). For each local copy it
// works out the valid epoch; a copy of which it is a writer at T with a
// valid epoch below T is doubted (refreshed before use). Each other member
// S answers a node X's request with an *inventory*: the objects S holds
// with a nonzero valid epoch of which X is a writer at T and whose copy X
// cannot vouch for (computed from the history with X's own F). X then
// fetches each from the source with the latest valid epoch and highest
// version, unless its own copy already has that version. The work per
// node is one pass over its own objects per distinct F asked for, never a
// listing of other nodes' objects, so it does not grow with the cluster.
package recovery

import (
	"slices"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/hashring"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
)

// Window is the part of a cluster's epoch history from epoch From to epoch
// To, with the placement ring of each. It is immutable and safe for
// concurrent use.
type Window struct {
	recs  []*cluster.EpochRecord // recs[i].Epoch == From+i
	rings []*hashring.Ring
	// Nodes are numbered across the window: at[i][n] is node n's index
	// in recs[i].Members (-1: not a member), and ringNode[i][k] the number
	// of ring i's k-th node.
	num      map[ids.NodeID]int32
	at       [][]int32
	ringNode [][]int32
}

// NewWindow takes epochs from..to out of hist (consecutive records, as
// State.History keeps them). errs.NotFound if hist no longer (or does not
// yet) hold them all.
func NewWindow(hist []cluster.EpochRecord, from, to ids.Epoch) (*Window, error) {
	if from > to || len(hist) == 0 || hist[0].Epoch > from || hist[len(hist)-1].Epoch < to {
		return nil, errs.E(errs.NotFound, "epochs %v..%v are not in the history", from, to)
	}
	i := int(from - hist[0].Epoch)
	j := int(to - hist[0].Epoch)
	w := &Window{num: map[ids.NodeID]int32{}}
	for k := i; k <= j; k++ {
		if hist[k].Epoch != from+ids.Epoch(k-i) {
			return nil, errs.E(errs.Invalid, "epoch history is not consecutive at %v", hist[k].Epoch)
		}
		w.recs = append(w.recs, &hist[k])
		w.rings = append(w.rings, hist[k].Ring())
		for _, m := range hist[k].Members {
			if _, ok := w.num[m.ID]; !ok {
				w.num[m.ID] = int32(len(w.num))
			}
		}
	}
	for k, rec := range w.recs {
		at := make([]int32, len(w.num))
		for n := range at {
			at[n] = -1
		}
		for mi, m := range rec.Members {
			at[w.num[m.ID]] = int32(mi)
		}
		nodes := w.rings[k].Nodes()
		rn := make([]int32, len(nodes))
		for r, id := range nodes {
			rn[r] = w.num[id]
		}
		w.at = append(w.at, at)
		w.ringNode = append(w.ringNode, rn)
	}
	return w, nil
}

// From and To are the window's first and last epochs.
func (w *Window) From() ids.Epoch { return w.recs[0].Epoch }

// To is the window's last epoch.
func (w *Window) To() ids.Epoch { return w.recs[len(w.recs)-1].Epoch }

// Epoch returns the record of epoch e (From <= e <= To).
func (w *Window) Epoch(e ids.Epoch) *cluster.EpochRecord { return w.recs[e-w.From()] }

// maxCopies is the most copies an object can have (cluster.MaxCopies).
const maxCopies = cluster.MaxCopies

// places appends to dst the numbers of the nodes placing oid at epoch
// index i, in ring order.
func (w *Window) places(i int, oid ids.ObjectID, copies int, dst []int32) []int32 {
	var buf [maxCopies]int32
	for _, r := range w.rings[i].ReplicaIndexes(oid, copies, buf[:0]) {
		dst = append(dst, w.ringNode[i][r])
	}
	return dst
}

// member returns node n's record at epoch index i.
func (w *Window) member(i int, n int32) (cluster.Member, bool) {
	mi := w.at[i][n]
	if mi < 0 {
		return cluster.Member{}, false
	}
	return w.recs[i].Members[mi], true
}

// Placement appends to dst the members of epoch e that place oid (copies
// copies), in ring order, down ones included.
func (w *Window) Placement(e ids.Epoch, oid ids.ObjectID, copies int, dst []cluster.Member) []cluster.Member {
	i := int(e - w.From())
	var buf [maxCopies]int32
	for _, n := range w.places(i, oid, copies, buf[:0]) {
		if m, ok := w.member(i, n); ok {
			dst = append(dst, m)
		}
	}
	return dst
}

// trace is one object's placement at every epoch of a window, worked out
// once and asked many times.
type trace struct {
	w      *Window
	places [][]int32 // places[i]: node numbers placing it at epoch From+i
	buf    []int32
	offs   []int
}

// traceOf fills t with oid's placements (t's buffers are reused).
func (w *Window) traceOf(t *trace, oid ids.ObjectID, copies int) {
	t.w = w
	t.buf = t.buf[:0]
	t.places = t.places[:0]
	t.offs = t.offs[:0]
	for i := range w.recs {
		t.offs = append(t.offs, len(t.buf))
		t.buf = w.places(i, oid, copies, t.buf)
	}
	t.offs = append(t.offs, len(t.buf))
	for i := range w.recs {
		t.places = append(t.places, t.buf[t.offs[i]:t.offs[i+1]])
	}
}

// writerAt reports whether node n is a writer at epoch index i, and
// whether there is any writer.
func (t *trace) writerAt(i int, n int32) (isWriter, any bool) {
	for _, p := range t.places[i] {
		if m, _ := t.w.member(i, p); !m.Down {
			any = true
			if p == n {
				isWriter = true
			}
		}
	}
	return isWriter, any
}

// valid is Window.Valid from the trace, for node number n.
func (t *trace) valid(n int32, start ids.Epoch) ids.Epoch {
	w := t.w
	if n < 0 || start < w.From() || start > w.To() {
		return 0
	}
	i := int(start - w.From())
	m0, ok := w.member(i, n)
	if !ok {
		return 0
	}
	if isW, _ := t.writerAt(i, n); !isW {
		return 0
	}
	for i++; i < len(w.recs); i++ {
		m, ok := w.member(i, n)
		if !ok || m.Store != m0.Store || m.Boot != m0.Boot && m.Boot != "" && m0.Boot != "" {
			return w.recs[i-1].Epoch
		}
		if isW, any := t.writerAt(i, n); !isW && any {
			return w.recs[i-1].Epoch
		}
	}
	return w.To()
}

// number returns node id's number in the window, -1 if it is in none of
// its epochs.
func (w *Window) number(id ids.NodeID) int32 {
	if n, ok := w.num[id]; ok {
		return n
	}
	return -1
}

// Valid returns the valid epoch (see the package comment) of node id's
// copy of oid, given that at epoch start (From <= start <= To) the node
// held current every object it was a writer of. 0 if it was not a writer
// of oid at start.
func (w *Window) Valid(id ids.NodeID, oid ids.ObjectID, copies int, start ids.Epoch) ids.Epoch {
	if start < w.From() || start > w.To() {
		return 0
	}
	var t trace
	w.traceOf(&t, oid, copies)
	return t.valid(w.number(id), start)
}

// Local is a copy a node holds.
type Local struct {
	OID     ids.ObjectID
	Version ids.Version
	// Copies is the replica count of the object's image.
	Copies int
	// Start is the epoch from which the node vouches for the copy: its
	// recovered epoch, or a later one at which it fetched or wrote the
	// copy as a writer.
	Start ids.Epoch
}

// Plan is what one node does with its own copies at epoch To.
type Plan struct {
	// Doubt are the copies the node is a writer of at To but cannot
	// vouch for: they must be refreshed before they serve.
	Doubt []Copy
	// Misplaced are the copies the node is not in the placement of at
	// To; they go once every node of the placement holds the object
	// current at a version at least as new.
	Misplaced []Copy
	// Exposed counts the objects whose placement has a down member, of
	// which this node is the first current writer (so that summing over
	// nodes counts each once): below their copies until that member is
	// back or replaced.
	Exposed int
}

// Copy is one of a node's copies, with its valid epoch.
type Copy struct {
	OID     ids.ObjectID
	Version ids.Version
	// Valid is the copy's valid epoch. A misplaced copy valid at To-1
	// is as good a source as any until the new holders have theirs.
	Valid ids.Epoch
}

// PlanFor plans node me's copies at the window's last epoch. Copies of
// images that no longer exist (Copies 0) are left out: the caller decides.
func (w *Window) PlanFor(me ids.NodeID, locals []Local) Plan {
	var p Plan
	last := len(w.recs) - 1
	to := w.To()
	self, member := w.recs[last].Member(me)
	n := w.number(me)
	var t trace
	for _, l := range locals {
		if l.Copies <= 0 {
			continue
		}
		w.traceOf(&t, l.OID, l.Copies)
		place := t.places[last]
		valid := t.valid(n, l.Start)
		if !member || !slices.Contains(place, n) {
			p.Misplaced = append(p.Misplaced, Copy{OID: l.OID, Version: l.Version, Valid: valid})
			continue
		}
		if self.Down {
			continue // nothing is asked of a down node
		}
		if valid < to {
			p.Doubt = append(p.Doubt, Copy{OID: l.OID, Version: l.Version, Valid: valid})
			continue
		}
		// The first current writer counts the object if a member of its
		// placement is down.
		down, first := false, int32(-1)
		for _, q := range place {
			m, _ := w.member(last, q)
			down = down || m.Down
			if !m.Down && first < 0 {
				first = q
			}
		}
		if down && first == n {
			p.Exposed++
		}
	}
	return p
}

// Inventories works out, for the copies locals of node me (with their
// valid epochs), what every other writer must fetch at the window's last
// epoch, given that the receivers vouch for their copies from epoch start
// on (their recovered epoch; 0 for a node that vouches for nothing). It
// calls emit once per (receiver, object) with the entry to send: me's
// version and valid epoch, ObjPresent, and ObjDegraded/ObjCounted (see
// proto). Copies with a valid epoch of 0 are no source and are left out.
func (w *Window) Inventories(me ids.NodeID, locals []Local, valid []ids.Epoch, start ids.Epoch, emit func(to ids.NodeID, s proto.ObjState)) {
	to := w.To()
	last := len(w.recs) - 1
	self := w.number(me)
	var t trace
	var needs [maxCopies]bool
	for k, l := range locals {
		if l.Copies <= 0 || valid[k] == 0 {
			continue
		}
		w.traceOf(&t, l.OID, l.Copies)
		place := t.places[last]
		counted := int32(-1)
		need, good := 0, 0
		for i, q := range place {
			needs[i] = false
			if m, _ := w.member(last, q); m.Down {
				continue
			}
			if t.valid(q, start) >= to {
				good++
				continue
			}
			if q != self {
				needs[i] = true
				if need == 0 {
					counted = q
				}
				need++
			}
		}
		if need == 0 {
			continue
		}
		// Members that left the placement at this epoch with a copy
		// valid through the one before still hold it.
		if last > 0 {
			for _, q := range t.places[last-1] {
				if slices.Contains(place, q) {
					continue
				}
				if m, ok := w.member(last, q); ok && !m.Down && t.valid(q, start) >= to-1 {
					good++
				}
			}
		}
		flags := proto.ObjPresent
		if good < l.Copies {
			flags |= proto.ObjDegraded
		}
		for i, q := range place {
			if !needs[i] {
				continue
			}
			f := flags
			if q == counted {
				f |= proto.ObjCounted
			}
			m, _ := w.member(last, q)
			emit(m.ID, proto.ObjState{OID: l.OID, Version: l.Version, Valid: valid[k], Flags: f})
		}
	}
}

// Best returns the index of the best source among entries for one object:
// the latest valid epoch, then the highest version; -1 if none is a
// source (all have valid epoch 0 or are absent).
func Best(entries []proto.ObjState) int {
	best := -1
	for i, e := range entries {
		if e.Flags&proto.ObjPresent == 0 || e.Valid == 0 {
			continue
		}
		if best < 0 || e.Valid > entries[best].Valid || e.Valid == entries[best].Valid && e.Version > entries[best].Version {
			best = i
		}
	}
	return best
}

// Choose picks, among the answers for one object at epoch to (the node's
// own copy included, if it has one), the copy every replica should hold,
// and returns its index, or -1 while no choice is safe. all says whether
// every member of the epoch answered (none is down or silent).
//
//   - A current copy (valid at to) holds every acknowledged write: the
//     best one (highest version) wins, even over a higher version that
//     nothing vouches for (a write that was never acknowledged).
//   - Otherwise every member must have answered: a write acknowledged at
//     epoch e reached every writer of e, each of which then holds a copy
//     valid through e, so the latest valid epoch among all answers is at
//     least that of the last acknowledged write. A silent member may hold
//     the only such copy.
//   - If nothing vouches for any copy (every holder lost track, say after
//     a restart of all of them), the highest version wins, again only once
//     every member has answered.
func Choose(answers []proto.ObjState, to ids.Epoch, all bool) int {
	b := Best(answers)
	switch {
	case b >= 0 && answers[b].Valid >= to:
		return b
	case !all:
		return -1
	case b >= 0:
		return b
	}
	for i, a := range answers {
		if a.Flags&proto.ObjPresent != 0 && (b < 0 || a.Version > answers[b].Version) {
			b = i
		}
	}
	return b
}

// MinWriters is the fewest up writers an object of copies copies may be
// written with while members of its placement are down: copies - copies/2
// (Ceph's default min_size), so that with 3 copies an acknowledged write is
// on at least 2 nodes. Fewer, and writes wait until the down members come
// back or are replaced.
func MinWriters(copies int) int { return max(copies-copies/2, 1) }
