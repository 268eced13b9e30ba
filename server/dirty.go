package server

import (
	"sync"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/ids"
)

// dirtyNodes remembers which nodes a gateway wrote to since their last
// flush. A flush must cover every write that completed before it started.
// Flushes therefore run one at a time: a flush that finds the set empty
// because an earlier flush took it still waits for that flush to finish,
// since the earlier one may be syncing this caller's writes.
type dirtyNodes struct {
	flushMu sync.Mutex // one flush at a time

	mu  sync.Mutex
	set map[ids.NodeID]bool
}

// mark records that nodes were written to.
func (d *dirtyNodes) mark(nodes []cluster.Member) {
	d.mu.Lock()
	if d.set == nil {
		d.set = map[ids.NodeID]bool{}
	}
	for _, m := range nodes {
		d.set[m.ID] = true
	}
	d.mu.Unlock()
}

// flush calls sync with the nodes marked so far; sync deletes from the map
// the nodes it made durable (or no longer counts on). Whatever is left
// when sync fails stays marked for the next flush.
func (d *dirtyNodes) flush(sync func(map[ids.NodeID]bool) error) error {
	d.flushMu.Lock()
	defer d.flushMu.Unlock()
	d.mu.Lock()
	set := d.set
	d.set = nil
	d.mu.Unlock()
	if len(set) == 0 {
		return nil
	}
	err := sync(set)
	if err != nil {
		d.mu.Lock()
		if d.set == nil {
			d.set = map[ids.NodeID]bool{}
		}
		for id := range set {
			d.set[id] = true
		}
		d.mu.Unlock()
	}
	return err
}
