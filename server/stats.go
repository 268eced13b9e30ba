package server

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/objstore"
	"github.com/sheepfs/sheepfs/proto"
)

// What a node and the cluster report about themselves.

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
		ci.Status = proto.HealthNoQuorum
	case !st.Formatted():
		ci.Status = proto.HealthUnformatted
	case down > 0 || len(st.Members) < st.Copies || r.Degraded > 0:
		ci.Status = proto.HealthDegraded
	default:
		ci.Status = proto.HealthOK
	}
	return ci
}
