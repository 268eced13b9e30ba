package server

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/vdi"
)

// The gateway's open volumes: one per VDI handle it serves, kept current
// with the cluster state, dropped when idle.

// indexTTL is how long a gateway trusts its cached index of a VDI that it
// does not hold the write lock of (another gateway may be writing it).
const indexTTL = time.Second

// catchUpWait bounds how long a request waits for this node's state to
// catch up with the leader's.
const catchUpWait = 2 * time.Second

// catchUp brings this node's state up to every change acknowledged so far
// (made through any node), so that a lookup or a list answers with them. It
// reports whether it did; without a leader it gives up after catchUpWait.
func (n *Node) catchUp(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, catchUpWait)
	defer cancel()
	return n.cl.CatchUp(ctx) == nil
}

// volume is a VDI or snapshot opened on this gateway, by handle.
type volume struct {
	*vdi.Volume
	mu       sync.Mutex
	loadedAt time.Time
	index    uint64 // State.Index its info was taken from

	// writes holds writes and discards (shared) against a snapshot
	// (exclusive), which moves the VDI to a new image in between.
	writes sync.RWMutex
	// frozen is an image this volume was snapshotted away from: a write
	// that still finds it current waits for the new state instead.
	frozen ids.VDIID
	// evicted is set, under writes held exclusively, when the volume is
	// dropped from the gateway's map.
	evicted  bool
	lastUsed atomic.Int64 // unix ns
}

// infoOf is the volume description of meta in st.
func infoOf(st *cluster.State, meta *cluster.VDI) vdi.Info {
	return vdi.Info{ID: meta.Image, Size: meta.Size, Copies: meta.Copies, Chain: st.Chain(meta.Image)}
}

// volumeFor returns the open volume of VDI vid, current with the cluster
// state. The volume's description is worked out again only when the state
// has moved on since it was last: a request that finds it current costs a
// map lookup and the volume's lock.
func (n *Node) volumeFor(vid ids.VDIID) (*volume, *cluster.VDI, error) {
	st := n.cl.State()
	meta, ok := st.VDIByID(vid)
	if !ok {
		// This node's state may lag behind the node that made the VDI
		// or snapshot a moment ago.
		n.catchUp(context.Background())
		st = n.cl.State()
		if meta, ok = st.VDIByID(vid); !ok {
			return nil, nil, errs.E(errs.NotFound, "VDI %v", vid)
		}
	}
	n.mu.RLock()
	v := n.volumes[vid]
	n.mu.RUnlock()
	if v == nil {
		n.mu.Lock()
		if v = n.volumes[vid]; v == nil {
			v = &volume{Volume: vdi.Open(n.objs, infoOf(st, meta)), loadedAt: time.Now(), index: st.Index}
			v.OnCopy(n.copiedFrom)
			v.OnOwnerChange(n.ownerMoved)
			n.volumes[vid] = v
		}
		n.mu.Unlock()
	}
	v.lastUsed.Store(time.Now().UnixNano())
	v.mu.Lock()
	defer v.mu.Unlock()
	writer := meta.Lock != nil && meta.Lock.Node == n.id
	// Never go back to an older state's image: a request that read the
	// state before a snapshot must not undo the switch to the new image.
	if st.Index > v.index {
		v.index = st.Index
		if info := infoOf(st, meta); !v.Info().Equal(info) {
			v.SetInfo(info)
			// SetInfo keeps the loaded index across a snapshot, which
			// is right where the writes go through this node; any
			// other gateway may have written the new image already.
			if !writer {
				v.forget()
			}
		}
	}
	// A snapshot never changes; a VDI that another gateway may be
	// writing is read again after a while.
	if !meta.IsSnapshot() && !writer && time.Since(v.loadedAt) > indexTTL {
		v.forget()
	}
	return v, meta, nil
}

// forget drops the volume's loaded index. v.mu is held.
func (v *volume) forget() {
	v.Forget()
	v.loadedAt = time.Now()
}

// writeTo runs fn, a write or discard of VDI handle vid, on its volume v
// (from volumeFor), outside any snapshot of it (which moves it to a new
// image) and never on a volume evicted meanwhile.
func (n *Node) writeTo(ctx context.Context, v *volume, vid ids.VDIID, fn func(v *volume) error) error {
	for tries := 0; ; tries++ {
		v.writes.RLock()
		v.mu.Lock()
		evicted := v.evicted
		frozen := v.frozen
		current := frozen != 0 && v.Info().ID == frozen
		v.mu.Unlock()
		if !evicted && !current {
			err := fn(v)
			v.writes.RUnlock()
			return err
		}
		v.writes.RUnlock()
		if current {
			// A snapshot's outcome was unknown here: once this node
			// has caught up, the old image is either a snapshot's (and
			// the next volumeFor moves on) or, if the command never
			// committed, still the VDI's own.
			if tries >= 3 || !n.catchUp(ctx) {
				return errs.E(errs.NotReady, "VDI image %v was just snapshotted; this node has not seen the new image yet", frozen)
			}
			if !snapshotImage(n.cl.State(), frozen) {
				v.mu.Lock()
				if v.frozen == frozen {
					v.frozen = 0
				}
				v.mu.Unlock()
			}
		}
		var err error
		if v, _, err = n.volumeFor(vid); err != nil {
			return err
		}
	}
}

// snapshotImage reports whether image img is a snapshot's.
func snapshotImage(st *cluster.State, img ids.VDIID) bool {
	i, ok := st.Image(img)
	return ok && i.VDI != nil && i.VDI.IsSnapshot()
}

// volumeIdle is how long a volume may go unused before its gateway drops it
// (and the index pages it loaded), unless it is open for writing.
const volumeIdle = 5 * time.Minute

// evictIdleNow drops idle volumes; it runs every minute.
func (n *Node) evictIdleNow() {
	n.evictIdle(time.Now().Add(-volumeIdle), func(vid ids.VDIID) bool {
		meta, ok := n.cl.State().VDIByID(vid)
		return ok && meta.Lock != nil
	})
	// The writes of a VDI deleted, or now written through another node,
	// are flushed through no flush here.
	st := n.cl.State()
	n.objs.pending.forgetIf(func(vid ids.VDIID) bool {
		meta, ok := st.VDIByID(vid)
		return !ok || meta.Lock != nil && meta.Lock.Node != n.id
	})
}

// evictIdle drops the volumes last used before cutoff whose VDI nobody
// holds open for writing (locked says whether someone does), and the
// replicas kept for their flushes (replicated.pending). A volume is
// dropped with its writes fence held, so no write is running on it; a
// write that finds it dropped fetches the new one.
func (n *Node) evictIdle(cutoff time.Time, locked func(ids.VDIID) bool) int {
	n.mu.RLock()
	var idle []ids.VDIID
	for vid, v := range n.volumes {
		if v.lastUsed.Load() < cutoff.UnixNano() {
			idle = append(idle, vid)
		}
	}
	n.mu.RUnlock()
	dropped := 0
	for _, vid := range idle {
		n.mu.RLock()
		v := n.volumes[vid]
		n.mu.RUnlock()
		if v == nil || !v.writes.TryLock() {
			continue
		}
		if !locked(vid) && v.lastUsed.Load() < cutoff.UnixNano() {
			v.evicted = true
			n.mu.Lock()
			if n.volumes[vid] == v {
				delete(n.volumes, vid)
			}
			n.mu.Unlock()
			// Nobody holds it open for writing: no flush of its
			// writes will come.
			n.objs.pending.forget(vid)
			dropped++
		}
		v.writes.Unlock()
	}
	return dropped
}
