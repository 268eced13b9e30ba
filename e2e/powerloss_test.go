package e2e

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestPowerLossKeepsFsyncedWrites: a writer does 4 KiB writes each followed
// by fsync through a mount (a database in a VM). Meanwhile every node is
// killed with -9 at once and started again (the same boot: the page cache
// kept everything), and later every node loses power at once (the
// daemons' fault seam undoes every file change not synced and kills them)
// and comes back as after a reboot (a new boot ID). Such flushes sync only
// each node's index log, which carries the blocks: at the end every write
// whose fsync returned reads back (or a later write of its block that was
// in flight), and everything else as written first. The nodes say they
// wrote journaled blocks back, so the test cannot pass by syncing object
// files.
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

	// The writer: model holds what the last acknowledged fsync of each
	// block made durable; maybe, the writes of a block since then whose
	// fsync did not return success (they may have landed or not).
	f, err := os.OpenFile(vdi, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		mu     sync.Mutex
		acked  int
		failed int
		maybe  = map[int][][]byte{}
		stop   = make(chan struct{})
		done   = make(chan error, 1)
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
			maybe[b] = append(maybe[b], bytes.Clone(buf))
			mu.Unlock()
			_, err := f.WriteAt(buf, int64(b)*blk)
			if err == nil {
				err = f.Sync()
			}
			mu.Lock()
			if err == nil {
				copy(model[b*blk:], buf)
				delete(maybe, b)
				acked++
			} else {
				failed++
			}
			mu.Unlock()
			if err != nil {
				time.Sleep(200 * time.Millisecond) // the cluster is away
			}
		}
	}()
	ackedAtLeast := func(n int) {
		t.Helper()
		if !waitFor(cmdTimeout, func() bool { mu.Lock(); defer mu.Unlock(); return acked >= n }) {
			t.Fatalf("the writer did not get %d fsyncs through", n)
		}
	}
	allDown := func(why string) {
		t.Helper()
		if !waitFor(30*time.Second, func() bool {
			return !c.Nodes[0].Running() && !c.Nodes[1].Running() && !c.Nodes[2].Running()
		}) {
			t.Fatalf("the nodes did not die of %s", why)
		}
		mu.Lock()
		t.Logf("%s after %d acknowledged fsyncs (%d failed)", why, acked, failed)
		mu.Unlock()
	}
	restartAll := func() {
		t.Helper()
		for i := range c.Nodes {
			c.Restart(i)
		}
		c.WaitOK()
	}

	ackedAtLeast(200)
	for i := range c.Nodes {
		c.Kill(i)
	}
	allDown("kill -9")
	restartAll()
	ackedAtLeast(400)

	for _, n := range c.Nodes {
		if r := c.SheepAt(n.Addr(), "node", "md", "fault", n.Dir, "track"); r.Code != 0 {
			t.Fatalf("md fault track on %s: %v", n.ID, r)
		}
	}
	mu.Lock()
	base := acked
	mu.Unlock()
	ackedAtLeast(base + 300)
	var wg sync.WaitGroup
	for _, n := range c.Nodes {
		wg.Go(func() { c.SheepAt(n.Addr(), "node", "md", "fault", n.Dir, "powerloss") })
	}
	wg.Wait()
	allDown("a power loss")
	t.Setenv("SHEEP_BOOT_ID", "0badc0de-0000-4000-8000-000000000001")
	restartAll()
	mu.Lock()
	base = acked
	mu.Unlock()
	ackedAtLeast(base + 50) // the cluster takes writes again
	close(stop)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the writer: %v", err)
		}
	case <-time.After(cmdTimeout):
		t.Fatal("the writer hangs")
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
		g := got[b*blk : (b+1)*blk]
		if bytes.Equal(g, model[b*blk:(b+1)*blk]) || slices.ContainsFunc(maybe[b], func(w []byte) bool { return bytes.Equal(g, w) }) {
			continue
		}
		if bad++; bad <= 5 {
			t.Errorf("block %d (offset %d) differs from what its last acknowledged fsync made durable", b, b*blk)
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d blocks differ (%d fsyncs acknowledged, %d failed)", bad, size/blk, acked, failed)
	}
	t.Logf("%d fsyncs acknowledged (%d failed while the cluster was away): all read back", acked, failed)
	if r := c.Sheep("vdi", "check", "pl"); r.Code != 0 {
		t.Fatalf("vdi check: %v", r)
	}
}
