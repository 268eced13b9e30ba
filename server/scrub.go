package server

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/objstore"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/vdi"
)

// The background scrub. Every pass, a node checks each object it is first
// in the placement of on every node placing it, as `sheep vdi check` does
// (each copy read whole against its checksums, versions and digests
// compared across nodes, what differs repaired from a good copy), at most
// at the cluster's scrub rate, and removes its copies of images that no
// longer exist. A pass starts a set interval after the last one started
// (`sheep cluster scrub --every`), or at once when asked (--start).

// scrubState is a node's scrub: what it shows, and when it last started.
type scrubState struct {
	mu   sync.Mutex
	info proto.ScrubInfo
	rec  scrubRecord
	// unref holds the objects earlier passes found unreferenced: the
	// version then, and when (this node's clock). One is freed only if a
	// pass at least scrubConfirm later finds it so again at the same
	// version: a write that created it finishes its index entry (or
	// fails) well within that, whatever the clocks of other nodes say.
	unref map[ids.ObjectID]sighting
}

// sighting is when a pass first found an object unreferenced.
type sighting struct {
	ver  ids.Version
	when time.Time
}

// scrubConfirm is the least time between the two passes that must find an
// object unreferenced before it is freed: twice the longest a gateway
// retries a write. SHEEP_SCRUB_CONFIRM (seconds) changes it, for tests.
var scrubConfirm = func() time.Duration {
	if s, err := strconv.Atoi(os.Getenv("SHEEP_SCRUB_CONFIRM")); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	return 2 * time.Minute
}()

// scrubRecord is kept in DIR/scrub across restarts.
type scrubRecord struct {
	LastStart int64  `json:"last_start"` // unix seconds
	StartSeen uint64 `json:"start_seen"` // the last ScrubConf.Start acted on
	Last      proto.ScrubInfo
}

func (n *Node) scrubPath() string { return filepath.Join(n.cfg.Dir, "scrub") }

// scrubInfo is this node's scrub, for NodeInfo.
func (n *Node) scrubInfo() proto.ScrubInfo {
	n.scrub.mu.Lock()
	defer n.scrub.mu.Unlock()
	return n.scrub.info
}

func (n *Node) setScrub(fn func(*proto.ScrubInfo)) {
	n.scrub.mu.Lock()
	fn(&n.scrub.info)
	n.scrub.mu.Unlock()
}

// scrubLoop runs passes when they are due.
func (n *Node) scrubLoop(stop <-chan struct{}) {
	rec := scrubRecord{LastStart: time.Now().Unix(), StartSeen: n.cl.State().Scrub.Start}
	if b, err := os.ReadFile(n.scrubPath()); err == nil {
		if err := json.Unmarshal(b, &rec); err != nil {
			n.log.Warn().Err(err).Msg("scrub: unreadable record of the last pass: starting afresh")
		}
	}
	n.scrub.mu.Lock()
	n.scrub.rec = rec
	n.scrub.info = rec.Last
	n.scrub.info.Objects, n.scrub.info.Done = 0, 0
	n.scrub.mu.Unlock()
	for {
		conf := n.cl.State().Scrub
		n.scrub.mu.Lock()
		r := n.scrub.rec
		n.scrub.mu.Unlock()
		due := conf.Start > r.StartSeen || time.Now().Unix()-r.LastStart >= conf.Interval()
		switch {
		case conf.Paused:
			n.setScrub(func(i *proto.ScrubInfo) { i.State = "paused" })
		case due:
			r.LastStart, r.StartSeen = time.Now().Unix(), conf.Start
			n.scrub.mu.Lock()
			n.scrub.rec = r
			n.scrub.mu.Unlock()
			n.saveScrub()
			n.scrubPass(stop)
			continue
		default:
			n.setScrub(func(i *proto.ScrubInfo) { i.State = "idle" })
		}
		select {
		case <-stop:
			return
		case <-time.After(time.Second):
		}
	}
}

// saveScrub writes the scrub record, durably.
func (n *Node) saveScrub() {
	n.scrub.mu.Lock()
	b, err := json.Marshal(n.scrub.rec)
	n.scrub.mu.Unlock()
	if err == nil {
		err = writeDurably(n.scrubPath(), b)
	}
	if err != nil {
		n.log.Warn().Err(err).Msg("scrub: cannot record the pass")
	}
}

