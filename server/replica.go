package server

import (
	"context"
	"encoding/binary"
	"time"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/objstore"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/vdi"
)

// epochWait bounds how long a replica waits to learn of an epoch newer than
// its own that a request carries.
const epochWait = 3 * time.Second

// checkEpoch rejects requests from an older epoch and waits for a newer one,
// then for the cluster to know this node's boot (bootKnown).
func (n *Node) checkEpoch(ctx context.Context, e ids.Epoch) error {
	if err := n.checkEpochOnly(ctx, e); err != nil {
		return err
	}
	return n.bootKnown(ctx)
}

func (n *Node) checkEpochOnly(ctx context.Context, e ids.Epoch) error {
	st := n.cl.State()
	if e == st.Epoch {
		return nil
	}
	if e < st.Epoch {
		return errs.E(errs.StaleEpoch, "request from epoch %v, node %s is at epoch %v", e, n.id, st.Epoch)
	}
	ctx, cancel := context.WithTimeout(ctx, epochWait)
	defer cancel()
	st, err := n.cl.WaitFor(ctx, func(s *cluster.State) bool { return s.Epoch >= e })
	if err != nil {
		return errs.E(errs.NotReady, "node %s is at epoch %v, request from %v: %w", n.id, st.Epoch, e, err)
	}
	if st.Epoch > e {
		return errs.E(errs.StaleEpoch, "request from epoch %v, node %s is at epoch %v", e, n.id, st.Epoch)
	}
	return nil
}

// bootKnown waits (up to epochWait) until the cluster's state has this
// node in the boot of its machine it runs in (Member.Boot), and fails
// NotReady if it does not. A node back from a restart of its machine may
// have lost writes it took and had not flushed; only the epoch that
// records its new boot makes it doubt its copies (package recovery).
// Until then it must neither serve them nor take writes, which recovery
// would count as made to copies it vouches for. A state without its boot
// (a leader that does not carry it) does not hold it back.
func (n *Node) bootKnown(ctx context.Context) error {
	if n.bootOK.Load() {
		return nil
	}
	name := bootName(n.boot)
	m, ok := n.cl.State().Member(n.id)
	if !ok {
		return nil // not a member (yet, as far as this state knows): no copies to doubt
	}
	known := func(st *cluster.State) bool {
		m, ok := st.Member(n.id)
		return ok && (m.Boot == "" || m.Boot == name)
	}
	if m.Boot != "" && m.Boot != name {
		ctx, cancel := context.WithTimeout(ctx, epochWait)
		defer cancel()
		if _, err := n.cl.WaitFor(ctx, known); err != nil {
			return errs.E(errs.NotReady, "node %s restarted with its machine; the cluster does not know yet: %w", n.id, err)
		}
	}
	n.bootOK.Store(true)
	return nil
}

func checkObjRange(off uint64, n uint64) error {
	if off > vdi.ObjectSize || n > vdi.ObjectSize || off+n > vdi.ObjectSize {
		return errs.E(errs.Invalid, "object range [%d, +%d) is outside the object", off, n)
	}
	return nil
}

// checkMutable refuses a write to an object that must not change: one of a
// snapshot's image, or a data object of a dead image (the collector only
// removes those, and unsets their index entries). This is a second fence
// behind the gateway's, which finishes every write to an image before the
// snapshot that freezes it is committed: no legitimate write reaches a
// replica that knows of the snapshot. A replica that does not know yet
// lets a write through; the gateway's fence has to hold there. A replica
// that lags behind the gateway may not know yet that a snapshot was
// deleted (and its image's index is being cleared): it waits a little for
// its state to catch up before it refuses.
func (n *Node) checkMutable(ctx context.Context, oid ids.ObjectID) error {
	err := mutable(n.cl.State(), oid)
	if err == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, epochWait)
	defer cancel()
	if _, werr := n.cl.WaitFor(ctx, func(st *cluster.State) bool { return mutable(st, oid) == nil }); werr == nil {
		return nil
	}
	return err
}

func mutable(st *cluster.State, oid ids.ObjectID) error {
	img, ok := st.Image(oid.VDI())
	switch {
	case !ok:
		return nil
	case img.VDI != nil && img.VDI.IsSnapshot():
		return errs.E(errs.ReadOnly, "object %v belongs to snapshot %s", oid, img.VDI.FullName())
	case img.VDI == nil && !oid.IsIndex():
		return errs.E(errs.ReadOnly, "object %v belongs to a deleted image", oid)
	}
	return nil
}

// readNoWait in the Aux of an OpReadObj: fail at once (NotReady) rather
// than recover a copy in doubt first; the gateway reads another replica.
const readNoWait = 1

// statObjs answers OpStatObjs: this node's copy of each object asked for,
// with its valid epoch (see package recovery).
func (n *Node) statObjs(req *proto.Msg) (*proto.Msg, error) {
	oids, err := proto.DecodeOIDs(req.Data)
	if err != nil {
		return nil, err
	}
	n.rec.catchUp()
	st := n.cl.State()
	out := make([]proto.ObjState, 0, len(oids))
	for _, oid := range oids {
		s := proto.ObjState{OID: oid}
		if valid, m, err := n.rec.validOf(st, oid); err == nil {
			s.Version, s.Valid, s.Flags = m.Version, valid, proto.ObjPresent
		}
		out = append(out, s)
	}
	return &proto.Msg{Data: proto.AppendObjStates(nil, out)}, nil
}

