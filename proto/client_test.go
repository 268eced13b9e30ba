package proto_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/proto"
)

// testSeed returns the seed for a randomised test and logs it so a failure
// can be replayed with -seed=N or PROTO_SEED=N.
func testSeed(t *testing.T) uint64 {
	t.Helper()
	seed := *seedFlag
	if seed == 0 {
		if s := os.Getenv("PROTO_SEED"); s != "" {
			v, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				t.Fatalf("PROTO_SEED=%q: %v", s, err)
			}
			seed = v
		}
	}
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay with -seed=%d or PROTO_SEED=%d)", seed, seed, seed)
	return seed
}

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	n atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// startServer serves h on a loopback listener (on addr, or a free port if
// addr is empty) until the test ends.
func startServer(t *testing.T, addr string, h proto.Handler) (*proto.Server, *countingListener) {
	t.Helper()
	return startServerWith(t, addr, &proto.Server{Handler: h})
}

// startServerWith serves with srv, which must be fully set up: its fields
// are read by the connections' goroutines.
func startServerWith(t *testing.T, addr string, srv *proto.Server) (*proto.Server, *countingListener) {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(cl)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return srv, cl
}

// echo answers with Aux = ID+1 and the request's payload reversed, after
// waiting for delay(req).
func echo(delay func(*proto.Msg) time.Duration) proto.HandlerFunc {
	return func(ctx context.Context, _ *proto.Conn, req *proto.Msg) *proto.Msg {
		if d := delay(req); d > 0 {
			time.Sleep(d)
		}
		out := make([]byte, len(req.Data))
		for i, b := range req.Data {
			out[len(out)-1-i] = b
		}
		return &proto.Msg{Header: proto.Header{Offset: req.Offset}, Aux: req.ID + 1, Data: out}
	}
}

func reversed(b []byte) []byte {
	out := make([]byte, len(b))
	for i := range b {
		out[len(b)-1-i] = b[i]
	}
	return out
}

// TestClientConcurrentCalls runs many calls at once over one connection;
// the handler answers after random short delays, so answers come back out
// of order, and each caller must get its own.
func TestClientConcurrentCalls(t *testing.T) {
	seed := testSeed(t)
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(seed, 0))
	_, ln := startServer(t, "", echo(func(*proto.Msg) time.Duration {
		mu.Lock()
		defer mu.Unlock()
		return time.Duration(rng.IntN(2000)) * time.Microsecond
	}))
	c := proto.NewClient(ln.Addr().String())
	defer c.Close()

	const workers, calls = 32, 40
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range calls {
				id := uint64(w*calls + i)
				data := make([]byte, 8+int(id%97)*37)
				binary.BigEndian.PutUint64(data, id)
				for j := 8; j < len(data); j++ {
					data[j] = byte(id + uint64(j))
				}
				req := &proto.Msg{Header: proto.Header{Op: proto.OpVDIWrite, ID: id, Offset: id * 512}, Data: data}
				resp, err := c.Call(context.Background(), req)
				if err != nil {
					errc <- fmt.Errorf("call %d: %v", id, err)
					return
				}
				if resp.Op != proto.OpVDIWrite|proto.RespBit || resp.ReqID != req.ReqID || resp.Aux != id+1 ||
					resp.Offset != id*512 || !bytes.Equal(resp.Data, reversed(data)) {
					errc <- fmt.Errorf("call %d got someone else's answer: op %v reqid %d/%d aux %d offset %d",
						id, resp.Op, resp.ReqID, req.ReqID, resp.Aux, resp.Offset)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if n := ln.n.Load(); n != 1 {
		t.Errorf("client made %d connections, want 1", n)
	}
}

// TestClientAnswersOutOfOrder holds n requests in the handler until all
// have arrived, then answers them in the reverse order of arrival.
func TestClientAnswersOutOfOrder(t *testing.T) {
	const n = 64
	arrived := make(chan uint64, n)
	release := make([]chan struct{}, n)
	for i := range release {
		release[i] = make(chan struct{})
	}
	answered := make(chan uint64, n)
	_, ln := startServer(t, "", proto.HandlerFunc(func(ctx context.Context, _ *proto.Conn, req *proto.Msg) *proto.Msg {
		arrived <- req.ID
		select {
		case <-release[req.ID]:
		case <-ctx.Done():
		}
		answered <- req.ID
		return &proto.Msg{Aux: req.ID * 10}
	}))
	c := proto.NewClient(ln.Addr().String())
	defer c.Close()

	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := c.Call(context.Background(), &proto.Msg{Header: proto.Header{Op: proto.OpStatObj, ID: uint64(i)}})
			if err != nil {
				t.Errorf("call %d: %v", i, err)
				return
			}
			if resp.Aux != uint64(i)*10 {
				t.Errorf("call %d: Aux %d, want %d", i, resp.Aux, i*10)
			}
		}()
	}
	order := make([]uint64, 0, n)
	for range n {
		order = append(order, <-arrived)
	}
	for i := n - 1; i >= 0; i-- {
		close(release[order[i]])
		<-answered // one at a time, so the answers go out in this order
	}
	wg.Wait()
}

