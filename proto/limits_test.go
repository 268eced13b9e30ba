package proto_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/proto"
)

// Tests of what a server does against peers that do not play by the rules:
// too many connections, payloads announced and withheld, answers never
// read, frames never finished. None asserts a duration: the deadlines
// below only stop a broken server from hanging the test.

// watchdog bounds how long a test waits for something the server must do.
const watchdog = 30 * time.Second

// spyConn is the server's side of a connection, watched by the test: it
// counts the bytes the server reads and writes, and tells when the server
// reads again after a frame's header (it then waits for the payload, with
// whatever it allocated for it) and when it closes the connection.
type spyConn struct {
	net.Conn
	read, written atomic.Int64
	pastHeader    chan struct{}
	closed        chan struct{}
	pastOnce      sync.Once
	closeOnce     sync.Once
}

func newSpyConn(nc net.Conn) *spyConn {
	return &spyConn{Conn: nc, pastHeader: make(chan struct{}), closed: make(chan struct{})}
}

func (c *spyConn) Read(p []byte) (int, error) {
	if c.read.Load() >= proto.HeaderSize+8 {
		c.pastOnce.Do(func() { close(c.pastHeader) })
	}
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c *spyConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

func (c *spyConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// spyListener hands out its connections as spyConns, also on conns. Its
// socket buffers are small, so that the kernel holds little of what the
// server writes to a client that does not read.
type spyListener struct {
	net.Listener
	conns chan *spyConn
}

func (l *spyListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(64 << 10)
	}
	c := newSpyConn(nc)
	l.conns <- c
	return c, nil
}

// serveSpied serves srv on a loopback spyListener until the test ends.
func serveSpied(t *testing.T, srv *proto.Server) *spyListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sl := &spyListener{Listener: ln, conns: make(chan *spyConn, 1024)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(sl)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return sl
}

// waitFor waits for ch to close, failing the test after the watchdog.
func waitFor(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(watchdog):
		t.Fatalf("%s: still waiting after %v", what, watchdog)
	}
}

// heapInuse returns the bytes of heap in use once garbage (and the buffer
// pools, which the collector empties in two cycles) is collected.
func heapInuse() int64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse)
}

func ping(ctx context.Context, c *proto.Client, id uint64) error {
	resp, err := c.Call(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpVDIRead, ID: id}})
	if err == nil && resp.Aux != id+1 {
		err = errors.New("someone else's answer")
	}
	return err
}

// failingListener fails its first Accepts with err, as a listener out of
// file descriptors does.
type failingListener struct {
	net.Listener
	fails atomic.Int32
	err   error
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, l.err
	}
	return l.Listener.Accept()
}

// TestServeSurvivesAcceptErrors: Serve goes on accepting after accept
// errors such as running out of file descriptors, and a client is then
// served; it returns only once the listener is closed.
func TestServeSurvivesAcceptErrors(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ECONNABORTED} {
		t.Run(errno.Error(), func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			fl := &failingListener{Listener: ln,
				err: &net.OpError{Op: "accept", Net: "tcp", Addr: ln.Addr(), Err: os.NewSyscallError("accept4", errno)}}
			fl.fails.Store(4)
			var mu sync.Mutex
			var reported []error
			srv := &proto.Server{Handler: echo(func(*proto.Msg) time.Duration { return 0 }),
				OnRefuse: func(remote string, err error, n int) {
					mu.Lock()
					reported = append(reported, err)
					mu.Unlock()
				}}
			served := make(chan error, 1)
			go func() { served <- srv.Serve(fl) }()

			c := proto.NewClient(ln.Addr().String())
			defer c.Close()
			called := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), watchdog)
				defer cancel()
				called <- ping(ctx, c, 7)
			}()
			select {
			case err := <-served:
				t.Fatalf("Serve returned after an accept error: %v", err)
			case err := <-called:
				if err != nil {
					t.Fatalf("call after accept errors: %v", err)
				}
			}
			mu.Lock()
			if len(reported) == 0 || !errors.Is(reported[0], errno) {
				t.Errorf("OnRefuse got %v, want the %v accept error", reported, errno)
			}
			mu.Unlock()

			srv.Close()
			if err := <-served; !errors.Is(err, net.ErrClosed) {
				t.Errorf("Serve after Close: %v, want net.ErrClosed", err)
			}
		})
	}
}

