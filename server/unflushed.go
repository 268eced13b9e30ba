package server

import (
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/ids"
)

// unflushed remembers, per VDI, where the writes of its clients through
// this gateway went since one of their replicas was synced: each write's
// replicas (a group), with each replica's Store and the boot it answered
// in. A flush may pass over a node that is down only if the writes it
// took have a synced copy elsewhere, and this says which writes have none.
//
// It is kept per VDI so that one VDI's writes to nodes that are down hold
// up and fail only that VDI's flushes; a sync of a node, from whatever
// flush, covers every VDI's writes on it that came before the sync.
//
// Marks and syncs are ordered by tickets: a write marks its group with the
// current ticket; a sync takes a ticket before it is sent and covers the
// marks up to it. A group keeps its first uncovered mark, so a flush that
// started at ticket t waits for exactly the groups with first <= t.
type unflushed struct {
	mu   sync.Mutex
	now  uint64
	vdis map[ids.VDIID]*vdiWrites
}

// vdiWrites is what unflushed keeps for one VDI.
type vdiWrites struct {
	groups map[string]*copyGroup
	// lost says why writes of the VDI may be lost, when a flush that was
	// not its client's (a snapshot's, a synced write's) found them so:
	// the client's next flush reports it too (takeLost).
	lost string
}

// maxGroups bounds the groups kept for one VDI. Past it, a new group is
// kept as one group per node instead (split; one per node at most): each
// of its nodes must then be synced, or its flush waits, which is stricter
// than needed and small. A split group is never reported lost (its write
// may be on another node of the write's): once its node is gone for good
// it is dropped, as every node that is down was passed over before the
// groups.
const maxGroups = 4096

// replicaMark is one replica of a write.
type replicaMark struct {
	id    ids.NodeID
	store string
	boot  uint64 // as the replica answered the write (0: unknown)
	gone  bool   // it answered a sync in another boot or Store
}

// copyGroup is the replicas of one or more writes of a VDI.
type copyGroup struct {
	nodes       []replicaMark
	first, last uint64 // tickets of the first uncovered and of the last write
	split       bool   // one node of a larger group (maxGroups)
}

// lost reports whether none of g's replicas can make its writes durable
// any more: each came back in another boot or with another Store, or, if
// member is set, is no longer a member (member reports whether it is).
func (g *copyGroup) lost(member func(ids.NodeID) bool) bool {
	for _, r := range g.nodes {
		if !r.gone && (member == nil || member(r.id)) {
			return false
		}
	}
	return true
}

func (g *copyGroup) String() string {
	var b strings.Builder
	b.WriteByte('{')
	for i, r := range g.nodes {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(string(r.id))
	}
	b.WriteByte('}')
	return b.String()
}

// appendKey appends the name of the group of replicas rs (in order) to b.
func appendKey(b []byte, rs []replicaMark) []byte {
	for _, r := range rs {
		b = append(b, r.id...)
		b = append(b, 0)
		b = append(b, r.store...)
		b = append(b, 0)
		b = strconv.AppendUint(b, r.boot, 16)
		b = append(b, 0)
	}
	return b
}

// mark records that a write of VDI vid reached the replicas rs (sorted
// here; rs is the caller's and may be reordered).
func (u *unflushed) mark(vid ids.VDIID, rs []replicaMark) {
	if len(rs) == 0 {
		return
	}
	slices.SortFunc(rs, func(a, b replicaMark) int { return strings.Compare(string(a.id), string(b.id)) })
	u.mu.Lock()
	defer u.mu.Unlock()
	v := u.entry(vid)
	var kb [512]byte
	key := appendKey(kb[:0], rs)
	if g, ok := v.groups[string(key)]; ok {
		g.last = u.now
		return
	}
	if len(v.groups) < maxGroups || len(rs) == 1 {
		v.groups[string(key)] = &copyGroup{nodes: slices.Clone(rs), first: u.now, last: u.now}
		return
	}
	for i := range rs {
		key = appendKey(kb[:0], rs[i:i+1])
		if g, ok := v.groups[string(key)]; ok {
			g.last = u.now
		} else {
			v.groups[string(key)] = &copyGroup{nodes: slices.Clone(rs[i : i+1]), first: u.now, last: u.now, split: true}
		}
	}
}

