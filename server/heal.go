package server

import (
	"cmp"
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/objstore"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/recovery"
	"github.com/sheepfs/sheepfs/vdi"
)

// healer keeps this node's copies current and complete across membership
// changes, by the rules of package recovery:
//
//   - At each new epoch it plans its own copies (observe): those it is a
//     writer of but cannot vouch for are doubted, and refreshed before
//     they serve a read or take a write; those no longer placed here are
//     misplaced, and deleted once every node of their placement holds
//     them current at a version at least as new.
//   - It asks every other up member for an inventory of what it should
//     hold and cannot vouch for, and fetches each object (only its
//     allocated ranges) from the best source, in the background, degraded
//     objects first, throttled by the cluster's recovery settings. An
//     object a client reads or writes is fetched at once (ensure).
//   - Once every member is up, every inventory is in and nothing is left
//     to fetch, the epoch is recorded in DIR/recovered-epoch: a restart
//     plans from there.
type healer struct {
	n    *Node
	path string

	// plannedA is the epoch of the current plan, read without mu on the
	// I/O path; ndoubt counts doubt.
	plannedA atomic.Uint64
	ndoubt   atomic.Int64
	obsMu    sync.Mutex // one observe at a time
	kick     chan struct{}

	mu      sync.Mutex
	planned ids.Epoch
	gen     uint64    // bumped by every plan
	from    ids.Epoch // recovered epoch; 0: vouches for nothing
	// starts override from for single objects: fetched or created as a
	// writer later, or misplaced copies that keep the start they are
	// vouched from while they are still sources.
	starts    map[ids.ObjectID]ids.Epoch
	minStart  ids.Epoch // the earliest of starts (0: none)
	win       *recovery.Window
	winKey    [2]ids.Epoch
	doubt     map[ids.ObjectID]*want
	misplaced map[ids.ObjectID]recovery.Copy
	garbage   []ids.ObjectID // copies of images that no longer exist
	inflight  map[ids.ObjectID]*pull
	locks     objLocks            // per object: its changes and recoveries, one at a time
	invDone   map[ids.NodeID]bool // senders whose inventory is complete
	// lost are objects whose copy went with a disk: doubted at every plan
	// until fetched again (the history would vouch for them), and kept in
	// DIR/lost-objects across restarts.
	lost      map[ids.ObjectID]struct{}
	lostDirty bool
	// lostSeq counts markLost calls, lostAt says at which one each lost
	// object was marked: a fetch or check decided before an object was
	// lost must not clear the mark.
	lostSeq uint64
	lostAt  map[ids.ObjectID]uint64
	missLog logLimit // of copies that missed a change (changeCopy)
	// gate orders replica changes against plans: a change holds it shared
	// from its epoch check to the end of its store operation, and a new
	// plan holds it exclusively. So a change tagged with an epoch never
	// lands after the node planned the next one, where a new holder may
	// already have fetched the copy without it.
	gate    sync.RWMutex
	exposed int
	stats   healStats
	fix     repairs // damaged copies (repair.go)

	// lastClient is when (unix ns) this node last served client I/O; while
	// it does, background copies run one at a time, each followed by a
	// pause as long as it took, so that they take at most half the disk.
	lastClient atomic.Int64
	slow       sync.Mutex // fetches here
	slowSrc    sync.Mutex // sparse reads served to other nodes' fetches

	lastMu sync.Mutex
	last   proto.RecoveryInfo // the last progress reported

	hurryQ chan ids.ObjectID // doubted objects clients read

	invMu    sync.Mutex // serves inventories: one computation at a time
	invEpoch ids.Epoch
	invCache map[ids.Epoch]map[ids.NodeID][]proto.ObjState // by receiver start
}

// want is an object this node must fetch or refresh at the planned epoch.
type want struct {
	local    proto.ObjState // own copy, if Present
	srcs     []proto.ObjState
	from     []ids.NodeID // from[i] sent srcs[i]
	degraded bool
	counted  bool
}

type pull struct {
	done chan struct{}
	err  error
}

// healStats is the progress of the current plan.
type healStats struct {
	started         time.Time
	checked, copied int   // objects settled (kept as they were / fetched)
	bytes           int64 // fetched
	rate            float64
	rateAt          time.Time
	rateBytes       int64
	deleted         int // misplaced copies deleted
	failed          int
}

func newHealer(n *Node) *healer {
	h := &healer{n: n, path: filepath.Join(n.cfg.Dir, "recovered-epoch"),
		starts: map[ids.ObjectID]ids.Epoch{}, doubt: map[ids.ObjectID]*want{},
		misplaced: map[ids.ObjectID]recovery.Copy{}, inflight: map[ids.ObjectID]*pull{},
		invDone: map[ids.NodeID]bool{}, lost: map[ids.ObjectID]struct{}{}, lostAt: map[ids.ObjectID]uint64{},
		kick: make(chan struct{}, 1), hurryQ: make(chan ids.ObjectID, 64), fix: repairs{q: make(chan ids.ObjectID, 256), pending: map[ids.ObjectID]bool{}}}
	if b, err := os.ReadFile(h.path); err == nil {
		if e, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil {
			h.from = ids.Epoch(e)
		}
	}
	if b, err := os.ReadFile(h.lostPath()); err == nil {
		if oids, err := proto.DecodeOIDsAny(b); err == nil {
			for _, oid := range oids {
				h.lost[oid] = struct{}{}
			}
		} else {
			n.log.Warn().Err(err).Msg("recovery: unreadable list of lost objects: planning from scratch")
			h.from = 0
		}
	}
	return h
}

func (h *healer) lostPath() string { return filepath.Join(h.n.cfg.Dir, "lost-objects") }

