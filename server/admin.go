package server

import (
	"context"
	"encoding/json"
	"slices"
	"strings"

	"github.com/sheepfs/sheepfs/auth"
	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
)

// Administration: the client requests that list, create, lock, snapshot
// and delete VDIs, and manage the cluster.

func jsonMarshal(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, errs.E(errs.Other, "encode answer: %w", err)
	}
	return b, nil
}

func (n *Node) vdiInfo(v *cluster.VDI) proto.VDIInfo {
	out := proto.VDIInfo{Name: v.Name, ID: v.ID, Size: v.Size, Copies: v.Copies, Created: v.Created, WriteGen: v.WriteGen,
		Image: v.Image, Parent: v.Parent, Tag: v.Tag, SnapTime: v.SnapTime, Source: v.Source}
	if p, ok := n.cl.State().Image(v.Parent); ok && p.VDI != nil {
		out.ParentName = p.VDI.FullName()
	}
	if v.Lock != nil {
		out.Locked, out.Mount, out.Node = true, v.Lock.Mount.Shown(), v.Lock.Node
	}
	return out
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
		r, err := n.cl.Apply(ctx, cluster.Command{Op: cluster.CmdVDICreate, Name: a.Name, Size: a.Size, Copies: a.Copies, Token: a.Token})
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
	case proto.AdminLocalReads:
		if n.page == nil || !auth.IsLocal(c.NetConn()) {
			return nil, errs.E(errs.Unsupported, "local reads: only on the local channel of a daemon that keeps a page")
		}
		out = struct{}{}
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
			// A lease granted from what it loaded before, after the
			// lock's state was published, ends too.
			n.page.BumpAll()
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
		switch {
		case a.Tag == "dropwrites" && !n.cfg.Faults:
			return nil, errs.E(errs.Invalid, "fault injection is off (start the daemon with SHEEP_FAULTS=1)")
		case a.Tag == "dropwrites":
			// Not a disk's: the node's replica writes.
			n.dropWrites.Store(true)
		default:
			if a.Tag == "heal" {
				n.dropWrites.Store(false)
			}
			if err := n.store.Fault(a.Name, a.Tag); err != nil {
				return nil, err
			}
		}
		n.log.Warn().Str("disk", a.Name).Str("fault", a.Tag).Msg("fault injected")
	}
	var out []proto.DiskInfo
	for _, d := range n.store.Info() {
		out = append(out, proto.DiskInfo(d))
	}
	return out, nil
}