// entry returns what is kept for vid, made if missing; u.mu is held.
func (u *unflushed) entry(vid ids.VDIID) *vdiWrites {
	if u.vdis == nil {
		u.vdis = map[ids.VDIID]*vdiWrites{}
	}
	v := u.vdis[vid]
	if v == nil {
		v = &vdiWrites{groups: map[string]*copyGroup{}}
		u.vdis[vid] = v
	}
	return v
}

// dropEmpty forgets v, the entry of vid, once it keeps nothing; u.mu is
// held.
func (u *unflushed) dropEmpty(vid ids.VDIID, v *vdiWrites) {
	if len(v.groups) == 0 && v.lost == "" {
		delete(u.vdis, vid)
	}
}

// forget drops what is kept for VDI vid: no flush of its writes through
// this gateway will come.
func (u *unflushed) forget(vid ids.VDIID) {
	u.mu.Lock()
	delete(u.vdis, vid)
	u.mu.Unlock()
}

// forgetIf drops what is kept for each VDI for which drop says so.
func (u *unflushed) forgetIf(drop func(ids.VDIID) bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	for vid := range u.vdis {
		if drop(vid) {
			delete(u.vdis, vid)
		}
	}
}

// ticket returns the ticket of a sync about to be sent: it will cover the
// writes marked so far.
func (u *unflushed) ticket() uint64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	t := u.now
	u.now++
	return t
}

// syncedNode is a node that answered a sync sent with some ticket.
type syncedNode struct {
	m    cluster.Member // as the state the sync went out in had it
	boot uint64         // as it answered (0: unknown)
}

// cover records that the nodes in done synced their stores after ticket t
// was taken: the writes marked up to t on each of them are durable there,
// if it is the same Store in the same boot; a node that answered in
// another boot or with another Store lost what it took before.
func (u *unflushed) cover(t uint64, done []syncedNode) {
	if len(done) == 0 {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	for vid, v := range u.vdis {
		for key, g := range v.groups {
			if g.first > t {
				continue
			}
			covered := false
			for i := range g.nodes {
				r := &g.nodes[i]
				for _, s := range done {
					if s.m.ID != r.id {
						continue
					}
					if s.m.Store == r.store && (r.boot == 0 || s.boot == 0 || r.boot == s.boot) {
						covered = true
					} else {
						r.gone = true
					}
				}
			}
			if !covered {
				continue
			}
			if g.last <= t {
				delete(v.groups, key)
			} else {
				g.first = t + 1
			}
		}
		u.dropEmpty(vid, v)
	}
}

// waits reports whether some group of vid whose writes were marked up to
// ticket t is not covered by a sync since.
func (u *unflushed) waits(vid ids.VDIID, t uint64) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if v := u.vdis[vid]; v != nil {
		for _, g := range v.groups {
			if g.first <= t {
				return true
			}
		}
	}
	return false
}

// waiting returns the groups of vid whose writes were marked up to ticket
// t and that no sync since covers, as copies.
func (u *unflushed) waiting(vid ids.VDIID, t uint64) []copyGroup {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []copyGroup
	if v := u.vdis[vid]; v != nil {
		for _, g := range v.groups {
			if g.first <= t {
				out = append(out, copyGroup{nodes: slices.Clone(g.nodes), first: g.first, last: g.last, split: g.split})
			}
		}
	}
	return out
}

// dropLost forgets the groups of vid up to ticket t that are lost
// (copyGroup.lost, with member) and returns those that are not split:
// their writes are on no node that can still make them durable. Split
// ones are dropped unreported (maxGroups).
func (u *unflushed) dropLost(vid ids.VDIID, t uint64, member func(ids.NodeID) bool) []copyGroup {
	u.mu.Lock()
	defer u.mu.Unlock()
	v := u.vdis[vid]
	if v == nil {
		return nil
	}
	var out []copyGroup
	for key, g := range v.groups {
		if g.first <= t && g.lost(member) {
			if !g.split {
				out = append(out, *g)
			}
			delete(v.groups, key)
		}
	}
	u.dropEmpty(vid, v)
	return out
}

// setLost keeps why writes of vid may be lost for its client's next flush
// (takeLost).
func (u *unflushed) setLost(vid ids.VDIID, why string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	v := u.entry(vid)
	if v.lost == "" {
		v.lost = why
	}
}

// takeLost returns and clears what setLost kept for vid ("" if nothing).
func (u *unflushed) takeLost(vid ids.VDIID) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	v := u.vdis[vid]
	if v == nil {
		return ""
	}
	why := v.lost
	v.lost = ""
	u.dropEmpty(vid, v)
	return why
}
