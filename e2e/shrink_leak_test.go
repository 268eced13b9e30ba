package e2e

import (
	"bytes"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/proto"
)

// TestShrinkPastCutObjectFreesIt: a VDI whose size is not a multiple of
// the object size, shrunk to below its last object, deleted: nothing of it
// is left, in particular not that last object, which the shrink only
// punched (the range to discard was shorter than an object), and which is
// past the size the collector then looks at.
func TestShrinkPastCutObjectFreesIt(t *testing.T) {
	parallel(t)
	c := NewCluster(t, 3, 3)
	ctx := testCtx(t)
	cl := newClient(t, c.Nodes[0].Addr())
	for _, name := range []string{"own", "shared"} {
		v := createVDI(t, cl, name, 6<<20)
		if _, err := cl.Lock(ctx, name); err != nil {
			t.Fatal(err)
		}
		if err := cl.WriteAt(ctx, v.ID, bytes.Repeat([]byte{'x'}, 6<<20), 0, true); err != nil {
			t.Fatal(err)
		}
		if err := cl.Unlock(ctx, name); err != nil {
			t.Fatal(err)
		}
		if name == "shared" { // the last object belongs to a snapshot
			if r := c.Sheep("vdi", "snapshot", name+"@s"); r.Code != 0 {
				t.Fatal(r)
			}
		}
		if err := cl.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDIResize, Name: name, Size: 4 << 20}, nil); err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, cl, name); !bytes.Equal(got, bytes.Repeat([]byte{'x'}, 4<<20)) {
			t.Fatalf("%s after the shrink: %s", name, firstDiff(got, bytes.Repeat([]byte{'x'}, 4<<20)))
		}
	}
	for _, name := range []string{"own", "shared@s", "shared"} {
		if r := c.Sheep("vdi", "delete", name); r.Code != 0 {
			t.Fatalf("delete %s: %v", name, r)
		}
	}
	if r := c.Sheep("vdi", "gc"); r.Code != 0 {
		t.Fatal(r)
	}
	if files := c.ObjectFiles(); len(files) != 0 {
		for oid := range files {
			t.Errorf("object %s left after deleting everything", oid)
		}
	}
}

// TestShrinkThroughAnotherGatewayRightAfterAWrite: a shrink sent to a
// gateway that read the VDI a moment before another gateway wrote it
// discards what the index holds now, not what that gateway cached: after
// growing again, the region past the shrink reads zeros.
func TestShrinkThroughAnotherGatewayRightAfterAWrite(t *testing.T) {
	parallel(t)
	c := NewCluster(t, 3, 3)
	ctx := testCtx(t)
	w := newClient(t, c.Nodes[0].Addr())
	r := newClient(t, c.Nodes[1].Addr())
	v := createVDI(t, w, "v", 8<<20)
	if _, err := w.Lock(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	// Node 1 caches the index while object 1 is unallocated.
	if err := r.ReadAt(ctx, v.ID, make([]byte, 4096), 4<<20); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteAt(ctx, v.ID, bytes.Repeat([]byte{'x'}, 4<<20), 4<<20, true); err != nil {
		t.Fatal(err)
	}
	if err := w.Unlock(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	// (Node 1's state may lag the unlock by a moment.)
	waitFor(time.Second, func() bool { return !lookupVDI(t, r, "v").Locked })
	for _, size := range []uint64{4 << 20, 8 << 20} {
		if err := r.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDIResize, Name: "v", Size: size}, nil); err != nil {
			t.Fatal(err)
		}
	}
	other := newClient(t, c.Nodes[2].Addr())
	waitFor(5*time.Second, func() bool { return lookupVDI(t, other, "v").Size == 8<<20 })
	got := readAll(t, other, "v")
	if want := make([]byte, 8<<20); !bytes.Equal(got, want) {
		t.Errorf("after a shrink to 4 MiB and a grow back to 8 MiB: %s", firstDiff(got, want))
	}
}