func (n *Node) handleReplica(ctx context.Context, req *proto.Msg) (*proto.Msg, error) {
	if req.Op != proto.OpListObjs {
		if err := n.checkEpoch(ctx, req.Epoch); err != nil {
			return nil, err
		}
	}
	switch req.Op {
	case proto.OpStatObjs:
		return n.statObjs(req)
	case proto.OpInventory:
		n.rec.catchUp()
		if len(req.Data) == 0 || len(req.Data) > 64 {
			return nil, errs.E(errs.Invalid, "inventory for a node ID of %d bytes", len(req.Data))
		}
		st := n.cl.State()
		if st.Epoch != req.Epoch {
			return nil, errs.E(errs.StaleEpoch, "inventory for epoch %v, node %s is at epoch %v", req.Epoch, n.id, st.Epoch)
		}
		list, next, last, err := n.rec.inventory(st, ids.NodeID(req.Data), ids.Epoch(req.Offset), req.Aux)
		if err != nil {
			return nil, err
		}
		resp := &proto.Msg{Aux: next, Data: proto.AppendObjStates(nil, list)}
		if last {
			resp.Flags |= proto.FlagLast
		}
		return resp, nil
	}
	oid := ids.ObjectID(req.ID)
	if !oid.Valid() {
		return nil, errs.E(errs.Invalid, "bad object ID %v", oid)
	}
	if req.Flags&proto.FlagSparse == 0 {
		n.rec.clientIO() // a replica request on behalf of a client
	}
	resp := &proto.Msg{}
	switch req.Op {
	case proto.OpReadObj:
		if req.Flags&proto.FlagSparse != 0 {
			// A whole object for recovery: only its allocated ranges,
			// as they are. The node fetching it chose this copy as the
			// best of all (package recovery: Choose), doubted or not; a
			// source that refreshed its own doubted copy first could wait
			// on a node that is fetching from it (every copy is doubted
			// after every machine restarted).
			n.rec.catchUp()
			data, buf, m, err := n.rec.readSparse(oid, req.Aux&sparseUrgent != 0)
			if err != nil {
				return nil, err
			}
			resp.Data, resp.Aux, resp.Flags = data, uint64(m.Version), proto.FlagSparse
			resp.SetPooledIn(buf)
			return resp, nil
		}
		if err := checkObjRange(req.Offset, uint64(req.Length)); err != nil {
			return nil, err
		}
		buf := proto.GetBuf(int(req.Length))
		m, err := n.localRead(ctx, oid, int64(req.Offset), buf, req.Aux&readNoWait == 0)
		if err != nil {
			proto.PutBuf(buf)
			return nil, err
		}
		resp.Data, resp.Aux = buf, uint64(m.Version)
		resp.SetPooled()
	case proto.OpWriteObj:
		if err := checkObjRange(req.Offset, uint64(len(req.Data))); err != nil {
			return nil, err
		}
		if err := n.localWrite(ctx, oid, int64(req.Offset), req.Data, ids.Version(req.Aux), req.Epoch, req.Flags&proto.FlagCreate != 0); err != nil {
			return nil, err
		}
		if req.Flags&proto.FlagSync != 0 {
			if err := n.store.Sync(); err != nil {
				return nil, err
			}
		}
	case proto.OpPunchObj:
		if err := checkObjRange(req.Offset, uint64(req.Length)); err != nil {
			return nil, err
		}
		if err := n.localPunch(ctx, oid, int64(req.Offset), int64(req.Length), ids.Version(req.Aux), req.Epoch); err != nil {
			return nil, err
		}
	case proto.OpStatObj:
		n.rec.catchUp()
		st := n.cl.State()
		valid, m, err := n.rec.validOf(st, oid)
		if err != nil {
			return nil, err
		}
		resp.Aux, resp.Offset = uint64(m.Version), uint64(valid)
		if valid >= st.Epoch {
			resp.Flags |= proto.FlagCurrent
		}
	case proto.OpRemoveObj:
		if err := n.localRemove(ctx, oid, req.Epoch, ids.Version(req.Offset)); err != nil {
			return nil, err
		}
	case proto.OpSyncObjs:
		if err := n.store.Sync(); err != nil {
			return nil, err
		}
	case proto.OpListObjs:
		var out []byte
		err := n.store.ForEach(func(o ids.ObjectID, m objstore.Meta) error {
			if len(out) >= proto.MaxPayload-16 {
				return errs.E(errs.TooLarge, "object list exceeds one frame")
			}
			out = binary.BigEndian.AppendUint64(out, uint64(o))
			out = binary.BigEndian.AppendUint64(out, uint64(m.Version))
			return nil
		})
		if err != nil {
			return nil, err
		}
		resp.Data = out
	}
	switch req.Op {
	case proto.OpWriteObj, proto.OpPunchObj, proto.OpRemoveObj, proto.OpSyncObjs:
		resp.Aux = n.boot // see proto.NodeBoot
	}
	return resp, nil
}
