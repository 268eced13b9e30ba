package server

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/recovery"
	"github.com/sheepfs/sheepfs/vdi"
)

// replicated is the cluster's object store seen from a gateway: each
// request goes to the object's replicas of the current epoch. It implements
// vdi.Objects.
type replicated struct {
	n       *Node
	dirty   dirtyNodes // nodes written since their last flush
	pending unflushed  // per VDI, the replicas of its writes not yet synced
}

var _ vdi.Objects = (*replicated)(nil)

// retryable reports whether a request that failed with err may succeed
// after the cluster changes (a node dies or an epoch moves on).
func retryable(err error) bool {
	switch errs.KindOf(err) {
	case errs.StaleEpoch, errs.IO, errs.NotReady, errs.Closed:
		return true
	}
	return false
}

// retry runs op against successive cluster states until it succeeds, fails
// for good, or RetryFor runs out. Between attempts it waits for the state
// to change or a short back-off, whichever comes first. what names the
// request in errors; it is called only to say why one failed.
func (r *replicated) retry(ctx context.Context, what func() string, op func(st *cluster.State) error) error {
	deadline := time.Now().Add(r.n.cfg.RetryFor)
	backoff := 50 * time.Millisecond
	for {
		st := r.n.cl.State()
		var err error
		switch {
		case !st.Formatted():
			err = errs.E(errs.NotReady, "cluster is not formatted")
		case len(st.Members) == 0:
			err = errs.E(errs.NotReady, "no members in epoch %v", st.Epoch)
		default:
			err = op(st)
		}
		if err == nil || !retryable(err) {
			return err
		}
		r.n.met.retries.Add(1, errs.KindOf(err).String())
		if time.Now().After(deadline) {
			return errs.E(errs.KindOf(err), "%s: gave up after %v: %w", what(), r.n.cfg.RetryFor, err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return errs.E(errs.IO, "%s: %w", what(), ctx.Err())
		case <-r.n.cl.Changed():
		case <-t.C:
		}
		t.Stop()
		backoff = min(backoff*2, time.Second)
	}
}

// targets returns the members that hold oid in st and are up (its
// writers), in ring order. A member marked down keeps its place in the
// ring but takes no reads or writes until it is back: its copy then
// misses what was written meanwhile, and recovery refreshes it.
func targets(st *cluster.State, oid ids.ObjectID, copies int) []cluster.Member {
	var buf [8]cluster.Member
	out := make([]cluster.Member, 0, copies)
	for _, m := range st.Placement(oid, copies, buf[:0]) {
		if m.Up() {
			out = append(out, m)
		}
	}
	return out
}

// sendMax is the largest payload callAll sends to the peers one after the
// other from the caller's goroutine; a larger one is sent to each peer
// from a goroutine of its own, so that their TLS encryption runs in
// parallel (with each other and with this node's part).
const sendMax = 64 << 10

// fanout sends one request to every target (the local node is served in
// place) and returns the first error; boots, if set, records the boot of
// each target that took it. If marks is not nil, each such target is
// appended to it with its boot, and fanout returns it. uneven reports,
// when the request failed, that it may have been applied by some targets
// and not by others: one took it, or one's connection broke, or the
// attempt ran out of time waiting for one.
func (r *replicated) fanout(ctx context.Context, ts []cluster.Member, local func() error, req proto.Msg, boots *bootSet, marks []replicaMark) (_ []replicaMark, uneven bool, _ error) {
	var first error
	took, broke := false, false
	r.callAll(ctx, ts, local, req, func(m cluster.Member, boot uint64, err error) {
		if err != nil {
			if first == nil {
				first = err
			}
			broke = broke || proto.IsTransport(err) || ctx.Err() != nil
			return
		}
		took = true
		boots.add(m.ID, boot)
		if marks != nil {
			marks = append(marks, replicaMark{id: m.ID, store: m.Store, boot: boot})
		}
	})
	return marks, first != nil && (took || broke), first
}

// callAll sends req to every member of ts but this node, serves this
// node's part with local (if it is in ts) on the caller's goroutine, whose
// stack has room for the store's call chain, then waits for the answers:
// no goroutine per peer and request waits for an answer. done receives
// each member's outcome, this node's first, with the boot its answer named
// (Aux, see proto.NodeBoot; this node's own for the local part).
func (r *replicated) callAll(ctx context.Context, ts []cluster.Member, local func() error, req proto.Msg, done func(m cluster.Member, boot uint64, err error)) {
	type sent struct {
		m   cluster.Member
		p   *proto.Pending
		err error
	}
	var buf [8]sent
	out := buf[:0]
	here := -1
	for i, m := range ts {
		if m.ID == r.n.id {
			here = i
		} else {
			out = append(out, sent{m: m})
		}
	}
	send := func(s *sent) {
		rq := req // each send sets its own request ID
		s.p, s.err = r.n.peers.Get(s.m.Addr).Start(ctx, &rq)
	}
	var wg sync.WaitGroup
	for i := range out {
		if len(req.Data) <= sendMax {
			send(&out[i])
		} else {
			wg.Go(func() { send(&out[i]) })
		}
	}
	if here >= 0 {
		done(ts[here], r.n.boot, local())
	}
	wg.Wait()
	for _, s := range out {
		err := s.err
		var boot uint64
		if err == nil {
			var resp *proto.Msg
			if resp, err = s.p.Wait(ctx); err == nil {
				boot = resp.Aux
			}
		}
		if err != nil {
			r.n.unreachable(s.m.ID, err)
			err = errs.E(errs.KindOf(err), "%v on %s: %w", req.Op, s.m.ID, err)
		}
		done(s.m, boot, err)
	}
}

// unreachable reports a member whose connection broke or was refused to
// the leader, which marks it down at once if its process is gone.
func (n *Node) unreachable(id ids.NodeID, err error) {
	if proto.IsTransport(err) {
		n.cl.ReportUnreachable(id)
	}
}

// writer changes objects for one writer: every attempt of a change must
// first pass fence, if any, against that attempt's cluster state. It
// implements vdi.Writer. Client writes get a fenced one (Node.clientWriter);
// the daemon's own changes (resize under its lock session, freeing a dead
// image's objects, the scrub's removals) ask for unfenced by name.
type writer struct {
	r     *replicated
	fence func(*cluster.State) error
	boots *bootSet // if set, gathers the boots of the replicas written
	// vdi, if set, is the VDI whose client writes: each write's
	// replicas are kept for its flushes (replicated.pending). The
	// daemon's own changes leave it zero.
	vdi ids.VDIID
	// sync makes each write durable on its replicas before it counts as
	// done: the request carries proto.FlagSync, and each replica syncs
	// its store after the write, in the same request. Such a write
	// leaves no replica dirty (replicated.change).
	sync bool
}

var _ vdi.Writer = writer{}

// fenced returns a writer whose changes pass fence first.
func (r *replicated) fenced(fence func(*cluster.State) error) writer {
	return writer{r: r, fence: fence}
}

// unfenced returns a writer for changes that no client's write lock
// governs.
func (r *replicated) unfenced() writer { return writer{r: r} }

// Write implements vdi.Writer.
func (w writer) Write(ctx context.Context, oid ids.ObjectID, copies int, off int64, data []byte) error {
	return w.write(ctx, oid, copies, off, data, false)
}

// Create implements vdi.Writer.
func (w writer) Create(ctx context.Context, oid ids.ObjectID, copies int, off int64, data []byte) error {
	return w.write(ctx, oid, copies, off, data, true)
}

func (w writer) write(ctx context.Context, oid ids.ObjectID, copies int, off int64, data []byte, create bool) error {
	req := proto.Msg{Header: proto.Header{Op: proto.OpWriteObj, Offset: uint64(off)}, Data: data}
	if create {
		req.Flags |= proto.FlagCreate
	}
	if w.sync {
		req.Flags |= proto.FlagSync
	}
	return w.r.change(ctx, w, oid, copies, req, func(ctx context.Context, epoch ids.Epoch, ver ids.Version) error {
		if err := w.r.n.localWrite(ctx, oid, off, data, ver, epoch, create); err != nil {
			return err
		}
		if w.sync {
			return w.r.n.store.Sync()
		}
		return nil
	})
}

// Punch implements vdi.Writer.
func (w writer) Punch(ctx context.Context, oid ids.ObjectID, copies int, off, length int64) error {
	req := proto.Msg{Header: proto.Header{Op: proto.OpPunchObj, Offset: uint64(off), Length: uint32(length)}}
	return w.r.change(ctx, w, oid, copies, req, func(ctx context.Context, epoch ids.Epoch, ver ids.Version) error {
		return w.r.n.localPunch(ctx, oid, off, length, ver, epoch)
	})
}

// Remove implements vdi.Writer.
func (w writer) Remove(ctx context.Context, oid ids.ObjectID, copies int) error {
	return w.RemoveIfNotNewer(ctx, oid, copies, 0)
}

// RemoveIfNotNewer is Remove, except that a replica whose copy has a
// version newer than ver (nonzero) keeps it: something wrote it since the
// caller decided. A write to a replica that removed its copy meanwhile
// fetches the kept one first.
func (w writer) RemoveIfNotNewer(ctx context.Context, oid ids.ObjectID, copies int, ver ids.Version) error {
	req := proto.Msg{Header: proto.Header{Op: proto.OpRemoveObj, Offset: uint64(ver)}}
	return w.r.change(ctx, w, oid, copies, req, func(ctx context.Context, epoch ids.Epoch, _ ids.Version) error {
		return w.r.n.localRemove(ctx, oid, epoch, ver)
	})
}

// change sends a request that changes oid to every replica of the current
// epoch (the local one is served in place by local), with a new version,
// retrying across failures and epoch changes; the replicas are then dirty
// until the next flush, unless req carries proto.FlagSync (each replica
// synced its store after the change, before it answered). Only a node in contact with the majority may
// change data, and only while w's fence, if any, allows it.
//
// One attempt is not cut short by its client going away (a request's
// context ends with its connection): an attempt that reached some
// replicas and not others, or was applied on some only, would leave
// copies that differ while all are up, and nothing would mend them. A
// gateway that then read an index from its own copy could take an
// object allocated since for a hole and allocate it again, over
// acknowledged writes (whole blocks read back as zeros after a mount's
// connections were killed under fio). An attempt is bounded by RetryFor
// instead; the next one checks the fence, and ctx, again.
//
// A change (not a removal) that gives up after an attempt that some
// replicas may have applied and others not has its object's copies
// compared a few seconds later (recheck.go).
func (r *replicated) change(ctx context.Context, w writer, oid ids.ObjectID, copies int, req proto.Msg, local func(context.Context, ids.Epoch, ids.Version) error) error {
	fence := w.fence
	what := func() string { return req.Op.String() + " " + oid.String() }
	uneven := false
	err := r.retry(ctx, what, func(st *cluster.State) error {
		if !r.n.cl.Fresh() {
			// Only a node that has made sure of its state lately
			// changes data (cluster/fresh.go): one cut off from the
			// majority, or stopped and resumed, waits until it has
			// caught up, and this attempt's state may then be old.
			if err := r.n.confirm(ctx); err != nil {
				return errs.E(errs.NotReady, "node %s has no contact with the cluster's majority: %w", r.n.id, err)
			}
			if r.n.cl.State() != st {
				return errs.E(errs.StaleEpoch, "node %s caught up with the cluster", r.n.id)
			}
		}
		if fence != nil {
			if err := fence(st); err != nil {
				return err
			}
		}
		ts := targets(st, oid, copies)
		if len(ts) < recovery.MinWriters(copies) {
			return errs.E(errs.NotReady, "%v: %d of its %d replicas are up, fewer than %d", oid, len(ts), copies, recovery.MinWriters(copies))
		}
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.n.cfg.RetryFor)
		defer cancel()
		ver := r.n.nextVersion()
		req.Epoch, req.ID, req.Aux = st.Epoch, uint64(oid), uint64(ver)
		synced := req.Flags&proto.FlagSync != 0
		var mb [8]replicaMark
		var marks []replicaMark
		if w.vdi != 0 && !synced {
			marks = mb[:0]
		}
		marks, apart, err := r.fanout(actx, ts, func() error {
			if err := r.n.checkEpoch(actx, st.Epoch); err != nil {
				return err
			}
			return local(actx, st.Epoch, ver)
		}, req, w.boots, marks)
		// Any attempt counts, unless the change succeeds in the end:
		// its last attempt wrote every copy.
		uneven = uneven || apart
		if err == nil && !synced {
			r.dirty.mark(ts)
			r.pending.mark(w.vdi, marks)
		}
		return err
	})
	if err != nil && uneven && req.Op != proto.OpRemoveObj {
		// (A removal that some replicas made and others not is left
		// to the scrub: the check would bring the removed copies
		// back from the others.)
		r.n.recheckLater(oid)
	}
	return err
}

