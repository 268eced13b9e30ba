package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sheepfs/sheepfs/auth"
	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/objstore"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/vdi"
)

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

func jsonMarshal(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, errs.E(errs.Other, "encode answer: %w", err)
	}
	return b, nil
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

func (n *Node) connState(c *proto.Conn) *connState {
	n.mu.Lock()
	defer n.mu.Unlock()
	cs := n.conns[c]
	if cs == nil {
		cs = &connState{locks: map[string]ids.MountID{}, session: n.newSession()}
		n.conns[c] = cs
		c.OnClose(func() { n.connClosed(c) })
	}
	return cs
}

// connClosed releases the write locks a client held through c.
func (n *Node) connClosed(c *proto.Conn) {
	n.mu.Lock()
	cs := n.conns[c]
	delete(n.conns, c)
	n.mu.Unlock()
	if cs == nil {
		return
	}
	cs.mu.Lock()
	locks := cs.locks
	cs.locks = nil
	cs.mu.Unlock()
	for name, mount := range locks {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := n.cl.Apply(ctx, cluster.Command{Op: cluster.CmdVDIUnlock, Name: name, Mount: mount, Node: n.id, Session: cs.session})
		cancel()
		if err != nil && !errs.Is(err, errs.NotFound) {
			n.log.Warn().Err(err).Str("vdi", name).Msg("release lock of closed connection")
		}
	}
}

// newSession returns a lock session name of this run of the node.
func (n *Node) newSession() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return n.runPrefix() + hex.EncodeToString(b[:])
}

// runPrefix starts every session name of this run of the node.
func (n *Node) runPrefix() string { return string(n.id) + "-" + n.run + "-" }

// releaseStaleLocks releases, once the cluster answers, the write locks
// held through this node by a previous run of it: a restart within the
// grace period keeps the node a member, so they would never die otherwise.
// A client that took its lock again through this run has a session of this
// run, which stays.
func (n *Node) releaseStaleLocks() {
	for !n.cl.HasQuorum() || !n.cl.State().Formatted() {
		select {
		case <-n.stop:
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
	for name, v := range n.cl.State().VDIs {
		if v.Lock == nil || v.Lock.Node != n.id || strings.HasPrefix(v.Lock.Session, n.runPrefix()) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := n.cl.Apply(ctx, cluster.Command{Op: cluster.CmdVDIUnlock, Name: name, Mount: v.Lock.Mount, Node: n.id, Session: v.Lock.Session})
		cancel()
		if err == nil {
			n.log.Info().Str("vdi", name).Str("mount", string(v.Lock.Mount)).Msg("released a write lock held through this node before it restarted")
		}
	}
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

// evictLoop drops idle volumes every minute.
func (n *Node) evictLoop() {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
			n.evictIdle(time.Now().Add(-volumeIdle), func(vid ids.VDIID) bool {
				meta, ok := n.cl.State().VDIByID(vid)
				return ok && meta.Lock != nil
			})
		}
	}
}

// evictIdle drops the volumes last used before cutoff whose VDI nobody
// holds open for writing (locked says whether someone does). A volume is
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
			dropped++
		}
		v.writes.Unlock()
	}
	return dropped
}

// checkWriter fails unless the client on c holds vdi's write lock.
func (n *Node) checkWriter(c *proto.Conn, meta *cluster.VDI) error {
	if meta.IsSnapshot() {
		return errs.E(errs.ReadOnly, "snapshot %s is read-only", meta.FullName())
	}
	n.mu.RLock()
	cs := n.conns[c]
	n.mu.RUnlock()
	var mount ids.MountID
	if cs != nil {
		cs.mu.Lock()
		mount = cs.locks[meta.Name]
		cs.mu.Unlock()
	}
	if mount == "" || meta.Lock == nil || meta.Lock.Mount != mount {
		return errs.E(errs.Busy, "VDI %q is not open for writing by this client", meta.Name)
	}
	// The client took the lock again through another node: a write
	// still arriving here would miss that node's snapshot fence.
	if meta.Lock.Node != n.id {
		return errs.E(errs.Busy, "VDI %q is now written through node %s", meta.Name, meta.Lock.Node)
	}
	return nil
}

