package server

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/hashring"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/objstore"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/vdi"
)

// recovery keeps this node's replicas current across epoch changes.
//
// A replica is current if the node was in the object's placement for the
// whole time since it last was: every acknowledged write reached every
// replica of its epoch. When an epoch change puts the node into an
// object's placement that it was not in before (or the node was not a
// member of the previous epoch at all), its local copy is *suspect*: it may
// have missed writes, or hold a write that was never acknowledged. Before
// it serves a read or takes a write, a suspect copy is replaced by the
// freshest current copy another member holds, or, if none has one, by the
// freshest copy of any; a background pass does the same for every suspect.
// A replica that lacks an object it is asked to change fetches it first.
//
// The epoch up to which every suspect has been cleared is kept in
// DIR/recovered-epoch, so that a restart only looks at the epochs it missed.
type recovery struct {
	n    *Node
	path string

	mu       sync.Mutex
	nsus     atomic.Int64 // len(suspects), read without mu on the I/O path
	suspects map[ids.ObjectID]struct{}
	inflight map[ids.ObjectID]*pull
	seen     atomic.Uint64 // epoch transitions up to here are accounted for
	obsMu    sync.Mutex    // one observe at a time
	done     ids.Epoch     // last epoch persisted as recovered
	kick     chan struct{}
}

type pull struct {
	done chan struct{}
	err  error
}

func newRecovery(n *Node) *recovery {
	r := &recovery{n: n, path: filepath.Join(n.cfg.Dir, "recovered-epoch"),
		suspects: map[ids.ObjectID]struct{}{}, inflight: map[ids.ObjectID]*pull{},
		kick: make(chan struct{}, 1)}
	if b, err := os.ReadFile(r.path); err == nil {
		if e, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil {
			r.seen.Store(e)
			r.done = ids.Epoch(e)
		}
	}
	return r
}

// clear drops oid from the suspects. r.mu is held.
func (r *recovery) clear(oid ids.ObjectID) {
	if _, ok := r.suspects[oid]; ok {
		delete(r.suspects, oid)
		r.nsus.Add(-1)
	}
}

// copiesOf returns the replica count of oid's image (objects are named by
// image, not by VDI handle: a VDI moves to a new image at each snapshot), or
// 0 if the image is gone.
func copiesOf(st *cluster.State, oid ids.ObjectID) int {
	if img, ok := st.Image(oid.VDI()); ok {
		return img.Copies
	}
	return 0
}

// catchUp accounts for the epoch transitions of the node's current state
// before the node serves a local read or write at that epoch: a copy that
// the new epoch makes suspect must never be used as current, not even for
// the moment before the background loop would have noticed. When nothing
// changed it costs two atomic loads.
func (r *recovery) catchUp() {
	if st := r.n.cl.State(); uint64(st.Epoch) > r.seen.Load() {
		r.observe(st)
	}
}

