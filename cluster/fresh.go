package cluster

import (
	"context"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/proto"
)

// Freshness: a node knows its state holds every change acknowledged so far
// only as of the last time it made sure (Confirm). A node cut off from the
// majority, or stopped (SIGSTOP, a frozen VM) and resumed, has a state
// that may be old: the others may have moved on without it (marked it
// down, moved a VDI's lock, written its objects elsewhere). Reads of
// writable VDIs and lent local reads are served only while the state is
// fresh (Fresh): confirmed within FreshFor, which is below the soonest the
// others can stop writing to a node they no longer hear: gossip declares a
// member dead no sooner than its suspicion timeout after a failed probe
// (SuspicionMult probe intervals, 1.5 s), and the leader then marks it
// down at once.
//
// A follower makes sure by asking the leader for the index of its last
// applied command and applying the log up to it; the leader, by a round of
// heartbeats that a majority acknowledges (raft's VerifyLeader), after a
// barrier once per term (a new leader may not have applied what the one
// before acknowledged). Times are on the monotonic clock, which runs on
// while a process is stopped: a resumed node finds its confirmation old at
// once, whichever of its goroutines runs first.

// Gossip's failure detection (memberlist settings, Start).
const (
	probeInterval  = 500 * time.Millisecond
	suspicionMult  = 3
	suspicionFloor = suspicionMult * probeInterval // the least suspicion timeout
)

// FreshFor is how long a confirmation keeps the state fresh.
func (c *Cluster) FreshFor() time.Duration { return c.freshFor }

// freshFor is two thirds of the least time gossip takes to declare a
// member dead, and at most half the grace before its data moves.
func freshFor(deadGrace time.Duration) time.Duration {
	return min(deadGrace/2, suspicionFloor*2/3)
}

// leaderAge is how old a leader's own confirmation may be when it answers
// a follower's OpLeaderIndex; an older one is renewed first.
func (c *Cluster) leaderAge() time.Duration { return c.freshFor / 5 }

// mono returns the monotonic time since the cluster started, in ns.
func (c *Cluster) mono() int64 { return int64(time.Since(c.t0)) }

// Confirmed returns how long ago this node last made sure that its state
// held every change acknowledged so far (a very long time if never).
func (c *Cluster) Confirmed() time.Duration {
	at := c.confirmed.Load()
	if at == 0 {
		return time.Duration(1<<62 - 1)
	}
	return time.Duration(c.mono() - at)
}

// Fresh reports whether the state was confirmed within FreshFor.
func (c *Cluster) Fresh() bool { return c.Confirmed() < c.freshFor }

// FreshWithin reports whether the state will still be fresh after d.
func (c *Cluster) FreshWithin(d time.Duration) bool { return c.Confirmed()+d < c.freshFor }

// setConfirmed records a confirmation as of at (monotonic ns), unless a
// later one is recorded.
func (c *Cluster) setConfirmed(at int64) {
	if at <= 0 {
		at = 1
	}
	for {
		old := c.confirmed.Load()
		if old >= at || c.confirmed.CompareAndSwap(old, at) {
			return
		}
	}
}

// Confirm makes sure that the state holds every change acknowledged so
// far, and returns nil if it is fresh afterwards. Concurrent calls share
// one confirmation.
func (c *Cluster) Confirm(ctx context.Context) error {
	c.confirmMu.Lock()
	ch := c.confirming
	if ch == nil {
		ch = make(chan struct{})
		c.confirming = ch
		go func() {
			err := c.confirmOnce()
			c.confirmMu.Lock()
			c.confirmErr, c.confirming = err, nil
			c.confirmMu.Unlock()
			close(ch)
		}()
	}
	c.confirmMu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
		return errs.E(errs.NotReady, "node %s cannot confirm its cluster state: %w", c.cfg.ID, ctx.Err())
	case <-c.stop:
		return errs.E(errs.Closed, "node is shutting down")
	}
	if c.Fresh() {
		return nil
	}
	c.confirmMu.Lock()
	err := c.confirmErr
	c.confirmMu.Unlock()
	if err == nil {
		err = errs.E(errs.NotReady, "confirmation came too late")
	}
	return errs.E(errs.NotReady, "node %s cannot confirm its cluster state: %w", c.cfg.ID, err)
}

