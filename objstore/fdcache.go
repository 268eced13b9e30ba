package objstore

import (
	"sync"

	"github.com/sheepfs/sheepfs/ids"
)

// handle is an open object file shared by the operations that use it.
// Store.mu guards refs, cached and the list links; tmu guards the rest
// (see Store.sums and lockBlocks).
type handle struct {
	oid        ids.ObjectID
	f          File
	refs       int  // operations currently using f
	cached     bool // in the LRU; f is closed when neither cached nor referenced
	prev, next *handle

	tmu     sync.Mutex
	freed   sync.Cond    // on tmu: blocks were given back
	sums    entries      // a copy of the file's checksum trailer, or nil
	suspect bool         // sums was read while changes were in flight
	busy    []blockRange // blocks being changed
	tmap    []byte       // the file's trailer mapped, or nil (tmap.go)
	noMap   bool         // do not map it (again)
	changes int          // entry writes before it is mapped
}

// close closes h's file and unmaps its trailer. Nobody uses h.
func (h *handle) close() {
	h.unmapTrailer()
	_ = h.f.Close()
}

// fdCache is an LRU of open object files, bounded by max, with at most
// one handle per object at any time: a handle leaves the cache only when
// nobody uses it (the cache grows past max while every handle is in use),
// so operations on one object share one handle, its copy of the checksums
// and its block locks. It is not safe for concurrent use; Store.mu guards
// it.
type fdCache struct {
	max int
	m   map[ids.ObjectID]*handle
	lru handle // sentinel: lru.next is the most recently used
}

func (c *fdCache) init(max int) {
	c.max = max
	c.m = make(map[ids.ObjectID]*handle, max)
	c.lru.next, c.lru.prev = &c.lru, &c.lru
}

func (c *fdCache) unlink(h *handle) {
	h.prev.next, h.next.prev = h.next, h.prev
	h.prev, h.next = nil, nil
}

func (c *fdCache) pushFront(h *handle) {
	h.prev, h.next = &c.lru, c.lru.next
	h.prev.next, h.next.prev = h, h
}

// get returns the cached handle of oid with a reference taken, or nil.
func (c *fdCache) get(oid ids.ObjectID) *handle {
	h := c.m[oid]
	if h == nil {
		return nil
	}
	if c.lru.next != h {
		c.unlink(h)
		c.pushFront(h)
	}
	h.refs++
	return h
}

// add caches a newly opened file for oid and returns its handle with a
// reference taken. If another operation cached oid meanwhile, add returns
// that handle instead and f is returned as dup for the caller to close.
// victim, if not nil, is an evicted handle the caller must close (after
// releasing Store.mu).
func (c *fdCache) add(oid ids.ObjectID, f File) (h *handle, dup File, victim *handle) {
	if h := c.get(oid); h != nil {
		return h, f, nil
	}
	h = &handle{oid: oid, f: f, refs: 1, cached: true}
	h.freed.L = &h.tmu
	c.m[oid] = h
	c.pushFront(h)
	if len(c.m) > c.max {
		// The least recently used handle nobody uses.
		for v := c.lru.prev; v != &c.lru; v = v.prev {
			if v.refs == 0 {
				victim = v
				c.drop(v)
				break
			}
		}
	}
	return h, nil, victim
}

// drop takes h out of the cache.
func (c *fdCache) drop(h *handle) {
	delete(c.m, h.oid)
	c.unlink(h)
	h.cached = false
}

// release drops one reference to h and reports whether the caller must
// now close h.f (it was evicted and this was the last user).
func (c *fdCache) release(h *handle) bool {
	h.refs--
	return h.refs == 0 && !h.cached
}

// remove takes oid's handle out of the cache and returns it if nobody uses
// it, for the caller to close; otherwise its last user closes it. (Callers
// hold the object's stripe lock exclusively, so nobody does.)
func (c *fdCache) remove(oid ids.ObjectID) *handle {
	h := c.m[oid]
	if h == nil {
		return nil
	}
	c.drop(h)
	if h.refs == 0 {
		return h
	}
	return nil
}

// removeAll empties the cache and returns the handles nobody uses, for the
// caller to close.
func (c *fdCache) removeAll() []*handle {
	var idle []*handle
	for _, h := range c.m {
		c.drop(h)
		if h.refs == 0 {
			idle = append(idle, h)
		}
	}
	return idle
}
