package server

import (
	"slices"
	"sync"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
)

// dirtyNodes remembers which nodes a gateway wrote to since their last
// flush, and in which groups: the replicas each write reached. A flush
// must cover every write that completed before it started, so each group
// needs one node synced: a node that is down may be passed over only if
// every group it is in has a synced node (flushSet.coveredWithout).
// Flushes run one at a time: a flush that finds the set empty because an
// earlier flush took it still waits for that flush to finish, since the
// earlier one may be syncing this caller's writes.
type dirtyNodes struct {
	flushMu sync.Mutex // one flush at a time

	mu  sync.Mutex
	set flushSet
}

// flushSet is what one flush must make durable.
type flushSet struct {
	nodes map[ids.NodeID]bool
	// groups holds the replicas of each write since the last flush, each
	// set once (its sorted IDs, joined by NULs, are the key).
	groups map[string][]ids.NodeID
}

func (f *flushSet) empty() bool { return len(f.nodes) == 0 && len(f.groups) == 0 }

// add merges o into f.
func (f *flushSet) add(o flushSet) {
	if f.nodes == nil {
		f.nodes = map[ids.NodeID]bool{}
	}
	for id := range o.nodes {
		f.nodes[id] = true
	}
	if len(o.groups) > 0 && f.groups == nil {
		f.groups = map[string][]ids.NodeID{}
	}
	for k, g := range o.groups {
		f.groups[k] = g
	}
}

// synced records that node id is durable: it is no longer dirty, and
// every group it is in has its synced node.
func (f *flushSet) synced(id ids.NodeID) {
	delete(f.nodes, id)
	for k, g := range f.groups {
		if slices.Contains(g, id) {
			delete(f.groups, k)
		}
	}
}

// coveredWithout reports whether node id, not synced, is in no group
// left: every write it took has a copy on a node synced since.
func (f *flushSet) coveredWithout(id ids.NodeID) bool {
	for _, g := range f.groups {
		if slices.Contains(g, id) {
			return false
		}
	}
	return true
}

// mark records that nodes were written to, outside any one write's group
// (the nodes a client names for its flush).
func (d *dirtyNodes) mark(nodes []cluster.Member) {
	d.mu.Lock()
	if d.set.nodes == nil {
		d.set.nodes = map[ids.NodeID]bool{}
	}
	for _, m := range nodes {
		d.set.nodes[m.ID] = true
	}
	d.mu.Unlock()
}

// markWrite records that one write reached the replicas rs.
func (d *dirtyNodes) markWrite(rs []cluster.Member) {
	var buf [8]ids.NodeID
	g := buf[:0]
	n := 0
	for _, m := range rs {
		g = append(g, m.ID)
		n += len(m.ID) + 1
	}
	slices.Sort(g)
	var kb [256]byte
	key := kb[:0]
	if n > len(kb) {
		key = make([]byte, 0, n)
	}
	for _, id := range g {
		key = append(append(key, id...), 0)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.set.nodes == nil {
		d.set.nodes = map[ids.NodeID]bool{}
	}
	for _, id := range g {
		d.set.nodes[id] = true
	}
	if _, ok := d.set.groups[string(key)]; ok {
		return
	}
	if d.set.groups == nil {
		d.set.groups = map[string][]ids.NodeID{}
	}
	d.set.groups[string(key)] = slices.Clone(g)
}

// flush calls sync with what was marked so far; sync deletes from the
// set what it made durable (flushSet.synced) and the nodes it no longer
// counts on. Whatever is left when sync fails stays marked for the next
// flush.
func (d *dirtyNodes) flush(sync func(*flushSet) error) error {
	d.flushMu.Lock()
	defer d.flushMu.Unlock()
	d.mu.Lock()
	set := d.set
	d.set = flushSet{}
	d.mu.Unlock()
	if set.empty() {
		return nil
	}
	err := sync(&set)
	if err != nil {
		d.mu.Lock()
		d.set.add(set)
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
