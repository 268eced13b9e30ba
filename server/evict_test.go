package server

import (
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/vdi"
)

// TestEvictIdle: idle volumes of VDIs nobody writes are dropped; busy,
// recently used and open-for-writing ones stay. The replicas kept for the
// flushes of a dropped one go with it.
func TestEvictIdle(t *testing.T) {
	n := &Node{}
	n.objs = &replicated{n: n}
	n.objs.pending.mark(1, rms("a"))
	n.objs.pending.mark(4, rms("a"))
	old, busy, fresh, written := &volume{}, &volume{}, &volume{}, &volume{}
	for _, v := range []*volume{old, busy, fresh, written} {
		v.Volume = vdi.Open(nil, vdi.Info{ID: 1})
	}
	now := time.Now()
	old.lastUsed.Store(now.Add(-time.Hour).UnixNano())
	busy.lastUsed.Store(now.Add(-time.Hour).UnixNano())
	fresh.lastUsed.Store(now.UnixNano())
	written.lastUsed.Store(now.Add(-time.Hour).UnixNano())
	n.volumes = map[ids.VDIID]*volume{1: old, 2: busy, 3: fresh, 4: written}
	busy.writes.RLock() // a write in progress
	// VDI 4 is open for writing somewhere.
	locked := func(vid ids.VDIID) bool { return vid == 4 }
	if got := n.evictIdle(now.Add(-time.Minute), locked); got != 1 {
		t.Errorf("dropped %d volumes, want 1", got)
	}
	busy.writes.RUnlock()
	if n.volumes[1] != nil || !old.evicted {
		t.Errorf("the idle volume was not dropped")
	}
	if n.volumes[2] != busy || busy.evicted || n.volumes[3] != fresh || fresh.evicted || n.volumes[4] != written || written.evicted {
		t.Errorf("a busy, fresh or written volume was dropped")
	}
	all := n.objs.pending.ticket()
	if gs := n.objs.pending.waiting(1, all); len(gs) != 0 {
		t.Errorf("the dropped volume's writes are still waited for: %v", gs)
	}
	if gs := n.objs.pending.waiting(4, all); len(gs) != 1 {
		t.Errorf("the written volume's writes are not waited for: %v", gs)
	}
}
