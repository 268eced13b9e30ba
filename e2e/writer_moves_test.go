package e2e

import (
	"bytes"
	"testing"

	"github.com/sheepfs/sheepfs/proto"
)

// TestWriterMovesToGatewayWithCachedIndex: a gateway that read a VDI (and
// so cached its index) and later becomes the VDI's writer's gateway must
// not trust that index: another gateway wrote the VDI in between. A stale
// entry there makes the first write re-create an object that already holds
// data, and the earlier writes to it are lost.
func TestWriterMovesToGatewayWithCachedIndex(t *testing.T) {
	c := NewCluster(t, 3, 3)
	ctx := testCtx(t)
	a := newClient(t, c.Nodes[0].Addr())
	b := newClient(t, c.Nodes[1].Addr())
	if err := a.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDICreate, Name: "v", Size: 8 << 20}, nil); err != nil {
		t.Fatal(err)
	}
	v := lookupVDI(t, a, "v")
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
