package fs

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/client"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/proto"
)

// Reads of one object that find no lease ask the daemon once between
// them: the others wait for that answer and share it.
func TestLeaseAskedOncePerObject(t *testing.T) {
	var leases atomic.Int32
	srv := &proto.Server{Handler: proto.HandlerFunc(func(ctx context.Context, c *proto.Conn, req *proto.Msg) *proto.Msg {
		switch req.Op {
		case proto.OpAdmin:
			return &proto.Msg{Data: []byte("{}")}
		case proto.OpVDILease:
			leases.Add(1)
			time.Sleep(50 * time.Millisecond) // the other reads come meanwhile
			return proto.ErrorResponse(req, errs.E(errs.NotFound, "no lease"))
		}
		return proto.ErrorResponse(req, errs.E(errs.Invalid, "op %v", req.Op))
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	c := client.New([]string{ln.Addr().String()}, client.Options{})
	defer c.Close()
	r := newLocalReads(c, nil)

	// Each reader finds either the request under way, or the refusal it
	// kept (for noLeaseFor): one request whatever the interleaving.
	const readers = 16
	key := leaseKey{vid: 5, idx: 7}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if r.readObject(context.Background(), key, make([]byte, 4096), 0) {
				t.Error("a read under a refused lease went local")
			}
		}()
	}
	close(start)
	wg.Wait()
	if n := leases.Load(); n != 1 {
		t.Errorf("%d readers of one object sent %d lease requests, want 1", readers, n)
	}
	if l := r.leases[key]; l == nil || l.f != nil {
		t.Errorf("kept %+v, want the refusal", l)
	}
	if len(r.asking) != 0 {
		t.Errorf("%d requests still marked as asking", len(r.asking))
	}
	// Another object is asked for on its own.
	if r.readObject(context.Background(), leaseKey{vid: 5, idx: 8}, make([]byte, 4096), 0) || leases.Load() != 2 {
		t.Errorf("a second object: %d requests, want 2", leases.Load())
	}
}
