package server

import (
	"context"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/vdi"
)

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
			return nil, errs.E(errs.Busy, "VDI %q is open for writing by mount %s: cannot shrink it", a.Name, meta.Lock.Mount.Shown())
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
				if err := v.Discard(ctx, n.objs.unfenced(), int64(a.Size), int64(cut-a.Size), false); err != nil {
					return err
				}
			}
			for idx := keep; idx < vdi.NumObjects(meta.Size); idx++ {
				if err := v.Free(ctx, n.objs.unfenced(), idx); err != nil {
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
