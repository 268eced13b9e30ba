package e2e

import (
	"bytes"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/proto"
)

// TestSnapshotDuringUnlockedShrink: a snapshot of a VDI nobody has open
// for writing, taken while a shrink of that VDI (through another gateway)
// is freeing its tail, reads the same through every node, and the shrink
// succeeds (it holds the write lock, so the snapshot waits at its fence).
func TestSnapshotDuringUnlockedShrink(t *testing.T) {
	parallel(t)
	c := NewCluster(t, 3, 3)
	ctx := testCtx(t)
	const objects = 512
	cl := newClient(t, c.Nodes[0].Addr())
	v := createVDI(t, cl, "v", uint64(objects*objSize))
	if _, err := cl.Lock(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	for i := range objects {
		if err := cl.WriteAt(ctx, v.ID, []byte("data"), int64(i)*objSize, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := cl.Flush(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	if err := cl.Unlock(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	shrink := newClient(t, c.Nodes[1].Addr())
	waitFor(5*time.Second, func() bool { return !lookupVDI(t, shrink, "v").Locked })
	done := make(chan error, 1)
	go func() {
		done <- shrink.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDIResize, Name: "v", Size: 0}, nil)
	}()
	time.Sleep(100 * time.Millisecond)
	if r := c.SheepAt(c.Nodes[2].Addr(), "vdi", "snapshot", "v@s"); r.Code != 0 {
		t.Fatal(r)
	}
	if err := <-done; err != nil {
		t.Errorf("shrink: %v", err)
	}
	var first []byte
	for _, n := range c.Nodes {
		r := newClient(t, n.Addr())
		s := lookupVDI(t, r, "v@s")
		got := make([]byte, 0, objects*4)
		for i := range objects {
			buf := make([]byte, 4)
			if int64(i)*objSize < int64(s.Size) {
				if err := r.ReadAt(ctx, s.ID, buf, int64(i)*objSize); err != nil {
					t.Fatalf("read v@s through %s: %v", n.ID, err)
				}
			}
			got = append(got, buf...)
		}
		if first == nil {
			first = got
			t.Logf("v@s is %d bytes, %d objects read back as data through %s", s.Size, bytes.Count(got, []byte("data")), n.ID)
		} else if !bytes.Equal(got, first) {
			t.Errorf("v@s reads differently through %s (%d objects of data) and %s (%d)", n.ID, bytes.Count(got, []byte("data")), c.Nodes[0].ID, bytes.Count(first, []byte("data")))
		}
	}
}
