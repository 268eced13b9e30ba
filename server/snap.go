package server

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"time"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/vdi"
)

// Snapshots, clones, rollbacks and the collector that frees the objects of
// deleted images. The metadata changes are commands of the cluster log
// (cluster/snap.go); this file does what they need around them: fencing
// writes during a snapshot, and freeing objects.

// lookup returns the VDI (NAME) or snapshot (NAME@TAG) called full.
func lookup(st *cluster.State, full string) (*cluster.VDI, error) {
	if strings.Contains(full, "@") {
		name, tag, err := cluster.SplitSnapshot(full)
		if err != nil {
			return nil, err
		}
		v, ok := st.Snapshot(name, tag)
		if !ok {
			return nil, errs.E(errs.NotFound, "snapshot %s", full)
		}
		return v, nil
	}
	v, ok := st.VDIs[full]
	if !ok {
		return nil, errs.E(errs.NotFound, "VDI %q", full)
	}
	return v, nil
}

// find returns the VDI (NAME) or snapshot (NAME@TAG) called full; if this
// node does not know it, after catching up with the leader (it may have
// been made a moment ago through another node).
func (n *Node) find(ctx context.Context, full string) (*cluster.VDI, error) {
	v, err := lookup(n.cl.State(), full)
	if errs.Is(err, errs.NotFound) && n.catchUp(ctx) {
		v, err = lookup(n.cl.State(), full)
	}
	return v, err
}

// snapshotVDI takes snapshot name@tag. A VDI open for writing is
// snapshotted by the node its writer writes through: that node stops the
// VDI's writes, flushes, has the cluster record the snapshot, moves the
// volume to its new image, and lets writes go on. Every write acknowledged
// before is in the snapshot, none started after is.
//
// A forwarded request is not forwarded again: two nodes whose states
// disagree about the writer answer StaleEpoch instead of passing it back
// and forth, and the first node tries again.
func (n *Node) snapshotVDI(ctx context.Context, name, tag string, forwarded bool) (proto.VDIInfo, error) {
	if err := cluster.CheckName(name); err != nil {
		return proto.VDIInfo{}, err
	}
	if err := cluster.CheckTag(tag); err != nil {
		return proto.VDIInfo{}, err
	}
	for try := 0; ; try++ {
		meta, err := n.find(ctx, name)
		if err != nil {
			return proto.VDIInfo{}, err
		}
		var out proto.VDIInfo
		switch {
		case meta.Lock != nil && meta.Lock.Node != n.id && forwarded:
			return proto.VDIInfo{}, errs.E(errs.StaleEpoch, "VDI %q is written through node %s, not %s", name, meta.Lock.Node, n.id)
		case meta.Lock != nil && meta.Lock.Node != n.id:
			out, err = n.forwardSnapshot(ctx, meta.Lock.Node, name, tag)
		case meta.Lock != nil:
			out, err = n.snapshotWritten(ctx, meta, tag)
		default:
			var r cluster.Result
			r, err = n.cl.Apply(ctx, cluster.Command{Op: cluster.CmdSnapshot, Name: name, Tag: tag})
			if err == nil {
				out = n.vdiInfo(r.VDI)
			}
		}
		// StaleEpoch: the write lock moved meanwhile; look again.
		if errs.Is(err, errs.StaleEpoch) && try < 50 && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		return out, err
	}
}

// forwardSnapshot asks node id, which holds name's writer, to take the
// snapshot.
func (n *Node) forwardSnapshot(ctx context.Context, id ids.NodeID, name, tag string) (proto.VDIInfo, error) {
	m, ok := n.cl.State().Member(id)
	if !ok {
		return proto.VDIInfo{}, errs.E(errs.StaleEpoch, "writer's node %s is not a member", id)
	}
	b, err := json.Marshal(proto.AdminRequest{Cmd: proto.AdminVDISnapshot, Name: name, Tag: tag, Forwarded: true})
	if err != nil {
		return proto.VDIInfo{}, errs.E(errs.Other, "encode: %w", err)
	}
	resp, err := n.peers.Get(m.Addr).Call(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpAdmin}, Data: b})
	if err != nil {
		if proto.IsTransport(err) {
			return proto.VDIInfo{}, errs.E(errs.StaleEpoch, "writer's node %s: %w", id, err)
		}
		return proto.VDIInfo{}, err
	}
	var out proto.VDIInfo
	if err := json.Unmarshal(resp.Data, &out); err != nil {
		return proto.VDIInfo{}, errs.E(errs.IO, "decode answer of node %s: %w", id, err)
	}
	return out, nil
}

