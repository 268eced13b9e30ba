package proto

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/sheepfs/sheepfs/errs"
)

// Per-connection limits on work in flight. When they are reached the server
// stops reading from that connection until answers go out (backpressure), so
// memory stays bounded whatever the client sends.
const (
	// MaxInflightBytes bounds, per connection, the payload of the
	// requests in flight plus the room reserved for their answers (see
	// Handler), held until each answer is written: a client that asks
	// and never reads holds at most this much of the server's memory in
	// answers, besides the one request read and waiting for room.
	MaxInflightBytes = 32 << 20
	// MaxInflightRequests is the number of requests in flight on one
	// connection.
	MaxInflightRequests = 256
)

// Handler answers requests. It must not keep req.Data after returning, and
// must return a response (use ErrorResponse for failures); Op and ReqID
// are filled in by the server. A response whose Data came from GetBuf may
// be marked with SetPooled, and the buffer is returned once sent.
//
// An answer's payload must fit the room the server reserved for it before
// running the request: Length bytes for OpReadObj and OpVDIRead (plus a
// SparseObject header of MaxExtents extents for a FlagSparse read),
// MaxPayload for the ops whose answers the server's state sizes (list_objs,
// stat_objs, inventory, admin, vdi_allocmap), 4 KiB for the others. A larger
// answer goes out as an errs.TooLarge error instead (an error message is cut
// short).
type Handler interface {
	Handle(ctx context.Context, conn *Conn, req *Msg) *Msg
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, conn *Conn, req *Msg) *Msg

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, conn *Conn, req *Msg) *Msg { return f(ctx, conn, req) }

// Conn is the server side of one client connection. Handlers use it to hang
// per-connection state (such as the locks a client holds) and to learn when
// the client goes away.
type Conn struct {
	ID     uint64
	Remote string

	nc  net.Conn
	srv *Server
	ip  string // the remote address, as MaxConnsPerIP counts it
	wmu sendLock
	bw  *bufio.Writer // made at the first answer
	hdr []byte

	// What the reader looks at when its deadline fires (see awaitFrame).
	inflight   atomic.Int32 // requests read and not yet answered
	lastActive atomic.Int64 // when a frame last started or an answer went out (Unix ns)
	keepIdle   atomic.Bool  // see KeepWhenIdle
	// For the shared budget (Server.Shared): what this connection holds
	// of it, and since when an answer has been stuck in a write (Unix
	// ns; 0: none is).
	sharedHeld   atomic.Int64
	writingSince atomic.Int64

	mu      sync.Mutex
	onClose []func()
	closed  bool
}

// NetConn is the underlying connection (an authenticated one, on a
// daemon: see package auth).
func (c *Conn) NetConn() net.Conn { return c.nc }

// OnClose registers f to run (once, in its own goroutine) when the
// connection ends. If it has ended already f runs at once.
func (c *Conn) OnClose(f func()) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		go f()
		return
	}
	c.onClose = append(c.onClose, f)
	c.mu.Unlock()
}

// KeepWhenIdle exempts the connection from the server's IdleTimeout while
// keep is true: for a client that holds state through it (write locks)
// that closing the connection would give up.
func (c *Conn) KeepWhenIdle(keep bool) { c.keepIdle.Store(keep) }

// awaitFrame waits, with peek, for the first byte of the next frame. It
// returns false when the connection ends, or when it has been idle (no
// request in flight, nothing sent or answered) for IdleTimeout. The read
// deadline is not moved at every frame, which would cost a timer update per
// request: when it fires, awaitFrame looks at what happened meanwhile, and
// unless the connection was idle all along it sets the deadline again and
// goes on waiting.
func (c *Conn) awaitFrame(peek func() error) bool {
	for {
		err := peek()
		if err == nil {
			return true
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return false
		}
		next, idle := c.idleUntil(time.Now())
		if idle || c.nc.SetReadDeadline(next) != nil {
			return false
		}
	}
}

