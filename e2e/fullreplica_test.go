package e2e

import (
	"bytes"
	"fmt"
	"testing"
	"time"
)

// TestFullReplicaLeavesCopiesEqual: one node's disk (a small tmpfs) fills
// while a VDI is written through another node; the writes that fail do so
// on one replica after the others took them. However that ends for the
// writer, every node then reads the same bytes of the VDI: no replica
// keeps a write the others lack, or lacks one they keep (guarantee 2:
// a read must not depend on the replica it lands on).
func TestFullReplicaLeavesCopiesEqual(t *testing.T) {
	parallel(t)
	requireEnv(t)
	c := newFullDiskCluster(t, "40m")
	m := c.Mount(c.Nodes[0].Addr())
	vdi := m.VDI("full")
	run(t, quickTimeout, "truncate", "-s", "128M", vdi)
	// 512 KiB direct writes, so that an object takes several and the
	// full node holds a part of some.
	res := shellResult(cmdTimeout, fmt.Sprintf("dd if=/dev/urandom of=%s bs=512k count=200 oflag=direct conv=notrunc status=none", q(vdi)))
	t.Logf("writing past the full disk: %v", res)
	time.Sleep(time.Second)
	var ref []byte
	for i, n := range c.Nodes {
		got, bad, err := readVia(n.Addr(), "full", 30*time.Second)
		if err != nil || len(bad) > 0 {
			t.Fatalf("read through %s: objects %v unread: %v", n.ID, bad, err)
		}
		if i == 0 {
			ref = got
			continue
		}
		if !bytes.Equal(got, ref) {
			var objs []int
			for o := 0; o*int(objSize) < len(ref); o++ {
				lo, hi := o*int(objSize), min((o+1)*int(objSize), len(ref))
				if !bytes.Equal(got[lo:hi], ref[lo:hi]) {
					objs = append(objs, o)
				}
			}
			t.Errorf("reads through %s and %s differ in objects %v", c.Nodes[0].ID, n.ID, objs)
		}
	}
}