// snapshotWritten snapshots a VDI whose writer writes through this node.
func (n *Node) snapshotWritten(ctx context.Context, meta *cluster.VDI, tag string) (proto.VDIInfo, error) {
	var v *volume
	for {
		var err error
		if v, _, err = n.volumeFor(meta.ID); err != nil {
			return proto.VDIInfo{}, err
		}
		v.writes.Lock()
		if !v.evicted {
			break
		}
		v.writes.Unlock() // dropped meanwhile: fence the one writes now use
	}
	defer v.writes.Unlock()
	// With writes stopped, the snapshot goes through whatever its client
	// does: a command abandoned on the way to the leader may commit
	// anyway, and then writes must not go on in the old image, nor fail
	// because this node stopped waiting for its state to show the new one.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	// The snapshot holds what was acknowledged: make it durable first, so
	// that a crash cannot take from the snapshot what it showed.
	if err := n.objs.flushBoots(ctx, flushOf{vid: meta.ID}, nil); err != nil {
		return proto.VDIInfo{}, err
	}
	old := v.Info().ID
	r, err := n.cl.Apply(ctx, cluster.Command{Op: cluster.CmdSnapshot, Name: meta.Name, Tag: tag,
		Mount: meta.Lock.Mount, Node: n.id})
	if err != nil {
		// The command may have committed all the same (the leader
		// changed, or its answer was lost): then the old image is the
		// snapshot's now, and writes must not resume in it.
		if cerr := n.cl.CatchUp(ctx); cerr != nil {
			v.mu.Lock()
			v.frozen = old // unknown: writes wait for a state that says
			v.mu.Unlock()
			return proto.VDIInfo{}, err
		}
		snap, ok := n.cl.State().Snapshot(meta.Name, tag)
		if !ok || snap.Image != old {
			return proto.VDIInfo{}, err
		}
		r = cluster.Result{VDI: snap}
	}
	// Writes resume only in the new image. Until this node's state shows
	// it, the old one is frozen: writes fail (and are retried) instead.
	_, werr := n.cl.WaitFor(ctx, func(st *cluster.State) bool {
		cur, ok := st.VDIs[meta.Name]
		return !ok || cur.Image != old
	})
	v.mu.Lock()
	v.frozen = old
	v.mu.Unlock()
	if werr == nil {
		_, _, _ = n.volumeFor(meta.ID)
	}
	return n.vdiInfo(r.VDI), nil
}

// cloneVDI makes a writable VDI from a snapshot.
func (n *Node) cloneVDI(ctx context.Context, a proto.AdminRequest) (proto.VDIInfo, error) {
	if _, _, err := cluster.SplitSnapshot(a.Source); err != nil {
		return proto.VDIInfo{}, err
	}
	if err := cluster.CheckName(a.Name); err != nil {
		return proto.VDIInfo{}, err
	}
	r, err := n.cl.Apply(ctx, cluster.Command{Op: cluster.CmdClone, Source: a.Source, Name: a.Name, Copies: a.Copies, Token: a.Token})
	if err != nil {
		return proto.VDIInfo{}, err
	}
	return n.vdiInfo(r.VDI), nil
}

// rollbackVDI makes VDI name hold snapshot name@tag again; the data it had
// is freed.
func (n *Node) rollbackVDI(ctx context.Context, name, tag string) (proto.VDIInfo, error) {
	if err := cluster.CheckName(name); err != nil {
		return proto.VDIInfo{}, err
	}
	if err := cluster.CheckTag(tag); err != nil {
		return proto.VDIInfo{}, err
	}
	var was []ids.VDIID // the image the rollback buries, to free it
	if v, ok := n.cl.State().VDIs[name]; ok {
		was = append(was, v.Image)
	}
	r, err := n.cl.Apply(ctx, cluster.Command{Op: cluster.CmdRollback, Name: name, Tag: tag})
	if err != nil {
		return proto.VDIInfo{}, err
	}
	if _, err := n.collect(ctx, append(was, r.VDI.Parent)...); err != nil {
		n.log.Warn().Err(err).Str("vdi", name).Msg("rollback: freeing the old data failed; the next delete or gc retries")
	}
	return n.vdiInfo(r.VDI), nil
}

// deleteVDI removes a VDI or a snapshot (NAME@TAG), then frees every object
// that nothing references any more.
func (n *Node) deleteVDI(ctx context.Context, full string) error {
	cmd := cluster.Command{Op: cluster.CmdVDIDelete, Name: full}
	if strings.Contains(full, "@") {
		name, tag, err := cluster.SplitSnapshot(full)
		if err != nil {
			return err
		}
		cmd = cluster.Command{Op: cluster.CmdSnapDelete, Name: name, Tag: tag}
	}
	r, err := n.cl.Apply(ctx, cmd)
	if err != nil {
		return err
	}
	n.mu.Lock()
	delete(n.volumes, r.VDI.ID)
	n.mu.Unlock()
	if _, err := n.collect(ctx, r.VDI.Image); err != nil {
		return errs.E(errs.KindOf(err), "%s deleted, but freeing its objects failed (the next delete or gc retries): %w", full, err)
	}
	return nil
}

