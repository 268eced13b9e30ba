package e2e

import (
	"bytes"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/auth"
	"github.com/sheepfs/sheepfs/client"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
)

// TestWriterMovesToGatewayWithCachedIndex: a gateway that read a VDI (and
// so cached its index) and later becomes the VDI's writer's gateway must
// not trust that index: another gateway wrote the VDI in between. A stale
// entry there makes the first write re-create an object that already holds
// data, and the earlier writes to it are lost.
func TestWriterMovesToGatewayWithCachedIndex(t *testing.T) {
	parallel(t)
	c := NewCluster(t, 3, 3)
	ctx := testCtx(t)
	a := newClient(t, c.Nodes[0].Addr())
	b := newClient(t, c.Nodes[1].Addr())
	v := createVDI(t, a, "v", 8<<20)
	// Node 1 reads object 0 while it is unallocated.
	if err := b.ReadAt(ctx, v.ID, make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	// The writer writes object 0 through node 0.
	pa := bytes.Repeat([]byte{'A'}, 64<<10)
	if _, err := a.Lock(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	if err := a.WriteAt(ctx, v.ID, pa, 0, true); err != nil {
		t.Fatal(err)
	}
	if err := a.Unlock(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	// The next writer writes elsewhere in object 0 through node 1.
	pb := bytes.Repeat([]byte{'B'}, 64<<10)
	if _, err := b.Lock(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteAt(ctx, v.ID, pb, 1<<20, true); err != nil {
		t.Fatal(err)
	}
	if err := b.Unlock(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, newClient(t, c.Nodes[2].Addr()), "v")
	if !bytes.Equal(got[:len(pa)], pa) {
		t.Errorf("the first writer's data is gone: %s", firstDiff(got[:len(pa)], pa))
	}
	if !bytes.Equal(got[1<<20:1<<20+len(pb)], pb) {
		t.Errorf("the second writer's data is gone: %s", firstDiff(got[1<<20:1<<20+len(pb)], pb))
	}
}

// TestOldGatewayReleasesMovedLock: a client whose connection to one gateway
// broke takes its write lock again through another (client failover). The
// first gateway learns of the closed connection later (it was busy, or is
// shutting down) and releases the locks of that connection: not the lock
// the client now holds through the other gateway.
func TestOldGatewayReleasesMovedLock(t *testing.T) {
	parallel(t)
	c := NewCluster(t, 3, 3)
	ctx := testCtx(t)
	admin := newClient(t, c.Nodes[2].Addr())
	v := createVDI(t, admin, "v", 8<<20)
	old := client.New([]string{c.Nodes[0].Addr()}, client.Options{Dial: keyDial(auth.RoleClient), RetryFor: 30 * time.Second, Mount: "mfailover"})
	if _, err := old.Lock(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	// The same mount, now through node 1, before node 0 saw the close.
	moved := client.New([]string{c.Nodes[1].Addr()}, client.Options{Dial: keyDial(auth.RoleClient), RetryFor: 30 * time.Second, Mount: "mfailover"})
	t.Cleanup(moved.Close)
	if _, err := moved.Lock(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	old.Close()
	time.Sleep(time.Second) // node 0 releases what the closed connection held
	if got := lookupVDI(t, admin, "v"); !got.Locked || got.Node != ids.NodeID(c.Nodes[1].ID) {
		t.Errorf("after the old connection closed, the lock is %+v, want held through %s", got, c.Nodes[1].ID)
	}
	if err := moved.WriteAt(ctx, v.ID, []byte("x"), 0, true); err != nil {
		t.Errorf("write through the gateway holding the lock: %v", err)
	}
}

// TestWriteThroughOldGatewayRefused: once a client took its write lock
// again through another gateway, the gateway it wrote through before
// refuses what still reaches it on the old connection: a snapshot fences
// writes only on the lock's gateway, and two gateways allocating the same
// object would each create it.
func TestWriteThroughOldGatewayRefused(t *testing.T) {
	parallel(t)
	c := NewCluster(t, 3, 3)
	ctx := testCtx(t)
	admin := newClient(t, c.Nodes[2].Addr())
	v := createVDI(t, admin, "v", 8<<20)
	old := client.New([]string{c.Nodes[0].Addr()}, client.Options{Dial: keyDial(auth.RoleClient), RetryFor: 30 * time.Second, Mount: "mfailover"})
	t.Cleanup(old.Close)
	if _, err := old.Lock(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	moved := client.New([]string{c.Nodes[1].Addr()}, client.Options{Dial: keyDial(auth.RoleClient), RetryFor: 30 * time.Second, Mount: "mfailover"})
	t.Cleanup(moved.Close)
	if _, err := moved.Lock(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	waitFor(5*time.Second, func() bool { return lookupVDI(t, old, "v").Node == ids.NodeID(c.Nodes[1].ID) })
	if err := old.WriteAt(ctx, v.ID, []byte("stale"), 0, false); err == nil {
		t.Errorf("a write through the gateway the lock moved away from was accepted")
	}
}

// TestWriteHeldBySnapshotFenceAfterLockMoved: a write that reached the
// writer's gateway while a snapshot there held writes back runs once the
// fence lifts; if the client meanwhile took its lock again through another
// gateway (and wrote the same place there), the held write must not land.
func TestWriteHeldBySnapshotFenceAfterLockMoved(t *testing.T) {
	parallel(t)
	c := NewCluster(t, 3, 3)
	ctx := testCtx(t)
	var gw, other *Node
	for _, n := range c.Nodes {
		switch {
		case c.Info().Leader == n.ID:
		case gw == nil:
			gw = n
		default:
			other = n
		}
	}
	const size = 256 << 20
	admin := newClient(t, other.Addr())
	v := createVDI(t, admin, "v", size)
	old := client.New([]string{gw.Addr()}, client.Options{Dial: keyDial(auth.RoleClient), RetryFor: 30 * time.Second, Mount: "mfailover"})
	t.Cleanup(old.Close)
	if _, err := old.Lock(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	// Much unflushed data, so that the snapshot's flush holds the fence
	// for a while.
	buf := bytes.Repeat([]byte{'d'}, 128<<10) // buffered, not O_DIRECT
	for off := int64(0); off < size; off += int64(len(buf)) {
		if err := old.WriteAt(ctx, v.ID, buf, off, false); err != nil {
			t.Fatal(err)
		}
	}
	snap := make(chan error, 1)
	go func() {
		snap <- newClient(t, gw.Addr()).Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDISnapshot, Name: "v", Tag: "s"}, nil)
	}()
	time.Sleep(20 * time.Millisecond)
	held := make(chan error, 1)
	go func() { held <- old.WriteAt(ctx, v.ID, []byte("old!"), 0, false) }()
	time.Sleep(20 * time.Millisecond)
	moved := client.New([]string{other.Addr()}, client.Options{Dial: keyDial(auth.RoleClient), RetryFor: 30 * time.Second, Mount: "mfailover"})
	t.Cleanup(moved.Close)
	if _, err := moved.Lock(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	if err := moved.WriteAt(ctx, v.ID, []byte("new!"), 0, true); err != nil {
		t.Fatal(err)
	}
	<-held // ends with Busy: the lock is now held through another node
	if err := <-snap; err != nil {
		t.Errorf("snapshot: %v", err)
	}
	got := make([]byte, 4)
	if err := moved.ReadAt(ctx, v.ID, got, 0); err != nil {
		t.Fatal(err)
	}
	if string(got) != "new!" {
		t.Errorf("offset 0 reads %q after the last acknowledged write of %q", got, "new!")
	}
}
