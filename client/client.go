// Package client talks to a sheep gateway on behalf of sheepfs and the admin
// CLI. It survives the gateway restarting: requests that fail because the
// connection broke are retried, on the next address if several are given,
// and the VDI write locks the client holds are taken again first.
package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/metrics"
	"github.com/sheepfs/sheepfs/proto"
)

// Options configure a Client.
type Options struct {
	// RetryFor bounds how long a request is retried while no gateway
	// answers (default 60 s). After that it fails with errs.IO.
	RetryFor time.Duration
	// Mount names this client's write locks (default: random).
	Mount ids.MountID
	// Dial connects to a gateway: over TLS with the cluster's key (see
	// auth.Keys.NewDialer). nil: plain TCP, which a daemon refuses.
	Dial proto.DialFunc
	// Metrics, if set, receives the client's request metrics
	// (sheepfs_requests_total and friends).
	Metrics *metrics.Registry
}

// clientMetrics are a client's request metrics.
type clientMetrics struct {
	requests  metrics.Counter   // op, result
	seconds   metrics.Histogram // op
	sent      metrics.Counter   // op
	received  metrics.Counter   // op
	failovers metrics.Counter
}

func newClientMetrics(r *metrics.Registry) *clientMetrics {
	if r == nil {
		return nil
	}
	return &clientMetrics{
		requests:  r.Counter("sheepfs_requests_total", "Requests to the cluster, by operation and result (ok or the error's kind), retries included in one.", "op", "result"),
		seconds:   r.Histogram("sheepfs_request_seconds", "Time to a request's answer, retries included, by operation.", metrics.LatencyBuckets, "op"),
		sent:      r.Counter("sheepfs_request_sent_bytes_total", "Payload bytes sent in requests (data written), by operation.", "op"),
		received:  r.Counter("sheepfs_request_received_bytes_total", "Payload bytes received in answers (data read), by operation.", "op"),
		failovers: r.Counter("sheepfs_gateway_failovers_total", "Times the connection to a gateway was lost and another was tried."),
	}
}

func (m *clientMetrics) observe(req, resp *proto.Msg, err error, start time.Time) {
	if m == nil {
		return
	}
	op, result := req.Op.String(), "ok"
	if err != nil {
		result = errs.KindOf(err).String()
	}
	m.requests.Add(1, op, result)
	m.seconds.Since(start, op)
	m.sent.Add(uint64(len(req.Data)), op)
	if resp != nil {
		m.received.Add(uint64(len(resp.Data)), op)
	}
}

// Client is a connection to the cluster through one gateway at a time.
// Safe for concurrent use.
type Client struct {
	addrs []string
	opts  Options

	mu   sync.Mutex
	cur  int
	pc   *proto.Client
	gen  uint64        // bumped at every reconnect
	genA atomic.Uint64 // gen, for Gen
	// leasesAt is gen+1 once the connection of gen was asked whether it
	// lends files (Lease), and leases its answer.
	leasesAt uint64
	leases   bool
	locked   uint64          // gen at which locks were last (re)taken
	locks    map[string]bool // VDI names held for writing
	relock   sync.Mutex

	// unflushed holds, per VDI, the nodes its writes since the last
	// flush reached and their boots (proto.NodeBoot): a flush asks
	// those nodes to sync and to answer in the same boot.
	bootMu    sync.Mutex
	unflushed map[ids.VDIID]map[uint64]uint64
	// doubt lists nodes (proto.NodeHash) that may hold unflushed writes
	// this client does not know of (an earlier process of its mount
	// made them, or a gateway it left: DoubtAll); the first flush of
	// each VDI syncs them too.
	doubt        []uint64
	doubted      map[ids.VDIID]bool // VDIs flushed since DoubtAll
	doubtPending bool               // DoubtAll called, doubt not fetched yet

	met *clientMetrics // nil without Options.Metrics
}

// New returns a client for the given gateway addresses (host:port), tried
// in order. It does not connect yet.
func New(addrs []string, opts Options) *Client {
	if opts.RetryFor == 0 {
		opts.RetryFor = 60 * time.Second
	}
	if opts.Mount == "" {
		var b [6]byte
		rand.Read(b[:])
		opts.Mount = ids.MountID("m" + hex.EncodeToString(b[:]))
	}
	return &Client{addrs: addrs, opts: opts, pc: proto.NewClientOnce(addrs[0], opts.Dial), locks: map[string]bool{},
		unflushed: map[ids.VDIID]map[uint64]uint64{}, met: newClientMetrics(opts.Metrics)}
}

// Mount returns the client's mount ID.
func (c *Client) Mount() ids.MountID { return c.opts.Mount }

// Close drops the connection (locks held are released by the gateway).
func (c *Client) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pc.Close()
}