// markLost records that this node lost its copies of oids (with a disk):
// they are fetched again, and the node vouches for none of them until
// then.
func (h *healer) markLost(oids []ids.ObjectID) {
	h.mu.Lock()
	h.lostSeq++
	for _, oid := range oids {
		h.lost[oid] = struct{}{}
		h.lostAt[oid] = h.lostSeq
		delete(h.starts, oid)
		delete(h.misplaced, oid)
		if h.doubt[oid] == nil {
			h.doubt[oid] = &want{}
		} else {
			h.doubt[oid].local = proto.ObjState{}
		}
	}
	h.ndoubt.Store(int64(len(h.doubt)))
	for _, oid := range oids {
		h.n.page.Bump(oid) // once doubted() sees it
	}
	h.saveLost()
	h.mu.Unlock()
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// saveLost writes the lost objects to DIR/lost-objects. h.mu is held.
func (h *healer) saveLost() {
	oids := make([]ids.ObjectID, 0, len(h.lost))
	for oid := range h.lost {
		oids = append(oids, oid)
	}
	if len(oids) == 0 {
		_ = os.Remove(h.lostPath())
		h.lostDirty = false
		return
	}
	if writeDurably(h.lostPath(), proto.AppendOIDs(nil, oids)) == nil {
		h.lostDirty = false
	}
}

// writeDurably replaces the file at path with data: a temp file, fsynced,
// renamed over it, and the directory fsynced.
func writeDurably(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// copiesOf returns the replica count of oid's image (objects are named by
// image, not by VDI handle), or 0 if the image is gone.
func copiesOf(st *cluster.State, oid ids.ObjectID) int {
	if img, ok := st.Image(oid.VDI()); ok {
		return img.Copies
	}
	return 0
}

// imageGone reports whether st knows that oid's image no longer exists:
// its ID was given out, and no VDI, snapshot or dead image has it. (A
// state that lags may not know a new image yet: that is not gone.)
func imageGone(st *cluster.State, oid ids.ObjectID) bool {
	_, ok := st.Image(oid.VDI())
	return !ok && oid.VDI() < st.NextVDI
}

// catchUp plans the node's current epoch before the node serves a local
// read or write at it: a copy the new epoch makes doubtful must never be
// used as current, not even for the moment before the background loop
// would have noticed. When nothing changed it costs an atomic load or two.
func (h *healer) catchUp() {
	if st := h.n.cl.State(); uint64(st.Epoch) > h.plannedA.Load() {
		h.observe(st)
	}
}

// startOf returns the epoch from which the node vouches for its copy of
// oid. h.mu is held.
func (h *healer) startOf(oid ids.ObjectID) ids.Epoch {
	if e, ok := h.starts[oid]; ok {
		return e
	}
	return h.from
}

// window returns the window from the earliest epoch the node vouches
// from (and from lo, if lo is in the history) to st's epoch, and the
// node's recovered epoch as the window can use it (0 if it fell out of the
// history). Windows are cached. h.mu is held.
func (h *healer) window(st *cluster.State, lo ids.Epoch) (*recovery.Window, ids.Epoch, error) {
	if len(st.History) == 0 {
		return nil, 0, errs.E(errs.NotReady, "no epoch history")
	}
	first := st.History[0].Epoch
	from := h.from
	if from < first {
		from = 0
	}
	low := st.Epoch
	for _, e := range []ids.Epoch{from, h.minStart, lo} {
		if e >= first {
			low = min(low, e)
		}
	}
	if h.win != nil && h.winKey == [2]ids.Epoch{st.Epoch, low} {
		return h.win, from, nil
	}
	w, err := recovery.NewWindow(st.History, low, st.Epoch)
	if err != nil {
		return nil, from, err
	}
	h.win, h.winKey = w, [2]ids.Epoch{st.Epoch, low}
	return w, from, nil
}

// setStart records a start for oid. h.mu is held.
func (h *healer) setStart(oid ids.ObjectID, e ids.Epoch) {
	h.starts[oid] = e
	if h.minStart == 0 || e < h.minStart {
		h.minStart = e
	}
}

// pruneStarts drops starts older than the history (nothing can be vouched
// from them any more) and works out the earliest. h.mu is held.
func (h *healer) pruneStarts(st *cluster.State) {
	h.minStart = 0
	for oid, e := range h.starts {
		if len(st.History) == 0 || e < st.History[0].Epoch {
			delete(h.starts, oid)
		} else if h.minStart == 0 || e < h.minStart {
			h.minStart = e
		}
	}
}

// locals lists this node's copies with their image's copies and starts.
// Copies of images that no longer exist are returned apart. h.mu is held.
func (h *healer) locals(st *cluster.State, from ids.Epoch) (ls []recovery.Local, garbage []ids.ObjectID) {
	return h.localsWith(st, from, h.starts)
}

// localsWith is locals with the given starts (a copy, so that h.mu need
// not be held).
func (h *healer) localsWith(st *cluster.State, from ids.Epoch, starts map[ids.ObjectID]ids.Epoch) (ls []recovery.Local, garbage []ids.ObjectID) {
	h.n.store.ForEach(func(oid ids.ObjectID, m objstore.Meta) error {
		c := copiesOf(st, oid)
		if c == 0 {
			if oid.VDI() < st.NextVDI { // not an image made a moment ago
				garbage = append(garbage, oid)
			}
			return nil
		}
		start := from
		if e, ok := starts[oid]; ok {
			start = e
		}
		ls = append(ls, recovery.Local{OID: oid, Version: m.Version, Copies: c, Start: start})
		return nil
	})
	return ls, garbage
}

// observe plans the node's copies at st's epoch, if not done yet.
func (h *healer) observe(st *cluster.State) {
	h.obsMu.Lock()
	defer h.obsMu.Unlock()
	if uint64(st.Epoch) <= h.plannedA.Load() {
		return
	}
	h.gate.Lock() // wait for changes tagged with the old epoch
	defer h.gate.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gen++
	h.planned = st.Epoch
	h.doubt = map[ids.ObjectID]*want{}
	h.misplaced = map[ids.ObjectID]recovery.Copy{}
	h.garbage = nil
	h.exposed = 0
	clear(h.invDone)
	h.stats = healStats{started: time.Now(), rateAt: time.Now()}
	h.pruneStarts(st)
	if _, ok := st.Member(h.n.id); ok && st.Formatted() {
		if w, from, err := h.window(st, 0); err != nil {
			h.n.log.Warn().Err(err).Msg("recovery: cannot plan")
		} else {
			ls, garbage := h.locals(st, from)
			p := w.PlanFor(h.n.id, ls)
			for _, c := range p.Doubt {
				h.doubt[c.OID] = &want{local: proto.ObjState{OID: c.OID, Version: c.Version, Valid: c.Valid, Flags: proto.ObjPresent}}
			}
			for _, c := range p.Misplaced {
				h.misplaced[c.OID] = c
			}
			h.garbage = garbage
			h.exposed = p.Exposed
			self, _ := st.Member(h.n.id)
			for oid := range h.lost {
				c := copiesOf(st, oid)
				if c == 0 || self.Down || !slices.ContainsFunc(st.Placement(oid, c, nil), func(m cluster.Member) bool { return m.ID == h.n.id }) {
					delete(h.lost, oid) // nothing to fetch here any more
					h.lostDirty = true
					continue
				}
				// Whatever copy is here, nothing vouches for it.
				w := &want{}
				if m, err := h.n.store.Stat(oid); err == nil {
					w.local = proto.ObjState{OID: oid, Version: m.Version, Flags: proto.ObjPresent}
				}
				h.doubt[oid] = w
			}
			if len(p.Doubt) > 0 || len(p.Misplaced) > 0 || len(garbage) > 0 {
				h.n.log.Info().Uint64("epoch", uint64(st.Epoch)).Int("doubted", len(p.Doubt)).
					Int("misplaced", len(p.Misplaced)).Int("orphans", len(garbage)).Msg("recovery: planned")
			}
		}
	}
	h.ndoubt.Store(int64(len(h.doubt)))
	h.plannedA.Store(uint64(st.Epoch))
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// doubted reports whether oid must be refreshed or fetched before use.
func (h *healer) doubted(oid ids.ObjectID) bool {
	if h.ndoubt.Load() == 0 {
		return false
	}
	h.mu.Lock()
	_, ok := h.doubt[oid]
	h.mu.Unlock()
	return ok
}

// settle records that this node's copy of oid is current at epoch e
// (fetched, kept after a check, or created as a writer).
// since is the lostSeq the decision was taken at (see seq): a copy lost
// after it is not settled.
func (h *healer) settle(oid ids.ObjectID, e ids.Epoch, fetched bool, bytes int64, since uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lostAt[oid] > since {
		return // lost with a disk since: it stays to fetch
	}
	if e == 0 {
		e = h.planned
	}
	h.setStart(oid, e)
	if _, ok := h.lost[oid]; ok {
		delete(h.lost, oid)
		delete(h.lostAt, oid)
		h.lostDirty = true
	}
	done := func() {
		if _, ok := h.doubt[oid]; ok {
			delete(h.doubt, oid)
			h.ndoubt.Store(int64(len(h.doubt)))
			if fetched {
				h.stats.copied++
				h.stats.bytes += bytes
			} else {
				h.stats.checked++
			}
		}
	}
	if e >= h.planned {
		delete(h.misplaced, oid)
		done()
		return
	}
	// Settled for an older plan than the current one, which listed this
	// node's copies before this one existed (a fetch across an epoch
	// change): place it now, as that plan would have.
	st := h.n.cl.State()
	c := copiesOf(st, oid)
	m, err := h.n.store.Stat(oid)
	if st.Epoch != h.planned || c == 0 || err != nil {
		return // a newer plan will see it
	}
	w, _, err := h.window(st, e)
	if err != nil {
		return
	}
	valid := w.Valid(h.n.id, oid, c, e)
	placed := slices.ContainsFunc(st.Placement(oid, c, nil), func(p cluster.Member) bool { return p.ID == h.n.id })
	switch {
	case !placed:
		h.misplaced[oid] = recovery.Copy{OID: oid, Version: m.Version, Valid: valid}
	case valid < h.planned:
		if h.doubt[oid] == nil {
			h.doubt[oid] = &want{local: proto.ObjState{OID: oid, Version: m.Version, Valid: valid, Flags: proto.ObjPresent}}
			h.ndoubt.Store(int64(len(h.doubt)))
			h.n.page.Bump(oid) // once doubted() sees it
		}
	default:
		delete(h.misplaced, oid)
		done()
	}
}

// seq returns the current lostSeq, for settle.
func (h *healer) seq() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lostSeq
}

// forget drops everything known of oid: no replica has it any more.
func (h *healer) forget(oid ids.ObjectID) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.doubt[oid]; ok {
		delete(h.doubt, oid)
		h.ndoubt.Store(int64(len(h.doubt)))
		h.stats.checked++
	}
	if _, ok := h.lost[oid]; ok {
		delete(h.lost, oid)
		delete(h.lostAt, oid)
		h.lostDirty = true
	}
	delete(h.starts, oid)
	delete(h.misplaced, oid)
}

// ensure makes the local copy of oid current if it is doubted, or if it
// is absent and must exist (a write or punch to an existing object). Calls
// for the same object share one pull.
func (h *healer) ensure(ctx context.Context, oid ids.ObjectID, mustExist bool) error {
	if !h.doubted(oid) {
		if !mustExist {
			return nil
		}
		if _, err := h.n.store.Stat(oid); err == nil {
			return nil
		} else if !errs.Is(err, errs.NotFound) {
			return err
		}
	}
	return h.once(ctx, oid, func() error {
		// A write may have created the copy since the check above: then
		// it stays (a fetched copy could lack that write).
		if !h.doubted(oid) {
			if _, err := h.n.store.Stat(oid); err == nil {
				return nil
			}
		}
		return h.pull(ctx, oid, true)
	})
}

// once runs fn for oid, holding the object's lock, unless a run for oid is
// in flight, whose result it then shares.
func (h *healer) once(ctx context.Context, oid ids.ObjectID, fn func() error) error {
	h.mu.Lock()
	p := h.inflight[oid]
	if p == nil {
		p = &pull{done: make(chan struct{})}
		h.inflight[oid] = p
		h.mu.Unlock()
		if unlock, err := h.locks.lock(ctx, oid); err != nil {
			p.err = err
		} else {
			p.err = fn()
			unlock()
		}
		h.mu.Lock()
		delete(h.inflight, oid)
		h.mu.Unlock()
		close(p.done)
		return p.err
	}
	h.mu.Unlock()
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return errs.E(errs.IO, "recover %v: %w", oid, ctx.Err())
	}
}

