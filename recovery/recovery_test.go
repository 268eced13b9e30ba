package recovery

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
)

var (
	seedFlag  = flag.Uint64("seed", 0, "seed for randomised tests (0: from $RECOVERY_SEED, else the clock)")
	nodesFlag = flag.Int("scale-nodes", 1000, "nodes of TestScale")
)

func testSeed(t *testing.T) uint64 {
	t.Helper()
	seed := *seedFlag
	if s := os.Getenv("RECOVERY_SEED"); seed == 0 && s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("RECOVERY_SEED=%q: %v", s, err)
		}
		seed = v
	}
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay with -seed=%d or RECOVERY_SEED=%d)", seed, seed, seed)
	return seed
}

// sim is a model cluster: nodes with copies (a copy is its version: the
// data is the version), an epoch history, and the acknowledged version of
// every object. It plays writes, membership changes and recovery by the
// package's rules and checks that no current copy is ever stale.
type sim struct {
	t       *testing.T
	rng     *rand.Rand
	hist    []cluster.EpochRecord
	nodes   map[ids.NodeID]*simNode
	truth   map[ids.ObjectID]ids.Version // acknowledged
	copies  int
	nextVer ids.Version
	nextID  int
	moved   int // objects copied by recovery
	windows map[ids.Epoch]*Window
}

type simNode struct {
	id    ids.NodeID
	store string
	alive bool
	objs  map[ids.ObjectID]ids.Version
	// from is the recovered epoch; start holds later per-object starts
	// (fetched or written as a writer).
	from  ids.Epoch
	start map[ids.ObjectID]ids.Epoch
}

func (s *sim) last() *cluster.EpochRecord { return &s.hist[len(s.hist)-1] }