// confirmTimeout bounds one confirmation.
const confirmTimeout = 2 * time.Second

func (c *Cluster) confirmOnce() error {
	start := c.mono()
	if c.raft.State() == raft.Leader {
		if term := c.raft.CurrentTerm(); c.barrierTerm.Load() != term {
			// Every entry of the terms before applied here first.
			if err := c.raft.Barrier(confirmTimeout).Error(); err != nil {
				return errs.E(errs.NotReady, "leader's barrier: %w", err)
			}
			c.barrierTerm.Store(term)
		}
		// Resolves when a majority acknowledged this node as leader, or
		// it lost the leadership (within raft's leader lease).
		if err := c.raft.VerifyLeader().Error(); err != nil {
			return errs.E(errs.NotReady, "not confirmed as leader: %w", err)
		}
		c.setConfirmed(start)
		return nil
	}
	ctx, cancel := context.WithTimeout(c.stopCtx, confirmTimeout)
	defer cancel()
	return c.syncWithLeader(ctx)
}

// syncWithLeader asks the leader for the index of its last applied command
// and how old its own confirmation is, applies the log up to that index,
// and records the confirmation: the state it vouches for is current as of
// then.
func (c *Cluster) syncWithLeader(ctx context.Context) error {
	leader := c.Leader()
	addr := c.addrOf(leader)
	if leader == "" || addr == "" {
		return errs.E(errs.NotReady, "no cluster leader (no quorum?)")
	}
	start := c.mono()
	resp, err := c.pool.Get(addr).Call(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpLeaderIndex}})
	if err != nil {
		return err
	}
	// Aux: the index; Offset: the age of the leader's confirmation, in ns
	// (older leaders send 0).
	age := int64(resp.Offset)
	if age < 0 || age > int64(c.freshFor) {
		return errs.E(errs.NotReady, "leader %s vouches for a state %v old", leader, time.Duration(resp.Offset))
	}
	c.waitApplied(ctx, resp.Aux)
	if c.fsm.applied.Load() < resp.Aux {
		return errs.E(errs.NotReady, "node %s is behind the leader's log", c.cfg.ID)
	}
	c.setConfirmed(start - age)
	return nil
}

// confirmLoop keeps the state fresh while the node is in touch with the
// majority, and logs when it is not.
func (c *Cluster) confirmLoop() {
	defer c.wg.Done()
	every := max(c.freshFor/10, 10*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	warned := false
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), confirmTimeout)
		err := c.Confirm(ctx)
		cancel()
		switch fresh := c.Fresh(); {
		case !fresh && !warned && c.confirmed.Load() != 0:
			c.log.Warn().Err(err).Dur("confirmed_ago", c.Confirmed()).
				Msg("cluster state not confirmed: reads of writable VDIs and writes wait")
			warned = true
		case fresh && warned:
			c.log.Info().Msg("cluster state confirmed again")
			warned = false
		}
	}
}

// LeaderIndex returns the index of the last command this node's state
// machine applied, if this node is the leader: every command acknowledged
// so far is at or below it. (raft's own applied index also counts entries
// the state machine never sees, and on a follower runs ahead of it.) It
// also returns how long ago this node was last confirmed as leader, which
// it renews first if that was more than leaderAge ago: a leader cut
// off, or stopped and resumed, does not vouch for its state.
func (c *Cluster) LeaderIndex(ctx context.Context) (uint64, time.Duration, error) {
	if c.raft.State() != raft.Leader {
		return 0, 0, errs.E(errs.NotReady, "node %s is not the cluster leader", c.cfg.ID)
	}
	if c.Confirmed() > c.leaderAge() {
		if err := c.Confirm(ctx); err != nil {
			return 0, 0, err
		}
	}
	age := c.Confirmed()
	if age > c.leaderAge() {
		return 0, 0, errs.E(errs.NotReady, "node %s was last confirmed as leader %v ago", c.cfg.ID, age)
	}
	return c.fsm.applied.Load(), age, nil
}