// collect frees the objects of dead images that no live image references,
// and forgets dead images without children. It runs one at a time on a
// node; two nodes collecting at once do the same work twice, harmlessly.
//
// Why it is safe while the cluster runs: an object of dead image d can only
// be referenced by d's descendants. Live descendants only ever lose
// references (a copy on write replaces an entry) or pass theirs on (a
// snapshot, clone or rollback starts from a live image's entries), so an
// object none of them references now stays unreferenced for good.
//
// With an image given, only the dead images of its family are looked at
// (the others cannot have changed); with none, all of them.
func (n *Node) collect(ctx context.Context, of ...ids.VDIID) (proto.GCResult, error) {
	n.gcMu.Lock()
	defer n.gcMu.Unlock()
	var res proto.GCResult
	roots := map[ids.VDIID]bool{}
	st := n.cl.State()
	for _, id := range of {
		roots[st.Root(id)] = true
	}
	for {
		st := n.cl.State()
		dead := make([]ids.VDIID, 0, len(st.Dead))
		for id := range st.Dead {
			if len(of) == 0 || roots[st.Root(id)] {
				dead = append(dead, id)
			}
		}
		// Children first, so that a chain of dead images goes in one pass.
		depth := make(map[ids.VDIID]int, len(dead))
		for _, d := range dead {
			depth[d] = len(st.Chain(d))
		}
		slices.SortFunc(dead, func(a, b ids.VDIID) int { return depth[b] - depth[a] })
		purged := 0
		res.Left = 0
		for _, d := range dead {
			freed, err := n.freeUnreferenced(ctx, st, d)
			res.Freed += freed
			if err != nil {
				return res, err
			}
			if len(st.Children(d)) > 0 {
				res.Left++
				continue
			}
			if err := n.freeIndex(ctx, st, d); err != nil {
				return res, err
			}
			_, err = n.cl.Apply(ctx, cluster.Command{Op: cluster.CmdPurge, Image: d})
			if err != nil && !errs.Is(err, errs.NotFound) {
				return res, err
			}
			purged++
		}
		res.Purged += purged
		if purged == 0 {
			return res, nil
		}
	}
}

// copiedFrom is called after a write copied an object of image from: if
// from is dead, that object may have lost its last reference, and
// collectLoop collects the family soon.
func (n *Node) copiedFrom(from ids.VDIID) {
	if _, dead := n.cl.State().Dead[from]; !dead {
		return
	}
	n.gcQueueMu.Lock()
	n.gcPending[from] = true
	n.gcQueueMu.Unlock()
	select {
	case n.gcKick <- struct{}{}:
	default: // a kick is pending already
	}
}

// collectEvery is how often the leader collects every family that has
// dead images: what a failed delete left, and objects copied away from
// dead images whose collection did not run (a gateway that died first).
const collectEvery = 10 * time.Minute