// TestClientErrorKinds checks that a failed request comes back as an error
// of the kind the handler gave, with its message.
func TestClientErrorKinds(t *testing.T) {
	_, ln := startServer(t, "", proto.HandlerFunc(func(ctx context.Context, _ *proto.Conn, req *proto.Msg) *proto.Msg {
		if req.ID == 0xffff {
			return nil // the server answers for a handler that does not
		}
		return proto.ErrorResponse(req, errs.E(errs.Kind(req.ID), "failure number %d", req.ID))
	}))
	c := proto.NewClient(ln.Addr().String())
	defer c.Close()
	for k := errs.Other; k <= errs.Closed; k++ {
		t.Run(k.String(), func(t *testing.T) {
			resp, err := c.Call(context.Background(), &proto.Msg{Header: proto.Header{Op: proto.OpAdmin, ID: uint64(k)}})
			if err == nil {
				t.Fatalf("Call = %+v, nil; want a %v error", resp, k)
			}
			if got := errs.KindOf(err); got != k {
				t.Errorf("error %q has kind %v, want %v", err, got, k)
			}
			if want := fmt.Sprintf("failure number %d", k); !bytes.Contains([]byte(err.Error()), []byte(want)) {
				t.Errorf("error %q lost the message %q", err, want)
			}
		})
	}
	_, err := c.Call(context.Background(), &proto.Msg{Header: proto.Header{Op: proto.OpAdmin, ID: 0xffff}})
	if err == nil || errs.KindOf(err) != errs.Other {
		t.Errorf("nil answer from the handler: %v, want an unclassified error", err)
	}
}

// TestServerDropsBadConnection sends malformed frames on raw connections:
// the server drops each of them and goes on serving a good client on its
// own connection.
func TestServerDropsBadConnection(t *testing.T) {
	var mu sync.Mutex
	var bad []error
	_, ln := startServerWith(t, "", &proto.Server{
		Handler: echo(func(*proto.Msg) time.Duration { return 0 }),
		OnBadFrame: func(remote string, err error) {
			mu.Lock()
			bad = append(bad, err)
			mu.Unlock()
		},
	})
	addr := ln.Addr().String()
	good := proto.NewClient(addr)
	defer good.Close()
	call := func() {
		t.Helper()
		resp, err := good.Call(context.Background(), &proto.Msg{Header: proto.Header{Op: proto.OpVDIRead, ID: 7}, Data: []byte("abc")})
		if err != nil || resp.Aux != 8 || string(resp.Data) != "cba" {
			t.Fatalf("good client: %+v, %v", resp, err)
		}
	}
	call()

	valid := encode(&proto.Msg{Header: proto.Header{Op: proto.OpVDIRead, ID: 1}})
	tooBig := bytes.Clone(valid)
	binary.BigEndian.PutUint32(tooBig[44:], proto.MaxPayload+1)
	resp := encode(&proto.Msg{Header: proto.Header{Op: proto.OpVDIRead | proto.RespBit, ID: 1}})
	tests := []struct {
		name string
		in   []byte
		kind errs.Kind
	}{
		{"garbage", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n" + string(make([]byte, 64))), errs.Invalid},
		{"too large", tooBig, errs.TooLarge},
		{"response as request", resp, errs.Invalid},
		{"valid then garbage", append(bytes.Clone(valid), bytes.Repeat([]byte{0xee}, 56)...), errs.Invalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mu.Lock()
			bad = nil
			mu.Unlock()
			nc, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			if _, err := nc.Write(tt.in); err != nil {
				t.Fatal(err)
			}
			// The server closes the connection: reading ends (after
			// any answers to valid frames that preceded the garbage).
			if err := nc.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
				t.Fatal(err)
			}
			// A reset (unread garbage at close) counts as closed too.
			if _, err := io.Copy(io.Discard, nc); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Fatalf("server did not close the bad connection: %v", err)
				}
			}
			call()
			mu.Lock()
			defer mu.Unlock()
			if len(bad) != 1 || !errs.Is(bad[0], tt.kind) {
				t.Errorf("OnBadFrame got %v, want one %v error", bad, tt.kind)
			}
		})
	}
	if n := ln.n.Load(); n != 1+int32(len(tests)) {
		t.Errorf("%d connections accepted, want %d (the good client must keep its own)", n, 1+len(tests))
	}
}