// writerFence returns ctx with a fence that checks, against the cluster
// state of every attempt to change an object, that the client on c still
// holds the write lock of meta's VDI. A write retries for up to RetryFor
// across failures and epoch changes: one stuck on a replica across a
// partition, on the side without the majority, must fail once the heal
// shows that the majority dropped the lock (it died with this node, as far
// as the majority knew) and perhaps gave it to another client, instead of
// landing then.
func (n *Node) writerFence(ctx context.Context, c *proto.Conn, meta *cluster.VDI) context.Context {
	vid := meta.ID
	return withFence(ctx, func(st *cluster.State) error {
		meta, ok := st.VDIByID(vid)
		if !ok {
			return errs.E(errs.NotFound, "VDI %v is gone", vid)
		}
		return n.checkWriter(c, meta)
	})
}

func (n *Node) handleVDI(ctx context.Context, c *proto.Conn, req *proto.Msg) (*proto.Msg, error) {
	n.rec.clientIO()
	if req.ID > uint64(ids.MaxVDIID) || req.ID == 0 {
		return nil, errs.E(errs.Invalid, "bad VDI ID %d", req.ID)
	}
	v, meta, err := n.volumeFor(ids.VDIID(req.ID))
	if err != nil {
		return nil, err
	}
	if req.Offset > cluster.MaxVDISize {
		return nil, errs.E(errs.TooLarge, "offset %d is past the end of VDI %q", req.Offset, meta.Name)
	}
	off := int64(req.Offset)
	resp := &proto.Msg{}
	switch req.Op {
	case proto.OpVDIRead:
		buf := proto.GetBuf(int(req.Length))
		if err := v.ReadAt(ctx, buf, off); err != nil {
			proto.PutBuf(buf)
			return nil, err
		}
		resp.Data = buf
		resp.SetPooled()
	case proto.OpVDIWrite:
		if err := n.checkWriter(c, meta); err != nil {
			return nil, err
		}
		ctx := n.writerFence(ctx, c, meta)
		if err := n.writeTo(ctx, v, meta.ID, func(v *volume) error { return v.WriteAt(ctx, req.Data, off) }); err != nil {
			return nil, err
		}
		if req.Flags&proto.FlagSync != 0 {
			if err := v.Flush(ctx); err != nil {
				return nil, err
			}
		}
	case proto.OpVDIDiscard:
		if err := n.checkWriter(c, meta); err != nil {
			return nil, err
		}
		ctx := n.writerFence(ctx, c, meta)
		keep := req.Flags&proto.FlagZeroKeep != 0
		if err := n.writeTo(ctx, v, meta.ID, func(v *volume) error { return v.Discard(ctx, off, int64(req.Aux), keep) }); err != nil {
			return nil, err
		}
	case proto.OpVDIFlush:
		if err := v.Flush(ctx); err != nil {
			return nil, err
		}
	case proto.OpVDIAllocMap:
		bm, cnt, err := v.AllocMap(ctx)
		if err != nil {
			return nil, err
		}
		resp.Data, resp.Aux = bm, uint64(cnt)
	}
	return resp, nil
}

func (n *Node) vdiInfo(v *cluster.VDI) proto.VDIInfo {
	out := proto.VDIInfo{Name: v.Name, ID: v.ID, Size: v.Size, Copies: v.Copies, Created: v.Created, WriteGen: v.WriteGen,
		Image: v.Image, Parent: v.Parent, Tag: v.Tag, SnapTime: v.SnapTime, Source: v.Source}
	if p, ok := n.cl.State().Image(v.Parent); ok && p.VDI != nil {
		out.ParentName = p.VDI.FullName()
	}
	if v.Lock != nil {
		out.Locked, out.Mount, out.Node = true, shownMount(v.Lock.Mount), v.Lock.Node
	}
	return out
}