// observe accounts for the epoch transitions in st that it has not seen.
func (r *recovery) observe(st *cluster.State) {
	r.obsMu.Lock()
	defer r.obsMu.Unlock()
	seen := ids.Epoch(r.seen.Load())
	if st.Epoch <= seen {
		return
	}
	hist := st.History
	var prev *cluster.EpochRecord
	added := 0
	for i := range hist {
		rec := &hist[i]
		if rec.Epoch <= seen {
			prev = rec
			continue
		}
		added += r.markTransition(st, prev, rec)
		prev = rec
	}
	r.seen.Store(uint64(st.Epoch))
	if added > 0 {
		r.n.log.Info().Int("suspects", added).Uint64("epoch", uint64(st.Epoch)).Msg("recovery: checking replicas")
	}
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func memberOf(rec *cluster.EpochRecord, id ids.NodeID) bool {
	if rec == nil {
		return false
	}
	for _, m := range rec.Members {
		if m.ID == id {
			return true
		}
	}
	return false
}

func ringOf(rec *cluster.EpochRecord) *hashring.Ring {
	nodes := make([]ids.NodeID, len(rec.Members))
	for i, m := range rec.Members {
		nodes[i] = m.ID
	}
	return hashring.New(nodes, 0)
}

func inSet(set []ids.NodeID, id ids.NodeID) bool {
	for _, n := range set {
		if n == id {
			return true
		}
	}
	return false
}

// markTransition marks the local copies that the move from prev to next
// makes suspect, and returns how many it marked.
func (r *recovery) markTransition(st *cluster.State, prev, next *cluster.EpochRecord) int {
	me := r.n.id
	if !memberOf(next, me) {
		return 0
	}
	all := !memberOf(prev, me)
	var prevRing, nextRing *hashring.Ring
	if !all {
		prevRing, nextRing = ringOf(prev), ringOf(next)
	}
	var buf1, buf2 [8]ids.NodeID
	marked := 0
	r.n.store.ForEach(func(oid ids.ObjectID, _ objstore.Meta) error {
		if !all {
			copies := copiesOf(st, oid)
			if copies == 0 {
				return nil
			}
			if !inSet(nextRing.Replicas(oid, copies, buf1[:0]), me) || inSet(prevRing.Replicas(oid, copies, buf2[:0]), me) {
				return nil
			}
		}
		r.mu.Lock()
		if _, ok := r.suspects[oid]; !ok {
			r.suspects[oid] = struct{}{}
			r.nsus.Add(1)
		}
		r.mu.Unlock()
		marked++
		return nil
	})
	return marked
}

// run watches the cluster state and clears suspects in the background.
func (r *recovery) run(stop <-chan struct{}) {
	for {
		ch := r.n.cl.Changed()
		st := r.n.cl.State()
		if _, ok := st.Member(r.n.id); ok && st.Formatted() {
			r.observe(st)
			r.drain(stop, st)
		}
		select {
		case <-stop:
			return
		case <-ch:
		case <-r.kick:
		case <-time.After(2 * time.Second):
		}
	}
}

// drain checks every suspect; once none is left it records the epoch.
func (r *recovery) drain(stop <-chan struct{}, st *cluster.State) {
	r.mu.Lock()
	list := make([]ids.ObjectID, 0, len(r.suspects))
	for oid := range r.suspects {
		list = append(list, oid)
	}
	r.mu.Unlock()
	failed := 0
	for _, oid := range list {
		select {
		case <-stop:
			return
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := r.ensure(ctx, oid, false)
		cancel()
		if err != nil {
			failed++
		}
	}
	if failed > 0 {
		r.n.log.Warn().Int("left", failed).Msg("recovery: some replicas could not be checked yet")
		return
	}
	r.mu.Lock()
	empty := len(r.suspects) == 0
	r.mu.Unlock()
	seen := ids.Epoch(r.seen.Load())
	if empty && seen > r.done {
		tmp := r.path + ".tmp"
		if os.WriteFile(tmp, []byte(seen.String()+"\n"), 0o644) == nil && os.Rename(tmp, r.path) == nil {
			r.done = seen
			if len(list) > 0 {
				r.n.log.Info().Uint64("epoch", uint64(seen)).Int("checked", len(list)).Msg("recovery: replicas current")
			}
		}
	}
}

// ensure makes the local copy of oid current if it is suspect, or if it is
// absent and must exist (a write or punch to an existing object). Calls
// for the same object share one pull.
func (r *recovery) ensure(ctx context.Context, oid ids.ObjectID, mustExist bool) error {
	sus := false
	if r.nsus.Load() > 0 {
		r.mu.Lock()
		_, sus = r.suspects[oid]
		r.mu.Unlock()
	}
	if !sus {
		if !mustExist {
			return nil
		}
		if _, err := r.n.store.Stat(oid); err == nil {
			return nil
		} else if !errs.Is(err, errs.NotFound) {
			return err
		}
	}
	r.mu.Lock()
	p := r.inflight[oid]
	if p == nil {
		p = &pull{done: make(chan struct{})}
		r.inflight[oid] = p
		r.mu.Unlock()
		p.err = r.pull(ctx, oid)
		r.mu.Lock()
		delete(r.inflight, oid)
		if p.err == nil {
			r.clear(oid)
		}
		r.mu.Unlock()
		close(p.done)
	} else {
		r.mu.Unlock()
		select {
		case <-p.done:
		case <-ctx.Done():
			return errs.E(errs.IO, "recover %v: %w", oid, ctx.Err())
		}
	}
	return p.err
}

// current reports whether this node's copy of oid is current in st: the
// node is in the object's placement and the copy is not suspect. A current
// copy holds every acknowledged write (see recovery).
func (r *recovery) current(st *cluster.State, oid ids.ObjectID) bool {
	copies := copiesOf(st, oid)
	if copies == 0 {
		return false
	}
	var buf [8]ids.NodeID
	if !inSet(st.Ring().Replicas(oid, copies, buf[:0]), r.n.id) {
		return false
	}
	r.mu.Lock()
	_, sus := r.suspects[oid]
	r.mu.Unlock()
	return !sus
}

// pull asks every other member for its version of oid and makes ours the
// one to trust. If some member's copy is current, the freshest current copy
// is that one, even when ours has a higher version: a suspect copy may hold
// a write that was never acknowledged (a gateway cut off from the majority
// wrote its own replica and could not reach the others), and the highest
// version would bring it back. Only when no member has a current copy (the
// whole cluster restarted after an epoch change, say) does the highest
// version win. It fails (retryably) when a member does not answer and no
// current copy was found: that member might hold the copy to take. It does
// not ask members that gossip holds dead (a request to one may hang until
// it times out, across a partition): a current copy does not need them.
func (r *recovery) pull(ctx context.Context, oid ids.ObjectID) error {
	st := r.n.cl.State()
	local, lerr := r.n.store.Stat(oid)
	if lerr != nil && !errs.Is(lerr, errs.NotFound) {
		return lerr
	}
	var best, cur cluster.Member
	bestVer, curVer := ids.Version(0), ids.Version(0)
	if lerr == nil {
		bestVer = local.Version
	}
	found, haveCur := false, false
	var silent error // why a member that might hold the copy to take did not say
	for _, m := range st.Members {
		if m.ID == r.n.id {
			continue
		}
		if r.n.cl.Gone(m.ID) {
			silent = errs.E(errs.NotReady, "recover %v: gossip holds %s dead", oid, m.ID)
			continue
		}
		resp, err := r.n.peers.Get(m.Addr).Call(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpStatObj, Epoch: st.Epoch, ID: uint64(oid)}})
		if errs.Is(err, errs.NotFound) {
			continue
		}
		if err != nil {
			silent = errs.E(errs.NotReady, "recover %v: ask %s: %w", oid, m.ID, err)
			continue
		}
		v := ids.Version(resp.Aux)
		if resp.Flags&proto.FlagCurrent != 0 && (!haveCur || v > curVer) {
			cur, curVer, haveCur = m, v, true
		}
		if v > bestVer || (lerr != nil && !found) {
			best, bestVer, found = m, v, true
		}
	}
	switch {
	case haveCur && lerr == nil && local.Version == curVer:
		return nil // ours is the current copy
	case haveCur:
		best = cur
	case silent != nil:
		return silent
	case !found && lerr != nil:
		return errs.E(errs.NotFound, "object %v: no replica has it", oid)
	case !found:
		return nil // ours is the freshest
	}
	buf := proto.GetBuf(vdi.ObjectSize)
	defer proto.PutBuf(buf)
	resp, err := r.n.peers.Get(best.Addr).CallInto(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpReadObj,
		Epoch: st.Epoch, ID: uint64(oid), Length: vdi.ObjectSize}}, buf)
	if err != nil {
		return errs.E(errs.NotReady, "recover %v from %s: %w", oid, best.ID, err)
	}
	if err := r.n.store.Replace(oid, 0, resp.Data, ids.Version(resp.Aux), st.Epoch); err != nil {
		return err
	}
	return nil
}