// TestClientServerGoesAway closes the server while calls are in flight:
// they fail with errs.IO; a new server on the same address is dialled
// again by the same client.
func TestClientServerGoesAway(t *testing.T) {
	const n = 16
	arrived := make(chan struct{}, n)
	block := proto.HandlerFunc(func(ctx context.Context, _ *proto.Conn, req *proto.Msg) *proto.Msg {
		arrived <- struct{}{}
		<-ctx.Done() // until the connection goes
		return &proto.Msg{}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	srv := &proto.Server{Handler: block}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()

	c := proto.NewClient(addr)
	defer c.Close()
	errc := make(chan error, n)
	for i := range n {
		go func() {
			_, err := c.Call(context.Background(), &proto.Msg{Header: proto.Header{Op: proto.OpVDIFlush, ID: uint64(i)}})
			errc <- err
		}()
	}
	for range n {
		<-arrived
	}
	srv.Close()
	<-served
	for range n {
		err := <-errc
		if !errs.Is(err, errs.IO) {
			t.Errorf("in-flight call: %v (kind %v), want an I/O error", err, errs.KindOf(err))
		}
	}

	// Nobody listens: the call fails with errs.IO too.
	if _, err := c.Call(context.Background(), &proto.Msg{Header: proto.Header{Op: proto.OpVDIFlush}}); !errs.Is(err, errs.IO) {
		t.Errorf("call with no server: %v, want an I/O error", err)
	}

	_, ln2 := startServer(t, addr, echo(func(*proto.Msg) time.Duration { return 0 }))
	resp, err := c.Call(context.Background(), &proto.Msg{Header: proto.Header{Op: proto.OpVDIRead, ID: 41}})
	if err != nil || resp.Aux != 42 {
		t.Fatalf("call after the server came back: %+v, %v", resp, err)
	}
	if n := ln2.n.Load(); n != 1 {
		t.Errorf("new server accepted %d connections, want 1", n)
	}
}

// TestClientContextAndClose checks that a cancelled call fails with errs.IO
// without breaking the connection, and that Close fails in-flight calls
// with errs.Closed and leaves the client usable.
func TestClientContextAndClose(t *testing.T) {
	arrived := make(chan struct{}, 1)
	_, ln := startServer(t, "", proto.HandlerFunc(func(ctx context.Context, _ *proto.Conn, req *proto.Msg) *proto.Msg {
		if req.ID == 1 {
			arrived <- struct{}{}
			<-ctx.Done()
		}
		return &proto.Msg{Aux: req.ID}
	}))
	c := proto.NewClient(ln.Addr().String())
	defer c.Close()

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := c.Call(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpVDIRead, ID: 1}})
		errc <- err
	}()
	<-arrived
	cancel()
	if err := <-errc; !errs.Is(err, errs.IO) {
		t.Errorf("cancelled call: %v, want an I/O error", err)
	}
	if resp, err := c.Call(context.Background(), &proto.Msg{Header: proto.Header{Op: proto.OpVDIRead, ID: 2}}); err != nil || resp.Aux != 2 {
		t.Fatalf("call after a cancelled one: %+v, %v", resp, err)
	}

	go func() {
		_, err := c.Call(context.Background(), &proto.Msg{Header: proto.Header{Op: proto.OpVDIRead, ID: 1}})
		errc <- err
	}()
	<-arrived
	c.Close()
	if err := <-errc; !errs.Is(err, errs.Closed) {
		t.Errorf("call in flight at Close: %v, want a closed error", err)
	}
	if resp, err := c.Call(context.Background(), &proto.Msg{Header: proto.Header{Op: proto.OpVDIRead, ID: 3}}); err != nil || resp.Aux != 3 {
		t.Fatalf("call after Close: %+v, %v", resp, err)
	}
	if n := ln.n.Load(); n != 2 {
		t.Errorf("%d connections, want 2 (one before Close, one after)", n)
	}
}

