package server

import (
	"context"
	"sync"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

// objLocks serialises the changes of this node's copy of one object: a
// write, punch or removal on behalf of a gateway, and a recovery that
// replaces the copy with one fetched from another node. A fetched copy is
// a snapshot of its source; a write that landed here while it was on its
// way may not be in it yet, and replacing the copy would undo that write
// here for good (the gateway has its acknowledgement and never sends it
// again). Under the lock, a recovery first checks whether it is still
// needed, and writes wait until it is done, then apply on top.
type objLocks struct {
	mu sync.Mutex
	m  map[ids.ObjectID]*objLock
}

type objLock struct {
	ch   chan struct{} // holds a token while locked
	refs int           // holders and waiters
}

// lock takes oid's lock, or fails once ctx is done. The returned function
// releases it.
func (l *objLocks) lock(ctx context.Context, oid ids.ObjectID) (func(), error) {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[ids.ObjectID]*objLock{}
	}
	o := l.m[oid]
	if o == nil {
		o = &objLock{ch: make(chan struct{}, 1)}
		l.m[oid] = o
	}
	o.refs++
	l.mu.Unlock()
	select {
	case o.ch <- struct{}{}:
		return func() {
			<-o.ch
			l.drop(oid, o)
		}, nil
	case <-ctx.Done():
		l.drop(oid, o)
		return nil, errs.E(errs.IO, "wait for object %v: %w", oid, ctx.Err())
	}
}

func (l *objLocks) drop(oid ids.ObjectID, o *objLock) {
	l.mu.Lock()
	if o.refs--; o.refs == 0 {
		delete(l.m, oid)
	}
	l.mu.Unlock()
}

// held reports how many objects have holders or waiters (for tests).
func (l *objLocks) held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}