// validOf returns the valid epoch (see package recovery) of this node's
// copy of oid at st, with its Meta; NotFound if it has none.
func (h *healer) validOf(st *cluster.State, oid ids.ObjectID) (ids.Epoch, objstore.Meta, error) {
	m, err := h.n.store.Stat(oid)
	if err != nil {
		return 0, m, err
	}
	c := copiesOf(st, oid)
	if c == 0 {
		return 0, m, nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.validLocked(st, oid, c), m, nil
}

// validLocked is the valid epoch of this node's copy of oid (copies c)
// at st: what the history proves, for a doubted copy too (it may be the
// freshest there is), but 0 for a copy lost or just plugged in, which
// nothing proves. h.mu is held.
func (h *healer) validLocked(st *cluster.State, oid ids.ObjectID, c int) ids.Epoch {
	if h.planned != st.Epoch {
		return 0 // not planned yet: vouch for nothing
	}
	if _, ok := h.lost[oid]; ok {
		return 0
	}
	w, _, err := h.window(st, 0)
	if err != nil {
		return 0
	}
	return w.Valid(h.n.id, oid, c, h.startOf(oid))
}

// statAll asks members for their copy of oid, writers of its placement
// first: if one of them is current, the others need not be asked. It
// returns the answers (this node's own copy included) and whether every
// member answered.
func (h *healer) statAll(ctx context.Context, st *cluster.State, oid ids.ObjectID) (answers []proto.ObjState, nodes []cluster.Member, all bool) {
	if v, m, err := h.validOf(st, oid); err == nil {
		self, _ := st.Member(h.n.id)
		answers = append(answers, proto.ObjState{OID: oid, Version: m.Version, Valid: v, Flags: proto.ObjPresent})
		nodes = append(nodes, self)
	}
	var mu sync.Mutex
	all = true
	ask := func(ms []cluster.Member) {
		var wg sync.WaitGroup
		for _, m := range ms {
			if m.ID == h.n.id {
				continue
			}
			if m.Down || h.n.cl.Gone(m.ID) {
				mu.Lock()
				all = false
				mu.Unlock()
				continue
			}
			wg.Go(func() {
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				resp, err := h.n.peers.Get(m.Addr).Call(cctx, &proto.Msg{Header: proto.Header{Op: proto.OpStatObj, Epoch: st.Epoch, ID: uint64(oid)}})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case errs.Is(err, errs.NotFound):
				case err != nil:
					all = false
				default:
					answers = append(answers, proto.ObjState{OID: oid, Version: ids.Version(resp.Aux), Valid: ids.Epoch(resp.Offset), Flags: proto.ObjPresent})
					nodes = append(nodes, m)
				}
			})
		}
		wg.Wait()
	}
	c := copiesOf(st, oid)
	place := st.Placement(oid, c, nil)
	ask(place)
	for _, a := range answers {
		if a.Valid >= st.Epoch {
			return answers, nodes, all // a current copy: that settles it
		}
	}
	var others []cluster.Member
	for _, m := range st.Members {
		if !slices.ContainsFunc(place, func(p cluster.Member) bool { return p.ID == m.ID }) {
			others = append(others, m)
		}
	}
	ask(others)
	return answers, nodes, all
}

// pull makes this node's copy of oid the one to trust, asking the members
// (see recovery.Choose): it keeps its own copy if that is the one, or
// fetches the chosen one. It fails (retryably) while no choice is safe.
func (h *healer) pull(ctx context.Context, oid ids.ObjectID, urgent bool) error {
	_, err := h.pullN(ctx, oid, urgent)
	return err
}