// Read implements vdi.Objects: the local replica first, then the others in
// ring order, those that gossip has declared dead last: a replica cut off
// by a partition never answers, and a read would wait on it while another
// replica has the data. After a placement change the new replicas may not
// have pulled the object yet: if none of them has it, the other members
// are asked too.
func (r *replicated) Read(ctx context.Context, oid ids.ObjectID, copies int, off int64, buf []byte) error {
	what := func() string { return "read " + oid.String() }
	return r.retry(ctx, what, func(st *cluster.State) error {
		ts := targets(st, oid, copies)
		rank := func(m cluster.Member) int {
			switch {
			case m.ID == r.n.id:
				return 0
			case r.n.cl.Gone(m.ID):
				return 2
			}
			return 1
		}
		slices.SortStableFunc(ts, func(a, b cluster.Member) int { return rank(a) - rank(b) })
		// First the replicas that can answer at once; a replica whose
		// copy is being recovered is asked to wait for it only if none
		// can.
		found, err := r.readAny(ctx, st, oid, off, buf, ts, false)
		if !found && !errs.Is(err, errs.StaleEpoch) && err != nil {
			found, err = r.readAny(ctx, st, oid, off, buf, ts, true)
		}
		if !found && !errs.Is(err, errs.StaleEpoch) && len(ts) < len(st.Members) {
			var others []cluster.Member
			for _, m := range st.Members {
				if m.Up() && !slices.ContainsFunc(ts, func(t cluster.Member) bool { return t.ID == m.ID }) {
					others = append(others, m)
				}
			}
			var oerr error
			if found, oerr = r.readAny(ctx, st, oid, off, buf, others, true); err == nil {
				err = oerr
			}
		}
		switch {
		case found:
			return nil
		case err == nil:
			return errs.E(errs.NotFound, "object %v", oid)
		}
		return err
	})
}

