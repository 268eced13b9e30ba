package server

import (
	"context"
	"time"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
)

// VDI I/O: the client requests that read and change a VDI's data.

func (n *Node) handleVDI(ctx context.Context, c *proto.Conn, req *proto.Msg) (*proto.Msg, error) {
	n.rec.clientIO()
	if req.ID > uint64(ids.MaxVDIID) || req.ID == 0 {
		return nil, errs.E(errs.Invalid, "bad VDI ID %d", req.ID)
	}
	v, meta, err := n.volumeFor(ids.VDIID(req.ID))
	if err != nil {
		return nil, err
	}
	if req.Op == proto.OpVDIRead && !meta.IsSnapshot() && !n.cl.Fresh() {
		// This node may have been cut off, or stopped, while the others
		// moved on (cluster/fresh.go): its copies and its idea of the
		// VDI may be old. It reads only once it has caught up. (A
		// change waits in replicated.change; a snapshot does not
		// change; the allocation map is for st_blocks and SEEK_DATA,
		// which sheepfs caches for a second anyway, and a stat on a
		// minority side should not hang.)
		if err := n.waitFresh(ctx); err != nil {
			return nil, err
		}
		if v, meta, err = n.volumeFor(ids.VDIID(req.ID)); err != nil {
			return nil, err
		}
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
		w := n.clientWriter(c, meta)
		// A synced write is made durable by its replicas in the same
		// request (writer.sync); what it builds on, such as the index
		// entry that an earlier write made and no flush has synced yet,
		// is made durable by flushing the nodes this gateway left dirty.
		w.sync = req.Flags&proto.FlagSync != 0
		if err := n.writeTo(ctx, v, meta.ID, func(v *volume) error { return v.WriteAt(ctx, w, req.Data, off) }); err != nil {
			return nil, err
		}
		if w.sync {
			if err := n.objs.flushBoots(ctx, flushOf{vid: meta.ID}, nil); err != nil {
				return nil, err
			}
		}
		resp.Data = proto.AppendNodeBoots(nil, w.boots.list())
	case proto.OpVDIDiscard:
		if err := n.checkWriter(c, meta); err != nil {
			return nil, err
		}
		w := n.clientWriter(c, meta)
		keep := req.Flags&proto.FlagZeroKeep != 0
		if err := n.writeTo(ctx, v, meta.ID, func(v *volume) error { return v.Discard(ctx, w, off, int64(req.Aux), keep) }); err != nil {
			return nil, err
		}
		resp.Data = proto.AppendNodeBoots(nil, w.boots.list())
	case proto.OpVDIFlush:
		// Data: the nodes and boots of the client's unflushed writes
		// (proto.NodeBoot; empty from older clients).
		expect, err := proto.DecodeNodeBoots(req.Data)
		if err != nil {
			return nil, err
		}
		if err := n.objs.flushBoots(ctx, flushOf{vid: meta.ID, client: true}, expect); err != nil {
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

// waitFresh waits until this node's cluster state is fresh (cluster.Fresh),
// confirming it, for up to RetryFor: a node without contact with the
// majority keeps the request waiting, as it does a write, rather than
// answer from a state that may be old.
func (n *Node) waitFresh(ctx context.Context) error {
	return n.objs.retry(ctx, func() string { return "confirm the cluster state" },
		func(*cluster.State) error { return n.confirm(ctx) })
}

// confirm makes sure that this node's cluster state is fresh, waiting up
// to a second for a confirmation (errs.NotReady without one).
func (n *Node) confirm(ctx context.Context) error {
	if n.cl.Fresh() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return n.cl.Confirm(ctx)
}