// pullN is pull, returning the bytes it fetched.
func (h *healer) pullN(ctx context.Context, oid ids.ObjectID, urgent bool) (int64, error) {
	st := h.n.cl.State()
	if imageGone(st, oid) {
		// Its image is gone (a copy marked lost, then its VDI deleted):
		// the collector removes the other copies, and a fetch racing it
		// would leave one here for good.
		h.forget(oid)
		return 0, errs.E(errs.NotFound, "object %v: its image no longer exists", oid)
	}
	since := h.seq()
	answers, nodes, all := h.statAll(ctx, st, oid)
	i := recovery.Choose(answers, st.Epoch, all)
	switch {
	case i < 0 && len(answers) == 0 && all:
		h.forget(oid) // removed everywhere: nothing to recover
		return 0, errs.E(errs.NotFound, "object %v: no replica has it", oid)
	case i < 0:
		return 0, errs.E(errs.NotReady, "recover %v: no current copy answered, and not every member did", oid)
	case nodes[i].ID == h.n.id:
		h.settle(oid, st.Epoch, false, 0, since)
		return 0, nil
	}
	n, err := h.fetch(ctx, st, oid, nodes[i], urgent)
	if err != nil {
		return 0, err
	}
	h.settle(oid, st.Epoch, true, n, since)
	return n, nil
}

// sparseUrgent in the Aux of a FlagSparse OpReadObj: a client waits for
// this copy.
const sparseUrgent = 1

// sparseBufSize holds a whole object as a SparseObject.
var sparseBufSize = vdi.ObjectSize + proto.SparseHeaderSize(proto.MaxExtents)

// fetch copies node src's copy of oid here (only its allocated ranges),
// with src's version, and returns the bytes moved.
// A client waits on an urgent fetch: the source does not pace it.
func (h *healer) fetch(ctx context.Context, st *cluster.State, oid ids.ObjectID, src cluster.Member, urgent bool) (int64, error) {
	return h.fetchWith(ctx, st, oid, src, urgent, func(oe []objstore.Extent, data []byte, ver ids.Version) error {
		if imageGone(h.n.cl.State(), oid) {
			return errs.E(errs.NotFound, "object %v: its image no longer exists", oid)
		}
		return h.n.store.ReplaceSparse(oid, oe, data, ver, st.Epoch)
	})
}

// fetchWith reads node src's copy of oid and hands it to use: its ranges,
// their bytes, and its version.
func (h *healer) fetchWith(ctx context.Context, st *cluster.State, oid ids.ObjectID, src cluster.Member, urgent bool,
	use func(oe []objstore.Extent, data []byte, ver ids.Version) error) (int64, error) {
	buf := proto.GetBuf(sparseBufSize)
	defer proto.PutBuf(buf)
	aux := uint64(0)
	if urgent {
		aux = sparseUrgent
	}
	resp, err := h.n.peers.Get(src.Addr).CallInto(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpReadObj,
		Flags: proto.FlagSparse, Epoch: st.Epoch, ID: uint64(oid), Length: vdi.ObjectSize}, Aux: aux}, buf)
	if err != nil {
		if errs.Is(err, errs.NotFound) {
			return 0, err // removed meanwhile: the caller asks again
		}
		return 0, errs.E(errs.NotReady, "recover %v from %s: %w", oid, src.ID, err)
	}
	if resp.Flags&proto.FlagSparse == 0 {
		return 0, errs.E(errs.IO, "recover %v from %s: the answer is not a sparse object", oid, src.ID)
	}
	exts, data, err := proto.DecodeSparse(resp.Data, vdi.ObjectSize)
	if err != nil {
		return 0, errs.E(errs.IO, "recover %v from %s: %w", oid, src.ID, err)
	}
	oe := make([]objstore.Extent, len(exts))
	for i, e := range exts {
		oe[i] = objstore.Extent{Off: e.Off, Len: e.Len}
	}
	if err := use(oe, data, ids.Version(resp.Aux)); err != nil {
		return 0, err
	}
	return int64(len(data)), nil
}

// readSparse answers a FlagSparse OpReadObj: the whole object as a
// SparseObject, lying in buf, a pooled buffer.
func (h *healer) readSparse(oid ids.ObjectID, urgent bool) (data, buf []byte, m objstore.Meta, err error) {
	if !urgent && h.clientBusy() {
		// The disk serves clients: one recovery read at a time, and the
		// next waits as long as this one took.
		h.slowSrc.Lock()
		start := time.Now()
		defer func() {
			d := time.Since(start)
			go func() {
				time.Sleep(d)
				h.slowSrc.Unlock()
			}()
		}()
	}
	buf = proto.GetBuf(sparseBufSize)
	hdr := proto.SparseHeaderSize(proto.MaxExtents)
	exts, m, err := h.n.store.ReadSparse(oid, buf[hdr:], proto.MaxExtents)
	if err != nil {
		if errs.Is(err, errs.Corrupt) {
			h.damaged(oid, err) // the fetching node asks another source
		}
		proto.PutBuf(buf)
		return nil, nil, m, err
	}
	var total int64
	pe := make([]proto.Extent, len(exts))
	for i, e := range exts {
		pe[i] = proto.Extent{Off: e.Off, Len: e.Len}
		total += e.Len
	}
	// The header goes right before the data, which starts at hdr.
	start := hdr - proto.SparseHeaderSize(len(pe))
	proto.PutSparseHeader(buf[start:], pe)
	return buf[start : int64(hdr)+total], buf, m, nil
}

// run is the background loop: it plans new epochs, gathers inventories,
// fetches what is missing, deletes misplaced and orphaned copies, and
// records the recovered epoch.
func (h *healer) run(stop <-chan struct{}) {
	go h.sweepLoop(stop)
	for range 2 {
		go h.hurryLoop(stop)
	}
	for {
		ch := h.n.cl.Changed()
		st := h.n.cl.State()
		h.mu.Lock()
		if h.lostDirty {
			h.saveLost()
		}
		h.mu.Unlock()
		if self, ok := st.Member(h.n.id); ok && st.Formatted() && !self.Down {
			h.observe(st)
			h.step(stop, st)
		}
		select {
		case <-stop:
			return
		case <-ch:
		case <-h.kick:
		case <-time.After(time.Second):
		}
	}
}

// step gathers the inventories still missing and fetches what is known
// to be needed, then records the epoch if everything is done.
func (h *healer) step(stop <-chan struct{}, st *cluster.State) {
	h.mu.Lock()
	gen := h.gen
	from := h.from
	if from < st.History[0].Epoch {
		from = 0
	}
	var ask []cluster.Member
	for _, m := range st.Members {
		if m.ID != h.n.id && !m.Down && !h.invDone[m.ID] {
			ask = append(ask, m)
		}
	}
	h.mu.Unlock()
	if len(ask) > 0 {
		h.gather(stop, st, gen, from, ask)
	}
	h.work(stop, st, gen)
	h.record(st, gen)
}

