package server

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/vdi"
)

// Checking objects on all their replicas (sheep vdi check, cluster
// check): the node asked reads every copy's verdict (OpCheckObj: present,
// version, whole, digest of its checksums), asks again a moment later if
// they disagree in a way a write in flight explains, decides which copies
// are not good (absent, damaged, older than the newest good one, or
// differing from a digest a strict majority of the newest copies hold),
// and has each of those nodes make its copy good (docs/ARCHITECTURE.md,
// Checksums).

// checkSlots bounds the checks a node runs at once (each reads a whole
// object into a 4 MiB buffer).
var checkSlots = make(chan struct{}, 4)

// checkLocal verifies this node's copy of oid and, with fix, makes it
// good: a damaged copy gets the blocks that fail from a good one; an
// absent copy, or one older than want, or (from set) one at version want
// that differs from from's, is replaced whole from a node at want or
// newer (from if set).
func (n *Node) checkLocal(ctx context.Context, oid ids.ObjectID, fix bool, want ids.Version, from ids.NodeID) proto.ObjCheck {
	select {
	case checkSlots <- struct{}{}:
		defer func() { <-checkSlots }()
	case <-ctx.Done():
		return proto.ObjCheck{Present: true, Error: ctx.Err().Error()}
	}
	n.rec.catchUp()
	out := n.verifyLocal(oid)
	if !fix || out.Error != "" && !out.Damaged {
		return out
	}
	mode := replaceAll
	switch {
	case out.Damaged:
		mode = patchBlocks
	case !out.Present, out.Version < want:
	case from != "" && out.Version == want:
		// Differs from the copies at the same version (the caller
		// saw it twice): from's copy.
	default:
		return out // good, and at least as new as asked
	}
	if err := n.rec.repairFrom(ctx, oid, want, from, mode); err != nil {
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
	verdicts, errsAt := n.verdicts(ctx, st, ts, oid)
	// Copies that look older or different may be a write in flight
	// (writes to one object reach its replicas in any order): ask again
	// a moment later, and act only on what is still so.
	if needsSecondLook(verdicts, errsAt) {
		select {
		case <-time.After(2 * time.Second):
		case <-ctx.Done():
		}
		st = n.cl.State()
		ts = targets(st, oid, c)
		verdicts, errsAt = n.verdicts(ctx, st, ts, oid)
	}
	var unknown []string
	if len(ts) < c {
		unknown = append(unknown, fmt.Sprintf("%d of its %d placement nodes are down", c-len(ts), c))
	}
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
	if present == 0 {
		res.Status, res.Detail = "unknown", "no copy among the nodes that answered: "+strings.Join(unknown, "; ")
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
	// Copies at one version must hold the same bytes: a digest held by a
	// strict majority of the newest good copies is the one to have. With
	// no majority nothing is replaced (it is reported).
	count := map[uint32]int{}
	newestGood := 0
	for i, v := range verdicts {
		if errsAt[i] == nil && v.Present && !v.Damaged && v.Error == "" && v.Version == newest {
			count[v.Digest]++
			newestGood++
		}
	}
	var best uint32
	var from ids.NodeID
	majority := false
	for d, k := range count {
		if 2*k > newestGood {
			best, majority = d, true
		}
	}
	for i, v := range verdicts {
		if errsAt[i] == nil && v.Present && !v.Damaged && v.Error == "" && v.Version == newest && v.Digest == best {
			from = ts[i].ID
			break
		}
	}
	var bad []int
	var why []string
	split := false
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
		case !majority:
			split = true // reported below; nothing is replaced
			continue
		case v.Digest != best:
			why = append(why, fmt.Sprintf("%s: differs from the other copies at version %v", ts[i].ID, newest))
		default:
			continue
		}
		bad = append(bad, i)
	}
	if split {
		why = append(why, fmt.Sprintf("the copies at version %v differ and no digest has a majority: left as they are", newest))
	}
	if len(bad) == 0 && split {
		res.Status, res.Detail = "degraded", strings.Join(why, "; ")
		return res
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
		f := ids.NodeID("")
		if verdicts[i].Present && !verdicts[i].Damaged && verdicts[i].Version == newest {
			f = from // same version, other bytes: the majority's copy
		}
		v, err := n.checkAt(ctx, st, ts[i], oid, true, newest, f)
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
	case split:
		res.Status = "degraded"
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

// verdicts asks each of ts for its verdict on oid.
func (n *Node) verdicts(ctx context.Context, st *cluster.State, ts []cluster.Member, oid ids.ObjectID) ([]proto.ObjCheck, []error) {
	verdicts := make([]proto.ObjCheck, len(ts))
	errsAt := make([]error, len(ts))
	var wg sync.WaitGroup
	for i, m := range ts {
		wg.Go(func() { verdicts[i], errsAt[i] = n.checkAt(ctx, st, m, oid, false, 0, "") })
	}
	wg.Wait()
	return verdicts, errsAt
}

// needsSecondLook reports whether the verdicts disagree in a way a write
// in flight explains: a copy missing, or copies at different versions or
// with different digests. Damage does not need a second look.
func needsSecondLook(verdicts []proto.ObjCheck, errsAt []error) bool {
	var first *proto.ObjCheck
	for i := range verdicts {
		v := &verdicts[i]
		if errsAt[i] != nil || v.Damaged || v.Error != "" {
			continue
		}
		if !v.Present {
			return true
		}
		if first == nil {
			first = v
		} else if v.Version != first.Version || v.Digest != first.Digest {
			return true
		}
	}
	return false
}