// readAny reads from the first of ms that has the object. It reports
// found = false with no error when every one of them said NotFound, and
// the last failure otherwise.
// Without wait, a replica whose copy is being recovered answers NotReady at
// once instead of recovering it first.
func (r *replicated) readAny(ctx context.Context, st *cluster.State, oid ids.ObjectID, off int64, buf []byte, ms []cluster.Member, wait bool) (found bool, err error) {
	var lastErr error
	aux := uint64(readNoWait)
	if wait {
		aux = 0
	}
	for _, m := range ms {
		var err error
		if m.ID == r.n.id {
			_, err = r.n.localRead(ctx, oid, off, buf, wait)
		} else {
			var resp *proto.Msg
			resp, err = r.n.peers.Get(m.Addr).CallInto(ctx, &proto.Msg{Header: proto.Header{
				Op: proto.OpReadObj, Epoch: st.Epoch, ID: uint64(oid), Offset: uint64(off), Length: uint32(len(buf))}, Aux: aux}, buf)
			r.n.unreachable(m.ID, err)
			if err == nil {
				if len(resp.Data) != len(buf) {
					err = errs.E(errs.IO, "short read of %v from %s: %d of %d bytes", oid, m.ID, len(resp.Data), len(buf))
				} else if len(buf) > 0 && &resp.Data[0] != &buf[0] {
					copy(buf, resp.Data)
				}
			}
		}
		switch {
		case err == nil:
			return true, nil
		case errs.Is(err, errs.NotFound):
		case errs.Is(err, errs.StaleEpoch):
			return false, err
		default:
			lastErr = errs.E(errs.KindOf(err), "read %v on %s: %w", oid, m.ID, err)
		}
	}
	return false, lastErr
}

