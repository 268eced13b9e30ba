package proto

import (
	"bufio"
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/sheepfs/sheepfs/errs"
)

// DialTimeout bounds how long a Client waits for a TCP connection.
const DialTimeout = 3 * time.Second

// Client sends requests to one address over one TCP connection, many at a
// time; answers are matched by request ID. It dials lazily and redials after
// the connection breaks: requests in flight when it breaks fail with
// errs.IO, and the next Call dials again. Callers decide whether to retry.
// Safe for concurrent use.
type Client struct {
	addr string
	dial DialFunc

	mu   sync.Mutex
	conn *clientConn
	// once: the client dials one connection only; once it is dead,
	// calls fail with a transport error instead of dialing again (see
	// NewClientOnce).
	once, dialed bool
}

// NewClientOnce is NewClientDial for a client that uses one connection
// only: after it breaks (or Close), every call fails with a transport
// error. For callers that keep state per connection (the write locks a
// gateway ties to the connection they were taken through), which a
// silent redial would lose.
func NewClientOnce(addr string, dial DialFunc) *Client {
	return &Client{addr: addr, dial: dial, once: true}
}

// DialFunc connects to addr: over TLS with the cluster's key (see package
// auth), or plain TCP when nil.
type DialFunc func(ctx context.Context, addr string) (net.Conn, error)

// NewClient returns a client for addr (host:port) over plain TCP. It does
// not dial yet.
func NewClient(addr string) *Client { return &Client{addr: addr} }

// NewClientDial returns a client for addr that connects with dial (nil:
// plain TCP).
func NewClientDial(addr string, dial DialFunc) *Client { return &Client{addr: addr, dial: dial} }

// Addr returns the address the client talks to.
func (c *Client) Addr() string { return c.addr }

// waiter is a call waiting for its answer; dst, if set, receives the
// answer's payload when it fits.
type waiter struct {
	ch        chan *Msg
	dst       []byte
	receiving bool // the payload is being read into dst
}

type clientConn struct {
	nc  net.Conn
	wmu sendLock
	bw  *bufio.Writer
	hdr []byte

	pmu     sync.Mutex
	pending map[uint64]*waiter
	nextID  uint64
	err     error // set once the connection is dead
}

func (c *Client) get(ctx context.Context) (*clientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		c.conn.pmu.Lock()
		dead := c.conn.err != nil
		c.conn.pmu.Unlock()
		if !dead {
			return c.conn, nil
		}
		c.conn = nil
	}
	if c.once && c.dialed {
		return nil, errs.E(errs.IO, "connection to %s: %w", c.addr, transportError{errors.New("closed; not dialing again")})
	}
	c.dialed = true
	nc, err := c.connect(ctx)
	if err != nil {
		if errs.Is(err, errs.Denied) {
			// The other side is not of this cluster (or this side has
			// the wrong key): retrying will not help.
			return nil, errs.E(errs.Denied, "connect to %s: %w", c.addr, err)
		}
		return nil, errs.E(errs.IO, "dial %s: %w", c.addr, transportError{err})
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	cc := &clientConn{nc: nc, bw: bufio.NewWriterSize(nc, 256<<10),
		pending: make(map[uint64]*waiter), hdr: make([]byte, HeaderSize+auxSize)}
	go cc.readLoop(c.addr)
	c.conn = cc
	return cc, nil
}

func (cc *clientConn) readLoop(addr string) {
	br := bufio.NewReaderSize(cc.nc, 256<<10)
	hdr := make([]byte, HeaderSize+auxSize)
	var m *Msg
	alloc := func(n int) []byte {
		cc.pmu.Lock()
		defer cc.pmu.Unlock()
		if w := cc.pending[m.ReqID]; w != nil && m.Flags&FlagError == 0 && cap(w.dst) >= n {
			w.receiving = true
			return w.dst[:n]
		}
		return make([]byte, n)
	}
	for {
		m = new(Msg)
		if err := ReadMsg(br, m, hdr, alloc); err != nil {
			cc.fail(errs.E(errs.IO, "connection to %s lost: %w", addr, transportError{err}))
			return
		}
		cc.pmu.Lock()
		w, ok := cc.pending[m.ReqID]
		delete(cc.pending, m.ReqID)
		cc.pmu.Unlock()
		if ok {
			w.ch <- m
		}
	}
}

func (cc *clientConn) fail(err error) {
	cc.pmu.Lock()
	if cc.err == nil {
		cc.err = err
	}
	for id, w := range cc.pending {
		delete(cc.pending, id)
		close(w.ch)
	}
	cc.pmu.Unlock()
	cc.nc.Close()
}

// Call sends req and waits for its answer or for ctx to end. It sets
// req.ReqID. A response that carries an error is returned as that error
// (with its kind); transport failures are errs.IO.
func (c *Client) Call(ctx context.Context, req *Msg) (*Msg, error) {
	return c.CallInto(ctx, req, nil)
}

