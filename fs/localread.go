package fs

import (
	"context"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sheepfs/sheepfs/client"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/localread"
	"github.com/sheepfs/sheepfs/metrics"
	"github.com/sheepfs/sheepfs/objstore"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/vdi"
)

// Local reads: a read of an object the daemon on this machine holds a
// current copy of is served from the daemon's file under a lease, checked
// block by block against the file's checksums, instead of going through
// the daemon (package localread, docs/ARCHITECTURE.md "Local reads").
// Anything unexpected sends the read through the daemon as before.

const (
	// maxLeases bounds the leases (and open object files) a mount keeps:
	// 32 GiB of objects, within a quarter of the descriptor limit.
	maxLeases = 8192
	// sweepEvery is how often leases that no longer hold are dropped,
	// with their files: a file the daemon removed or replaced keeps its
	// disk space while a descriptor holds it.
	sweepEvery = 5 * time.Second
	// noLeaseFor is how long an object the daemon gave no lease on is
	// read through it before it is asked again (this mount's own writes
	// ask again at once).
	noLeaseFor = 2 * time.Second
	// maxViews bounds the daemon instances (restarts) whose pages a mount
	// maps; beyond it, local reads stop. A page is never unmapped: a read
	// may be checking it.
	maxViews = 64
)

type leaseKey struct {
	vid ids.VDIID
	idx uint32
}

// lease is a lease on one object; f == nil marks one the daemon refused,
// until retry.
type lease struct {
	f     *os.File
	oid   ids.ObjectID
	stamp localread.Stamp
	view  *localread.View
	gen   uint64 // the client connection's (client.Gen)
	retry time.Time
}

type localReads struct {
	c   *client.Client
	max int // leases kept at most

	off    atomic.Bool   // the daemon does not grant leases here
	offGen atomic.Uint64 // ... on the connection of this generation

	mu     sync.RWMutex
	leases map[leaseKey]*lease
	views  map[uint64]*localread.View
	// asking holds the objects whose lease a read is asking for, closed
	// when it has the answer: the other reads of the object wait for it
	// instead of asking too (a queue of reads after a new state did, a
	// fifth more requests and file opens).
	asking map[leaseKey]chan struct{}

	reads *metrics.Counter // outcome; nil without metrics
}

func newLocalReads(c *client.Client, reg *metrics.Registry) *localReads {
	r := &localReads{c: c, max: maxLeases, leases: map[leaseKey]*lease{}, views: map[uint64]*localread.View{},
		asking: map[leaseKey]chan struct{}{}}
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil {
		r.max = int(max(16, min(maxLeases, lim.Cur/4)))
	}
	if reg != nil {
		ctr := reg.Counter("sheepfs_local_reads_total", "Reads of whole objects' pieces from the daemon's files on this machine (local), and those that went through the daemon instead (daemon: no lease, or a lease that no longer held, or a block that failed its checksum).", "path")
		r.reads = &ctr
	}
	return r
}

func (r *localReads) count(path string) {
	if r.reads != nil {
		r.reads.Add(1, path)
	}
}

// read fills buf from VDI vid at off from the daemon's files, and reports
// whether it could; false leaves buf to be read through the daemon.
func (r *localReads) read(ctx context.Context, vid ids.VDIID, buf []byte, off int64) bool {
	if r == nil || len(buf) == 0 {
		return false
	}
	if r.off.Load() {
		if r.offGen.Load() == r.c.Gen() {
			return false
		}
		r.off.Store(false)
	}
	for len(buf) > 0 {
		idx := uint32(off / vdi.ObjectSize)
		objOff := off % vdi.ObjectSize
		n := min(int64(len(buf)), vdi.ObjectSize-objOff)
		if !r.readObject(ctx, leaseKey{vid, idx}, buf[:n], objOff) {
			r.count("daemon")
			return false
		}
		buf, off = buf[n:], off+n
	}
	r.count("local")
	return true
}

