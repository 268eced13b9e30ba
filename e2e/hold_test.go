package e2e

import (
	"bytes"
	"os"
	"syscall"
	"testing"
	"time"
)

// TestMountHoldsIOWhileNoQuorum: a VM's I/O waits while the cluster cannot
// serve it, instead of failing. With two of three nodes down (no quorum),
// an O_DIRECT write and then an fsync through the third node's mount, on a
// file opened before, are still waiting after 40 s (the gateway gives up
// on each request after 30 s, and the VM used to get EAGAIN then), and
// succeed once the nodes are back; the write reads back.
func TestMountHoldsIOWhileNoQuorum(t *testing.T) {
	parallel(t)
	requireEnv(t)
	c := NewCluster(t, 3, 3)
	m := c.Mount(c.Nodes[0].Addr())
	path := m.VDI("held")
	run(t, quickTimeout, "truncate", "-s", "64M", path)
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	block := alignedBlock()
	for i := range block {
		block[i] = byte(i*13 + 1)
	}
	const off = 5<<20 + 4096
	if _, err := f.WriteAt(alignedBlock(), off); err != nil { // the index entry
		t.Fatal(err)
	}

	c.Kill(1)
	c.Kill(2)
	if !waitFor(readyTimeout, func() bool {
		ci, err := infoAt(c.Nodes[0].Addr())
		return err == nil && ci.Status == "no quorum"
	}) {
		t.Fatalf("node0 does not report losing its quorum")
	}
	done := make(chan error, 1)
	go func() {
		if _, err := f.WriteAt(block, off); err != nil {
			done <- err
			return
		}
		done <- f.Sync()
	}()
	select {
	case err := <-done:
		t.Fatalf("the write and fsync ended (%v) while the cluster had no quorum", err)
	case <-time.After(40 * time.Second):
	}
	c.Restart(1)
	c.Restart(2)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the write and fsync held through the outage: %v", err)
		}
	case <-time.After(cmdTimeout):
		t.Fatalf("the write and fsync still wait %v after the nodes came back", cmdTimeout)
	}
	got := alignedBlock()
	if _, err := f.ReadAt(got, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, block) {
		t.Fatalf("the held write reads back as %x..., want %x...", got[:8], block[:8])
	}
}
