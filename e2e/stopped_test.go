package e2e

import (
	"bytes"
	"fmt"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestStoppedNodeServesNothingOld: a daemon stopped (SIGSTOP: a frozen VM,
// a debugger) long enough for the others to move on without it comes back
// with old copies and an old idea of the cluster. From then on no read
// through it returns the bytes from before a write the others acknowledged
// meanwhile: not a local read by a mount on its machine (its page must not
// beat for a state it has not confirmed), not a read through the daemon
// (its own copy comes first), not a read issued while it was stopped.
func TestStoppedNodeServesNothingOld(t *testing.T) {
	requireEnv(t)
	c := NewCluster(t, 3, 3)
	fsMetrics := freeAddr(t)
	// Both mounts on node0 talk to node0 only: one reads locally, the
	// other through the daemon.
	local := c.mount([]string{"--metrics", fsMetrics}, c.Nodes[0].Addr())
	remote := c.mount([]string{"--no-local-read"}, c.Nodes[0].Addr())
	other := c.Mount(c.Nodes[1].Addr())
	const obj = 4 << 20
	path := local.VDI("st")
	run(t, quickTimeout, "truncate", "-s", "8M", path)
	wf := directFile(t, path) // the write lock, through node0: leases
	old, next := pattern(4096, 1), pattern(4096, 2)
	for _, off := range []int64{0, obj} {
		if _, err := wf.WriteAt(old, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := wf.Sync(); err != nil {
		t.Fatal(err)
	}
	open := func(m *Mount) *os.File {
		f, err := os.OpenFile(m.VDI("st"), os.O_RDONLY|syscall.O_DIRECT, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	readers := []*os.File{open(local), open(remote)}
	got := aligned(4096)
	for _, f := range readers {
		for _, off := range []int64{0, obj} {
			if _, err := f.ReadAt(got, off); err != nil || !bytes.Equal(got, old) {
				t.Fatalf("%s at %d reads %x... (%v), want %x...", f.Name(), off, got[:8], err, old[:8])
			}
		}
	}
	if n := sum(scrape(t, "http://"+fsMetrics+"/metrics"), "sheepfs_local_reads_total", `path="local"`); n == 0 {
		t.Fatal("the reads did not go local")
	}

	sheep0 := c.Nodes[0].proc.cmd.Process
	if err := sheep0.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			if err := sheep0.Signal(syscall.SIGCONT); err != nil {
				t.Error(err)
			}
		}
	}
	defer resume()
	stopped := time.Now()
	var ci ClusterInfo
	if !waitFor(60*time.Second, func() bool {
		var err error
		ci, err = infoAt(c.Nodes[1].Addr())
		return err == nil && len(ci.Nodes) == 2
	}) {
		t.Fatalf("the others did not move on without node0: %+v", ci)
	}
	t.Logf("the others moved on without node0 %v after it stopped (epoch %d)", time.Since(stopped).Round(time.Millisecond), ci.Epoch)
	// node0's lock died with it: the VDI opens for writing elsewhere.
	var res Result
	for _, off := range []int64{0, obj} {
		if !waitFor(30*time.Second, func() bool {
			res = writeFileAt(t, other.VDI("st"), off, next, false)
			return res.Code == 0
		}) {
			t.Fatalf("write through node1's mount: %v", res)
		}
	}

	// Reads issued while node0 is still stopped, and reads after it
	// resumed, each on its own.
	type bad struct {
		name  string
		off   int64
		after time.Duration
		err   error
	}
	var mu sync.Mutex
	var bads []bad
	var reads int
	var wg sync.WaitGroup
	var resumedAt time.Time
	done := make(chan struct{})
	for _, f := range readers {
		for _, off := range []int64{0, obj} {
			wg.Go(func() {
				buf := aligned(4096)
				for {
					_, err := f.ReadAt(buf, off)
					mu.Lock()
					reads++
					if err != nil || !bytes.Equal(buf, next) {
						var after time.Duration
						if !resumedAt.IsZero() {
							after = time.Since(resumedAt)
						}
						bads = append(bads, bad{f.Name(), off, after, err})
					}
					mu.Unlock()
					select {
					case <-done:
						return
					default:
					}
				}
			})
		}
	}
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	resumedAt = time.Now()
	mu.Unlock()
	resume()
	time.Sleep(3 * time.Second)
	close(done)
	wg.Wait()
	t.Logf("%d reads", reads)
	// The first bad read of each reader and offset, and how many.
	count := map[string]int{}
	for _, b := range bads {
		key := fmt.Sprintf("%s at %d", b.name, b.off)
		if count[key]++; count[key] > 1 {
			continue
		}
		when := "issued while node0 was stopped"
		if b.after > 0 {
			when = fmt.Sprintf("%v after node0 resumed", b.after.Round(time.Millisecond))
		}
		if b.err != nil {
			t.Errorf("read of %s, %s: %v", key, when, b.err)
		} else {
			t.Errorf("read of %s, %s, returned the bytes from before the write", key, when)
		}
	}
	for key, n := range count {
		t.Errorf("%d bad reads of %s", n, key)
	}
}

// TestCutOffNodeServesNothingOld: node2 is cut off from the other nodes
// (nftables), not from its mount. The others mark it down as soon as
// gossip holds it dead (2-3 s: the dead grace only delays moving its data)
// and acknowledge writes without it. No read through node2 may return the
// bytes from before such a write: it stops serving reads of the writable
// VDI before the others can write without it (cluster/fresh.go), and its
// reads wait until the partition heals. The long dead grace is the case
// where a freshness bound on the grace alone let it serve old bytes for
// seconds.
func TestCutOffNodeServesNothingOld(t *testing.T) {
	requireEnv(t, "ip", "nft")
	lab := newNetLab(t, 3)
	c := newCluster(t, 3, 3, lab.base, func(node *Node) {
		node.Host, node.NetNS = lab.ip(node.Index), lab.ns[node.Index]
		node.Args = append(node.Args, "--dead-grace", "20s")
		if node.Index == 1 {
			lab.checkPath(1, node.c.Nodes[0].Addr())
		}
	})
	// node2 is a follower (node0 bootstraps and leads): the others need
	// no election without it.
	reader := c.mount([]string{"--no-local-read"}, c.Nodes[2].Addr())
	writer := c.Mount(c.Nodes[0].Addr(), c.Nodes[1].Addr())
	path := writer.VDI("st")
	run(t, quickTimeout, "truncate", "-s", "8M", path)
	wf, err := os.OpenFile(path, os.O_RDWR|syscall.O_DIRECT|syscall.O_DSYNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer wf.Close()
	old, next := pattern(4096, 1), pattern(4096, 2)
	if _, err := wf.WriteAt(old, 0); err != nil {
		t.Fatal(err)
	}
	rf, err := os.OpenFile(reader.VDI("st"), os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	got := aligned(4096)
	if _, err := rf.ReadAt(got, 0); err != nil || !bytes.Equal(got, old) {
		t.Fatalf("the reader reads %x... (%v), want %x...", got[:8], err, old[:8])
	}
	time.Sleep(300 * time.Millisecond)
	lab.partition([]int{2}, []int{0, 1})
	cut := time.Now()
	defer lab.heal()
	if _, err := wf.WriteAt(next, 0); err != nil {
		t.Fatal(err)
	}
	acked := time.Since(cut)
	// Reads through node2 from the cut on, each after the last; once one
	// has waited a second, the partition heals.
	var mu sync.Mutex
	var stale, fresh int
	var lastStale time.Duration
	progress := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := aligned(4096)
		for time.Since(cut) < acked+6*time.Second {
			start := time.Since(cut)
			_, err := rf.ReadAt(buf, 0)
			mu.Lock()
			progress = time.Now()
			switch {
			case err != nil:
				t.Errorf("read through node2, %v after the cut: %v", time.Since(cut).Round(time.Millisecond), err)
			case bytes.Equal(buf, old) && start > acked:
				stale++
				lastStale = time.Since(cut)
			case bytes.Equal(buf, old): // issued before the write was acknowledged
			case bytes.Equal(buf, next):
				fresh++
			default:
				t.Errorf("read through node2 returned neither the old bytes nor the new")
			}
			mu.Unlock()
		}
	}()
	healed := false
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-time.After(100 * time.Millisecond):
			mu.Lock()
			stuck := time.Since(progress) > time.Second
			mu.Unlock()
			if stuck && !healed {
				t.Logf("a read through node2 waits %v after the cut: healing", time.Since(cut).Round(time.Millisecond))
				lab.heal()
				healed = true
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("the write was acknowledged %v after the cut; reads through node2 issued after that: %d of the old bytes (the last %v after the cut), %d of the new",
		acked.Round(time.Millisecond), stale, lastStale.Round(time.Millisecond), fresh)
	if stale > 0 {
		t.Errorf("node2, cut off, served the bytes from before a write the others acknowledged %v after the cut, until %v after it",
			acked.Round(time.Millisecond), lastStale.Round(time.Millisecond))
	}
	if !healed {
		t.Errorf("no read through node2 waited: it went on serving while cut off")
	}
}
