package proto_test

import (
	"context"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/sheepfs/sheepfs/proto"
)

// writeCounter counts the Write calls on a connection.
type writeCounter struct {
	net.Conn
	n *atomic.Int32
}

func (c writeCounter) Write(b []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(b)
}

type writeCountingListener struct {
	net.Listener
	n atomic.Int32
}

func (l *writeCountingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return writeCounter{c, &l.n}, nil
}

// TestSendsShareWrites: requests sent at once on one connection, and
// their answers, go out in a few write(2)s, not one each, with one P (as
// the daemons run on small machines). A lone request is written at once
// (TestClientConcurrentCalls and the rest cover that it arrives).
func TestSendsShareWrites(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	const n = 16
	var arrived atomic.Int32
	release := make(chan struct{})
	all := make(chan struct{})
	srv := &proto.Server{Handler: proto.HandlerFunc(func(ctx context.Context, _ *proto.Conn, req *proto.Msg) *proto.Msg {
		if req.ID != 0 { // not the first call, which only connects
			if arrived.Add(1) == n {
				close(all)
			}
			<-release
		}
		return &proto.Msg{Aux: req.ID}
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wl := &writeCountingListener{Listener: ln}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(wl)
	}()
	defer func() {
		srv.Close()
		<-done
	}()
	var sent atomic.Int32
	c := proto.NewClientDial(ln.Addr().String(), func(ctx context.Context, addr string) (net.Conn, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return writeCounter{nc, &sent}, nil
	})
	defer c.Close()
	if _, err := c.Call(context.Background(), &proto.Msg{Header: proto.Header{Op: proto.OpStatObj}}); err != nil {
		t.Fatal(err)
	}
	sent.Store(0)
	wl.n.Store(0)

	var wg sync.WaitGroup
	for i := 1; i <= n; i++ {
		wg.Go(func() {
			resp, err := c.Call(context.Background(), &proto.Msg{Header: proto.Header{Op: proto.OpStatObj, ID: uint64(i)}})
			if err != nil {
				t.Errorf("call %d: %v", i, err)
			} else if resp.Aux != uint64(i) {
				t.Errorf("call %d: got the answer of %d", i, resp.Aux)
			}
		})
	}
	<-all
	requests := sent.Load()
	close(release)
	wg.Wait()
	answers := wl.n.Load()
	t.Logf("%d requests went out in %d writes, their answers in %d", n, requests, answers)
	if requests > n/4 || answers > n/4 {
		t.Fatalf("%d requests went out in %d writes and their answers in %d: want at most %d each", n, requests, answers, n/4)
	}
}
