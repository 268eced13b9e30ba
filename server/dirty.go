package server

import (
	"sync"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
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

// bootSet gathers the boots of the nodes that took a client's writes
// (proto.NodeBoot). Safe for concurrent use; a nil *bootSet gathers
// nothing.
type bootSet struct {
	mu sync.Mutex
	m  map[ids.NodeID]uint64
}

// bootChanged stands for a node that answered in two boots: what it took
// in the first may be gone. Boots are odd (objstore.BootToken), so it
// matches none.
const bootChanged = 2

// add records that node id took a write in boot (0: unknown, ignored).
func (b *bootSet) add(id ids.NodeID, boot uint64) {
	if b == nil || boot == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = make(map[ids.NodeID]uint64, 4)
	}
	if old, ok := b.m[id]; ok && old != boot {
		boot = bootChanged
	}
	b.m[id] = boot
}

// list returns the set in wire form.
func (b *bootSet) list() []proto.NodeBoot {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]proto.NodeBoot, 0, len(b.m))
	for id, boot := range b.m {
		out = append(out, proto.NodeBoot{Node: proto.NodeHash(id), Boot: boot})
	}
	return out
}