// Flush implements vdi.Objects: every node written since the last flush
// syncs its store. A node that left the epoch meanwhile is skipped: its
// replicas are no longer counted on. It checks no VDI's writes
// (flushBoots does).
func (r *replicated) Flush(ctx context.Context) error { return r.flushBoots(ctx, flushOf{}, nil) }

// flushOf says whose a flush is: that of VDI vid (0: no VDI's), and
// whether it is its client's own flush (OpVDIFlush), which takes a loss of
// writes that another flush of the VDI found (unflushed.setLost).
type flushOf struct {
	vid    ids.VDIID
	client bool
}

// flushBoots is Flush for a client of VDI f.vid (0: none) whose unflushed
// writes reached the nodes in expect, in those boots: those nodes sync too
// (this gateway may not have written them: it may have restarted since,
// or the client came from another), and if one of them answers in another
// boot, the writes it took may be gone: errs.Lost, once every node is
// synced. The nodes that are down are passed over, but not before every
// write of f.vid through this gateway since its last flush has a synced
// copy (settle).
func (r *replicated) flushBoots(ctx context.Context, f flushOf, expect []proto.NodeBoot) error {
	start := r.pending.ticket()
	want := map[ids.NodeID]uint64{}
	if len(expect) > 0 {
		byHash := make(map[uint64]uint64, len(expect))
		for _, e := range expect {
			byHash[e.Node] = e.Boot
		}
		var ms []cluster.Member
		for _, m := range r.n.cl.State().Members {
			if boot, ok := byHash[proto.NodeHash(m.ID)]; ok {
				want[m.ID] = boot
				ms = append(ms, m)
			}
		}
		r.dirty.mark(ms)
	}
	var lost []ids.NodeID
	err := r.dirty.flush(func(dirty map[ids.NodeID]bool) error {
		return r.retry(ctx, func() string { return "flush" }, func(st *cluster.State) error {
			var ts []cluster.Member
			for id := range dirty {
				if m, ok := st.Member(id); ok && m.Up() {
					ts = append(ts, m)
				} else {
					delete(dirty, id) // gone or down: its copies are not counted on
				}
			}
			return r.syncNodes(ctx, st, ts, func(m cluster.Member, boot uint64) {
				delete(dirty, m.ID)
				if w, ok := want[m.ID]; ok && w != 0 && boot != 0 && w != boot && !slices.Contains(lost, m.ID) {
					lost = append(lost, m.ID)
				}
			})
		})
	})
	if err == nil && f.vid != 0 {
		err = r.settle(ctx, f, start)
	}
	if err == nil && len(lost) > 0 {
		slices.Sort(lost)
		err = errs.E(errs.Lost, "writes since the last flush may be lost: node(s) %v took them, then their machine restarted before they were flushed", lost)
	}
	return err
}