// readObject reads buf at off of one object under its lease.
func (r *localReads) readObject(ctx context.Context, key leaseKey, buf []byte, off int64) bool {
	l := r.leaseFor(ctx, key)
	if l != nil && (l.view.Moved(l.oid, l.stamp) || r.c.Gen() != l.gen) {
		// Ended before this read (every new state ends every lease): ask
		// again now, rather than read through the daemon and ask at the
		// next read.
		r.drop(key, l, nil)
		l = r.leaseFor(ctx, key)
	}
	if l == nil {
		return false
	}
	b0 := off / objstore.SumBlock
	b1 := (off + int64(len(buf)) + objstore.SumBlock - 1) / objstore.SumBlock
	data := buf
	var scratch []byte
	if off%objstore.SumBlock != 0 || len(buf)%objstore.SumBlock != 0 {
		scratch = proto.GetBuf(int((b1 - b0) * objstore.SumBlock))
		defer proto.PutBuf(scratch)
		data = scratch
	}
	var sums [256 * objstore.SumEntry]byte // a 1 MiB read's
	ent := sums[:(b1-b0)*objstore.SumEntry]
	if (b1-b0)*objstore.SumEntry > int64(len(sums)) {
		ent = make([]byte, (b1-b0)*objstore.SumEntry)
	}
	read := fullRead(l.f, ent, vdi.ObjectSize+b0*objstore.SumEntry) && fullRead(l.f, data, b0*objstore.SumBlock)
	good := read && objstore.VerifyCurrent(l.oid, b0, data, ent)
	if !l.view.Holds(l.oid, l.stamp) || r.c.Gen() != l.gen {
		r.drop(key, l, nil) // asked again at the next read
		return false
	}
	if !good {
		// Damaged, or a write racing the read, or the file gone: the
		// daemon sorts it out, and is asked again only a while later.
		r.drop(key, l, &lease{retry: time.Now().Add(noLeaseFor)})
		return false
	}
	if scratch != nil {
		copy(buf, scratch[off-b0*objstore.SumBlock:])
	}
	return true
}

// leaseFor returns the lease kept for key, asking for one if there is
// none or its refusal ran out, or nil if there is none to read under.
func (r *localReads) leaseFor(ctx context.Context, key leaseKey) *lease {
	r.mu.RLock()
	l := r.leases[key]
	r.mu.RUnlock()
	if l == nil || l.f == nil && time.Now().After(l.retry) {
		l = r.acquireOnce(ctx, key)
	}
	if l == nil || l.f == nil {
		return nil
	}
	return l
}

// fullRead reads len(b) bytes at off. The store writes an object's file
// whole, data and trailer, so a short one is a failure.
func fullRead(f *os.File, b []byte, off int64) bool {
	n, _ := f.ReadAt(b, off)
	return n == len(b)
}

// acquireOnce returns key's lease as acquire does, or, if another read is
// asking for it already, what that one kept.
func (r *localReads) acquireOnce(ctx context.Context, key leaseKey) *lease {
	r.mu.Lock()
	if ch := r.asking[key]; ch != nil {
		r.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil
		}
		r.mu.RLock()
		defer r.mu.RUnlock()
		return r.leases[key]
	}
	ch := make(chan struct{})
	r.asking[key] = ch
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.asking, key)
		r.mu.Unlock()
		close(ch)
	}()
	return r.acquire(ctx, key)
}

// acquire asks the daemon for a lease on key's object and keeps the
// answer: a lease, a refusal until a while later, or nil.
func (r *localReads) acquire(ctx context.Context, key leaseKey) *lease {
	pl, gen, err := r.c.Lease(ctx, key.vid, key.idx)
	if err != nil {
		switch {
		case errs.Is(err, errs.Unsupported):
			// An older daemon, a daemon without a page, or a gateway
			// on another machine: not on this connection.
			r.offGen.Store(gen)
			r.off.Store(true)
			return nil
		case ctx.Err() != nil || proto.IsTransport(err):
			return nil
		}
		return r.keep(key, &lease{retry: time.Now().Add(noLeaseFor)})
	}
	v := r.view(pl.Page, pl.Inst)
	if v == nil {
		return r.keep(key, &lease{retry: time.Now().Add(noLeaseFor)})
	}
	f, err := os.OpenFile(pl.Path, os.O_RDONLY|syscall.O_NOATIME, 0)
	if err != nil {
		f, err = os.Open(pl.Path)
	}
	if err != nil {
		return r.keep(key, &lease{retry: time.Now().Add(noLeaseFor)})
	}
	return r.keep(key, &lease{f: f, oid: ids.ObjectID(pl.OID), view: v, gen: gen,
		stamp: localread.Stamp{Inst: pl.Inst, Global: pl.Global, Slot: pl.Slot}})
}