// CallInto is Call, with the answer's payload read straight into dst when
// it fits (the answer's Data then aliases dst). dst is never written to
// after CallInto returns: if ctx ends while the answer's payload is already
// arriving, CallInto waits for that payload (or the connection's failure)
// before it returns, since the caller may reuse dst at once.
func (c *Client) CallInto(ctx context.Context, req *Msg, dst []byte) (*Msg, error) {
	p, err := c.StartInto(ctx, req, dst)
	if err != nil {
		return nil, err
	}
	return p.Wait(ctx)
}

// Pending is a call sent and not yet answered (see Start).
type Pending struct {
	c   *Client
	cc  *clientConn
	ch  chan *Msg
	req *Msg
}

// Start sends req and returns at once; Wait then waits for the answer. It
// lets a caller send several requests, do its own work, and only then
// wait, without a goroutine per request. req.Data may be reused once Start
// returns. Every Pending must be waited for.
func (c *Client) Start(ctx context.Context, req *Msg) (*Pending, error) {
	return c.StartInto(ctx, req, nil)
}

// StartInto is Start, with the answer's payload read into dst as CallInto
// does.
func (c *Client) StartInto(ctx context.Context, req *Msg, dst []byte) (*Pending, error) {
	cc, err := c.get(ctx)
	if err != nil {
		return nil, err
	}
	ch := make(chan *Msg, 1)
	cc.pmu.Lock()
	if cc.err != nil {
		err := cc.err
		cc.pmu.Unlock()
		return nil, err
	}
	cc.nextID++
	req.ReqID = cc.nextID
	cc.pending[req.ReqID] = &waiter{ch: ch, dst: dst}
	busy := len(cc.pending) > 1
	cc.pmu.Unlock()

	cc.wmu.lock()
	req.DLen = uint32(len(req.Data))
	PutHeader(cc.hdr, &req.Header)
	putAux(cc.hdr, req.Aux)
	if err = writeFrame(cc.bw, cc.nc, cc.hdr, req.Data); err != nil {
		cc.wmu.unlockNow()
	} else {
		err = cc.wmu.unlock(cc.bw.Flush, busy)
	}
	if err != nil {
		cc.fail(errs.E(errs.IO, "send to %s: %w", c.addr, transportError{err}))
	}
	return &Pending{c: c, cc: cc, ch: ch, req: req}, nil
}

// Wait waits for the answer of a started call, or for ctx to end. A
// response that carries an error is returned as that error (with its
// kind); transport failures are errs.IO.
func (p *Pending) Wait(ctx context.Context) (*Msg, error) {
	cc := p.cc
	select {
	case m, ok := <-p.ch:
		if !ok {
			cc.pmu.Lock()
			err := cc.err
			cc.pmu.Unlock()
			return nil, err
		}
		if err := m.Err(); err != nil {
			return nil, err
		}
		return m, nil
	case <-ctx.Done():
		cc.pmu.Lock()
		if w := cc.pending[p.req.ReqID]; w != nil && w.receiving {
			// The answer is being read into dst: let it finish (or
			// the connection fail) before dst is given back.
			cc.pmu.Unlock()
			<-p.ch
		} else {
			delete(cc.pending, p.req.ReqID)
			cc.pmu.Unlock()
		}
		return nil, errs.E(errs.IO, "%v to %s: %w", p.req.Op, p.c.addr, ctx.Err())
	}
}

// Close drops the connection; in-flight calls fail. The client may be used
// again (it redials), unless made by NewClientOnce.
func (c *Client) Close() {
	c.mu.Lock()
	cc := c.conn
	c.conn = nil
	c.dialed = true
	c.mu.Unlock()
	if cc != nil {
		cc.fail(errs.E(errs.Closed, "%w", transportError{errors.New("client closed")}))
	}
}

// transportError marks a failure of the connection itself (dial, send,
// receive), as opposed to an error the other side answered with.
type transportError struct{ err error }

func (e transportError) Error() string { return e.err.Error() }
func (e transportError) Unwrap() error { return e.err }

// IsTransport reports whether err is a failure of the connection (the
// request may not have reached the other side, or its answer was lost)
// rather than an answer. Such requests may be retried elsewhere.
func IsTransport(err error) bool {
	var t transportError
	return errors.As(err, &t)
}

// Pool keeps one Client per address. Safe for concurrent use.
type Pool struct {
	// Dial connects the pool's clients (nil: plain TCP). Set it before
	// the first Get.
	Dial DialFunc

	mu      sync.Mutex
	clients map[string]*Client
}

// Get returns the client for addr, creating it on first use.
func (p *Pool) Get(addr string) *Client {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.clients == nil {
		p.clients = make(map[string]*Client)
	}
	c := p.clients[addr]
	if c == nil {
		c = NewClientDial(addr, p.Dial)
		p.clients[addr] = c
	}
	return c
}

// Close closes every client.
func (p *Pool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.clients {
		c.Close()
	}
	p.clients = nil
}

// connect opens the connection: with the client's dial function, or plain
// TCP within DialTimeout.
func (c *Client) connect(ctx context.Context) (net.Conn, error) {
	if c.dial != nil {
		ctx, cancel := context.WithTimeout(ctx, DialTimeout)
		defer cancel()
		return c.dial(ctx, c.addr)
	}
	d := net.Dialer{Timeout: DialTimeout}
	return d.DialContext(ctx, "tcp", c.addr)
}