// connLost reports whether err means the gateway connection broke (rather
// than the gateway answering with an error, or our own context ending).
func connLost(err error) bool {
	return proto.IsTransport(err) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

func (c *Client) current() (*proto.Client, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pc, c.gen
}

// failover moves to the next address after a connection of generation gen
// broke (once per generation).
func (c *Client) failover(gen uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return
	}
	c.pc.Close()
	c.cur = (c.cur + 1) % len(c.addrs)
	// A new connection, never a redial of the old one: its locks are
	// taken again (ensureLocks) before any request goes on it.
	c.pc = proto.NewClientOnce(c.addrs[c.cur], c.opts.Dial)
	c.gen++
	c.genA.Store(c.gen)
	// A request the old gateway did not answer may have changed nodes
	// that no answer names (the index entry of an object it allocated
	// before a retry wrote in place): the next flush of each VDI syncs
	// every member.
	c.DoubtAll()
}

// Gen returns the generation of the client's connection, which changes
// whenever the client moves to another one.
func (c *Client) Gen() uint64 { return c.genA.Load() }

// Lease asks the gateway for a lease on object number idx of VDI vid
// (package localread), once, on the current connection, and returns the
// connection's generation (Gen) with it: the lease holds only while that
// connection is the client's.
func (c *Client) Lease(ctx context.Context, vid ids.VDIID, idx uint32) (proto.Lease, uint64, error) {
	pc, gen := c.current()
	if ok, err := c.lends(ctx, pc, gen); !ok {
		return proto.Lease{}, gen, err
	}
	resp, err := pc.Call(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpVDILease, ID: uint64(vid), Offset: uint64(idx)}})
	if err != nil {
		return proto.Lease{}, gen, err
	}
	l, err := proto.DecodeLease(resp.Data)
	return l, gen, err
}

// lends reports whether the gateway on pc, the connection of generation
// gen, lends its files (proto.AdminLocalReads), asking it once: an older
// daemon drops a connection that sends OpVDILease. errs.Unsupported if
// not.
func (c *Client) lends(ctx context.Context, pc *proto.Client, gen uint64) (bool, error) {
	c.mu.Lock()
	asked, ok := c.leasesAt == gen+1, c.leases
	c.mu.Unlock()
	if !asked {
		b, _ := json.Marshal(proto.AdminRequest{Cmd: proto.AdminLocalReads})
		_, err := pc.Call(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpAdmin}, Data: b})
		if err != nil && (proto.IsTransport(err) || ctx.Err() != nil) {
			return false, err // not an answer: ask again next time
		}
		ok = err == nil
		c.mu.Lock()
		if c.gen == gen {
			c.leasesAt, c.leases = gen+1, ok
		}
		c.mu.Unlock()
	}
	if !ok {
		return false, errs.E(errs.Unsupported, "the gateway lends no files to this connection")
	}
	return true, nil
}

// Call sends req to the gateway, retrying across reconnects.
func (c *Client) Call(ctx context.Context, req *proto.Msg) (*proto.Msg, error) {
	return c.CallInto(ctx, req, nil)
}

// CallInto is Call with the answer's payload read into dst when it fits.
func (c *Client) CallInto(ctx context.Context, req *proto.Msg, dst []byte) (*proto.Msg, error) {
	start := time.Now()
	resp, err := c.callInto(ctx, req, dst)
	c.met.observe(req, resp, err, start)
	return resp, err
}

func (c *Client) callInto(ctx context.Context, req *proto.Msg, dst []byte) (*proto.Msg, error) {
	deadline := time.Now().Add(c.opts.RetryFor)
	backoff := 50 * time.Millisecond
	for {
		pc, gen := c.current()
		err := c.ensureLocks(ctx, pc, gen)
		var resp *proto.Msg
		if err == nil {
			r := *req
			resp, err = pc.CallInto(ctx, &r, dst)
		}
		if err == nil || !connLost(err) {
			return resp, err
		}
		c.failover(gen)
		if c.met != nil {
			c.met.failovers.Add(1)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, errs.E(errs.IO, "%v: %w", req.Op, ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Second)
	}
}

// ensureLocks takes the client's write locks again on a new connection.
func (c *Client) ensureLocks(ctx context.Context, pc *proto.Client, gen uint64) error {
	c.mu.Lock()
	if c.locked == gen || len(c.locks) == 0 {
		c.locked = gen
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	c.relock.Lock()
	defer c.relock.Unlock()
	c.mu.Lock()
	if c.locked == gen {
		c.mu.Unlock()
		return nil
	}
	names := make([]string, 0, len(c.locks))
	for n := range c.locks {
		names = append(names, n)
	}
	c.mu.Unlock()
	for _, name := range names {
		b, _ := json.Marshal(proto.AdminRequest{Cmd: proto.AdminVDILock, Name: name, Mount: c.opts.Mount})
		if _, err := pc.Call(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpAdmin}, Data: b}); err != nil {
			if connLost(err) {
				return err
			}
			// Someone else holds it now: our writes will fail Busy.
			c.mu.Lock()
			delete(c.locks, name)
			c.mu.Unlock()
		}
	}
	c.mu.Lock()
	c.locked = gen
	c.mu.Unlock()
	return nil
}