// view returns the mapped page of daemon instance inst, mapping it first.
func (r *localReads) view(path string, inst uint64) *localread.View {
	r.mu.RLock()
	v := r.views[inst]
	r.mu.RUnlock()
	if v != nil {
		return v
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if v = r.views[inst]; v != nil {
		return v
	}
	if len(r.views) >= maxViews {
		return nil
	}
	v, err := localread.OpenView(path, inst)
	if err != nil {
		return nil
	}
	r.views[inst] = v
	return v
}

// keep stores l as key's lease, closing the one it replaces, and makes
// room first if the mount keeps maxLeases.
func (r *localReads) keep(key leaseKey, l *lease) *lease {
	var closing []*os.File
	r.mu.Lock()
	if old := r.leases[key]; old != nil && old.f != nil {
		closing = append(closing, old.f)
	}
	if len(r.leases) >= r.max {
		// Any eighth: map order is random enough for a cache whose
		// misses cost one request to the daemon.
		n := r.max / 8
		for k, o := range r.leases {
			if n--; n < 0 {
				break
			}
			if o.f != nil {
				closing = append(closing, o.f)
			}
			delete(r.leases, k)
		}
	}
	r.leases[key] = l
	r.mu.Unlock()
	for _, f := range closing {
		// A read using f meanwhile fails and goes through the daemon.
		_ = f.Close()
	}
	return l
}

// drop forgets key's lease l (if it is still the one kept), keeping
// instead next if it is not nil.
func (r *localReads) drop(key leaseKey, l, next *lease) {
	r.mu.Lock()
	if r.leases[key] == l {
		if next != nil {
			r.leases[key] = next
		} else {
			delete(r.leases, key)
		}
	}
	r.mu.Unlock()
	if l.f != nil {
		_ = l.f.Close()
	}
}

// wrote forgets the refusals of the objects a write or discard of this
// mount covers: the write may have given the VDI its own object there.
func (r *localReads) wrote(vid ids.VDIID, off, n int64) {
	if r == nil || n <= 0 {
		return
	}
	first, last := uint32(off/vdi.ObjectSize), uint32((off+n-1)/vdi.ObjectSize)
	refused := func(k leaseKey, l *lease) bool {
		return l.f == nil && k.vid == vid && k.idx >= first && k.idx <= last
	}
	// Look first under the shared lock: most writes have nothing to do.
	var found []leaseKey
	r.mu.RLock()
	if uint64(last-first) < uint64(len(r.leases)) {
		for i := first; i <= last; i++ {
			if l := r.leases[leaseKey{vid, i}]; l != nil && refused(leaseKey{vid, i}, l) {
				found = append(found, leaseKey{vid, i})
			}
		}
	} else {
		for k, l := range r.leases {
			if refused(k, l) {
				found = append(found, k)
			}
		}
	}
	r.mu.RUnlock()
	if len(found) == 0 {
		return
	}
	r.mu.Lock()
	for _, k := range found {
		if l := r.leases[k]; l != nil && refused(k, l) {
			delete(r.leases, k)
		}
	}
	r.mu.Unlock()
}

// sweepLoop drops, every sweepEvery until done is closed, the leases that
// no longer hold and the refusals that ran out.
func (r *localReads) sweepLoop(done <-chan struct{}) {
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			r.sweep()
		}
	}
}

func (r *localReads) sweep() {
	now, gen := time.Now(), r.c.Gen()
	var closing []*os.File
	r.mu.Lock()
	for k, l := range r.leases {
		switch {
		case l.f == nil && now.After(l.retry):
		case l.f != nil && (l.gen != gen || !l.view.Holds(l.oid, l.stamp)):
			closing = append(closing, l.f)
		default:
			continue
		}
		delete(r.leases, k)
	}
	r.mu.Unlock()
	for _, f := range closing {
		_ = f.Close()
	}
}