// idleUntil reports whether the connection has been idle for IdleTimeout
// at now, and if not, when it would be at the earliest.
func (c *Conn) idleUntil(now time.Time) (time.Time, bool) {
	// inflight is read first: finished records the activity before it
	// counts the request done.
	if c.inflight.Load() > 0 || c.keepIdle.Load() {
		return now.Add(c.srv.idleTimeout()), false
	}
	at := time.Unix(0, c.lastActive.Load()).Add(c.srv.idleTimeout())
	return at, !now.Before(at)
}

// frameStarted is called once a frame's first byte is here: the rest of
// the frame must follow within FrameTimeout, so that a peer cannot hold a
// half-sent frame (and the buffer it fills) forever. A frame already
// whole in br needs no deadline.
func (c *Conn) frameStarted(br *bufio.Reader) {
	c.lastActive.Store(time.Now().UnixNano())
	if n := br.Buffered(); n >= HeaderSize+auxSize {
		hdr, _ := br.Peek(HeaderSize)
		if n-HeaderSize-auxSize >= int(binary.BigEndian.Uint32(hdr[44:])) { // dlen
			return
		}
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(c.srv.frameTimeout()))
}

// started counts a request read; finished counts one answered.
func (c *Conn) started() { c.inflight.Add(1) }

func (c *Conn) finished() {
	c.lastActive.Store(time.Now().UnixNano())
	c.inflight.Add(-1)
}

func (c *Conn) close() {
	c.mu.Lock()
	fs := c.onClose
	c.onClose = nil
	c.closed = true
	c.mu.Unlock()
	c.nc.Close()
	for _, f := range fs {
		go f()
	}
}

func (c *Conn) send(m *Msg) error {
	c.wmu.lock()
	if c.bw == nil {
		c.bw = bufio.NewWriterSize(c.nc, 256<<10)
	}
	// A client that does not read its answers must not hold them, and
	// the worker writing them, forever: the write fails, and the
	// connection with it.
	now := time.Now()
	if err := c.nc.SetWriteDeadline(now.Add(c.srv.writeTimeout())); err != nil {
		c.wmu.unlockNow()
		return err
	}
	m.DLen = uint32(len(m.Data))
	PutHeader(c.hdr, &m.Header)
	putAux(c.hdr, m.Aux)
	c.writingSince.Store(now.UnixNano())
	err := writeFrame(c.bw, c.nc, c.hdr, m.Data)
	c.writingSince.Store(0)
	if err != nil {
		c.wmu.unlockNow()
		return err
	}
	return c.wmu.unlock(c.flush, c.inflight.Load() > 1)
}

// flush writes out the buffered answers; the caller holds the write lock.
func (c *Conn) flush() error {
	c.writingSince.Store(time.Now().UnixNano())
	defer c.writingSince.Store(0)
	return c.bw.Flush()
}

func putAux(hdr []byte, aux uint64) { binary.BigEndian.PutUint64(hdr[HeaderSize:], aux) }

// Server accepts connections and runs a Handler for each request, many at a
// time per connection. Its fields must be set before Serve.
type Server struct {
	Handler Handler
	// OnBadFrame, if set, is told about connections dropped for a malformed
	// frame, or for one that did not arrive within FrameTimeout (for
	// logging).
	OnBadFrame func(remote string, err error)
	// OnRefuse, if set, is told when the server turns connections away:
	// one closed at once because MaxConns or MaxConnsPerIP was reached,
	// or an accept that failed (out of file descriptors; remote is then
	// empty). It is called at most once a second, with n the number
	// turned away since the last call, this one included, so that a
	// flood does not flood the log.
	OnRefuse func(remote string, err error, n int)

	// MaxConns is the most connections kept open at once (0:
	// DefaultMaxConns); one more is closed as soon as it is accepted.
	MaxConns int
	// MaxConnsPerIP is the most connections kept open at once from one
	// remote IP address (0: DefaultMaxConnsPerIP).
	MaxConnsPerIP int
	// IdleTimeout closes a connection that has no request in flight and
	// sends nothing for this long (0: DefaultIdleTimeout), unless a
	// handler made it KeepWhenIdle. Clients redial on their next call.
	IdleTimeout time.Duration
	// FrameTimeout drops a connection whose frame has not fully arrived
	// this long after its first byte (0: DefaultFrameTimeout).
	FrameTimeout time.Duration
	// WriteTimeout drops a connection when writing one answer to it
	// takes longer than this (0: DefaultWriteTimeout), which frees the
	// answers queued for it.
	WriteTimeout time.Duration
	// Shared, if set, says which connections also count their requests
	// against a server-wide budget of SharedBytes (0:
	// DefaultSharedBytes), on top of MaxInflightBytes each: a daemon's
	// client connections, so that many clients that do not read their
	// answers pin a bounded amount in all. Connections among the
	// cluster's own nodes stay out of it: a gateway's request waits on
	// replica requests to other nodes, and a budget they shared could
	// fill with requests that each wait on another node's.
	Shared      func(nc net.Conn) bool
	SharedBytes int64

	nextID  atomic.Uint64
	shared  *semaphore.Weighted // made by the first Serve
	refused reportLimiter
	mu      sync.Mutex
	conns   map[*Conn]struct{}
	perIP   map[string]int // open connections by remote address
	lns     []net.Listener
	done    bool
	quit    chan struct{} // closed by Close
}

