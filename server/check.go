package server

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/vdi"
)

// Checking objects on all their replicas (sheep vdi check, cluster
// check): the node asked reads every copy's verdict (OpCheckObj: present,
// version, whole, digest of its checksums), decides which copies are not
// good (absent, damaged, older than the newest good one, or differing from
// the most common digest among the newest), and has each of those nodes
// replace its copy with a good one.

// checkLocal verifies this node's copy of oid and, with fix, makes it good
// if it is absent, damaged, older than want, or (from set) not from's.
func (n *Node) checkLocal(ctx context.Context, oid ids.ObjectID, fix bool, want ids.Version, from ids.NodeID) proto.ObjCheck {
	n.rec.catchUp()
	out := n.verifyLocal(oid)
	if !fix || out.Error != "" && !out.Damaged {
		return out
	}
	if out.Present && !out.Damaged && out.Version >= want && from == "" {
		return out
	}
	if err := n.rec.repairFrom(ctx, oid, want, from); err != nil {
		out.Error = err.Error()
		return out
	}
	damaged := out.Damaged
	out = n.verifyLocal(oid)
	out.Damaged, out.Fixed = damaged, out.Error == ""
	return out
}

// verifyLocal reads and verifies this node's copy of oid.
func (n *Node) verifyLocal(oid ids.ObjectID) proto.ObjCheck {
	buf := proto.GetBuf(vdi.ObjectSize)
	defer proto.PutBuf(buf)
	m, digest, err := n.store.Check(oid, buf)
	switch {
	case errs.Is(err, errs.NotFound):
		return proto.ObjCheck{}
	case errs.Is(err, errs.Corrupt):
		n.rec.reportDamage(oid, err)
		return proto.ObjCheck{Present: true, Version: m.Version, Damaged: true, Error: err.Error()}
	case err != nil:
		return proto.ObjCheck{Present: true, Error: err.Error()}
	}
	return proto.ObjCheck{Present: true, Version: m.Version, Digest: digest}
}

// checkAt asks member m for its verdict on oid (fixing it as checkLocal
// does if fix is set).
func (n *Node) checkAt(ctx context.Context, st *cluster.State, m cluster.Member, oid ids.ObjectID, fix bool, want ids.Version, from ids.NodeID) (proto.ObjCheck, error) {
	if m.ID == n.id {
		return n.checkLocal(ctx, oid, fix, want, from), nil
	}
	req := &proto.Msg{Header: proto.Header{Op: proto.OpCheckObj, Epoch: st.Epoch, ID: uint64(oid), Offset: uint64(want)}, Data: []byte(from)}
	if fix {
		req.Aux = proto.CheckFix
	}
	resp, err := n.peers.Get(m.Addr).Call(ctx, req)
	if err != nil {
		return proto.ObjCheck{}, err
	}
	var out proto.ObjCheck
	if err := json.Unmarshal(resp.Data, &out); err != nil {
		return out, errs.E(errs.IO, "check of %v on %s: %w", oid, m.ID, err)
	}
	return out, nil
}

// checkObjects checks each of oids on every node placing it, a few at a
// time.
func (n *Node) checkObjects(ctx context.Context, oids []ids.ObjectID) []proto.ObjectCheck {
	out := make([]proto.ObjectCheck, len(oids))
	sem := make(chan struct{}, 4)
	var wg sync.WaitGroup
	for i, oid := range oids {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			out[i] = n.checkObject(ctx, oid)
		})
	}
	wg.Wait()
	return out
}

