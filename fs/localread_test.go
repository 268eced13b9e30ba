package fs

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/client"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/localread"
	"github.com/sheepfs/sheepfs/objstore"
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

// A read that finds its lease ended (a new cluster state ends them all)
// asks for a new one at once and reads locally under it, instead of
// reading through the daemon and asking at the next read.
func TestEndedLeaseRenewedAtOnce(t *testing.T) {
	dir := t.TempDir()
	page, err := localread.Create(filepath.Join(dir, "page"))
	if err != nil {
		t.Fatal(err)
	}
	page.Beat(time.Now())
	store, err := objstore.Open(filepath.Join(dir, "store"), objstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	oid := ids.DataObject(5, 7)
	data := bytes.Repeat([]byte("sheepfs!"), 512)
	if err := store.Write(oid, 0, data, 1, 1); err != nil {
		t.Fatal(err)
	}
	path, err := store.Path(oid)
	if err != nil {
		t.Fatal(err)
	}
	var leases atomic.Int32
	srv := &proto.Server{Handler: proto.HandlerFunc(func(ctx context.Context, c *proto.Conn, req *proto.Msg) *proto.Msg {
		switch req.Op {
		case proto.OpAdmin:
			return &proto.Msg{Data: []byte("{}")}
		case proto.OpVDILease:
			leases.Add(1)
			st := page.Stamp(oid)
			return &proto.Msg{Data: proto.AppendLease(nil, proto.Lease{Inst: st.Inst, Global: st.Global, Slot: st.Slot,
				OID: uint64(oid), Path: path, Page: page.Path()})}
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
	key := leaseKey{vid: 5, idx: 7}

	for round, change := range []func(){func() {}, page.BumpAll, func() { page.Bump(oid) }} {
		change()
		page.Beat(time.Now())
		got := make([]byte, len(data))
		if !r.readObject(context.Background(), key, got, 0) {
			t.Fatalf("round %d: the read did not go local", round)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("round %d: read %q..., want %q...", round, got[:16], data[:16])
		}
		if n := leases.Load(); n != int32(round+1) {
			t.Errorf("round %d: %d lease requests, want %d (one per change)", round, n, round+1)
		}
	}
}