// gather asks members for their inventories for this node (a few at a
// time) and adds the entries to the doubts.
func (h *healer) gather(stop <-chan struct{}, st *cluster.State, gen uint64, from ids.Epoch, ms []cluster.Member) {
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for _, m := range ms {
		select {
		case <-stop:
			return
		case sem <- struct{}{}:
		}
		wg.Go(func() {
			defer func() { <-sem }()
			cursor := uint64(0)
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				resp, err := h.n.peers.Get(m.Addr).Call(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpInventory,
					Epoch: st.Epoch, Offset: uint64(from)}, Aux: cursor, Data: []byte(h.n.id)})
				cancel()
				if err != nil {
					h.n.log.Debug().Err(err).Str("peer", string(m.ID)).Msg("recovery: inventory")
					return
				}
				entries, err := proto.DecodeObjStates(resp.Data)
				if err != nil {
					h.n.log.Warn().Err(err).Str("peer", string(m.ID)).Msg("recovery: bad inventory")
					return
				}
				if !h.addEntries(gen, m.ID, entries, resp.Flags&proto.FlagLast != 0) {
					return
				}
				if resp.Flags&proto.FlagLast != 0 {
					return
				}
				cursor = resp.Aux
			}
		})
	}
	wg.Wait()
}

// addEntries merges a chunk of src's inventory into the doubts, unless a
// new plan started meanwhile.
func (h *healer) addEntries(gen uint64, src ids.NodeID, entries []proto.ObjState, last bool) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gen != gen {
		return false
	}
	st := h.n.cl.State()
	var added []ids.ObjectID
	for _, e := range entries {
		w := h.doubt[e.OID]
		if w == nil {
			// The sender judged from this node's recovered epoch; a copy
			// fetched or written since may be current, and needs nothing.
			w = &want{}
			if m, err := h.n.store.Stat(e.OID); err == nil {
				valid := h.validLocked(st, e.OID, copiesOf(st, e.OID))
				if valid >= h.planned {
					continue
				}
				w.local = proto.ObjState{OID: e.OID, Version: m.Version, Valid: valid, Flags: proto.ObjPresent}
			}
			h.doubt[e.OID] = w
			added = append(added, e.OID)
		}
		if !slices.Contains(w.from, src) {
			w.srcs = append(w.srcs, e)
			w.from = append(w.from, src)
		}
		w.degraded = w.degraded || e.Flags&proto.ObjDegraded != 0
		w.counted = w.counted || e.Flags&proto.ObjCounted != 0
	}
	h.ndoubt.Store(int64(len(h.doubt)))
	for _, oid := range added {
		h.n.page.Bump(oid) // once doubted() sees it
	}
	if last {
		h.invDone[src] = true
	}
	return true
}

// complete reports whether every member is up and has sent its whole
// inventory: only then may a choice rest on copies that are not current.
// h.mu is held.
func (h *healer) complete(st *cluster.State) bool {
	for _, m := range st.Members {
		if m.ID != h.n.id && (m.Down || !h.invDone[m.ID]) {
			return false
		}
	}
	return true
}

// work settles the doubts it can, degraded objects first, with at most
// MaxParallel fetches at a time and MaxRate bytes per second.
func (h *healer) work(stop <-chan struct{}, st *cluster.State, gen uint64) {
	conf := st.Recovery
	if conf.Paused {
		return
	}
	h.mu.Lock()
	type job struct {
		oid      ids.ObjectID
		degraded bool
	}
	var jobs []job
	for oid, w := range h.doubt {
		if len(w.srcs) > 0 || h.complete(st) {
			jobs = append(jobs, job{oid, w.degraded})
		}
	}
	h.mu.Unlock()
	slices.SortFunc(jobs, func(a, b job) int {
		switch {
		case a.degraded && !b.degraded:
			return -1
		case !a.degraded && b.degraded:
			return 1
		case a.oid.IsIndex() != b.oid.IsIndex():
			if a.oid.IsIndex() {
				return -1 // an index serves every object of its VDI
			}
			return 1
		}
		return cmp.Compare(a.oid, b.oid)
	})
	lim := newLimiter(conf.MaxRate)
	sem := make(chan struct{}, conf.Parallel())
	var wg sync.WaitGroup
	for _, j := range jobs {
		select {
		case <-stop:
			wg.Wait()
			return
		case sem <- struct{}{}:
		}
		h.mu.Lock()
		stale := h.gen != gen
		h.mu.Unlock()
		if stale || h.n.cl.State().Recovery.Paused {
			break
		}
		wg.Go(func() {
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			// While the node serves clients, one background copy at a
			// time, each followed by a pause as long as it took. The
			// pacing is outside once: a client that needs this object
			// meanwhile shares the copy, never the pause.
			paced := h.clientBusy()
			if paced {
				h.slow.Lock()
			}
			began := time.Now()
			var moved int64
			err := h.once(ctx, j.oid, func() (err error) {
				moved, err = h.resolve(ctx, st, gen, j.oid)
				return err
			})
			if paced {
				sleep(stop, time.Since(began))
				h.slow.Unlock()
			}
			lim.wait(moved, stop)
			if err != nil {
				h.mu.Lock()
				h.stats.failed++
				h.mu.Unlock()
				h.n.log.Debug().Err(err).Str("oid", j.oid.String()).Msg("recovery: not settled yet")
			}
		})
	}
	wg.Wait()
}

// resolve settles one doubt from the inventories (or, failing that, by
// asking the members).
func (h *healer) resolve(ctx context.Context, st *cluster.State, gen uint64, oid ids.ObjectID) (int64, error) {
	h.mu.Lock()
	w := h.doubt[oid]
	if w == nil || h.gen != gen {
		h.mu.Unlock()
		return 0, nil // settled meanwhile (a client asked for it), or replanned
	}
	since := h.lostSeq
	local := w.local
	answers := slices.Clone(w.srcs)
	nodes := make([]cluster.Member, 0, len(w.from)+1)
	for _, id := range w.from {
		m, _ := st.Member(id)
		nodes = append(nodes, m)
	}
	if local.Flags&proto.ObjPresent != 0 {
		answers = append(answers, local)
		self, _ := st.Member(h.n.id)
		nodes = append(nodes, self)
	}
	all := h.complete(st)
	h.mu.Unlock()
	if recovery.Best(answers) < 0 {
		return h.pullN(ctx, oid, false) // nobody vouches: ask everyone
	}
	i := recovery.Choose(answers, st.Epoch, all)
	switch {
	case i < 0:
		return 0, errs.E(errs.NotReady, "recover %v: no current copy yet", oid)
	case nodes[i].ID == h.n.id || local.Flags&proto.ObjPresent != 0 && local.Version == answers[i].Version && answers[i].Valid >= st.Epoch:
		h.settle(oid, st.Epoch, false, 0, since)
		return 0, nil
	}
	n, err := h.fetch(ctx, st, oid, nodes[i], false)
	if errs.Is(err, errs.NotFound) {
		return h.pullN(ctx, oid, false) // the source's copy went meanwhile
	}
	if err != nil {
		return 0, err
	}
	h.settle(oid, st.Epoch, true, n, since)
	h.mu.Lock()
	h.stats.rateBytes += n
	if d := time.Since(h.stats.rateAt); d >= 2*time.Second {
		r := float64(h.stats.rateBytes) / d.Seconds()
		if h.stats.rate == 0 {
			h.stats.rate = r
		} else {
			h.stats.rate = 0.5*h.stats.rate + 0.5*r
		}
		h.stats.rateAt, h.stats.rateBytes = time.Now(), 0
	}
	h.mu.Unlock()
	return n, nil
}