// TestWithheldPayloadPinsLittle opens connections that each send a frame
// header announcing MaxPayload bytes and never send them: the side reading
// (a server, and a client reading an answer) must not allocate the
// announced payload on the strength of the header.
func TestWithheldPayloadPinsLittle(t *testing.T) {
	const conns = 16
	// What a connection may hold: its buffers (a 256 KiB read buffer, a
	// 256 KiB write buffer on a client) and a 64 KiB staging chunk, with
	// room to spare; an 8 MiB payload each would be far over.
	const perConn = 2 << 20
	withheld := func(op proto.Op, reqID uint64) []byte {
		b := make([]byte, proto.HeaderSize+8)
		proto.PutHeader(b, &proto.Header{Op: op, ReqID: reqID, DLen: proto.MaxPayload})
		return b
	}

	t.Run("server", func(t *testing.T) {
		sl := serveSpied(t, &proto.Server{Handler: echo(func(*proto.Msg) time.Duration { return 0 })})
		before := heapInuse()
		for range conns {
			nc, err := net.Dial("tcp", sl.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			if _, err := nc.Write(withheld(proto.OpVDIWrite, 1)); err != nil {
				t.Fatal(err)
			}
		}
		for range conns {
			sc := <-sl.conns
			waitFor(t, sc.pastHeader, "server reading the payload")
		}
		if grew := heapInuse() - before; grew > conns*perConn {
			t.Errorf("heap grew by %d MiB for %d connections with withheld payloads, want at most %d MiB",
				grew>>20, conns, conns*perConn>>20)
		}
	})

	t.Run("client", func(t *testing.T) {
		// A server that answers every request with a header announcing
		// MaxPayload bytes, and nothing more.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				nc, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer nc.Close()
					var m proto.Msg
					if proto.ReadMsg(nc, &m, nil, nil) != nil {
						return
					}
					if _, err := nc.Write(withheld(m.Op|proto.RespBit, m.ReqID)); err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, nc)
				}()
			}
		}()
		spies := make(chan *spyConn, conns)
		dial := func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			nc, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				return nil, err
			}
			sc := newSpyConn(nc)
			spies <- sc
			return sc, nil
		}
		before := heapInuse()
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for range conns {
			c := proto.NewClientDial(ln.Addr().String(), dial)
			defer c.Close()
			wg.Go(func() { _ = ping(ctx, c, 1) })
		}
		for range conns {
			sc := <-spies
			waitFor(t, sc.pastHeader, "client reading the answer's payload")
		}
		grew := heapInuse() - before
		cancel()
		wg.Wait()
		if grew > conns*perConn {
			t.Errorf("heap grew by %d MiB for %d clients with withheld answers, want at most %d MiB",
				grew>>20, conns, conns*perConn>>20)
		}
	})
}

// TestUnreadAnswers has a client ask for large answers and never read
// them: the answers the server holds for it stay within MaxInflightBytes,
// and once an answer cannot be written within WriteTimeout the connection
// is dropped; the server goes on serving others.
func TestUnreadAnswers(t *testing.T) {
	tests := []struct {
		name   string
		req    proto.Header
		answer int
	}{
		{"vdi_read of 8 MiB", proto.Header{Op: proto.OpVDIRead, Length: proto.MaxPayload}, proto.MaxPayload},
		// An admin answer is sized by the server, not by the request.
		{"admin answers of 1 MiB", proto.Header{Op: proto.OpAdmin}, 1 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var built atomic.Int64
			over := make(chan int64, 1)
			srv := &proto.Server{WriteTimeout: 100 * time.Millisecond,
				Handler: proto.HandlerFunc(func(ctx context.Context, c *proto.Conn, req *proto.Msg) *proto.Msg {
					if req.ID != 0 {
						return &proto.Msg{Aux: req.ID + 1} // a ping
					}
					// Answers built and not yet written (the bytes
					// the server managed to write count as such).
					held := built.Add(int64(tt.answer)) - c.NetConn().(*spyConn).written.Load()
					if held > proto.MaxInflightBytes {
						select {
						case over <- held:
						default:
						}
					}
					m := &proto.Msg{Data: proto.GetBuf(tt.answer)}
					m.SetPooled()
					return m
				})}
			sl := serveSpied(t, srv)

			nc := sendUnread(t, sl.Addr().String(), tt.req, 64)
			defer nc.Close()
			sc := <-sl.conns
			select {
			case held := <-over:
				t.Fatalf("the server holds %d bytes of answers for a client that does not read, want at most %d",
					held, proto.MaxInflightBytes)
			case <-sc.closed:
			case <-time.After(watchdog):
				t.Fatalf("connection of a client that does not read still open after %v", watchdog)
			}

			c := proto.NewClient(sl.Addr().String())
			defer c.Close()
			if err := ping(context.Background(), c, 41); err != nil {
				t.Fatalf("another client after the dropped one: %v", err)
			}
		})
	}
}