// Admin runs an admin command and decodes its answer into out (may be nil).
func (c *Client) Admin(ctx context.Context, req proto.AdminRequest, out any) error {
	if (req.Cmd == proto.AdminVDICreate || req.Cmd == proto.AdminVDIClone) && req.Token == "" {
		// The same bytes go out at every retry (callInto): one that
		// follows an answer lost with its gateway answers the first
		// one's result instead of "exists".
		var t [12]byte
		_, _ = rand.Read(t[:])
		req.Token = hex.EncodeToString(t[:])
	}
	b, err := json.Marshal(req)
	if err != nil {
		return errs.E(errs.Invalid, "encode %s: %w", req.Cmd, err)
	}
	resp, err := c.Call(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpAdmin}, Data: b})
	if err != nil {
		return err
	}
	if out != nil {
		if err := json.Unmarshal(resp.Data, out); err != nil {
			return errs.E(errs.IO, "decode %s answer: %w", req.Cmd, err)
		}
	}
	return nil
}

// Lock opens VDI name for writing on behalf of this client (errs.Busy if
// another client has it), and returns the VDI as the lock left it.
func (c *Client) Lock(ctx context.Context, name string) (proto.VDIInfo, error) {
	var info proto.VDIInfo
	if err := c.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDILock, Name: name, Mount: c.opts.Mount}, &info); err != nil {
		return info, err
	}
	c.mu.Lock()
	c.locks[name] = true
	c.mu.Unlock()
	return info, nil
}

// Unlock releases the write lock on VDI name.
func (c *Client) Unlock(ctx context.Context, name string) error {
	c.mu.Lock()
	delete(c.locks, name)
	c.mu.Unlock()
	return c.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDIUnlock, Name: name, Mount: c.opts.Mount}, nil)
}

// maxIO is the largest read or write sent as one request; larger ones are
// split (a frame's payload is bounded by proto.MaxPayload).
const maxIO = 4 << 20

// ReadAt reads len(buf) bytes of VDI vid at off.
func (c *Client) ReadAt(ctx context.Context, vid ids.VDIID, buf []byte, off int64) error {
	for len(buf) > maxIO {
		if err := c.ReadAt(ctx, vid, buf[:maxIO], off); err != nil {
			return err
		}
		buf, off = buf[maxIO:], off+maxIO
	}
	if len(buf) == 0 {
		return nil
	}
	resp, err := c.CallInto(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpVDIRead, ID: uint64(vid),
		Offset: uint64(off), Length: uint32(len(buf))}}, buf)
	if err != nil {
		return err
	}
	if len(resp.Data) != len(buf) {
		return errs.E(errs.IO, "short read from gateway: %d of %d bytes", len(resp.Data), len(buf))
	}
	if &resp.Data[0] != &buf[0] {
		copy(buf, resp.Data)
	}
	return nil
}

// WriteAt writes data to VDI vid at off; sync makes it durable first.
// Writes larger than 4 MiB are split, and are not atomic with respect to a
// snapshot.
func (c *Client) WriteAt(ctx context.Context, vid ids.VDIID, data []byte, off int64, sync bool) error {
	for len(data) > maxIO {
		if err := c.WriteAt(ctx, vid, data[:maxIO], off, sync); err != nil {
			return err
		}
		data, off = data[maxIO:], off+maxIO
	}
	m := &proto.Msg{Header: proto.Header{Op: proto.OpVDIWrite, ID: uint64(vid), Offset: uint64(off)}, Data: data}
	if sync {
		m.Flags |= proto.FlagSync
	}
	resp, err := c.Call(ctx, m)
	if err == nil && !sync {
		c.wrote(vid, resp.Data)
	}
	return err
}

// wrote records the nodes and boots a gateway says a write of vid reached
// (proto.NodeBoot). An answer that does not decode adds nothing: the
// gateway's own record still covers the nodes it wrote.
func (c *Client) wrote(vid ids.VDIID, list []byte) {
	bs, err := proto.DecodeNodeBoots(list)
	if err != nil || len(bs) == 0 {
		return
	}
	c.bootMu.Lock()
	defer c.bootMu.Unlock()
	for _, b := range bs {
		c.noteLocked(vid, b.Node, b.Boot)
	}
}

// bootChanged stands for a node seen in two boots: no boot matches it
// (boots are odd), so the next flush reports the writes lost.
const bootChanged = 2