// checkObject checks oid on the nodes placing it and repairs the copies
// that are not good.
func (n *Node) checkObject(ctx context.Context, oid ids.ObjectID) proto.ObjectCheck {
	res := proto.ObjectCheck{OID: oid}
	if !oid.Valid() {
		res.Status, res.Detail = "unknown", "not an object ID"
		return res
	}
	st := n.cl.State()
	c := copiesOf(st, oid)
	if c == 0 {
		res.Status, res.Detail = "absent", "its image no longer exists"
		return res
	}
	ts := targets(st, oid, c)
	verdicts := make([]proto.ObjCheck, len(ts))
	errsAt := make([]error, len(ts))
	var wg sync.WaitGroup
	for i, m := range ts {
		wg.Go(func() { verdicts[i], errsAt[i] = n.checkAt(ctx, st, m, oid, false, 0, "") })
	}
	wg.Wait()
	var unknown []string
	var newest ids.Version
	good, present := 0, 0
	for i, v := range verdicts {
		switch {
		case errsAt[i] != nil:
			unknown = append(unknown, fmt.Sprintf("%s: %v", ts[i].ID, errsAt[i]))
		case v.Present:
			present++
			if !v.Damaged && v.Error == "" {
				good++
				newest = max(newest, v.Version)
			}
		}
	}
	if present == 0 && len(unknown) == 0 {
		res.Status = "absent"
		return res
	}
	if good == 0 {
		res.Status, res.Detail = "lost", "no node placing it has a good copy"
		if len(unknown) > 0 {
			res.Status, res.Detail = "unknown", "no good copy among the nodes that answered: "+strings.Join(unknown, "; ")
		}
		// A node outside the placement (a copy left from before a
		// move) may still have one: let the placing nodes look.
		if n.fixAll(ctx, st, oid, ts, errsAt) > 0 {
			res.Status, res.Detail = "repaired", "from a copy outside the placement"
		}
		return res
	}
	// The most common digest among the newest good copies is the one to
	// have: copies at one version must hold the same bytes.
	count := map[uint32]int{}
	var best uint32
	var from ids.NodeID
	for i, v := range verdicts {
		if errsAt[i] == nil && v.Present && !v.Damaged && v.Error == "" && v.Version == newest {
			count[v.Digest]++
			if count[v.Digest] > count[best] || from == "" {
				best, from = v.Digest, ts[i].ID
			}
		}
	}
	var bad []int
	var why []string
	for i, v := range verdicts {
		if errsAt[i] != nil {
			continue
		}
		switch {
		case !v.Present:
			why = append(why, fmt.Sprintf("%s: missing", ts[i].ID))
		case v.Damaged:
			why = append(why, fmt.Sprintf("%s: damaged", ts[i].ID))
		case v.Error != "":
			why = append(why, fmt.Sprintf("%s: %s", ts[i].ID, v.Error))
		case v.Version < newest:
			why = append(why, fmt.Sprintf("%s: version %v, older than %v", ts[i].ID, v.Version, newest))
		case v.Digest != best:
			why = append(why, fmt.Sprintf("%s: differs from the other copies at version %v", ts[i].ID, newest))
		default:
			continue
		}
		bad = append(bad, i)
	}
	if len(bad) == 0 {
		res.Status = "ok"
		if len(unknown) > 0 {
			res.Status, res.Detail = "unknown", strings.Join(unknown, "; ")
		}
		return res
	}
	res.Detail = strings.Join(why, "; ")
	var failed []string
	for _, i := range bad {
		v, err := n.checkAt(ctx, st, ts[i], oid, true, newest, from)
		if err == nil && !v.Fixed {
			err = errs.E(errs.Corrupt, "%s", v.Error)
		}
		if err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", ts[i].ID, err))
		}
	}
	switch {
	case len(failed) > 0:
		res.Status, res.Detail = "degraded", res.Detail+"; not repaired: "+strings.Join(failed, "; ")
	case len(unknown) > 0:
		res.Status, res.Detail = "unknown", res.Detail+"; repaired, but no answer from "+strings.Join(unknown, "; ")
	default:
		res.Status = "repaired"
	}
	return res
}

// fixAll asks every placing node that answered to make its copy good,
// from wherever one is, and returns how many did.
func (n *Node) fixAll(ctx context.Context, st *cluster.State, oid ids.ObjectID, ts []cluster.Member, errsAt []error) int {
	fixed := 0
	for i := range ts {
		if errsAt[i] != nil {
			continue
		}
		if v, err := n.checkAt(ctx, st, ts[i], oid, true, 0, ""); err == nil && v.Fixed {
			fixed++
		}
	}
	return fixed
}