func (s *Server) maxConns() int {
	if s.MaxConns > 0 {
		return s.MaxConns
	}
	return DefaultMaxConns
}

func (s *Server) maxConnsPerIP() int {
	if s.MaxConnsPerIP > 0 {
		return s.MaxConnsPerIP
	}
	return DefaultMaxConnsPerIP
}

func (s *Server) idleTimeout() time.Duration  { return orDefault(s.IdleTimeout, DefaultIdleTimeout) }
func (s *Server) frameTimeout() time.Duration { return orDefault(s.FrameTimeout, DefaultFrameTimeout) }
func (s *Server) writeTimeout() time.Duration { return orDefault(s.WriteTimeout, DefaultWriteTimeout) }

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// Serve accepts connections on ln until ln is closed or Close is called,
// and returns the error that ended it. Other accept errors (out of file
// descriptors, a connection aborted) do not end it: as net/http does, it
// waits a little, longer each time up to a second, and accepts again, so
// that a server that ran out of descriptors serves again once some are
// free.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		ln.Close()
		return errs.E(errs.Closed, "server closed")
	}
	s.lns = append(s.lns, ln)
	if s.conns == nil {
		s.conns = make(map[*Conn]struct{})
		s.perIP = make(map[string]int)
		s.quit = make(chan struct{})
	}
	quit := s.quit
	s.mu.Unlock()
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || s.closing() {
				return err
			}
			s.refuse("", errs.E(errs.IO, "accept: %w", err))
			backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
			select {
			case <-time.After(backoff):
			case <-quit:
			}
			continue
		}
		backoff = 0
		s.accept(nc)
	}
}

func (s *Server) closing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.done
}

// accept serves nc, or closes it at once if a cap on connections is
// reached.
func (s *Server) accept(nc net.Conn) {
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	c := &Conn{ID: s.nextID.Add(1), Remote: nc.RemoteAddr().String(), nc: nc, srv: s, ip: remoteIP(nc),
		hdr: make([]byte, HeaderSize+auxSize)}
	var err error
	s.mu.Lock()
	switch {
	case s.done:
		s.mu.Unlock()
		nc.Close()
		return
	case len(s.conns) >= s.maxConns():
		err = errs.E(errs.TooLarge, "%d connections open, the most this server keeps", len(s.conns))
	case s.perIP[c.ip] >= s.maxConnsPerIP():
		err = errs.E(errs.TooLarge, "%d connections open from %s, the most this server keeps from one address", s.perIP[c.ip], c.ip)
	default:
		s.conns[c] = struct{}{}
		s.perIP[c.ip]++
	}
	s.mu.Unlock()
	if err != nil {
		nc.Close()
		s.refuse(c.Remote, err)
		return
	}
	go s.serveConn(c)
}

// refuse tells OnRefuse about a connection turned away, rate-limited.
func (s *Server) refuse(remote string, err error) {
	if s.OnRefuse == nil {
		return
	}
	if n, ok := s.refused.event(time.Now()); ok {
		s.OnRefuse(remote, err, n)
	}
}