// Flush makes every acknowledged write to vid durable on all replicas.
// errs.Lost if a node that took some of them restarted its machine before
// they were flushed: they may be gone (reported once; later flushes cover
// later writes).
func (c *Client) Flush(ctx context.Context, vid ids.VDIID) error {
	doubt, err := c.doubtList(ctx, vid)
	if err != nil {
		return err
	}
	c.bootMu.Lock()
	taken := c.unflushed[vid]
	delete(c.unflushed, vid)
	c.bootMu.Unlock()
	list := make([]proto.NodeBoot, 0, len(taken)+len(doubt))
	for node, boot := range taken {
		list = append(list, proto.NodeBoot{Node: node, Boot: boot})
	}
	for _, node := range doubt {
		if _, ok := taken[node]; !ok && len(list) < proto.MaxNodeBoots {
			list = append(list, proto.NodeBoot{Node: node}) // boot 0: sync, compare nothing
		}
	}
	_, err = c.Call(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpVDIFlush, ID: uint64(vid)}, Data: proto.AppendNodeBoots(nil, list)})
	if errs.Is(err, errs.Invalid) && len(list) > len(taken) {
		// A gateway from before boot 0 (sync, compare nothing): it
		// flushes what it wrote itself.
		_, err = c.Call(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpVDIFlush, ID: uint64(vid)}, Data: proto.AppendNodeBoots(nil, list[:len(taken)])})
	}
	if err == nil && doubt != nil {
		c.bootMu.Lock()
		c.doubted[vid] = true
		c.bootMu.Unlock()
	}
	if err != nil && errs.KindOf(err) != errs.Lost {
		// Not flushed: the next flush covers these writes again.
		c.bootMu.Lock()
		for node, boot := range taken {
			c.noteLocked(vid, node, boot)
		}
		c.bootMu.Unlock()
	}
	return err
}

// DoubtAll makes the first flush of each VDI from now on sync every
// member of the cluster too: a process that takes over a mount does not
// know which nodes the writes of its predecessor reached, nor through which
// gateway. The client calls it itself when it changes gateways. The
// members are asked for at the first flush.
func (c *Client) DoubtAll() {
	c.bootMu.Lock()
	defer c.bootMu.Unlock()
	c.doubtPending = true
	c.doubted = map[ids.VDIID]bool{}
}

// doubtList returns the nodes (NodeHash) the flush of vid must sync
// besides those it wrote to (DoubtAll).
func (c *Client) doubtList(ctx context.Context, vid ids.VDIID) ([]uint64, error) {
	c.bootMu.Lock()
	pending, done, none := c.doubtPending, c.doubted[vid], c.doubt == nil
	c.bootMu.Unlock()
	if done || (!pending && none) {
		return nil, nil
	}
	if pending {
		var ci proto.ClusterInfo
		if err := c.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminClusterInfo}, &ci); err != nil {
			return nil, err
		}
		hs := make([]uint64, 0, len(ci.Nodes))
		for _, n := range ci.Nodes[:min(len(ci.Nodes), proto.MaxNodeBoots)] {
			hs = append(hs, proto.NodeHash(n.ID))
		}
		c.bootMu.Lock()
		c.doubt, c.doubtPending = hs, false
		c.bootMu.Unlock()
	}
	c.bootMu.Lock()
	defer c.bootMu.Unlock()
	return c.doubt, nil
}

// noteLocked records that node took a write of vid in boot. c.bootMu is
// held.
func (c *Client) noteLocked(vid ids.VDIID, node, boot uint64) {
	m := c.unflushed[vid]
	if m == nil {
		m = make(map[uint64]uint64)
		c.unflushed[vid] = m
	}
	old, ok := m[node]
	switch {
	case !ok && len(m) >= proto.MaxNodeBoots:
		return // more nodes than a cluster has: a gateway's nonsense
	case ok && old != boot:
		boot = bootChanged
	}
	m[node] = boot
}

// Discard makes [off, off+length) of vid read as zeros; keep keeps the space
// allocated (zero range) instead of freeing it (punch hole).
func (c *Client) Discard(ctx context.Context, vid ids.VDIID, off, length int64, keep bool) error {
	m := &proto.Msg{Header: proto.Header{Op: proto.OpVDIDiscard, ID: uint64(vid), Offset: uint64(off)}, Aux: uint64(length)}
	if keep {
		m.Flags |= proto.FlagZeroKeep
	}
	resp, err := c.Call(ctx, m)
	if err == nil {
		c.wrote(vid, resp.Data)
	}
	return err
}

// AllocMap returns vid's allocation bitmap (bit i set: object i allocated)
// and its object count.
func (c *Client) AllocMap(ctx context.Context, vid ids.VDIID) ([]byte, uint32, error) {
	resp, err := c.Call(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpVDIAllocMap, ID: uint64(vid)}})
	if err != nil {
		return nil, 0, err
	}
	return resp.Data, uint32(resp.Aux), nil
}