// record saves the planned epoch as recovered once everything is done:
// every member up, every inventory in, nothing left to fetch. Copies that
// are not current then (misplaced ones) keep their own start.
func (h *healer) record(st *cluster.State, gen uint64) {
	h.mu.Lock()
	if h.gen != gen || h.planned == h.from || len(h.doubt) > 0 || !h.complete(st) {
		h.mu.Unlock()
		return
	}
	w, from, err := h.window(st, 0)
	if err != nil {
		h.mu.Unlock()
		return
	}
	for oid, c := range h.misplaced {
		if _, ok := h.starts[oid]; !ok && c.Valid > 0 {
			h.setStart(oid, from)
		}
	}
	starts := maps.Clone(h.starts)
	h.mu.Unlock()
	// The starts of copies now current from this epoch on are dropped;
	// the others (misplaced copies) stay. The work is done without the
	// lock: the I/O path takes it.
	ls, _ := h.localsWith(st, from, starts)
	var drop []ids.ObjectID
	for _, l := range ls {
		if _, ok := starts[l.OID]; ok && w.Valid(h.n.id, l.OID, l.Copies, l.Start) >= st.Epoch {
			drop = append(drop, l.OID)
		}
	}
	// What was fetched must be durable before the epoch says it is here.
	if err := h.n.store.Sync(); err != nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gen != gen || len(h.doubt) > 0 {
		return
	}
	for _, oid := range drop {
		if e, ok := h.starts[oid]; ok && e == starts[oid] {
			delete(h.starts, oid)
		}
	}
	if writeDurably(h.path, []byte(st.Epoch.String()+"\n")) != nil {
		return
	}
	h.from = st.Epoch
	h.pruneStarts(st)
	if h.stats.copied+h.stats.checked > 0 {
		h.n.log.Info().Uint64("epoch", uint64(st.Epoch)).Int("fetched", h.stats.copied).Int("kept", h.stats.checked).
			Int64("bytes", h.stats.bytes).Dur("took", time.Since(h.stats.started)).Msg("recovery: done")
	}
}

// sweepLoop sweeps every 2 s, apart from the fetches (a long backlog of
// them must not keep misplaced copies around).
func (h *healer) sweepLoop(stop <-chan struct{}) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		st := h.n.cl.State()
		if self, ok := st.Member(h.n.id); ok && st.Formatted() && !self.Down && !st.Recovery.Paused {
			h.catchUp()
			h.sweep(stop, h.n.cl.State())
		}
	}
}

// removeLocked runs remove, a removal of this node's copy of oid, under
// the object's lock.
func (h *healer) removeLocked(oid ids.ObjectID, remove func() error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	unlock, err := h.locks.lock(ctx, oid)
	if err != nil {
		return err
	}
	defer unlock()
	return remove()
}

// sweep deletes misplaced copies that every node of their placement holds
// current at a version at least as new, and copies of images that no
// longer exist.
func (h *healer) sweep(stop <-chan struct{}, st *cluster.State) {
	h.mu.Lock()
	if h.planned != st.Epoch {
		h.mu.Unlock()
		return
	}
	garbage := h.garbage
	h.garbage = nil
	byNode := map[ids.NodeID][]ids.ObjectID{}
	cands := map[ids.ObjectID]recovery.Copy{}
	for oid, c := range h.misplaced {
		copies := copiesOf(st, oid)
		place := st.Placement(oid, copies, nil)
		if len(place) == 0 || slices.ContainsFunc(place, func(m cluster.Member) bool { return m.Down || m.ID == h.n.id }) {
			continue
		}
		cands[oid] = c
		for _, m := range place {
			byNode[m.ID] = append(byNode[m.ID], oid)
		}
	}
	h.mu.Unlock()
	for _, oid := range garbage {
		if err := h.removeLocked(oid, func() error { return h.n.store.Remove(oid) }); err == nil {
			h.n.log.Info().Str("oid", oid.String()).Msg("recovery: removed a copy of an image that no longer exists")
		}
	}
	if len(cands) == 0 {
		return
	}
	// confirmed[oid] holds the placement nodes that answered for oid with
	// a current copy at least as new: each counts once, only for what it
	// was asked.
	confirmed := map[ids.ObjectID]map[ids.NodeID]bool{}
	for id, oids := range byNode {
		select {
		case <-stop:
			return
		default:
		}
		m, _ := st.Member(id)
		for len(oids) > 0 {
			batch := oids[:min(len(oids), proto.MaxObjStates)]
			oids = oids[len(batch):]
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			resp, err := h.n.peers.Get(m.Addr).Call(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpStatObjs, Epoch: st.Epoch},
				Data: proto.AppendOIDs(nil, batch)})
			cancel()
			if err != nil {
				break
			}
			states, err := proto.DecodeObjStates(resp.Data)
			if err != nil {
				break
			}
			asked := make(map[ids.ObjectID]bool, len(batch))
			for _, oid := range batch {
				asked[oid] = true
			}
			for _, s := range states {
				if c, in := cands[s.OID]; in && asked[s.OID] && s.Flags&proto.ObjPresent != 0 && s.Valid >= st.Epoch && s.Version >= c.Version {
					if confirmed[s.OID] == nil {
						confirmed[s.OID] = map[ids.NodeID]bool{}
					}
					confirmed[s.OID][id] = true
				}
			}
		}
	}
	deleted := 0
	for oid := range cands {
		if len(confirmed[oid]) != len(st.Placement(oid, copiesOf(st, oid), nil)) {
			continue
		}
		// Under the object's lock and the plan gate: a plan meanwhile may
		// have placed it here again.
		err := h.removeLocked(oid, func() error {
			return h.change(st.Epoch, func() error {
				h.mu.Lock()
				_, still := h.misplaced[oid]
				h.mu.Unlock()
				if !still {
					return errs.E(errs.NotFound, "%v is no longer misplaced", oid)
				}
				return h.n.store.Remove(oid)
			})
		})
		if err != nil {
			continue
		}
		deleted++
		h.mu.Lock()
		delete(h.misplaced, oid)
		delete(h.starts, oid)
		h.stats.deleted++
		h.mu.Unlock()
	}
	if deleted > 0 {
		h.n.log.Info().Int("deleted", deleted).Uint64("epoch", uint64(st.Epoch)).Msg("recovery: removed copies no longer placed here")
	}
}