// TestAnswerLargerThanRoom: an answer larger than the room its request
// reserved goes out as a TooLarge error, and an error message is cut short.
func TestAnswerLargerThanRoom(t *testing.T) {
	_, ln := startServer(t, "", proto.HandlerFunc(func(ctx context.Context, _ *proto.Conn, req *proto.Msg) *proto.Msg {
		if req.ID == 1 {
			return proto.ErrorResponse(req, errs.E(errs.IO, "%s", bytes.Repeat([]byte("x"), 1<<20)))
		}
		m := &proto.Msg{Data: proto.GetBuf(int(req.Length) + 1)}
		m.SetPooled()
		return m
	}))
	c := proto.NewClient(ln.Addr().String())
	defer c.Close()
	ctx := context.Background()
	if _, err := c.Call(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpVDIRead, Length: 1 << 20}}); !errs.Is(err, errs.TooLarge) {
		t.Errorf("answer of Length+1 bytes: %v, want a TooLarge error", err)
	}
	_, err := c.Call(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpVDIFlush, ID: 1}})
	if !errs.Is(err, errs.IO) || len(err.Error()) > 8<<10 {
		t.Errorf("error of 1 MiB: kind %v, %d bytes of message; want an I/O error cut short", errs.KindOf(err), len(err.Error()))
	}
}

// TestConnectionCaps: beyond MaxConnsPerIP connections from one address, or
// MaxConns in all, a connection is closed at once; those already open go
// on working, and a slot freed is taken again.
func TestConnectionCaps(t *testing.T) {
	var mu sync.Mutex
	var reports, refusedSum int
	srv := &proto.Server{Handler: echo(func(*proto.Msg) time.Duration { return 0 }),
		MaxConns: 4, MaxConnsPerIP: 2,
		OnRefuse: func(remote string, err error, n int) {
			mu.Lock()
			defer mu.Unlock()
			if !errs.Is(err, errs.TooLarge) {
				t.Errorf("refusal reported as %v, want a TooLarge error", err)
			}
			reports++
			refusedSum += n
		}}
	sl := serveSpied(t, srv)
	addr := sl.Addr().String()

	// open dials from local (an address on loopback) and sends a request:
	// it returns the connection if answered, nil if the server closed it.
	open := func(local string) (net.Conn, *spyConn) {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
		nc, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial from %s: %v", local, err)
		}
		sc := <-sl.conns
		if answered(t, nc, 1) {
			return nc, sc
		}
		nc.Close()
		return nil, sc
	}
	if nc, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).Dial("tcp", addr); err != nil {
		t.Skipf("cannot dial from 127.0.0.2 here: %v", err)
	} else {
		nc.Close()
		waitFor(t, (<-sl.conns).closed, "server closing a connection the client closed")
	}

	refused := 0
	var kept []net.Conn
	var keptSpies []*spyConn
	for _, step := range []struct {
		from string
		ok   bool
	}{
		{"127.0.0.1", true}, {"127.0.0.1", true},
		{"127.0.0.1", false}, // per-address cap
		{"127.0.0.2", true}, {"127.0.0.2", true},
		{"127.0.0.3", false}, // total cap
		{"127.0.0.2", false},
	} {
		nc, sc := open(step.from)
		switch {
		case step.ok && nc == nil:
			t.Fatalf("connection from %s refused, want it served", step.from)
		case !step.ok && nc != nil:
			t.Fatalf("connection from %s served, want it refused", step.from)
		case nc != nil:
			kept = append(kept, nc)
			keptSpies = append(keptSpies, sc)
		default:
			refused++
		}
	}
	for i, nc := range kept {
		if !answered(t, nc, uint64(10+i)) {
			t.Errorf("connection %d, open before the refusals, no longer served", i)
		}
	}
	// A freed slot is taken again, once the server has seen it go.
	kept[0].Close()
	waitFor(t, keptSpies[0].closed, "server closing a connection the client closed")
	nc, _ := open("127.0.0.1")
	if nc == nil {
		t.Fatalf("connection refused after one closed")
	}
	nc.Close()
	for _, nc := range kept[1:] {
		nc.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	if reports == 0 || refusedSum > refused {
		t.Errorf("OnRefuse: %d reports of %d refusals, want at least one and at most %d refusals", reports, refusedSum, refused)
	}
}