// syncNodes has every member of ts sync its store (this node in place),
// calls synced for each that did, and records the syncs in r.pending. It
// returns the first error.
func (r *replicated) syncNodes(ctx context.Context, st *cluster.State, ts []cluster.Member, synced func(m cluster.Member, boot uint64)) error {
	var first error
	var db [8]syncedNode
	done := db[:0]
	t := r.pending.ticket()
	req := proto.Msg{Header: proto.Header{Op: proto.OpSyncObjs, Epoch: st.Epoch}}
	r.callAll(ctx, ts, r.n.store.Sync, req, func(m cluster.Member, boot uint64, err error) {
		if err != nil {
			if first == nil {
				first = err
			}
			return
		}
		done = append(done, syncedNode{m: m, boot: boot})
		if synced != nil {
			synced(m, boot)
		}
	})
	r.pending.cover(t, done)
	return first
}

// settle makes sure that every write of VDI f.vid through this gateway
// marked before ticket start has a copy on a node synced since, in the
// boot and Store that took it. The nodes that took a write without such a
// copy are synced as they come back up (a process that died keeps its
// page cache, and its successor syncs its file system when it opens), for
// up to RetryFor; if none can be, the flush fails with NotReady and the
// writes stay pending for the next. Writes whose nodes all came back in
// another boot or with another Store, or, once the wait is over, all left
// the cluster, are reported lost (errs.Lost); a flush that is not the
// client's keeps the loss for the client's next flush too, which reports
// it once. Other VDIs' writes never hold up this flush.
func (r *replicated) settle(ctx context.Context, f flushOf, start uint64) error {
	vid := f.vid
	lostErr := func(why string) error {
		return errs.E(errs.Lost, "VDI %v: writes since the last flush may be lost: %s", vid, why)
	}
	if f.client {
		if why := r.pending.takeLost(vid); why != "" {
			return lostErr(why)
		}
	}
	if !r.pending.waits(vid, start) {
		return nil
	}
	lost := func(gs []copyGroup, how string) error {
		why := fmt.Sprintf("their only copies were on %v, %s before they were flushed", groupsString(gs), how)
		if !f.client {
			r.pending.setLost(vid, why)
		}
		return lostErr(why)
	}
	err := r.retry(ctx, func() string { return fmt.Sprintf("flush of VDI %v", vid) }, func(st *cluster.State) error {
		gs := r.pending.waiting(vid, start)
		if len(gs) == 0 {
			return nil
		}
		var ts []cluster.Member
		for _, g := range gs {
			for _, rm := range g.nodes {
				if m, ok := st.Member(rm.id); ok && m.Up() && !rm.gone && !slices.ContainsFunc(ts, func(o cluster.Member) bool { return o.ID == m.ID }) {
					ts = append(ts, m)
				}
			}
		}
		err := r.syncNodes(ctx, st, ts, nil)
		if gone := r.pending.dropLost(vid, start, nil); len(gone) > 0 {
			return lost(gone, "which came back in another boot or with another disk")
		}
		if !r.pending.waits(vid, start) {
			return nil
		}
		if err == nil {
			gs = r.pending.waiting(vid, start)
			err = errs.E(errs.NotReady, "VDI %v: writes since the last flush are only on nodes that are down: %s", vid, groupsString(gs))
		}
		return err
	})
	if errs.KindOf(err) == errs.NotReady {
		st := r.n.cl.State()
		member := func(id ids.NodeID) bool { _, ok := st.Member(id); return ok }
		if gone := r.pending.dropLost(vid, start, member); len(gone) > 0 {
			return lost(gone, "which left the cluster")
		}
	}
	return err
}

// groupsString names groups of replicas for an error.
func groupsString(gs []copyGroup) string {
	var b strings.Builder
	for i := range gs {
		if i > 0 {
			b.WriteByte(' ')
		}
		if i == 4 {
			fmt.Fprintf(&b, "and %d more", len(gs)-i)
			break
		}
		b.WriteString(gs[i].String())
	}
	return b.String()
}