// TestCallInto checks that an answer's payload lands in dst when it fits,
// and in a buffer of its own when it does not or when the answer is an
// error.
func TestCallInto(t *testing.T) {
	_, ln := startServer(t, "", proto.HandlerFunc(func(ctx context.Context, _ *proto.Conn, req *proto.Msg) *proto.Msg {
		if req.ID == 0 {
			return proto.ErrorResponse(req, errs.E(errs.NotFound, "object %d", req.ID))
		}
		return &proto.Msg{Data: bytes.Repeat([]byte{byte(req.ID)}, int(req.Length))}
	}))
	c := proto.NewClient(ln.Addr().String())
	defer c.Close()
	ctx := context.Background()

	dst := make([]byte, 100, 8192)
	resp, err := c.CallInto(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpReadObj, ID: 1, Length: 4096}}, dst)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Data) != 4096 || &resp.Data[0] != &dst[:1][0] || !bytes.Equal(resp.Data, bytes.Repeat([]byte{1}, 4096)) {
		t.Errorf("answer of 4096 bytes not read into dst (len %d)", len(resp.Data))
	}

	small := make([]byte, 10)
	resp, err = c.CallInto(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpReadObj, ID: 2, Length: 11}}, small)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(resp.Data, bytes.Repeat([]byte{2}, 11)) || !bytes.Equal(small, make([]byte, 10)) {
		t.Errorf("answer larger than dst: %x, dst %x", resp.Data, small)
	}

	big := make([]byte, 4096)
	if _, err := c.CallInto(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpReadObj, ID: 0}}, big); !errs.Is(err, errs.NotFound) {
		t.Errorf("error answer: %v", err)
	}
	if !bytes.Equal(big, make([]byte, 4096)) {
		t.Errorf("an error message was written into dst")
	}
}

// TestServerPooledAnswers has the handler answer from GetBuf buffers marked
// SetPooled, many at a time: every caller must get its own bytes (a buffer
// must not go back to the pool before it is sent).
func TestServerPooledAnswers(t *testing.T) {
	ramp := make([]byte, 2<<20+256) // answer for ID i: ramp[i%256:][:Length]
	for i := range ramp {
		ramp[i] = byte(i)
	}
	_, ln := startServer(t, "", proto.HandlerFunc(func(ctx context.Context, _ *proto.Conn, req *proto.Msg) *proto.Msg {
		b := proto.GetBuf(int(req.Length))
		copy(b, ramp[req.ID%256:])
		m := &proto.Msg{Data: b}
		m.SetPooled()
		return m
	}))
	c := proto.NewClient(ln.Addr().String())
	defer c.Close()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 16 {
				id := uint64(w*100 + i)
				n := []uint32{10, 70 << 10, 1 << 20, 1<<20 + 1}[i%4]
				resp, err := c.Call(context.Background(), &proto.Msg{Header: proto.Header{Op: proto.OpReadObj, ID: id, Length: n}})
				if err != nil {
					t.Errorf("call %d: %v", id, err)
					return
				}
				if !bytes.Equal(resp.Data, ramp[id%256:][:n]) {
					t.Errorf("call %d: answer of %d bytes is not its own", id, len(resp.Data))
				}
			}
		}()
	}
	wg.Wait()
}