// shownMount is what answers show of a lock holder's mount ID: a short
// fingerprint. The ID itself names the holder to the gateways (a mount
// takes its locks again under it after a failover), so whoever knew it
// could take the lock over and release it.
func shownMount(m ids.MountID) ids.MountID {
	h := sha256.Sum256([]byte(m))
	return ids.MountID("m~" + hex.EncodeToString(h[:4]))
}

// needsPeer reports whether an admin request needs a connection holding the
// cluster key: a node's disks, a lock released by force, and requests one
// node forwards to another.
func needsPeer(a *proto.AdminRequest) bool {
	switch a.Cmd {
	case proto.AdminMDPlug, proto.AdminMDUnplug, proto.AdminMDFault,
		proto.AdminKeyInstall, proto.AdminKeyUse, proto.AdminKeyDrop:
		return true
	}
	return a.Forwarded || a.Force
}

func adminWhat(a *proto.AdminRequest) string {
	switch {
	case a.Forwarded:
		return "a forwarded " + a.Cmd
	case a.Force:
		return a.Cmd + " --force"
	}
	return a.Cmd
}

func (n *Node) handleAdmin(ctx context.Context, c *proto.Conn, req *proto.Msg) (*proto.Msg, error) {
	var a proto.AdminRequest
	if err := json.Unmarshal(req.Data, &a); err != nil {
		return nil, errs.E(errs.Invalid, "undecodable admin request: %w", err)
	}
	if needsPeer(&a) && auth.RoleOf(c.NetConn()) != auth.RolePeer {
		return nil, errs.E(errs.Denied, "%s needs the cluster key: a client key does not allow it", adminWhat(&a))
	}
	var out any
	switch a.Cmd {
	case proto.AdminClusterFormat:
		if a.Copies < 1 || a.Copies > cluster.MaxCopies {
			return nil, errs.E(errs.Invalid, "copies must be 1 to %d, not %d", cluster.MaxCopies, a.Copies)
		}
		if _, err := n.cl.Apply(ctx, cluster.Command{Op: cluster.CmdFormat, Copies: a.Copies}); err != nil {
			return nil, err
		}
		out = n.clusterInfo(ctx)
	case proto.AdminClusterInfo:
		out = n.clusterInfo(ctx)
	case proto.AdminNodeList:
		out = n.clusterInfo(ctx).Nodes
	case proto.AdminNodeStat:
		out = n.nodeStat()
	case proto.AdminVDICreate:
		if err := cluster.CheckName(a.Name); err != nil {
			return nil, err
		}
		if err := cluster.CheckSize(a.Size); err != nil {
			return nil, err
		}
		r, err := n.cl.Apply(ctx, cluster.Command{Op: cluster.CmdVDICreate, Name: a.Name, Size: a.Size, Copies: a.Copies})
		if err != nil {
			return nil, err
		}
		out = n.vdiInfo(r.VDI)
	case proto.AdminVDIDelete:
		if err := n.deleteVDI(ctx, a.Name); err != nil {
			return nil, err
		}
		out = struct{}{}
	case proto.AdminVDIResize:
		r, err := n.resizeVDI(ctx, a)
		if err != nil {
			return nil, err
		}
		out = n.vdiInfo(r)
	case proto.AdminVDIList:
		n.catchUp(ctx)
		st := n.cl.State()
		list := make([]proto.VDIInfo, 0, len(st.VDIs))
		for _, v := range st.VDIs {
			list = append(list, n.vdiInfo(v))
		}
		slices.SortFunc(list, func(a, b proto.VDIInfo) int { return strings.Compare(a.Name, b.Name) })
		out = list
	case proto.AdminVDILookup:
		v, err := n.find(ctx, a.Name)
		if err != nil {
			return nil, err
		}
		out = n.vdiInfo(v)
	case proto.AdminVDISnapshot:
		r, err := n.snapshotVDI(ctx, a.Name, a.Tag, a.Forwarded)
		if err != nil {
			return nil, err
		}
		out = r
	case proto.AdminVDIClone:
		r, err := n.cloneVDI(ctx, a)
		if err != nil {
			return nil, err
		}
		out = r
	case proto.AdminVDIRollback:
		r, err := n.rollbackVDI(ctx, a.Name, a.Tag)
		if err != nil {
			return nil, err
		}
		out = r
	case proto.AdminSnapList:
		n.catchUp(ctx)
		st := n.cl.State()
		list := []proto.VDIInfo{}
		for _, v := range st.Snaps {
			if a.Name == "" || v.Name == a.Name {
				list = append(list, n.vdiInfo(v))
			}
		}
		slices.SortFunc(list, func(a, b proto.VDIInfo) int {
			if c := strings.Compare(a.Name, b.Name); c != 0 {
				return c
			}
			return int(a.ID) - int(b.ID)
		})
		out = list
	case proto.AdminSnapDelete:
		if err := n.deleteVDI(ctx, a.Name+"@"+a.Tag); err != nil {
			return nil, err
		}
		out = struct{}{}
	case proto.AdminVDITree:
		n.catchUp(ctx)
		out = n.tree()
	case proto.AdminVDIOwners:
		r, err := n.owners(ctx, a)
		if err != nil {
			return nil, err
		}
		out = r
	case proto.AdminRecoverySet:
		if a.Recovery == nil {
			return nil, errs.E(errs.Invalid, "recovery settings missing")
		}
		n.catchUp(ctx)
		conf := n.cl.State().Recovery
		if c := a.Recovery; c.MaxRate != nil {
			conf.MaxRate = *c.MaxRate
		}
		if c := a.Recovery; c.MaxParallel != nil {
			conf.MaxParallel = *c.MaxParallel
		}
		if c := a.Recovery; c.Paused != nil {
			conf.Paused = *c.Paused
		}
		if _, err := n.cl.Apply(ctx, cluster.Command{Op: cluster.CmdRecovery, Recovery: &conf}); err != nil {
			return nil, err
		}
		select {
		case n.rec.kick <- struct{}{}:
		default:
		}
		out = n.clusterInfo(ctx)
	case proto.AdminScrubSet:
		if a.Scrub == nil {
			return nil, errs.E(errs.Invalid, "scrub settings missing")
		}
		n.catchUp(ctx)
		conf := n.cl.State().Scrub
		if c := a.Scrub; c.MaxRate != nil {
			conf.MaxRate = *c.MaxRate
		}
		if c := a.Scrub; c.Paused != nil {
			conf.Paused = *c.Paused
		}
		if c := a.Scrub; c.Every != nil {
			conf.Every = *c.Every
		}
		if c := a.Scrub; c.Grace != nil {
			conf.Grace = *c.Grace
		}
		if a.Scrub.Start {
			conf.Start++
		}
		if _, err := n.cl.Apply(ctx, cluster.Command{Op: cluster.CmdScrub, Scrub: &conf}); err != nil {
			return nil, err
		}
		out = n.clusterInfo(ctx)
	case proto.AdminMDInfo, proto.AdminMDPlug, proto.AdminMDUnplug, proto.AdminMDFault:
		r, err := n.mdAdmin(a)
		if err != nil {
			return nil, err
		}
		out = r
	case proto.AdminGC:
		r, err := n.collect(ctx)
		if err != nil {
			return nil, err
		}
		out = r
	case proto.AdminVDILock:
		if a.Mount == "" {
			return nil, errs.E(errs.Invalid, "lock needs a mount ID")
		}
		cs := n.connState(c)
		r, err := n.cl.Apply(ctx, cluster.Command{Op: cluster.CmdVDILock, Name: a.Name, Mount: a.Mount, Node: n.id, Session: cs.session})
		if err != nil {
			return nil, err
		}
		cs.mu.Lock()
		closed := cs.locks == nil
		if !closed {
			cs.locks[a.Name] = a.Mount
		}
		cs.mu.Unlock()
		if closed {
			// The client went away while the lock was being granted:
			// nobody will release it, so do it now.
			_, _ = n.cl.Apply(context.WithoutCancel(ctx), cluster.Command{Op: cluster.CmdVDIUnlock, Name: a.Name, Mount: a.Mount, Node: n.id, Session: cs.session})
			return nil, errs.E(errs.Closed, "connection closed while locking VDI %q", a.Name)
		}
		// Writes through this node trust its cached index from now on
		// (volumeFor never drops a writer's index): drop what it loaded
		// before, when another gateway may have been the writer.
		n.mu.RLock()
		v := n.volumes[r.VDI.ID]
		n.mu.RUnlock()
		if v != nil {
			v.Forget()
		}
		out = n.vdiInfo(r.VDI)
	case proto.AdminVDIUnlock:
		cs := n.connState(c)
		if a.Force {
			if _, err := n.cl.Apply(ctx, cluster.Command{Op: cluster.CmdVDIUnlock, Name: a.Name}); err != nil {
				return nil, err
			}
			n.log.Warn().Str("vdi", a.Name).Str("remote", c.Remote).Msg("write lock released by force")
			out = struct{}{}
			break
		}
		// Only the holder releases its lock, through the connection it
		// took it through (a mount that moved to this gateway took it
		// again here first).
		cs.mu.Lock()
		held := cs.locks != nil && a.Mount != "" && cs.locks[a.Name] == a.Mount
		if held {
			delete(cs.locks, a.Name)
		}
		cs.mu.Unlock()
		if !held {
			return nil, errs.E(errs.Denied, "VDI %q is not locked through this connection by mount %q: only its holder unlocks it (`sheep vdi unlock --force %s` releases anyone's lock)", a.Name, a.Mount, a.Name)
		}
		if _, err := n.cl.Apply(ctx, cluster.Command{Op: cluster.CmdVDIUnlock, Name: a.Name, Mount: a.Mount, Node: n.id, Session: cs.session}); err != nil {
			return nil, err
		}
		out = struct{}{}
	case proto.AdminKeyInfo, proto.AdminKeyInstall, proto.AdminKeyUse, proto.AdminKeyDrop:
		info, err := n.changeKeys(a.Cmd, a.Name)
		if err != nil {
			return nil, err
		}
		out = info
	case proto.AdminVDIObjects:
		meta, err := n.find(ctx, a.Name)
		if err != nil {
			return nil, err
		}
		v, _, err := n.volumeFor(meta.ID)
		if err != nil {
			return nil, err
		}
		var list []string
		err = v.OwnObjects(ctx, func(oid ids.ObjectID) error {
			list = append(list, oid.String())
			return nil
		})
		if err != nil {
			return nil, err
		}
		out = list
	case proto.AdminVDIReads:
		meta, err := n.find(ctx, a.Name)
		if err != nil {
			return nil, err
		}
		v, _, err := n.volumeFor(meta.ID)
		if err != nil {
			return nil, err
		}
		if a.Offset > uint64(^uint32(0)) {
			return nil, errs.E(errs.Invalid, "object number %d", a.Offset)
		}
		page := proto.ReadsPage{Objects: []ids.ObjectID{}}
		next, err := v.ReadsFrom(ctx, uint32(a.Offset), proto.MaxReadsPage, func(oid ids.ObjectID) error {
			page.Objects = append(page.Objects, oid)
			return nil
		})
		if err != nil {
			return nil, err
		}
		page.Next = uint64(next)
		out = page
	case proto.AdminCheck:
		if len(a.Objects) > proto.MaxCheckObjects {
			return nil, errs.E(errs.TooLarge, "%d objects to check in one request, at most %d", len(a.Objects), proto.MaxCheckObjects)
		}
		out = n.checkObjects(ctx, a.Objects)
	default:
		return nil, errs.E(errs.Invalid, "unknown admin command %q", a.Cmd)
	}
	b, err := jsonMarshal(out)
	if err != nil {
		return nil, err
	}
	return &proto.Msg{Data: b}, nil
}

