package e2e

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestPowerLossKeepsFsyncedWrites: a writer does 4 KiB writes each followed
// by fsync through a mount (a database in a VM), while every node of the
// cluster loses power at once (the daemons' fault seam undoes every file
// change not synced and kills them) and comes back as after a reboot (a
// new boot ID). Such flushes sync only each node's index log, which
// carries the blocks: after the restart every write whose fsync returned
// reads back, the write in flight reads as before or after it, and
// everything else as before. The nodes say they wrote journaled blocks
// back, so the test cannot pass by syncing object files.
func TestPowerLossKeepsFsyncedWrites(t *testing.T) {
	t.Setenv("SHEEP_FAULTS", "1")
	requireEnv(t)
	c := NewCluster(t, 3, 3)
	m := c.Mount(c.Nodes[0].Addr())
	vdi := m.VDI("pl")
	const size = 32 << 20
	const blk = 4096
	run(t, quickTimeout, "truncate", "-s", fmt.Sprint(size), vdi)
	src := filepath.Join(c.Dir, "pl.src")
	writeRandomFile(t, src, size)
	shell(t, cmdTimeout, fmt.Sprintf("dd if=%s of=%s bs=1M conv=notrunc,fsync status=none", q(src), q(vdi)))
	model, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		if r := c.SheepAt(n.Addr(), "node", "md", "fault", n.Dir, "track"); r.Code != 0 {
			t.Fatalf("md fault track on %s: %v", n.ID, r)
		}
	}

	// The writer: model holds what every acknowledged fsync made durable;
	// inflight the one write not acknowledged yet.
	f, err := os.OpenFile(vdi, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		mu       sync.Mutex
		acked    int
		inflight = -1
		newData  []byte
		stop     = make(chan struct{})
		done     = make(chan error, 1)
	)
	go func() {
		buf := make([]byte, blk)
		var pick [4]byte
		for {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			if _, err := io.ReadFull(rand.Reader, buf); err != nil {
				done <- err
				return
			}
			_, _ = rand.Read(pick[:])
			b := int(uint32(pick[0])|uint32(pick[1])<<8|uint32(pick[2])<<16) % (size / blk)
			mu.Lock()
			inflight, newData = b, bytes.Clone(buf)
			mu.Unlock()
			if _, err := f.WriteAt(buf, int64(b)*blk); err != nil {
				done <- fmt.Errorf("write: %w", err)
				return
			}
			if err := f.Sync(); err != nil {
				done <- fmt.Errorf("fsync: %w", err)
				return
			}
			mu.Lock()
			copy(model[b*blk:], buf)
			inflight = -1
			acked++
			mu.Unlock()
		}
	}()
	if !waitFor(cmdTimeout, func() bool { mu.Lock(); defer mu.Unlock(); return acked >= 300 }) {
		t.Fatal("the writer did not get 300 fsyncs through")
	}

	// Power fails everywhere at once.
	var wg sync.WaitGroup
	for _, n := range c.Nodes {
		wg.Go(func() { c.SheepAt(n.Addr(), "node", "md", "fault", n.Dir, "powerloss") })
	}
	wg.Wait()
	if !waitFor(30*time.Second, func() bool {
		return !c.Nodes[0].Running() && !c.Nodes[1].Running() && !c.Nodes[2].Running()
	}) {
		t.Fatal("the nodes did not die of their power loss")
	}
	mu.Lock()
	t.Logf("power lost after %d acknowledged fsyncs", acked)
	mu.Unlock()
	t.Setenv("SHEEP_BOOT_ID", "0badc0de-0000-4000-8000-000000000001")
	for i := range c.Nodes {
		c.Restart(i)
	}
	c.WaitOK()
	close(stop)
	select {
	case err := <-done:
		if err != nil {
			t.Logf("the writer stopped: %v", err)
		}
	case <-time.After(cmdTimeout):
		t.Fatal("the writer hangs after the cluster came back")
	}

	replayed := 0
	for _, n := range c.Nodes {
		b, _ := os.ReadFile(n.Log)
		replayed += strings.Count(string(b), "wrote back journaled blocks")
	}
	if replayed == 0 {
		t.Error("no node wrote back journaled blocks: the power loss did not reach the journal")
	}

	dropCaches(t)
	got, err := os.ReadFile(vdi)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != size {
		t.Fatalf("read %d bytes, want %d", len(got), size)
	}
	bad := 0
	for b := 0; b < size/blk; b++ {
		g, w := got[b*blk:(b+1)*blk], model[b*blk:(b+1)*blk]
		if bytes.Equal(g, w) || b == inflight && bytes.Equal(g, newData) {
			continue
		}
		if bad++; bad <= 5 {
			t.Errorf("block %d (offset %d) differs from what its last acknowledged fsync made durable", b, b*blk)
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d blocks differ after the power loss (%d fsyncs acknowledged)", bad, size/blk, acked)
	}
	if r := c.Sheep("vdi", "check", "pl"); r.Code != 0 {
		t.Fatalf("vdi check after the power loss: %v", r)
	}
}