// TestTransportErrors: an error the server answered with is not a transport
// failure (a client must not retry it elsewhere); a refused dial, a lost
// connection and a closed client are.
func TestTransportErrors(t *testing.T) {
	_, ln := startServer(t, "", proto.HandlerFunc(func(ctx context.Context, c *proto.Conn, req *proto.Msg) *proto.Msg {
		if req.ID == 1 {
			<-ctx.Done() // never answers; the connection dies first
		}
		return proto.ErrorResponse(req, errs.E(errs.IO, "disk on fire"))
	}))
	c := proto.NewClient(ln.Addr().String())
	defer c.Close()
	ctx := context.Background()
	_, err := c.Call(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpReadObj}})
	if !errs.Is(err, errs.IO) || proto.IsTransport(err) {
		t.Fatalf("answered I/O error: %v (transport %v), want an I/O error that is not a transport failure", err, proto.IsTransport(err))
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Call(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpReadObj, ID: 1}})
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	c.Close()
	if err := <-errc; !proto.IsTransport(err) {
		t.Fatalf("call in flight when the client closed: %v, want a transport failure", err)
	}
	dead := proto.NewClient("127.0.0.1:1")
	if _, err := dead.Call(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpReadObj}}); !proto.IsTransport(err) || !errs.Is(err, errs.IO) {
		t.Fatalf("refused dial: %v, want a transport I/O failure", err)
	}
}

// TestClientOnceDoesNotRedial: a client made by NewClientOnce uses its one
// connection; after it breaks, calls fail with a transport error and the
// server sees no second connection (whoever holds state per connection
// must make a new client, and take that state again).
func TestClientOnceDoesNotRedial(t *testing.T) {
	answer := echo(func(*proto.Msg) time.Duration { return 0 })
	_, ln := startServer(t, "", proto.HandlerFunc(func(ctx context.Context, c *proto.Conn, req *proto.Msg) *proto.Msg {
		if req.ID == 2 {
			c.NetConn().Close() // the connection breaks
		}
		return answer(ctx, c, req)
	}))
	c := proto.NewClientOnce(ln.Addr().String(), nil)
	defer c.Close()
	if _, err := c.Call(context.Background(), &proto.Msg{Header: proto.Header{Op: proto.OpVDIRead, ID: 1}}); err != nil {
		t.Fatal(err)
	}
	_, err := c.Call(context.Background(), &proto.Msg{Header: proto.Header{Op: proto.OpVDIRead, ID: 2}})
	if err == nil || !proto.IsTransport(err) {
		t.Fatalf("call after the connection broke: %v, want a transport error", err)
	}
	if _, err := c.Call(context.Background(), &proto.Msg{Header: proto.Header{Op: proto.OpVDIRead, ID: 3}}); !proto.IsTransport(err) {
		t.Fatalf("a later call: %v, want a transport error", err)
	}
	if n := ln.n.Load(); n != 1 {
		t.Fatalf("the server accepted %d connections, want 1", n)
	}
}

func TestNodeBoots(t *testing.T) {
	in := []proto.NodeBoot{{Node: proto.NodeHash("node0"), Boot: 7}, {Node: proto.NodeHash("node1"), Boot: 2}, {Node: proto.NodeHash("node2")}}
	got, err := proto.DecodeNodeBoots(proto.AppendNodeBoots(nil, in))
	if err != nil || !slices.Equal(got, in) {
		t.Fatalf("round trip: %v, %v; want %v", got, err, in)
	}
	if got, err := proto.DecodeNodeBoots(nil); err != nil || len(got) != 0 {
		t.Fatalf("empty list: %v, %v", got, err)
	}
	for name, b := range map[string][]byte{
		"torn entry": make([]byte, 17),
		"too many":   proto.AppendNodeBoots(nil, make([]proto.NodeBoot, proto.MaxNodeBoots+1)),
	} {
		if _, err := proto.DecodeNodeBoots(b); !errs.Is(err, errs.Invalid) {
			t.Errorf("%s: %v, want an invalid argument error", name, err)
		}
	}
}
