package server

import (
	"context"
	"sync"
	"time"

	"github.com/sheepfs/sheepfs/ids"
)

// Copies a change that gave up may have left apart.
//
// A change goes to every replica; when one fails, the gateway tries again
// on the next cluster state, for as long as the client waits. If the
// client goes away first (its connection breaks, it gives up), the last
// attempt may have been applied by some replicas and not by others: one
// whose connection broke, while its node stayed up and in the cluster.
// The write was never acknowledged, so either outcome is allowed, but the
// copies then differ while every node is up, and nothing compares them
// until a scrub or `sheep vdi check`: reads through different nodes
// return different bytes, and later writes to other blocks of the object
// go to every copy and bump their versions alike, leaving the difference
// behind at one version.
//
// So the gateway checks such an object itself a few seconds later
// (checkObject: the copies are compared by version and digest, the older
// or odd ones replaced), by which time a write still in flight to it has
// landed. A change that succeeds in the end needs none: its last attempt
// wrote every copy.

// recheckDelay is how long after the change gave up its object is checked.
const recheckDelay = 3 * time.Second

// recheckTries bounds the checks of one object that find a replica that
// does not answer (checkObject's "unknown": the node whose connection
// broke may still be out of reach); each waits twice as long as the one
// before.
const recheckTries = 5

// maxRechecks bounds the objects waiting for a check; past it, a scrub or
// `sheep vdi check` finds the others.
const maxRechecks = 4096

// rechecks is a node's queue of objects to check.
type rechecks struct {
	mu   sync.Mutex
	due  map[ids.ObjectID]recheck
	wake chan struct{}
	log  logLimit // warnings: the queue full, a check that could not end well
}

type recheck struct {
	at    time.Time
	tries int // checks made so far
}

// recheckLater queues oid for a check after recheckDelay.
func (n *Node) recheckLater(oid ids.ObjectID) {
	n.requeueCheck(oid, recheck{at: time.Now().Add(recheckDelay)})
}

func (n *Node) requeueCheck(oid ids.ObjectID, rc recheck) {
	q := &n.recheck
	q.mu.Lock()
	_, queued := q.due[oid]
	full := !queued && len(q.due) >= maxRechecks
	if !queued && !full {
		q.due[oid] = rc
	}
	q.mu.Unlock()
	if full {
		if ok, held := q.log.allow(); ok {
			n.log.Warn().Stringer("oid", oid).Int("more", held).Msg("too many objects wait for a check of their copies; a scrub or `sheep vdi check` will compare this one's")
		}
		return
	}
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// recheckLoop checks the queued objects as they fall due, one at a time,
// until the node stops.
func (n *Node) recheckLoop() {
	q := &n.recheck
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		default:
		}
		now := time.Now()
		var next ids.ObjectID
		var first recheck
		q.mu.Lock()
		for oid, rc := range q.due {
			if first.at.IsZero() || rc.at.Before(first.at) {
				next, first = oid, rc
			}
		}
		if !first.at.IsZero() && !first.at.After(now) {
			delete(q.due, next)
		}
		q.mu.Unlock()
		if first.at.IsZero() || first.at.After(now) {
			wait := time.Hour
			if !first.at.IsZero() {
				wait = first.at.Sub(now)
			}
			t.Reset(wait)
			select {
			case <-n.stop:
				return
			case <-q.wake:
			case <-t.C:
			}
			continue
		}
		n.recheckNow(next, first)
	}
}

// recheckNow checks oid's copies and repairs those that differ; one that
// finds a replica out of reach is queued again, up to recheckTries times.
func (n *Node) recheckNow(oid ids.ObjectID, rc recheck) {
	ctx, cancel := context.WithTimeout(n.life, time.Minute)
	defer cancel()
	res := n.checkObject(ctx, oid)
	rc.tries++
	switch {
	case ctx.Err() != nil && res.Status != "ok":
		// The node stops, or the check ran out of time.
	case res.Status == "ok" || res.Status == "absent":
	case res.Status == "repaired":
		n.log.Info().Stringer("oid", oid).Str("detail", res.Detail).Msg("copies left apart by a change that gave up were made alike")
	case res.Status == "unknown" && rc.tries < recheckTries:
		rc.at = time.Now().Add(recheckDelay << rc.tries)
		n.requeueCheck(oid, rc)
	default:
		if ok, held := n.recheck.log.allow(); ok {
			n.log.Warn().Stringer("oid", oid).Str("status", res.Status).Str("detail", res.Detail).Int("more", held).Msg("check of the copies after a change that gave up")
		}
	}
}