// The replica operations, shared by the wire handler and the gateway's
// local fast path.

func (n *Node) localRead(ctx context.Context, oid ids.ObjectID, off int64, buf []byte) (objstore.Meta, error) {
	n.rec.catchUp()
	if err := n.rec.ensure(ctx, oid, false); err != nil {
		return objstore.Meta{}, err
	}
	return n.store.Read(oid, off, buf)
}

// localWrite and localPunch change this node's replica of oid, for a
// replica request from a gateway or for the gateway's own replica alike.
func (n *Node) localWrite(ctx context.Context, oid ids.ObjectID, off int64, data []byte, ver ids.Version, epoch ids.Epoch, create bool) error {
	if err := n.checkMutable(ctx, oid); err != nil {
		return err
	}
	n.rec.catchUp()
	if create {
		err := n.store.Replace(oid, off, data, ver, epoch)
		if err == nil {
			n.rec.mu.Lock()
			n.rec.clear(oid)
			n.rec.mu.Unlock()
		}
		return err
	}
	// The common case: a current copy that exists here.
	if n.rec.nsus.Load() == 0 {
		err := n.store.Update(oid, off, data, ver, epoch)
		if !errs.Is(err, errs.NotFound) {
			return err
		}
	}
	// Suspect or absent: fetch the freshest copy first. If no replica has
	// it, the write creates it (the first entry of an index object does).
	if err := n.rec.ensure(ctx, oid, true); err != nil && !errs.Is(err, errs.NotFound) {
		return err
	}
	return n.store.Write(oid, off, data, ver, epoch)
}

func (n *Node) localPunch(ctx context.Context, oid ids.ObjectID, off, length int64, ver ids.Version, epoch ids.Epoch) error {
	if err := n.checkMutable(ctx, oid); err != nil {
		return err
	}
	n.rec.catchUp()
	if err := n.rec.ensure(ctx, oid, false); err != nil {
		return err
	}
	err := n.store.Punch(oid, off, length, ver, epoch)
	if errs.Is(err, errs.NotFound) {
		return nil // nothing to zero
	}
	return err
}