// inventory answers receiver to's request for what it should hold at
// epoch e and cannot vouch for from epoch start on: the entries from
// object ID cursor on (sorted by object ID, so that pages never skip or
// repeat an entry), the next cursor, and whether that was the last page.
// The inventories of every receiver with that start are computed in one
// pass over this node's objects, kept for the epoch (a few starts at a
// time).
func (h *healer) inventory(st *cluster.State, to ids.NodeID, start ids.Epoch, cursor uint64) ([]proto.ObjState, uint64, bool, error) {
	h.invMu.Lock()
	defer h.invMu.Unlock()
	if h.invEpoch != st.Epoch {
		h.invEpoch, h.invCache = st.Epoch, map[ids.Epoch]map[ids.NodeID][]proto.ObjState{}
	}
	cache := h.invCache[start]
	if cache == nil {
		h.mu.Lock()
		if h.planned != st.Epoch {
			h.mu.Unlock()
			return nil, 0, false, errs.E(errs.NotReady, "node %s has not planned epoch %v", h.n.id, st.Epoch)
		}
		w, from, err := h.window(st, start)
		if err != nil {
			h.mu.Unlock()
			return nil, 0, false, err
		}
		starts := maps.Clone(h.starts)
		lost := maps.Clone(h.lost)
		h.mu.Unlock()
		// The pass over every object runs without the lock (the I/O path
		// takes it); a copy settled meanwhile is just not offered yet.
		// Doubted copies are offered with what the history proves of
		// them (one may be the freshest there is); copies lost or just
		// plugged in are not offered.
		ls, _ := h.localsWith(st, from, starts)
		valid := make([]ids.Epoch, len(ls))
		for i, l := range ls {
			if _, ok := lost[l.OID]; !ok {
				valid[i] = w.Valid(h.n.id, l.OID, l.Copies, l.Start)
			}
		}
		rstart := start
		if rstart < w.From() {
			rstart = 0
		}
		cache = map[ids.NodeID][]proto.ObjState{}
		w.Inventories(h.n.id, ls, valid, rstart, func(dst ids.NodeID, s proto.ObjState) {
			cache[dst] = append(cache[dst], s)
		})
		for _, list := range cache {
			slices.SortFunc(list, func(a, b proto.ObjState) int { return cmp.Compare(a.OID, b.OID) })
		}
		if len(h.invCache) >= maxInventoryStarts {
			clear(h.invCache)
		}
		h.invCache[start] = cache
	}
	list := cache[to]
	i, _ := slices.BinarySearchFunc(list, ids.ObjectID(cursor), func(s proto.ObjState, o ids.ObjectID) int { return cmp.Compare(s.OID, o) })
	end := min(len(list), i+inventoryPage)
	next := uint64(0)
	if end < len(list) {
		next = uint64(list[end].OID)
	}
	return list[i:end], next, end == len(list), nil
}

// inventoryPage is the most entries one inventory answer carries (a
// variable so that tests can page small inventories).
var inventoryPage = proto.MaxObjStates

// maxInventoryStarts bounds the receivers' starts whose inventories a node
// keeps at once (most receivers share one).
const maxInventoryStarts = 4

// clientIO notes that this node serves client I/O now.
func (h *healer) clientIO() {
	now := time.Now().UnixNano()
	if now-h.lastClient.Load() > int64(time.Millisecond) { // one store per ms is plenty
		h.lastClient.Store(now)
	}
}

// clientBusy reports whether this node served client I/O in the last
// 200 ms.
func (h *healer) clientBusy() bool {
	return time.Now().UnixNano()-h.lastClient.Load() < int64(200*time.Millisecond)
}

// limiter paces background fetches to a rate in bytes per second.
type limiter struct {
	mu   sync.Mutex
	rate float64
	next time.Time
}

func newLimiter(rate int64) *limiter { return &limiter{rate: float64(rate)} }

// setRate changes the rate.
func (l *limiter) setRate(rate int64) {
	l.mu.Lock()
	l.rate = float64(rate)
	l.mu.Unlock()
}

// wait accounts for n bytes moved and sleeps as long as the rate asks,
// or until stop.
func (l *limiter) wait(n int64, stop <-chan struct{}) {
	l.mu.Lock()
	if l.rate <= 0 || n <= 0 {
		l.mu.Unlock()
		return
	}
	now := time.Now()
	if l.next.Before(now) {
		l.next = now
	}
	l.next = l.next.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	d := l.next.Sub(now)
	l.mu.Unlock()
	sleep(stop, d)
}

// sleep waits for d or until stop.
func sleep(stop <-chan struct{}, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-stop:
	case <-t.C:
	}
}

// The replica operations, shared by the wire handler and the gateway's
// local fast path.

// localRead reads this node's replica of oid. A copy in doubt is made
// current first if wait is set; otherwise the read fails at once with
// errNotHere, the object jumps the recovery queue, and the gateway reads
// another replica (a client read then never waits for a whole object's
// copy when a current one is elsewhere).
func (n *Node) localRead(ctx context.Context, oid ids.ObjectID, off int64, buf []byte, wait bool) (objstore.Meta, error) {
	if err := n.bootKnown(ctx); err != nil {
		return objstore.Meta{}, err
	}
	n.rec.catchUp()
	if !wait && n.rec.doubted(oid) {
		n.rec.hurry(oid)
		return objstore.Meta{}, errs.E(errs.NotReady, "%v: %w", oid, errNotHere)
	}
	if err := n.rec.ensure(ctx, oid, false); err != nil {
		return objstore.Meta{}, err
	}
	m, err := n.store.Read(oid, off, buf)
	if errs.Is(err, errs.Corrupt) {
		n.rec.damaged(oid, err) // the gateway reads another replica
	}
	return m, err
}

// errNotHere: the replica's copy is being recovered.
var errNotHere = errors.New("the copy here is being recovered")

// hurry puts oid at the head of the recovery queue: a client reads it.
func (h *healer) hurry(oid ids.ObjectID) {
	select {
	case h.hurryQ <- oid:
	default: // full: the background work gets to it
	}
}