// answered sends a ping on a raw connection and reports whether it was
// answered (false: the server closed the connection).
func answered(t *testing.T, nc net.Conn, id uint64) bool {
	t.Helper()
	return ask(nc, id) == nil && answer(t, nc, id)
}

// ask sends a ping on a raw connection; answer reads its answer.
func ask(nc net.Conn, id uint64) error {
	_, err := nc.Write(encode(&proto.Msg{Header: proto.Header{Op: proto.OpVDIRead, ReqID: id, ID: id}}))
	return err
}

func answer(t *testing.T, nc net.Conn, id uint64) bool {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(watchdog))
	defer nc.SetReadDeadline(time.Time{})
	var m proto.Msg
	err := proto.ReadMsg(nc, &m, nil, nil)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("no answer and no close after %v", watchdog)
	}
	return err == nil && m.ReqID == id && m.Aux == id+1
}

// TestDeadlines: an idle connection is closed after IdleTimeout, unless a
// request is in flight or a handler made it KeepWhenIdle; a frame not
// finished within FrameTimeout drops its connection, reported to
// OnBadFrame; a client redials after its idle connection was closed.
func TestDeadlines(t *testing.T) {
	const timeout = 100 * time.Millisecond
	var mu sync.Mutex
	var bad []error
	release := make(chan struct{})
	srv := &proto.Server{IdleTimeout: timeout, FrameTimeout: timeout,
		OnBadFrame: func(remote string, err error) {
			mu.Lock()
			bad = append(bad, err)
			mu.Unlock()
		},
		Handler: proto.HandlerFunc(func(ctx context.Context, c *proto.Conn, req *proto.Msg) *proto.Msg {
			switch req.ID {
			case 100: // slow
				<-release
			case 200:
				c.KeepWhenIdle(true)
			}
			return &proto.Msg{Aux: req.ID + 1}
		})}
	sl := serveSpied(t, srv)
	addr := sl.Addr().String()
	dial := func() (net.Conn, *spyConn) {
		t.Helper()
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		return nc, <-sl.conns
	}
	badFrames := func() []error {
		mu.Lock()
		defer mu.Unlock()
		return append([]error(nil), bad...)
	}

	t.Run("idle", func(t *testing.T) {
		_, sc := dial()
		waitFor(t, sc.closed, "idle connection closed")
		nc, sc := dial()
		if !answered(t, nc, 1) {
			t.Fatal("no answer")
		}
		waitFor(t, sc.closed, "connection idle after an answer closed")
		if b := badFrames(); len(b) != 0 {
			t.Errorf("idle connections reported as bad frames: %v", b)
		}
	})

	half := encode(&proto.Msg{Header: proto.Header{Op: proto.OpVDIWrite, ReqID: 1}, Data: make([]byte, 1<<20)})
	for _, tt := range []struct {
		name string
		sent []byte
	}{
		{"half a header", half[:10]},
		{"payload withheld", half[:proto.HeaderSize+8+100]},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mu.Lock()
			bad = nil
			mu.Unlock()
			nc, sc := dial()
			if _, err := nc.Write(tt.sent); err != nil {
				t.Fatal(err)
			}
			waitFor(t, sc.closed, "connection with an unfinished frame closed")
			if b := badFrames(); len(b) != 1 || !errs.Is(b[0], errs.IO) {
				t.Errorf("OnBadFrame got %v, want one I/O error", b)
			}
		})
	}

	// The next two wait several idle timeouts to see that a connection
	// stays: a server that closed it would fail them.
	t.Run("request in flight", func(t *testing.T) {
		nc, _ := dial()
		if err := ask(nc, 100); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * timeout)
		close(release)
		if !answer(t, nc, 100) {
			t.Fatal("connection closed while a request was in flight")
		}
	})

	t.Run("KeepWhenIdle", func(t *testing.T) {
		nc, _ := dial()
		if !answered(t, nc, 200) {
			t.Fatal("no answer")
		}
		time.Sleep(5 * timeout)
		if !answered(t, nc, 1) {
			t.Fatal("connection kept when idle was closed")
		}
	})

	t.Run("client redials", func(t *testing.T) {
		c := proto.NewClient(addr)
		defer c.Close()
		if err := ping(context.Background(), c, 1); err != nil {
			t.Fatal(err)
		}
		waitFor(t, (<-sl.conns).closed, "idle client connection closed")
		// The client learns of the close when its reader sees it; a
		// call racing with that fails as a transport error, which
		// callers retry.
		err := ping(context.Background(), c, 2)
		if err != nil && proto.IsTransport(err) {
			err = ping(context.Background(), c, 3)
		}
		if err != nil {
			t.Fatalf("call after the idle connection was closed: %v", err)
		}
	})
}