// scrubPass checks the objects this node is first to place, then removes
// its copies of images that no longer exist.
func (n *Node) scrubPass(stop <-chan struct{}) {
	st := n.cl.State()
	var mine, orphans []ids.ObjectID
	_ = n.store.ForEach(func(oid ids.ObjectID, _ objstore.Meta) error {
		c := copiesOf(st, oid)
		if c == 0 {
			orphans = append(orphans, oid)
			return nil
		}
		if p := st.Placement(oid, c, nil); len(p) > 0 && p[0].ID == n.id {
			mine = append(mine, oid)
		}
		return nil
	})
	slices.Sort(mine)
	n.log.Info().Int("objects", len(mine)).Msg("scrub: pass started")
	var res proto.ScrubInfo
	n.setScrub(func(i *proto.ScrubInfo) { i.State, i.Objects, i.Done = "scrubbing", len(mine), 0 })
	lim := newLimiter(st.Scrub.Rate())
	for _, oid := range mine {
		for {
			select {
			case <-stop:
				return
			default:
			}
			conf := n.cl.State().Scrub
			if !conf.Paused {
				lim.setRate(conf.Rate())
				break
			}
			n.setScrub(func(i *proto.ScrubInfo) { i.State = "paused" })
			sleep(stop, time.Second)
		}
		n.setScrub(func(i *proto.ScrubInfo) { i.State = "scrubbing" })
		lim.wait(vdi.ObjectSize, stop)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		r := n.checkObject(ctx, oid)
		cancel()
		res.Checked++
		switch r.Status {
		case "repaired":
			res.Repaired++
			n.log.Warn().Stringer("oid", oid).Str("detail", r.Detail).Msg("scrub: repaired")
		case "lost", "degraded":
			res.Lost++
			n.log.Error().Stringer("oid", oid).Str("detail", r.Detail).Msg("scrub: no good copy of every replica")
		}
		n.setScrub(func(i *proto.ScrubInfo) { i.Done++ })
	}
	res.Orphans += n.freeUnreferencedObjects(stop, mine)
	for _, oid := range orphans {
		err := n.rec.removeLocked(oid, func() error {
			if copiesOf(n.cl.State(), oid) != 0 {
				return errs.E(errs.Exists, "image of %v exists", oid)
			}
			return n.store.Remove(oid)
		})
		if err == nil {
			res.Orphans++
			n.rec.forget(oid)
			n.log.Info().Stringer("oid", oid).Msg("scrub: removed a copy of an image that no longer exists")
		}
	}
	res.State, res.Finished = "idle", time.Now().Unix()
	n.scrub.mu.Lock()
	n.scrub.info = res
	n.scrub.rec.Last = res
	n.scrub.mu.Unlock()
	n.saveScrub()
	n.log.Info().Int("checked", res.Checked).Int("repaired", res.Repaired).Int("lost", res.Lost).Int("orphans", res.Orphans).Msg("scrub: pass finished")
}

// freeUnreferencedObjects frees, of oids (objects this node is first to
// place), the data objects of a writable VDI's current image that its
// index does not reference and that nothing wrote for the grace period: a
// crash between an object's creation and its index entry leaves such
// objects. The current image of a writable VDI has no descendants, so its
// own index is the only one that can reference its objects; a write in
// flight creates its object and sets the entry within a minute, far
// inside the grace. It returns how many it freed.
func (n *Node) freeUnreferencedObjects(stop <-chan struct{}, oids []ids.ObjectID) int {
	st := n.cl.State()
	live := map[ids.VDIID]*cluster.VDI{}
	for _, v := range st.VDIs {
		if !v.IsSnapshot() && len(st.Children(v.Image)) == 0 {
			live[v.Image] = v
		}
	}
	grace := time.Duration(st.Scrub.GraceSeconds()) * time.Second
	freed := 0
	n.scrub.mu.Lock()
	seen := n.scrub.unref
	n.scrub.mu.Unlock()
	now := map[ids.ObjectID]sighting{}
	defer func() {
		n.scrub.mu.Lock()
		n.scrub.unref = now
		n.scrub.mu.Unlock()
	}()
	for _, oid := range oids {
		select {
		case <-stop:
			return freed
		default:
		}
		v, ok := live[oid.VDI()]
		if oid.IsIndex() || !ok {
			continue
		}
		m, err := n.store.Stat(oid)
		if err != nil || time.Since(time.Unix(0, int64(m.Version))) < grace {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if !n.unreferenced(ctx, v, oid) {
			cancel()
			continue
		}
		first, ok := seen[oid]
		if !ok || first.ver != m.Version {
			first = sighting{m.Version, time.Now()}
		}
		now[oid] = first
		if time.Since(first.when) >= scrubConfirm {
			// A copy written since (a grow and a write racing this
			// check) is kept.
			if err := n.objs.unfenced().RemoveIfNotNewer(ctx, oid, v.Copies, m.Version); err == nil {
				delete(now, oid)
				freed++
				n.log.Warn().Stringer("oid", oid).Str("vdi", v.Name).Msg("scrub: freed an object its VDI's index does not reference")
			} else {
				n.log.Warn().Stringer("oid", oid).Err(err).Msg("scrub: cannot free an unreferenced object")
			}
		}
		cancel()
	}
	return freed
}

// unreferenced reports whether data object oid of writable VDI v is past
// its end or not in its image's own index, as stored now.
func (n *Node) unreferenced(ctx context.Context, v *cluster.VDI, oid ids.ObjectID) bool {
	cur, ok := n.cl.State().VDIs[v.Name]
	if !ok || cur.Image != v.Image {
		return false // deleted, rolled back or snapshotted meanwhile: next pass
	}
	if oid.Index() >= vdi.NumObjects(cur.Size) {
		return true
	}
	own, err := vdi.OwnEntry(ctx, n.objs, v.Image, v.Copies, oid.Index())
	return err == nil && !own
}