// hurryLoop recovers the objects clients asked for, a few at a time,
// unpaced.
func (h *healer) hurryLoop(stop <-chan struct{}) {
	for {
		var oid ids.ObjectID
		select {
		case <-stop:
			return
		case oid = <-h.hurryQ:
		}
		if !h.doubted(oid) {
			continue
		}
		st := h.n.cl.State()
		h.mu.Lock()
		gen, planned := h.gen, h.planned
		h.mu.Unlock()
		if planned != st.Epoch {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = h.once(ctx, oid, func() error {
			_, err := h.resolve(ctx, st, gen, oid)
			return err
		})
		cancel()
	}
}

// localWrite and localPunch change this node's replica of oid, for a
// replica request from a gateway or for the gateway's own replica alike.
// A change that covers a damaged block in part (the store refuses to
// re-checksum it) repairs the copy first and is tried again.
func (n *Node) localWrite(ctx context.Context, oid ids.ObjectID, off int64, data []byte, ver ids.Version, epoch ids.Epoch, create bool) error {
	return n.repairing(ctx, oid, func() error { return n.localWriteOnce(ctx, oid, off, data, ver, epoch, create) })
}

// repairing runs change, and again after repairing the copy of oid if
// change found it damaged.
func (n *Node) repairing(ctx context.Context, oid ids.ObjectID, change func() error) error {
	err := change()
	if !errs.Is(err, errs.Corrupt) {
		return err
	}
	n.rec.reportDamage(oid, err)
	if rerr := n.rec.repair(ctx, oid); rerr != nil {
		return rerr
	}
	return change()
}

func (n *Node) localWriteOnce(ctx context.Context, oid ids.ObjectID, off int64, data []byte, ver ids.Version, epoch ids.Epoch, create bool) error {
	if err := n.checkMutable(ctx, oid); err != nil {
		return err
	}
	n.rec.catchUp()
	unlock, err := n.rec.locks.lock(ctx, oid)
	if err != nil {
		return err
	}
	if create {
		defer unlock()
		since := n.rec.seq()
		err := n.rec.changeCopy(epoch, oid, func() error { return n.store.Replace(oid, off, data, ver, epoch) })
		if err == nil {
			n.rec.settle(oid, epoch, false, 0, since)
		}
		return err
	}
	// The common case: a current copy that exists here.
	if n.rec.ndoubt.Load() == 0 {
		err := n.rec.changeCopy(epoch, oid, func() error { return n.store.Update(oid, off, data, ver, epoch) })
		if !errs.Is(err, errs.NotFound) {
			unlock()
			return err
		}
	}
	unlock()
	// Doubted or absent: fetch the copy to trust first. If no replica has
	// it, the write creates it (the first entry of an index object does).
	// A pull shared with an older plan's may leave it doubted at this one:
	// then again.
	for tries := 0; ; tries++ {
		if err := n.rec.ensure(ctx, oid, true); err != nil && !errs.Is(err, errs.NotFound) {
			return err
		}
		unlock, err := n.rec.locks.lock(ctx, oid)
		if err != nil {
			return err
		}
		if !n.rec.doubted(oid) {
			err := n.rec.changeCopy(epoch, oid, func() error { return n.store.Write(oid, off, data, ver, epoch) })
			if err == nil {
				n.rec.settleNew(oid, epoch)
			}
			unlock()
			return err
		}
		unlock()
		if tries == 3 {
			return errs.E(errs.NotReady, "write %v: the copy here is still being recovered", oid)
		}
	}
}

func (n *Node) localPunch(ctx context.Context, oid ids.ObjectID, off, length int64, ver ids.Version, epoch ids.Epoch) error {
	return n.repairing(ctx, oid, func() error { return n.localPunchOnce(ctx, oid, off, length, ver, epoch) })
}

func (n *Node) localPunchOnce(ctx context.Context, oid ids.ObjectID, off, length int64, ver ids.Version, epoch ids.Epoch) error {
	if err := n.checkMutable(ctx, oid); err != nil {
		return err
	}
	n.rec.catchUp()
	// A copy this node lacks is fetched first, as for a write: a copy
	// fetched concurrently from before the punch would bring its bytes
	// back.
	if err := n.rec.ensure(ctx, oid, true); errs.Is(err, errs.NotFound) {
		return nil // no replica has it: nothing to zero
	} else if err != nil {
		return err
	}
	unlock, err := n.rec.locks.lock(ctx, oid)
	if err != nil {
		return err
	}
	defer unlock()
	err = n.rec.changeCopy(epoch, oid, func() error { return n.store.Punch(oid, off, length, ver, epoch) })
	if errs.Is(err, errs.NotFound) {
		return nil // nothing to zero
	}
	return err
}

// localRemove removes this node's replica of oid (the collector frees it),
// unless ifNotNewer is set and the copy's version is newer.
func (n *Node) localRemove(ctx context.Context, oid ids.ObjectID, epoch ids.Epoch, ifNotNewer ids.Version) error {
	n.rec.catchUp()
	unlock, err := n.rec.locks.lock(ctx, oid)
	if err != nil {
		return err
	}
	defer unlock()
	if ifNotNewer != 0 {
		if m, err := n.store.Stat(oid); err == nil && m.Version > ifNotNewer {
			return errs.E(errs.Exists, "remove %v: written since version %v", oid, ifNotNewer)
		}
	}
	err = n.rec.changeCopy(epoch, oid, func() error { return n.store.Remove(oid) })
	if err == nil || errs.Is(err, errs.NotFound) {
		n.rec.forget(oid) // none here (a create that failed): none to fetch
	}
	return err
}

// changeCopy is change for fn, a change of this node's copy of oid made
// for a gateway. If the store fails it (a full disk, a disk error), the
// copy may lack the change while the other replicas took it: the gateway
// does not retry a full disk, and may not retry at all. From then on this
// node does not vouch for its copy (as for one lost with a disk) until it
// has fetched it again: reads go to the other replicas, and a later write
// here fetches the copy first, rather than land on top of the one that
// lacks this change (the copies would then differ for good with the same
// version; e2e TestFullReplicaLeavesCopiesEqual).
func (h *healer) changeCopy(epoch ids.Epoch, oid ids.ObjectID, fn func() error) error {
	err := h.change(epoch, fn)
	if k := errs.KindOf(err); err != nil && (k == errs.NoSpace || k == errs.IO) {
		h.markLost([]ids.ObjectID{oid})
		h.reportMissed(oid, err)
	}
	return err
}

// reportMissed logs a copy that missed a change, at most once a second
// with the count of those held back.
func (h *healer) reportMissed(oid ids.ObjectID, err error) {
	ok, held := h.missLog.allow()
	if !ok {
		return
	}
	h.n.log.Warn().Stringer("oid", oid).Int("more", held).Err(err).Msg("a change of this copy failed: fetching it again before it serves")
}

// change runs fn, a change of a replica tagged with epoch, unless this
// node has planned another epoch (errs.StaleEpoch: the gateway retries on
// the new one), and holds off the next plan until fn is done.
func (h *healer) change(epoch ids.Epoch, fn func() error) error {
	h.gate.RLock()
	defer h.gate.RUnlock()
	if p := ids.Epoch(h.plannedA.Load()); p != epoch {
		return errs.E(errs.StaleEpoch, "change tagged with epoch %v, node %s has planned epoch %v", epoch, h.n.id, p)
	}
	return fn()
}

// settleNew records a start for an object this node just created by a
// write as a writer, if it has none: it vouches for it from this epoch.
func (h *healer) settleNew(oid ids.ObjectID, e ids.Epoch) {
	h.mu.Lock()
	if _, ok := h.starts[oid]; !ok && e > h.from {
		h.setStart(oid, e)
	}
	h.mu.Unlock()
}

// progress reports this node's recovery at its planned epoch.
func (h *healer) progress(st *cluster.State) proto.RecoveryInfo {
	if !h.mu.TryLock() {
		// Planning holds the lock for a pass over every object: answer
		// with what was last known rather than make the asker wait.
		h.lastMu.Lock()
		defer h.lastMu.Unlock()
		ri := h.last
		ri.State = "planning"
		return ri
	}
	defer h.mu.Unlock()
	ri := h.progressLocked(st)
	h.lastMu.Lock()
	h.last = ri
	h.lastMu.Unlock()
	return ri
}

// progressLocked is progress; h.mu is held.
func (h *healer) progressLocked(st *cluster.State) proto.RecoveryInfo {
	ri := proto.RecoveryInfo{Epoch: h.planned, Recovered: h.from, Done: h.stats.checked + h.stats.copied,
		Fetched: h.stats.copied, Bytes: h.stats.bytes, Misplaced: len(h.misplaced), Degraded: h.exposed}
	ri.Objects = ri.Done + len(h.doubt)
	for _, w := range h.doubt {
		if w.counted && w.degraded {
			ri.Degraded++
		}
	}
	ri.Rate = h.stats.rate
	if h.stats.rate == 0 && h.stats.bytes > 0 {
		if d := time.Since(h.stats.started).Seconds(); d > 0 {
			ri.Rate = float64(h.stats.bytes) / d
		}
	}
	left := len(h.doubt)
	if left > 0 && ri.Rate > 0 && ri.Fetched > 0 {
		ri.ETA = float64(left) * float64(h.stats.bytes) / float64(ri.Fetched) / ri.Rate
	}
	switch {
	case left == 0 && h.from == h.planned:
		ri.State = "idle"
	case st.Recovery.Paused:
		ri.State = "paused"
	case left == 0 || !h.complete(st) && !h.anySource():
		ri.State = "waiting"
	default:
		ri.State = "recovering"
	}
	return ri
}

// anySource reports whether some doubt has a known source. h.mu is held.
func (h *healer) anySource() bool {
	for _, w := range h.doubt {
		if len(w.srcs) > 0 {
			return true
		}
	}
	return false
}