// workerIdle is how long a request worker waits for more work before it
// exits.
const workerIdle = 5 * time.Second

// job is a request handed to a worker, with what the reader reserved for
// it against MaxInflightBytes.
type job struct {
	m      *Msg
	cost   int64
	shared bool // cost is held of the shared budget too
}

// worker runs requests of one connection until it has been idle for
// workerIdle or the connection ends.
func (s *Server) worker(ctx context.Context, c *Conn, work <-chan job, bytesSem, reqSem *semaphore.Weighted) {
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		select {
		case j := <-work:
			s.run(ctx, c, j.m)
			// The answer is written (or the connection failed): its
			// room and the request's payload are free again.
			bytesSem.Release(j.cost)
			if j.shared {
				s.releaseShared(c, j.cost)
			}
			reqSem.Release(1)
			c.finished()
			idle.Reset(workerIdle)
		case <-idle.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// run answers one request.
func (s *Server) run(ctx context.Context, c *Conn, m *Msg) {
	resp := s.Handler.Handle(ctx, c, m)
	if resp == nil {
		resp = ErrorResponse(m, errs.E(errs.Other, "no answer"))
	}
	resp = fitAnswer(m, resp)
	resp.Op = m.Op | RespBit
	resp.ReqID = m.ReqID
	err := c.send(resp)
	resp.releaseBuf()
	if m.Data != nil {
		PutBuf(m.Data)
	}
	if err != nil {
		c.close()
	}
}

// fitAnswer makes resp fit the room reserved for the answer to req (see
// Handler): an error message is cut short, and any other answer too large
// becomes an errs.TooLarge error, its buffer given back.
func fitAnswer(req, resp *Msg) *Msg {
	room := replyRoom(&req.Header)
	n := int64(len(resp.Data))
	if n <= room {
		return resp
	}
	if resp.Flags&FlagError != 0 {
		resp.Data = resp.Data[:room]
		return resp
	}
	resp.releaseBuf()
	return ErrorResponse(req, errs.E(errs.TooLarge, "answer of %d bytes to %v exceeds the %d bytes reserved for it", n, req.Op, room))
}

// releaseBuf gives m's pooled buffer, if any, back to the pool.
func (m *Msg) releaseBuf() {
	if m.pool != nil {
		PutBuf(m.pool)
	} else if m.pooled {
		PutBuf(m.Data)
	}
}

// sharedWait is how long a request waits for the shared budget before the
// connection that holds most of it with an answer stuck that long is
// dropped (stallAfter).
const (
	sharedWait = time.Second
	stallAfter = time.Second
)

// acquireShared takes n of the shared budget for c. While it waits, a
// connection whose answers are not being read (one stuck in a write for
// stallAfter) and that holds the most of the budget is dropped, which
// frees what it held: honest clients wait about a second for a client
// that stopped reading, not the whole WriteTimeout.
func (s *Server) acquireShared(ctx context.Context, c *Conn, n int64) error {
	budget := s.sharedBudget()
	for {
		wctx, cancel := context.WithTimeout(ctx, sharedWait)
		err := budget.Acquire(wctx, n)
		cancel()
		if err == nil {
			c.sharedHeld.Add(n)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.dropStalled(c)
	}
}

func (s *Server) releaseShared(c *Conn, n int64) {
	c.sharedHeld.Add(-n)
	s.sharedBudget().Release(n)
}

// dropStalled closes the connection (other than c) holding the most of
// the shared budget whose answer has been stuck in a write for stallAfter.
func (s *Server) dropStalled(c *Conn) {
	now := time.Now().UnixNano()
	var worst *Conn
	s.mu.Lock()
	for o := range s.conns {
		since := o.writingSince.Load()
		if o == c || since == 0 || now-since < int64(stallAfter) || o.sharedHeld.Load() == 0 {
			continue
		}
		if worst == nil || o.sharedHeld.Load() > worst.sharedHeld.Load() {
			worst = o
		}
	}
	s.mu.Unlock()
	if worst == nil {
		return
	}
	if s.OnBadFrame != nil {
		s.OnBadFrame(worst.Remote, errs.E(errs.Busy, "dropped: it holds %d bytes of answers it does not read while others wait", worst.sharedHeld.Load()))
	}
	worst.close()
}

// sharedBudget is the server-wide budget of shared connections.
func (s *Server) sharedBudget() *semaphore.Weighted {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shared == nil {
		n := s.SharedBytes
		if n <= 0 {
			n = DefaultSharedBytes
		}
		s.shared = semaphore.NewWeighted(n)
	}
	return s.shared
}

// Close stops accepting and drops every connection.
func (s *Server) Close() {
	s.mu.Lock()
	if !s.done && s.quit != nil {
		close(s.quit)
	}
	s.done = true
	lns := s.lns
	conns := make([]*Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, ln := range lns {
		ln.Close()
	}
	for _, c := range conns {
		c.close()
	}
}

func (s *Server) serveConn(c *Conn) {
	ctx, cancel := context.WithCancel(context.Background())
	defer func() {
		cancel()
		s.mu.Lock()
		delete(s.conns, c)
		if s.perIP[c.ip]--; s.perIP[c.ip] <= 0 {
			delete(s.perIP, c.ip)
		}
		s.mu.Unlock()
		c.close()
	}()
	var br *bufio.Reader
	hdr := make([]byte, HeaderSize+auxSize)
	bytesSem := semaphore.NewWeighted(MaxInflightBytes)
	reqSem := semaphore.NewWeighted(MaxInflightRequests)
	var shared *semaphore.Weighted
	if s.Shared != nil && s.Shared(c.nc) {
		shared = s.sharedBudget()
	}
	work := make(chan job)
	c.lastActive.Store(time.Now().UnixNano())
	_ = c.nc.SetReadDeadline(time.Now().Add(s.idleTimeout()))
	for {
		switch {
		case br == nil:
			// The read buffer is made when the first byte arrives:
			// a connection that never sends costs no buffers.
			first := make([]byte, 1)
			if !c.awaitFrame(func() error { _, err := io.ReadFull(c.nc, first); return err }) {
				return
			}
			br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(first), c.nc), 256<<10)
		case br.Buffered() == 0:
			if !c.awaitFrame(func() error { _, err := br.Peek(1); return err }) {
				return
			}
		}
		c.frameStarted(br)
		m := new(Msg)
		// A shared budget is taken for the payload before its buffer
		// is (once a sixteenth of it has arrived, see ReadMsg), and for
		// the answer's room below.
		var took int64
		alloc := GetBuf
		if shared != nil {
			alloc = func(n int) []byte {
				if s.acquireShared(ctx, c, int64(n)) == nil {
					took = int64(n)
				}
				return GetBuf(n)
			}
		}
		if err := ReadMsg(br, m, hdr, alloc); err != nil {
			if took > 0 {
				s.releaseShared(c, took)
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				err = errs.E(errs.IO, "frame not received within %v: %w", s.frameTimeout(), err)
			}
			if s.OnBadFrame != nil && errs.KindOf(err) != errs.Other {
				s.OnBadFrame(c.Remote, err)
			}
			return
		}
		if m.Op&RespBit != 0 {
			if s.OnBadFrame != nil {
				s.OnBadFrame(c.Remote, errs.E(errs.Invalid, "response frame %v sent as a request", m.Op))
			}
			return
		}
		cost := int64(len(m.Data)) + replyRoom(&m.Header)
		if err := reqSem.Acquire(ctx, 1); err != nil {
			return
		}
		if err := bytesSem.Acquire(ctx, cost); err != nil {
			return
		}
		if shared != nil {
			if err := s.acquireShared(ctx, c, cost-took); err != nil {
				s.releaseShared(c, took)
				return
			}
		}
		c.started()
		j := job{m: m, cost: cost, shared: shared != nil}
		// Hand the request to an idle worker, or start one. Workers
		// live on for a while, so their grown stacks are reused.
		select {
		case work <- j:
		default:
			go s.worker(ctx, c, work, bytesSem, reqSem)
			work <- j
		}
	}
}