// TestSharedBudget: connections that share the server-wide budget and do
// not read their answers hold at most that budget in all (measured as
// answers built and not written), and an honest client on another
// connection is served meanwhile, because the worst non-reader is
// dropped once it stalls others; connections outside the budget are not
// held back by it.
func TestSharedBudget(t *testing.T) {
	const budget = 24 << 20
	var built atomic.Int64
	srv := &proto.Server{SharedBytes: budget, Shared: func(net.Conn) bool { return true },
		Handler: proto.HandlerFunc(func(ctx context.Context, c *proto.Conn, req *proto.Msg) *proto.Msg {
			if req.ID != 0 {
				return &proto.Msg{Aux: req.ID + 1} // a ping
			}
			built.Add(int64(req.Length))
			m := &proto.Msg{Data: proto.GetBuf(int(req.Length))}
			m.SetPooled()
			return m
		})}
	sl := serveSpied(t, srv)
	var stuck []net.Conn
	for range 6 {
		nc := sendUnread(t, sl.Addr().String(), proto.Header{Op: proto.OpVDIRead, Length: proto.MaxPayload}, 4)
		defer nc.Close()
		stuck = append(stuck, nc)
	}
	time.Sleep(500 * time.Millisecond)
	if b := built.Load(); b > budget+proto.MaxPayload {
		t.Errorf("%d bytes of answers built for connections that do not read, with a shared budget of %d", b, budget)
	}
	c := proto.NewClient(sl.Addr().String())
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := ping(ctx, c, 7); err != nil {
		t.Fatalf("an honest client while others do not read: %v", err)
	}
	t.Logf("an honest client answered in %v while 6 connections held the budget", time.Since(start).Round(time.Millisecond))
	dropped := 0
	for _, nc := range stuck {
		nc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := io.Copy(io.Discard, nc); err == nil {
			dropped++ // EOF: the server closed it
		}
	}
	if dropped == 0 {
		t.Errorf("no connection that does not read was dropped")
	}
}

// sendUnread connects to addr with a small receive buffer and sends n
// requests like h (request IDs 1..n), whose answers it never reads.
func sendUnread(t *testing.T, addr string, h proto.Header, n int) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = nc.(*net.TCPConn).SetReadBuffer(64 << 10)
	var reqs []byte
	for i := range n {
		h.ReqID = uint64(i + 1)
		reqs = append(reqs, encode(&proto.Msg{Header: h})...)
	}
	if _, err := nc.Write(reqs); err != nil {
		nc.Close()
		t.Fatal(err)
	}
	return nc
}