func (s *sim) epoch(ms []cluster.Member) {
	slices.SortFunc(ms, func(a, b cluster.Member) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	e := ids.Epoch(1)
	if len(s.hist) > 0 {
		e = s.last().Epoch + 1
	}
	s.hist = append(s.hist, cluster.EpochRecord{Epoch: e, Members: ms})
	s.windows = map[ids.Epoch]*Window{}
}

func (s *sim) members() []cluster.Member { return slices.Clone(s.last().Members) }

func (s *sim) window(from ids.Epoch) *Window {
	if w := s.windows[from]; w != nil {
		return w
	}
	w, err := NewWindow(s.hist, from, s.last().Epoch)
	if err != nil {
		s.t.Fatal(err)
	}
	s.windows[from] = w
	return w
}

// windowFor is the window from the earliest epoch n vouches from (its
// recovered epoch, or an older per-object start) to the last.
func (s *sim) windowFor(n *simNode) *Window {
	lo := s.last().Epoch
	if n.from > 0 {
		lo = min(lo, n.from)
	}
	for _, e := range n.start {
		if e > 0 {
			lo = min(lo, e)
		}
	}
	return s.window(max(lo, s.hist[0].Epoch))
}

// locals lists n's copies with their starts.
func (s *sim) locals(n *simNode) []Local {
	var out []Local
	for oid, v := range n.objs {
		st := n.from
		if e, ok := n.start[oid]; ok {
			st = e
		}
		out = append(out, Local{OID: oid, Version: v, Copies: s.copies, Start: st})
	}
	slices.SortFunc(out, func(a, b Local) int { return int(a.OID) - int(b.OID) })
	return out
}

// valid is n's own view of its copy of oid (0 if absent).
func (s *sim) valid(w *Window, n *simNode, oid ids.ObjectID) ids.Epoch {
	if _, ok := n.objs[oid]; !ok {
		return 0
	}
	st := n.from
	if e, ok := n.start[oid]; ok {
		st = e
	}
	return w.Valid(n.id, oid, s.copies, st)
}

// checkCurrent: every copy its node holds current (valid at the last
// epoch) has the acknowledged version, and so does every writer's copy
// that a writer may serve (current ones).
func (s *sim) checkCurrent(when string) {
	to := s.last().Epoch
	// An acknowledged version that no live node holds was lost to more
	// failures than its copies allow (a write acknowledged by fewer
	// writers than copies while others were down, whose writers then
	// died): nothing can be checked for it.
	held := map[ids.ObjectID]bool{}
	for _, n := range s.nodes {
		for oid, v := range n.objs {
			if n.alive && v == s.truth[oid] {
				held[oid] = true
			}
		}
	}
	for _, n := range s.nodes {
		if !n.alive {
			continue
		}
		w := s.windowFor(n)
		for oid, v := range n.objs {
			if s.valid(w, n, oid) == to && v != s.truth[oid] && held[oid] {
				s.dump(oid)
				s.t.Logf("%s: from %v start %v", n.id, n.from, n.start[oid])
				s.t.Fatalf("%s: %s holds %v current at epoch %v with version %d, acknowledged %d", when, n.id, oid, to, v, s.truth[oid])
			}
		}
	}
}

func (s *sim) dump(oid ids.ObjectID) {
	for _, r := range s.hist {
		ww, _ := NewWindow(s.hist, r.Epoch, r.Epoch)
		s.t.Logf("epoch %v: members %v placement %v", r.Epoch, r.Members, ww.Placement(r.Epoch, oid, s.copies, nil))
	}
}

// pullFresh makes n's copy of oid current the way a replica does before a
// write (ensure): the best copy any member has.
func (s *sim) pullFresh(n *simNode, oid ids.ObjectID) bool {
	to := s.last().Epoch
	var entries []proto.ObjState
	all := true // every other member answered
	for _, m := range s.last().Members {
		o := s.nodes[m.ID]
		if o.id == n.id {
			continue
		}
		if m.Down || !o.alive {
			all = false
			continue
		}
		v, ok := o.objs[oid]
		if !ok {
			continue
		}
		valid := s.valid(s.windowFor(o), o, oid)
		entries = append(entries, proto.ObjState{OID: oid, Version: v, Valid: valid, Flags: proto.ObjPresent})
	}
	if v, ok := n.objs[oid]; ok {
		entries = append(entries, proto.ObjState{OID: oid, Version: v, Flags: proto.ObjPresent,
			Valid: s.valid(s.windowFor(n), n, oid)})
	}
	b := Choose(entries, to, all)
	if b < 0 {
		return false
	}
	if v, ok := n.objs[oid]; !ok || v != entries[b].Version {
		n.objs[oid] = entries[b].Version
		s.moved++
	}
	n.start[oid] = to
	return true
}

// write writes oid at the last epoch: every writer gets it, after making
// its copy current; acknowledged only if all writers took it.
func (s *sim) write(oid ids.ObjectID) {
	to := s.last().Epoch
	var place []cluster.Member
	w := s.window(to)
	place = w.Placement(to, oid, s.copies, place)
	var writers []*simNode
	for _, m := range place {
		if !m.Down && s.nodes[m.ID].alive {
			writers = append(writers, s.nodes[m.ID])
		}
	}
	if len(writers) < MinWriters(s.copies) || len(writers) < len(place)-countDown(place) {
		return // too few writers, or a writer is dead but not yet marked down: the write fails
	}
	_, exists := s.truth[oid]
	for _, n := range writers {
		cur := s.valid(s.windowFor(n), n, oid) == to
		if exists && !cur && !s.pullFresh(n, oid) {
			return // nobody has a copy to start from: the write fails
		}
	}
	s.nextVer++
	for _, n := range writers {
		n.objs[oid] = s.nextVer
		n.start[oid] = to
	}
	s.truth[oid] = s.nextVer
}

func countDown(ms []cluster.Member) int {
	n := 0
	for _, m := range ms {
		if m.Down {
			n++
		}
	}
	return n
}

// recover runs recovery on every up member (or only some, to leave it
// half done): doubts and inventories, fetches, then misplaced deletions.
func (s *sim) recover(share float64) {
	to := s.last().Epoch
	for _, m := range s.last().Members {
		n := s.nodes[m.ID]
		if m.Down || !n.alive || s.rng.Float64() >= share {
			continue
		}
		from := n.from
		if from < s.hist[0].Epoch {
			from = 0 // a new node, or history lost: vouches for nothing
		}
		w := s.windowFor(n)
		locals := s.locals(n)
		plan := w.PlanFor(n.id, locals)
		if os.Getenv("TRACE") != "" {
			s.t.Logf("epoch %v: %s recovers from %v (share), doubts %d", to, n.id, from, len(plan.Doubt))
		}
		// Inventories from every other up member.
		wanted := map[ids.ObjectID][]proto.ObjState{}
		for _, o := range s.last().Members {
			src := s.nodes[o.ID]
			if o.Down || !src.alive || src.id == n.id {
				continue
			}
			sfrom := src.from
			if sfrom < s.hist[0].Epoch {
				sfrom = 0
			}
			sw := s.window(min(s.windowFor(src).From(), w.From()))
			sl := s.locals(src)
			valid := make([]ids.Epoch, len(sl))
			for i, l := range sl {
				valid[i] = sw.Valid(src.id, l.OID, l.Copies, l.Start)
			}
			for i, l := range sl {
				if os.Getenv("TRACE") == l.OID.String() {
					s.t.Logf("epoch %v: source %s (from %v) has %v version %d start %v valid %v", to, src.id, src.from, l.OID, l.Version, l.Start, valid[i])
				}
			}
			sw.Inventories(src.id, sl, valid, from, func(dst ids.NodeID, e proto.ObjState) {
				if dst == n.id {
					wanted[e.OID] = append(wanted[e.OID], e)
				}
			})
		}
		for _, c := range plan.Doubt {
			if _, ok := wanted[c.OID]; !ok {
				wanted[c.OID] = nil
			}
		}
		unresolved := 0
		allUp := true
		for _, o := range s.last().Members {
			allUp = allUp && !o.Down && s.nodes[o.ID].alive
		}
		for oid, entries := range wanted {
			if os.Getenv("TRACE") == oid.String() {
				s.t.Logf("epoch %v: %s from %v wants %v: entries %v, has %v", to, n.id, from, oid, entries, n.objs[oid])
			}
			if v, ok := n.objs[oid]; ok {
				entries = append(entries, proto.ObjState{OID: oid, Version: v, Flags: proto.ObjPresent, Valid: s.valid(w, n, oid)})
			}
			if Best(entries) < 0 {
				if !s.pullFresh(n, oid) { // nobody vouches: ask everyone
					unresolved++
				}
				continue
			}
			b := Choose(entries, to, allUp)
			if b < 0 {
				unresolved++
				continue
			}
			if v, ok := n.objs[oid]; !ok || v != entries[b].Version {
				n.objs[oid] = entries[b].Version
				s.moved++
			}
			n.start[oid] = to
		}
		if unresolved > 0 || !allUp {
			// Recovery is not complete (a down member may hold objects
			// this node lacks and has not heard of): the recovered epoch
			// stays.
			continue
		}
		// The recovered epoch moves on; copies that are not current (no
		// longer placed here) keep the start they are vouched from, so
		// that they stay sources until the new holders have theirs.
		for oid := range n.objs {
			st, ok := n.start[oid]
			if !ok {
				st = n.from
			}
			if st == 0 {
				continue
			}
			if w.Valid(n.id, oid, s.copies, st) == to {
				delete(n.start, oid)
			} else {
				n.start[oid] = st
			}
		}
		n.from = to
		// Misplaced copies go once the placement holds them current.
		for _, mp := range plan.Misplaced {
			place := w.Placement(to, mp.OID, s.copies, nil)
			ok := len(place) > 0
			for _, p := range place {
				o := s.nodes[p.ID]
				if p.Down || !o.alive {
					ok = false
					break
				}
				ow := s.windowFor(o)
				if _, has := o.objs[mp.OID]; !has || o.objs[mp.OID] < mp.Version || s.valid(ow, o, mp.OID) != to {
					ok = false
					break
				}
			}
			if ok {
				delete(n.objs, mp.OID)
			}
		}
	}
}

// checkHealed: with every member up and recovery done everywhere, each
// object is on exactly its placement, at the acknowledged version.
func (s *sim) checkHealed() {
	w := s.window(s.last().Epoch)
	to := s.last().Epoch
	lost := 0
	for oid, v := range s.truth {
		held := false
		for _, n := range s.nodes {
			held = held || n.alive && n.objs[oid] == v
		}
		if !held {
			lost++
			continue
		}
		place := w.Placement(to, oid, s.copies, nil)
		want := map[ids.NodeID]bool{}
		for _, p := range place {
			want[p.ID] = true
		}
		for id, n := range s.nodes {
			got, has := n.objs[oid]
			switch {
			case want[id] && (!has || got != v):
				s.dump(oid)
				s.t.Fatalf("epoch %v: %s should hold %v at version %d, has %d (present %v)", to, id, oid, v, got, has)
			case !want[id] && has && n.alive:
				for _, p := range place {
					o := s.nodes[p.ID]
					s.t.Logf("holder %s: version %d from %v start %v valid %v", p.ID, o.objs[oid], o.from, o.start[oid], s.valid(s.windowFor(o), o, oid))
				}
				s.t.Logf("%s: version %d (acknowledged %d) from %v start %v", id, got, v, n.from, n.start[oid])
				s.t.Fatalf("epoch %v: %s still holds %v, placed on %v", to, id, oid, place)
			}
		}
	}
	if lost > 0 {
		s.t.Logf("%d objects lost to more failures than their copies allow", lost)
	}
}

// TestRandomHistory plays random writes, losses, joins, disk
// replacements and short absences on a model cluster, with recovery
// sometimes cut short by the next change, and checks after every step that
// no copy taken as current is stale, and after a full recovery that every
// object is exactly on its placement at its acknowledged version.
func TestRandomHistory(t *testing.T) {
	seed := testSeed(t)
	rounds := 20
	if raceEnabled {
		rounds = 3 // nothing here is concurrent; keep the race run short
	}
	for round := range rounds {
		rng := rand.New(rand.NewPCG(seed, uint64(round)))
		s := &sim{t: t, rng: rng, nodes: map[ids.NodeID]*simNode{}, truth: map[ids.ObjectID]ids.Version{}, copies: 2 + rng.IntN(2)}
		newNode := func() cluster.Member {
			s.nextID++
			id := ids.NodeID(fmt.Sprintf("n%02d", s.nextID))
			s.nodes[id] = &simNode{id: id, store: "s1", alive: true, objs: map[ids.ObjectID]ids.Version{}, start: map[ids.ObjectID]ids.Epoch{}}
			return cluster.Member{ID: id, Store: "s1"}
		}
		var ms []cluster.Member
		for range 4 + rng.IntN(4) {
			ms = append(ms, newNode())
		}
		s.epoch(ms)
		for _, n := range s.nodes {
			n.from = 1
		}
		oids := make([]ids.ObjectID, 60)
		for i := range oids {
			oids[i] = ids.DataObject(ids.VDIID(1+i%3), uint32(i))
		}
		for step := range 60 {
			for range 10 {
				s.write(oids[rng.IntN(len(oids))])
			}
			s.checkCurrent(fmt.Sprintf("round %d step %d after writes", round, step))
			ms := s.members()
			switch ev := rng.IntN(7); {
			case ev == 0 && len(ms) > s.copies+1: // a node dies: down, later removed
				i := rng.IntN(len(ms))
				if !ms[i].Down {
					ms[i].Down = true
					s.nodes[ms[i].ID].alive = false
				} else {
					// Removed for good (a removed node that still runs
					// would join again as a member).
					s.nodes[ms[i].ID].alive = false
					ms = slices.Delete(ms, i, i+1)
				}
			case ev == 1: // a node joins
				ms = append(ms, newNode())
			case ev == 2: // a dead node comes back (same disk, or a new one)
				for i := range ms {
					if ms[i].Down {
						n := s.nodes[ms[i].ID]
						n.alive = true
						ms[i].Down = false
						if rng.IntN(2) == 0 {
							n.objs = map[ids.ObjectID]ids.Version{}
							n.store = fmt.Sprintf("s%d", step+2)
							ms[i].Store = n.store
							n.from = 0
						}
						break
					}
				}
			case ev == 3 && len(ms) > s.copies+1: // a live node is marked down (a false alarm)
				i := rng.IntN(len(ms))
				ms[i].Down = true
			case ev == 4: // false alarms end
				for i := range ms {
					if ms[i].Down && s.nodes[ms[i].ID].alive {
						ms[i].Down = false
					}
				}
			}
			if !slices.Equal(ms, s.last().Members) {
				s.epoch(ms)
			}
			s.checkCurrent(fmt.Sprintf("round %d step %d after epoch %v", round, step, s.last().Epoch))
			s.recover(0.3 + rng.Float64())
			s.checkCurrent(fmt.Sprintf("round %d step %d after recovery", round, step))
		}
		// Bring everything back up, recover fully, twice (the deletions of
		// misplaced copies need the holders' recovery first).
		ms = s.members()
		for i := range ms {
			if !s.nodes[ms[i].ID].alive {
				ms = slices.DeleteFunc(ms, func(m cluster.Member) bool { return !s.nodes[m.ID].alive })
				break
			}
		}
		for i := range ms {
			ms[i].Down = false
		}
		s.epoch(ms)
		for range 3 {
			s.recover(1)
		}
		s.checkCurrent(fmt.Sprintf("round %d end", round))
		s.checkHealed()
		t.Logf("round %d: %d copies, %d epochs, %d objects written, %d objects copied by recovery",
			round, s.copies, s.last().Epoch, len(s.truth), s.moved)
	}
}

// TestScale: 1000 nodes (-scale-nodes) in one process, no ports. A node
// loss and a join move within a few percent of the ideal amount of data,
// each node's planning is one pass over its own objects, and a node back
// from a short absence fetches nothing (its versions match).
func TestScale(t *testing.T) {
	N := *nodesFlag
	if raceEnabled && N > 300 {
		N = 300 // the race detector makes ring walks ~10x slower; nothing here is concurrent
	}
	objects, copies := 300*N, 3 // 900 copies per node
	var ms []cluster.Member
	for i := range N {
		ms = append(ms, cluster.Member{ID: ids.NodeID(fmt.Sprintf("node%04d", i)), Store: "a"})
	}
	hist := []cluster.EpochRecord{{Epoch: 1, Members: ms}}
	start := time.Now()
	w1, err := NewWindow(hist, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ring of %d nodes built in %v", N, time.Since(start))
	locals := map[ids.NodeID][]Local{}
	oids := make([]ids.ObjectID, objects)
	var buf []cluster.Member
	for i := range oids {
		oids[i] = ids.DataObject(ids.VDIID(1+i%50), uint32(i/50))
		for _, m := range w1.Placement(1, oids[i], copies, buf[:0]) {
			locals[m.ID] = append(locals[m.ID], Local{OID: oids[i], Version: 7, Copies: copies, Start: 1})
		}
	}

	// plan runs every node's plan and inventories and returns the
	// fetches (receiver -> objects with a source), the doubts, the
	// misplaced copies, and the slowest node's planning time.
	plan := func(hist []cluster.EpochRecord, from ids.Epoch) (map[ids.NodeID]map[ids.ObjectID]int, int, int, time.Duration) {
		w, err := NewWindow(hist, from, hist[len(hist)-1].Epoch)
		if err != nil {
			t.Fatal(err)
		}
		fetch := map[ids.NodeID]map[ids.ObjectID]int{}
		doubts, misplaced := 0, 0
		var slowest time.Duration
		for _, m := range w.Epoch(w.To()).Members {
			if m.Down {
				continue
			}
			t0 := time.Now()
			l := locals[m.ID]
			p := w.PlanFor(m.ID, l)
			doubts += len(p.Doubt)
			misplaced += len(p.Misplaced)
			valid := make([]ids.Epoch, len(l))
			for i := range l {
				valid[i] = w.Valid(m.ID, l[i].OID, l[i].Copies, l[i].Start)
			}
			w.Inventories(m.ID, l, valid, from, func(to ids.NodeID, s proto.ObjState) {
				if fetch[to] == nil {
					fetch[to] = map[ids.ObjectID]int{}
				}
				fetch[to][s.OID]++
			})
			slowest = max(slowest, time.Since(t0))
		}
		return fetch, doubts, misplaced, slowest
	}
	count := func(f map[ids.NodeID]map[ids.ObjectID]int) int {
		n := 0
		for _, m := range f {
			n += len(m)
		}
		return n
	}

	// Loss: node0007 dies (down), then is removed.
	lost := ms[7].ID
	down := slices.Clone(ms)
	down[7].Down = true
	gone := slices.Delete(slices.Clone(ms), 7, 8)
	hist = append(hist, cluster.EpochRecord{Epoch: 2, Members: down}, cluster.EpochRecord{Epoch: 3, Members: gone})
	fetch, doubts, misplaced, slowest := plan(hist, 1)
	ideal := len(locals[lost])
	got := count(fetch)
	t.Logf("loss of 1 of %d nodes: %d objects fetched, ideal %d (the lost node's); %d doubts, %d misplaced; slowest node planned in %v (%d objects)",
		N, got, ideal, doubts, misplaced, slowest, objects*copies/N)
	if got != ideal || doubts != 0 || misplaced != 0 {
		t.Errorf("loss: fetched %d, want exactly %d; doubts %d and misplaced %d, want 0", got, ideal, doubts, misplaced)
	}
	for to, m := range fetch {
		for oid, srcs := range m {
			if srcs != copies-1 {
				t.Fatalf("loss: %s fetches %v from %d sources, want %d", to, oid, srcs, copies-1)
			}
		}
	}
	// Apply the loss: receivers hold what they fetched.
	delete(locals, lost)
	for to, m := range fetch {
		for oid := range m {
			locals[to] = append(locals[to], Local{OID: oid, Version: 7, Copies: copies, Start: 3})
		}
	}

	// Join: one new node.
	joiner := ids.NodeID("node-new")
	joined := append(slices.Clone(gone), cluster.Member{ID: joiner, Store: "b"})
	slices.SortFunc(joined, func(a, b cluster.Member) int {
		if a.ID < b.ID {
			return -1
		}
		return 1
	})
	hist = append(hist, cluster.EpochRecord{Epoch: 4, Members: joined})
	for id := range locals {
		l := locals[id]
		for i := range l {
			l[i].Start = 3
		}
	}
	fetch, doubts, misplaced, slowest = plan(hist, 3)
	got = count(fetch)
	ideal = objects * copies / len(joined)
	dev := float64(got-ideal) / float64(ideal)
	t.Logf("join of a %dth node: %d objects fetched (all by the new node: %v), ideal %d (%+.1f%%); %d misplaced; slowest node planned in %v",
		len(joined), got, len(fetch) == 1 && fetch[joiner] != nil, ideal, 100*dev, misplaced, slowest)
	if len(fetch) != 1 || fetch[joiner] == nil || misplaced != got || doubts != 0 || dev > 0.1 || dev < -0.1 {
		t.Errorf("join: fetched %d (ideal %d, receivers %d), misplaced %d, doubts %d", got, ideal, len(fetch), misplaced, doubts)
	}

	// A short absence: node0003 down, then up again with its disk.
	back := ms[3].ID
	d2 := slices.Clone(joined)
	for i := range d2 {
		if d2[i].ID == back {
			d2[i].Down = true
		}
	}
	hist = append(hist, cluster.EpochRecord{Epoch: 5, Members: d2}, cluster.EpochRecord{Epoch: 6, Members: joined})
	w, err := NewWindow(hist, 4, 6)
	if err != nil {
		t.Fatal(err)
	}
	for id := range locals {
		l := locals[id]
		for i := range l {
			l[i].Start = 4
		}
	}
	p := w.PlanFor(back, locals[back])
	entries := 0
	same := 0
	have := map[ids.ObjectID]ids.Version{}
	for _, l := range locals[back] {
		have[l.OID] = l.Version
	}
	for _, m := range joined {
		if m.ID == back {
			continue
		}
		l := locals[m.ID]
		valid := make([]ids.Epoch, len(l))
		for i := range l {
			valid[i] = w.Valid(m.ID, l[i].OID, l[i].Copies, 4)
		}
		w.Inventories(m.ID, l, valid, 4, func(to ids.NodeID, s proto.ObjState) {
			if to != back {
				t.Fatalf("short absence of %s: %s sends %v to %s", back, m.ID, s.OID, to)
			}
			entries++
			if have[s.OID] == s.Version && s.Valid == 6 {
				same++
			}
		})
	}
	t.Logf("short absence: %s doubts %d of its %d copies (%d no longer placed there since the join); %d inventory entries, %d with its own version (nothing to copy)",
		back, len(p.Doubt), len(locals[back]), len(p.Misplaced), entries, same)
	if len(p.Doubt)+len(p.Misplaced) != len(locals[back]) || same != entries || entries < len(p.Doubt) {
		t.Errorf("short absence: %d doubts + %d misplaced of %d copies, %d of %d entries match", len(p.Doubt), len(p.Misplaced), len(locals[back]), same, entries)
	}
}
