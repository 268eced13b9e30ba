package proto

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
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
	// MaxInflightBytes is the payload bytes of requests in flight on one
	// connection.
	MaxInflightBytes = 32 << 20
	// MaxInflightRequests is the number of requests in flight on one
	// connection.
	MaxInflightRequests = 256
)

// Handler answers requests. It must not keep req.Data after returning, and
// must return a response (use ErrorResponse for failures); Op and ReqID
// are filled in by the server. A response whose Data came from GetBuf may
// be marked with SetPooled, and the buffer is returned once sent.
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

	nc      net.Conn
	wmu     sync.Mutex
	bw      *bufio.Writer
	waiting atomic.Int32
	hdr     []byte

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
	c.waiting.Add(1)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.waiting.Add(-1)
	m.DLen = uint32(len(m.Data))
	PutHeader(c.hdr, &m.Header)
	putAux(c.hdr, m.Aux)
	if err := writeFrame(c.bw, c.nc, c.hdr, m.Data); err != nil {
		return err
	}
	if c.waiting.Load() == 0 {
		return c.bw.Flush()
	}
	return nil
}

func putAux(hdr []byte, aux uint64) { binary.BigEndian.PutUint64(hdr[HeaderSize:], aux) }

// Server accepts connections and runs a Handler for each request, many at a
// time per connection.
type Server struct {
	Handler Handler
	// OnBadFrame, if set, is told about connections dropped for a malformed
	// frame (for logging).
	OnBadFrame func(remote string, err error)

	nextID atomic.Uint64
	mu     sync.Mutex
	conns  map[*Conn]struct{}
	lns    []net.Listener
	done   bool
}

// Serve accepts connections on ln until it is closed or Close is called.
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
	}
	s.mu.Unlock()
	for {
		nc, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		if tc, ok := nc.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
		c := &Conn{ID: s.nextID.Add(1), Remote: nc.RemoteAddr().String(), nc: nc,
			bw: bufio.NewWriterSize(nc, 256<<10), hdr: make([]byte, HeaderSize+auxSize)}
		s.mu.Lock()
		if s.done {
			s.mu.Unlock()
			nc.Close()
			continue
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

// workerIdle is how long a request worker waits for more work before it
// exits.
const workerIdle = 5 * time.Second

// worker runs requests of one connection until it has been idle for
// workerIdle or the connection ends.
func (s *Server) worker(ctx context.Context, c *Conn, work <-chan *Msg, bytesSem, reqSem *semaphore.Weighted) {
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		select {
		case m := <-work:
			s.run(ctx, c, m)
			bytesSem.Release(int64(len(m.Data)) + int64(m.Length))
			reqSem.Release(1)
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
	resp.Op = m.Op | RespBit
	resp.ReqID = m.ReqID
	err := c.send(resp)
	if resp.pool != nil {
		PutBuf(resp.pool)
	} else if resp.pooled {
		PutBuf(resp.Data)
	}
	if m.Data != nil {
		PutBuf(m.Data)
	}
	if err != nil {
		c.close()
	}
}

// Close stops accepting and drops every connection.
func (s *Server) Close() {
	s.mu.Lock()
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
		s.mu.Unlock()
		c.close()
	}()
	br := bufio.NewReaderSize(c.nc, 256<<10)
	hdr := make([]byte, HeaderSize+auxSize)
	bytesSem := semaphore.NewWeighted(MaxInflightBytes)
	reqSem := semaphore.NewWeighted(MaxInflightRequests)
	work := make(chan *Msg)
	for {
		m := new(Msg)
		if err := ReadMsg(br, m, hdr, GetBuf); err != nil {
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
		w := int64(len(m.Data)) + int64(m.Length)
		if err := reqSem.Acquire(ctx, 1); err != nil {
			return
		}
		if err := bytesSem.Acquire(ctx, w); err != nil {
			return
		}
		// Hand the request to an idle worker, or start one. Workers
		// live on for a while, so their grown stacks are reused.
		select {
		case work <- m:
		default:
			go s.worker(ctx, c, work, bytesSem, reqSem)
			work <- m
		}
	}
}
