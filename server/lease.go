package server

import (
	"context"

	"github.com/sheepfs/sheepfs/auth"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/localread"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/vdi"
)

// Local reads: a lease lets a mount on this machine read one object of a
// VDI from this node's file while the lease's stamp holds (package
// localread, docs/ARCHITECTURE.md "Local reads").

// ownerMoved ends the leases on the object that object idx of a VDI was
// read from before its owner changed here (vdi.Volume.OnOwnerChange).
func (n *Node) ownerMoved(idx uint32, old ids.VDIID, known bool) {
	switch {
	case !known:
		n.page.BumpAll()
	case old != 0:
		n.page.Bump(ids.DataObject(old, idx))
	}
}

// lease answers OpVDILease for object number req.Offset of VDI handle
// req.ID. errs.NotFound means no lease for now (a hole, a copy elsewhere
// or in doubt, a writable VDI not locked through this node): the mount
// reads through the daemon.
func (n *Node) lease(ctx context.Context, c *proto.Conn, req *proto.Msg) (*proto.Msg, error) {
	if n.page == nil || !auth.IsLocal(c.NetConn()) {
		return nil, errs.E(errs.Unsupported, "local reads: only on the local channel of a daemon that keeps a page")
	}
	if req.ID > uint64(ids.MaxVDIID) || req.ID == 0 {
		return nil, errs.E(errs.Invalid, "bad VDI ID %d", req.ID)
	}
	// The global stamp comes before everything the lease is checked
	// against: a new state published after it moves it.
	global := n.page.Global()
	v, meta, err := n.volumeFor(ids.VDIID(req.ID))
	if err != nil {
		return nil, err
	}
	info := v.Info()
	if req.Offset >= uint64(vdi.NumObjects(info.Size)) {
		return nil, errs.E(errs.Invalid, "lease on object %d of VDI %q, which has %d", req.Offset, meta.Name, vdi.NumObjects(info.Size))
	}
	idx := uint32(req.Offset)
	owner, err := v.Owner(ctx, idx)
	if err != nil {
		return nil, err
	}
	// A writable VDI's index changes with its writes, and only the node
	// they go through knows at once: it ends the leases on the object an
	// entry named before (ownerMoved: a copy-on-write, a discard), and it
	// dropped what it loaded before the lock came (admin.go). Another
	// node's index may be a second old (indexTTL), which its own reads
	// live with; a lease from it could outlive that for good (an object
	// left behind by a discard cut short is never changed again). So a
	// writable VDI's objects are lent only while it is locked through
	// this node; a lock taken or moved is a new state, which ends every
	// lease. A snapshot's index never changes.
	if owner == 0 || !meta.IsSnapshot() && (meta.Lock == nil || meta.Lock.Node != n.id) {
		return nil, errs.E(errs.NotFound, "no lease on object %d of VDI %q: a hole, or not locked through this node", idx, meta.Name)
	}
	oid := ids.DataObject(owner, idx)
	stamp := n.page.Stamp(oid)
	stamp.Global = global
	// The owner again, after the stamp: a change between the two would
	// have moved the stamp before it was taken.
	if again, err := v.Owner(ctx, idx); err != nil || again != owner {
		return nil, errs.E(errs.NotFound, "no lease on object %d of VDI %q: its owner is changing", idx, meta.Name)
	}
	if err := n.bootKnown(ctx); err != nil {
		return nil, err
	}
	// A lease lasts while the page beats, and the page beats only while
	// the state is fresh (server.go): one that could not beat for long
	// is not worth lending.
	if !n.cl.FreshWithin(localread.MaxQuiet) {
		return nil, errs.E(errs.NotFound, "no lease on %v: this node has not confirmed its cluster state lately", oid)
	}
	n.rec.catchUp()
	st := n.cl.State()
	placed := false
	for _, m := range targets(st, oid, info.Copies) {
		placed = placed || m.ID == n.id
	}
	if !placed || n.rec.doubted(oid) {
		return nil, errs.E(errs.NotFound, "no lease on %v: the copy here is not current", oid)
	}
	path, err := n.store.Path(oid)
	if err != nil {
		return nil, errs.E(errs.NotFound, "no lease on %v: %w", oid, err)
	}
	if len(path) > proto.MaxLeasePath || len(n.page.Path()) > proto.MaxLeasePath {
		return nil, errs.E(errs.NotFound, "no lease on %v: path of %d bytes", oid, len(path))
	}
	return &proto.Msg{Data: proto.AppendLease(nil, proto.Lease{Inst: stamp.Inst, Global: stamp.Global, Slot: stamp.Slot,
		OID: uint64(oid), Path: path, Page: n.page.Path()})}, nil
}