// resizeVDI changes a VDI's size. Shrinking first discards the tail, so
// that growing again later reads zeros there; a VDI open for writing can
// only be shrunk by its writer.
func (n *Node) resizeVDI(ctx context.Context, a proto.AdminRequest) (*cluster.VDI, error) {
	if err := cluster.CheckSize(a.Size); err != nil {
		return nil, err
	}
	// The lock check below must see a lock released a moment ago through
	// another node, and a VDI made a moment ago.
	n.catchUp(ctx)
	meta, ok := n.cl.State().VDIs[a.Name]
	if !ok {
		return nil, errs.E(errs.NotFound, "VDI %q", a.Name)
	}
	if a.Grow && a.Size <= meta.Size {
		return meta, nil
	}
	if a.Size < meta.Size {
		if meta.Lock != nil && meta.Lock.Mount != a.Mount {
			return nil, errs.E(errs.Busy, "VDI %q is open for writing by mount %s: cannot shrink it", a.Name, meta.Lock.Mount)
		}
		if meta.Lock == nil {
			// A shrink writes (it frees the tail): it takes the write
			// lock for its duration, so that a snapshot taken meanwhile
			// goes through this node's fence like any writer's.
			session := n.newSession()
			a.Mount = ids.MountID("shrink-" + session)
			if _, err := n.cl.Apply(ctx, cluster.Command{Op: cluster.CmdVDILock, Name: a.Name, Mount: a.Mount, Node: n.id, Session: session}); err != nil {
				return nil, err
			}
			defer func() {
				_, _ = n.cl.Apply(context.WithoutCancel(ctx), cluster.Command{Op: cluster.CmdVDIUnlock, Name: a.Name, Mount: a.Mount, Node: n.id, Session: session})
			}()
		}
		// The object the new size cuts is zeroed past it; the objects
		// past it are freed whole, also a last one that the old size
		// cut short (a discard of its part would only punch it, and the
		// collector never looks past a VDI's size).
		v, _, err := n.volumeFor(meta.ID)
		if err != nil {
			return nil, err
		}
		err = n.writeTo(ctx, v, meta.ID, func(v *volume) error {
			if meta.Lock == nil || meta.Lock.Node != n.id {
				// Not this node's writer: another gateway may have
				// written the VDI since this one cached its index.
				v.Forget()
			}
			keep := vdi.NumObjects(a.Size)
			if cut := min(uint64(keep)*vdi.ObjectSize, meta.Size); cut > a.Size {
				if err := v.Discard(ctx, int64(a.Size), int64(cut-a.Size), false); err != nil {
					return err
				}
			}
			for idx := keep; idx < vdi.NumObjects(meta.Size); idx++ {
				if err := v.Free(ctx, idx); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	r, err := n.cl.Apply(ctx, cluster.Command{Op: cluster.CmdVDIResize, Name: a.Name, Size: a.Size, Mount: a.Mount, Grow: a.Grow})
	if err != nil {
		return nil, err
	}
	_, _, _ = n.volumeFor(meta.ID) // take the new size
	return r.VDI, nil
}

// mdAdmin serves `sheep node md`: this node's disks.
func (n *Node) mdAdmin(a proto.AdminRequest) ([]proto.DiskInfo, error) {
	switch a.Cmd {
	case proto.AdminMDPlug:
		// Copies already on the disk are checked against the other nodes
		// before use: they may be stale.
		if err := n.store.Plug(a.Name, n.rec.markLost); err != nil {
			return nil, err
		}
		n.log.Info().Str("disk", a.Name).Msg("disk plugged")
		go n.cl.SetWeight(n.capacity())
	case proto.AdminMDUnplug:
		if err := n.store.Unplug(a.Name); err != nil {
			return nil, err
		}
	case proto.AdminMDFault:
		if err := n.store.Fault(a.Name, a.Tag); err != nil {
			return nil, err
		}
		n.log.Warn().Str("disk", a.Name).Str("fault", a.Tag).Msg("fault injected")
	}
	var out []proto.DiskInfo
	for _, d := range n.store.Info() {
		out = append(out, proto.DiskInfo(d))
	}
	return out, nil
}

func (n *Node) nodeStat() proto.NodeInfo {
	st := n.cl.State()
	info := proto.NodeInfo{ID: n.id, State: "up", Epoch: st.Epoch, Role: "follower"}
	if m, ok := st.Member(n.id); ok {
		info.Addr, info.Zone, info.Weight = m.Addr, m.Zone, m.Weight
		if m.Down {
			info.State = "down"
		}
	}
	info.Share = st.Ring().Share(n.id)
	info.Recovery = n.rec.progress(st)
	info.Integrity = n.integrity()
	info.Scrub = n.scrubInfo()
	if n.cl.Leader() == n.id {
		info.Role = "leader"
	}
	cnt := 0
	n.store.ForEach(func(ids.ObjectID, objstore.Meta) error { cnt++; return nil })
	info.Objects = cnt
	info.Used, info.Free, _ = n.store.Usage()
	return info
}

// clusterInfo gathers the state and every member's statistics.
func (n *Node) clusterInfo(ctx context.Context) proto.ClusterInfo {
	st := n.cl.State()
	ci := proto.ClusterInfo{Epoch: st.Epoch, Copies: st.Copies, FormatTime: st.Format,
		Leader: n.cl.Leader(), VDIs: len(st.VDIs),
		Throttle:      proto.RecoverySettings{MaxRate: st.Recovery.MaxRate, MaxParallel: st.Recovery.Parallel(), Paused: st.Recovery.Paused},
		ScrubSettings: proto.ScrubSettings{MaxRate: st.Scrub.Rate(), Paused: st.Scrub.Paused, Every: st.Scrub.Interval(), Grace: st.Scrub.GraceSeconds()}}
	ci.Nodes = make([]proto.NodeInfo, len(st.Members))
	var wg sync.WaitGroup
	for i, m := range st.Members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if m.ID == n.id {
				ci.Nodes[i] = n.nodeStat()
				return
			}
			ctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			info := proto.NodeInfo{ID: m.ID, Addr: m.Addr, State: "down", Zone: m.Zone, Weight: m.Weight, Share: st.Ring().Share(m.ID)}
			b, _ := json.Marshal(proto.AdminRequest{Cmd: proto.AdminNodeStat})
			if !m.Down {
				resp, err := n.peers.Get(m.Addr).Call(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpAdmin}, Data: b})
				if err == nil && json.Unmarshal(resp.Data, &info) == nil {
					info.Addr = m.Addr
				}
			}
			ci.Nodes[i] = info
		}()
	}
	wg.Wait()
	down := 0
	r := &ci.Recovery
	r.Epoch, r.State = st.Epoch, "idle"
	for _, ni := range ci.Nodes {
		ci.Used += ni.Used
		ci.Free += ni.Free
		if ni.State != "up" {
			down++
		}
		nr := ni.Recovery
		r.Objects += nr.Objects
		r.Done += nr.Done
		r.Fetched += nr.Fetched
		r.Bytes += nr.Bytes
		r.Rate += nr.Rate
		r.ETA = max(r.ETA, nr.ETA)
		r.Degraded += nr.Degraded
		r.Misplaced += nr.Misplaced
		switch {
		case nr.State == "recovering" || r.State == "recovering":
			r.State = "recovering"
		case nr.State == "paused" || r.State == "paused":
			r.State = "paused"
		case nr.State == "waiting":
			r.State = "waiting"
		}
	}
	switch {
	case !n.cl.HasQuorum():
		ci.Status = "no quorum"
	case !st.Formatted():
		ci.Status = "unformatted"
	case down > 0 || len(st.Members) < st.Copies || r.Degraded > 0:
		ci.Status = "degraded"
	default:
		ci.Status = "ok"
	}
	return ci
}