// collectLoop runs the collector in the background: for the families
// copiedFrom noted (a moment after the first note, so that the copies of
// one burst of writes go together), and on the leader for every family
// every collectEvery.
func (n *Node) collectLoop() {
	t := time.NewTicker(collectEvery)
	defer t.Stop()
	for {
		var of []ids.VDIID
		select {
		case <-n.stop:
			return
		case <-n.gcKick:
			select {
			case <-n.stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			n.gcQueueMu.Lock()
			for id := range n.gcPending {
				of = append(of, id)
			}
			clear(n.gcPending)
			n.gcQueueMu.Unlock()
			if len(of) == 0 {
				continue
			}
		case <-t.C:
			if n.cl.Leader() != n.id || len(n.cl.State().Dead) == 0 {
				continue
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), collectEvery)
		r, err := n.collect(ctx, of...)
		cancel()
		if err != nil {
			n.log.Warn().Err(err).Msg("background collection")
		} else if r.Freed > 0 || r.Purged > 0 {
			n.log.Info().Int("freed", r.Freed).Int("purged", r.Purged).Msg("background collection")
		}
	}
}

// freeUnreferenced removes the objects dead image d owns that none of its
// live descendants references, and marks them unallocated in d's index so
// that the next pass does not look at them again.
func (n *Node) freeUnreferenced(ctx context.Context, st *cluster.State, d ids.VDIID) (int, error) {
	img, ok := st.Image(d)
	if !ok {
		return 0, nil
	}
	// d's own index, not resolved through its ancestors: entries equal to
	// d are its objects.
	own := vdi.Open(n.objs, vdi.Info{ID: d, Size: img.Size, Copies: img.Copies})
	var live []*vdi.Volume
	for _, id := range st.Family(d)[1:] {
		if di, ok := st.Image(id); ok && di.VDI != nil {
			live = append(live, vdi.Open(n.objs, vdi.Info{ID: id, Size: di.Size, Copies: di.Copies, Chain: st.Chain(id)}))
		}
	}
	// The objects to free are gathered, then every member syncs, then
	// they are freed, a batch at a time: a descendant's entry that
	// replaced d's (a copy on write) may still be only in a page cache,
	// written through any gateway, and once d's object is gone a power
	// loss that took the entry would leave the descendant reading through
	// to nothing. An entry that is not d never becomes d again, so what
	// was read before the sync still holds after it.
	freed := 0
	var batch []uint32
	free := func() error {
		if len(batch) == 0 {
			return nil
		}
		// With no live descendant, no entry replaced d's: nothing to
		// sync (and a node whose disk is full, which cannot sync, does
		// not keep a delete from freeing space).
		if len(live) > 0 {
			if err := n.syncMembers(ctx, st); err != nil {
				return err
			}
		}
		for _, idx := range batch {
			if err := own.Free(ctx, n.objs.unfenced(), idx); err != nil {
				return err
			}
			freed++
		}
		batch = batch[:0]
		return nil
	}
	for idx := range vdi.NumObjects(img.Size) {
		owner, err := own.Owner(ctx, idx)
		if err != nil {
			return freed, err
		}
		if owner != d {
			continue
		}
		used := false
		for _, l := range live {
			if uint64(idx)*vdi.ObjectSize >= l.Info().Size {
				continue
			}
			o, err := l.Owner(ctx, idx)
			if err != nil {
				return freed, err
			}
			if o == d {
				used = true
				break
			}
		}
		if used {
			continue
		}
		if batch = append(batch, idx); len(batch) >= freeBatch {
			if err := free(); err != nil {
				return freed, err
			}
		}
	}
	if err := free(); err != nil {
		return freed, err
	}
	return freed, nil
}

// freeBatch is how many objects freeUnreferenced frees after one sync of
// every member.
const freeBatch = 1024

// syncMembers makes every change any member took so far durable: each
// member of st syncs its store.
func (n *Node) syncMembers(ctx context.Context, st *cluster.State) error {
	all := make([]proto.NodeBoot, 0, len(st.Members))
	for _, m := range st.Members {
		all = append(all, proto.NodeBoot{Node: proto.NodeHash(m.ID)}) // boot 0: compare nothing
	}
	return n.objs.flushBoots(ctx, flushOf{}, all)
}

// freeIndex removes the index objects of dead image d (which has no
// children left to inherit from it).
func (n *Node) freeIndex(ctx context.Context, st *cluster.State, d ids.VDIID) error {
	img, _ := st.Image(d)
	for c := uint32(0); c*vdi.EntriesPerIndexObject < max(vdi.NumObjects(img.Size), 1); c++ {
		if err := n.objs.unfenced().Remove(ctx, ids.IndexObject(d, c), img.Copies); err != nil {
			return err
		}
	}
	return nil
}

// tree lists every image of every family.
func (n *Node) tree() []proto.ImageInfo {
	st := n.cl.State()
	var out []proto.ImageInfo
	for _, m := range []map[string]*cluster.VDI{st.VDIs, st.Snaps} {
		for _, v := range m {
			vi := n.vdiInfo(v)
			out = append(out, proto.ImageInfo{ID: v.Image, Parent: v.Parent, VDI: &vi})
		}
	}
	for id, d := range st.Dead {
		out = append(out, proto.ImageInfo{ID: id, Parent: d.Parent, Was: d.Name})
	}
	slices.SortFunc(out, func(a, b proto.ImageInfo) int { return int(a.ID) - int(b.ID) })
	return out
}

// maxOwners bounds one AdminVDIOwners answer.
const maxOwners = 1 << 16

// owners answers AdminVDIOwners.
func (n *Node) owners(ctx context.Context, a proto.AdminRequest) ([]ids.VDIID, error) {
	meta, err := n.find(ctx, a.Name)
	if err != nil {
		return nil, err
	}
	v, _, err := n.volumeFor(meta.ID)
	if err != nil {
		return nil, err
	}
	total := uint64(vdi.NumObjects(v.Info().Size))
	if a.Offset > total {
		return nil, errs.E(errs.Invalid, "object %d is past the end of %s (%d objects)", a.Offset, a.Name, total)
	}
	cnt := min(uint64(a.Count), total-a.Offset, maxOwners)
	out := make([]ids.VDIID, cnt)
	for i := range out {
		if out[i], err = v.Owner(ctx, uint32(a.Offset)+uint32(i)); err != nil {
			return nil, err
		}
	}
	return out, nil
}
