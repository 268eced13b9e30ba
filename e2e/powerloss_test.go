package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/sheepfs/sheepfs/auth"
	"github.com/sheepfs/sheepfs/client"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
)

// TestPowerLossKeepsFsyncedWrites: a writer does 4 KiB writes each followed
// by fsync through a mount (a database in a VM); now and then a group of
// four before one fsync. The mount sends the single ones as synced writes
// and answers their fsyncs itself; a group's fsync is flushed. Meanwhile every node is
// killed with -9 at once and started again (the same boot: the page cache
// kept everything), and later every node loses power at once (the
// daemons' fault seam undoes every file change not synced and kills them)
// and comes back as after a reboot (a new boot ID). Such flushes sync only
// each node's index log, which carries the blocks: at the end every write
// whose fsync returned reads back (or a later write of its block that was
// in flight), and everything else as written first. The nodes say they
// wrote journaled blocks back, so the test cannot pass by syncing object
// files. The write in flight at the power loss was acknowledged to the
// kernel by nodes that lost it; the fsync retried after the restart must
// not vouch for it (it fails with EIO, or the write reads back): that is
// the boot check of proto.NodeBoot (without it, 3 of 14 runs read back an
// older block). At the end the image reads the same through every node
// (each reads its own copy first) and vdi check repairs nothing: the
// nodes came back with copies that differ, and recovery reconciled them
// (without the boot in the membership, the first run failed).
func TestPowerLossKeepsFsyncedWrites(t *testing.T) {
	parallel(t)
	c := NewClusterEnv(t, 3, 3, "SHEEP_FAULTS=1")
	fsMetrics := freeAddr(t)
	m := c.mount([]string{"--metrics", fsMetrics}, c.Nodes[0].Addr())
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

	// The writer runs in a process of its own (syncWriter): the test's
	// process holds no file of the mount, so starting a node never waits
	// for the kernel to flush one (a fork's exec closes the parent's
	// files in the child, and closing a FUSE file writes its dirty pages
	// back first: with the cluster down, until the mount gives up).
	// model holds what the last acknowledged fsync of each block made
	// durable; maybe, the writes of a block since then whose fsync did
	// not return success (they may have landed or not).
	var seedb [8]byte
	_, _ = rand.Read(seedb[:])
	seed := binary.LittleEndian.Uint64(seedb[:])
	t.Logf("writer seed %d", seed)
	first := bytes.Clone(model)
	var (
		mu      sync.Mutex
		acked   int
		failed  int
		maybe   = map[int][][]byte{}
		history = map[int][]ackedWrite{} // for the report of a block that differs
		done    = make(chan error, 1)
	)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %d", syncWriterEnv, vdi, size/blk, seed))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close() // the writer stops
		timer := time.AfterFunc(cmdTimeout, func() { _ = cmd.Process.Kill() })
		_ = cmd.Wait()
		timer.Stop()
	})
	go func() {
		blocks := map[int]int{} // write -> block
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var n, b int
			line := sc.Text()
			mu.Lock()
			switch {
			case line == "done":
				mu.Unlock()
				done <- nil
				return
			case strings.HasPrefix(line, "w "):
				fmt.Sscanf(line, "w %d %d", &n, &b)
				blocks[n] = b
				maybe[b] = append(maybe[b], syncData(seed, n))
			case strings.HasPrefix(line, "a "):
				fmt.Sscanf(line, "a %d", &n)
				b = blocks[n]
				delete(blocks, n)
				data := syncData(seed, n)
				copy(model[b*blk:], data)
				delete(maybe, b)
				acked++
				history[b] = append(history[b], ackedWrite{acked, data})
			case strings.HasPrefix(line, "f "):
				fmt.Sscanf(line, "f %d", &n)
				delete(blocks, n)
				failed++
			}
			mu.Unlock()
		}
		done <- fmt.Errorf("the writer's output ended: %v", sc.Err())
	}()
	ackedAtLeast := func(n int) {
		t.Helper()
		if !waitFor(cmdTimeout, func() bool { mu.Lock(); defer mu.Unlock(); return acked >= n }) {
			t.Fatalf("the writer did not get %d fsyncs through", n)
		}
	}
	allDown := func(why string) int {
		t.Helper()
		if !waitFor(30*time.Second, func() bool {
			return !c.Nodes[0].Running() && !c.Nodes[1].Running() && !c.Nodes[2].Running()
		}) {
			t.Fatalf("the nodes did not die of %s", why)
		}
		mu.Lock()
		defer mu.Unlock()
		t.Logf("%s after %d acknowledged fsyncs (%d failed)", why, acked, failed)
		return acked
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
	killedAt := allDown("kill -9")
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
		wg.Go(func() {
			if r := c.SheepAt(n.Addr(), "node", "md", "fault", n.Dir, "powerloss"); r.Code != 0 {
				t.Errorf("md fault powerloss on %s: %v", n.ID, r)
			}
		})
	}
	wg.Wait()
	lostAt := allDown("a power loss")
	c.SetEnv("SHEEP_BOOT_ID=0badc0de-0000-4000-8000-000000000001")
	restartAll()
	mu.Lock()
	base = acked
	mu.Unlock()
	ackedAtLeast(base + 50) // the cluster takes writes again
	stdin.Close()
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
			t.Errorf("block %d (offset %d) differs from what its last acknowledged fsync made durable: %s; copies: %s",
				b, b*blk, whichWrite(g, first[b*blk:(b+1)*blk], history[b], killedAt, lostAt),
				copiesOf(c, b*blk, first[b*blk:(b+1)*blk], history[b], maybe[b]))
		}
	}
	if bad > 0 {
		t.Logf("vdi check (compares the replicas): %v", c.Sheep("vdi", "check", "pl"))
		t.Fatalf("%d of %d blocks differ (%d fsyncs acknowledged, %d failed)", bad, size/blk, acked, failed)
	}
	t.Logf("%d fsyncs acknowledged (%d failed while the cluster was away): all read back", acked, failed)
	// Both kinds of fsync were tested: those after one write, which the
	// mount sent synced, and those after a group, which it flushed.
	ms := scrape(t, "http://"+fsMetrics+"/metrics")
	synced, flushed := ms[`sheepfs_fsyncs_total{answer="synced"}`], ms[`sheepfs_fsyncs_total{answer="flushed"}`]
	t.Logf("fsyncs answered by the mount after a synced write: %.0f; flushed: %.0f", synced, flushed)
	if synced < 100 || flushed < 10 {
		t.Errorf("fsyncs after a synced write %.0f, flushed %.0f: the writer's pattern should give many of each", synced, flushed)
	}

	// The copies agree: each gateway reads its own copy first, so a node
	// that came back with an older copy than its peers (a write it had
	// acknowledged, not flushed, and lost) would answer otherwise than
	// the others until something reconciles them.
	for _, n := range c.Nodes[1:] {
		other, err := os.ReadFile(c.Mount(n.Addr()).VDI("pl"))
		if err != nil {
			t.Fatal(err)
		}
		for b := 0; b < size/blk; b++ {
			if g := other[b*blk : (b+1)*blk]; !bytes.Equal(g, got[b*blk:(b+1)*blk]) {
				t.Errorf("block %d reads otherwise through %s than through node0: copies: %s", b, n.ID,
					copiesOf(c, b*blk, first[b*blk:(b+1)*blk], history[b], maybe[b]))
			}
		}
	}
	r := c.Sheep("vdi", "check", "pl")
	if r.Code != 0 || !strings.Contains(r.Stdout, " 0 repaired") {
		t.Fatalf("vdi check found copies to repair: %v", r)
	}
}

// syncWriterEnv makes the test binary the writer of
// TestPowerLossKeepsFsyncedWrites: "PATH BLOCKS SEED" (see syncWriter).
const syncWriterEnv = "SHEEP_E2E_SYNCWRITER"

// syncWriter writes 4 KiB blocks of the file at path, in groups of
// syncGroup writes each followed by fsync, until its standard input ends:
// write n goes to block syncBlock and holds syncData. It reports on
// standard output "w N BLOCK" before write n, "a N" once its fsync
// returned success, "f N ERROR" if a write of its group or their fsync
// failed (and waits 200 ms: the cluster is away), and "done" at the end.
// It exits the process.
func syncWriter(spec string) {
	var path string
	var blocks int
	var seed uint64
	if _, err := fmt.Sscanf(spec, "%s %d %d", &path, &blocks, &seed); err != nil || blocks <= 0 {
		fmt.Fprintln(os.Stderr, "sync writer: bad spec", spec, err)
		os.Exit(2)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sync writer:", err)
		os.Exit(1)
	}
	stop := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	for n := 1; ; {
		select {
		case <-stop:
			fmt.Println("done")
			os.Exit(0)
		default:
		}
		first, k := n, syncGroup(seed, n)
		var err error
		for err == nil && n < first+k {
			b := syncBlock(seed, n, blocks)
			fmt.Printf("w %d %d\n", n, b)
			_, err = f.WriteAt(syncData(seed, n), int64(b)*syncBlockSize)
			n++
		}
		if err == nil {
			err = f.Sync()
		}
		for i := first; i < n; i++ {
			if err != nil {
				fmt.Printf("f %d %v\n", i, err)
			} else {
				fmt.Printf("a %d\n", i)
			}
		}
		if err != nil {
			time.Sleep(200 * time.Millisecond)
		}
	}
}

// syncGroup is how many writes syncWriter makes from write n on before
// their fsync: mostly one (sheepfs then sends each write synced and has
// nothing left for the fsync to flush), now and then four (the first
// synced, the others not: that fsync must flush them).
func syncGroup(seed uint64, n int) int {
	if h := syncHash(seed, n, -2); h[0]%8 == 0 {
		return 4
	}
	return 1
}

const syncBlockSize = 4096

// syncBlock is the block that write n of syncWriter goes to.
func syncBlock(seed uint64, n, blocks int) int {
	h := syncHash(seed, n, -1)
	return int(binary.LittleEndian.Uint64(h[:]) % uint64(blocks))
}

// syncData is what write n of syncWriter writes.
func syncData(seed uint64, n int) []byte {
	out := make([]byte, 0, syncBlockSize)
	for i := 0; len(out) < syncBlockSize; i++ {
		h := syncHash(seed, n, i)
		out = append(out, h[:]...)
	}
	return out
}

func syncHash(seed uint64, n, i int) [sha256.Size]byte {
	var in [24]byte
	binary.LittleEndian.PutUint64(in[:], seed)
	binary.LittleEndian.PutUint64(in[8:], uint64(n))
	binary.LittleEndian.PutUint64(in[16:], uint64(i))
	return sha256.Sum256(in[:])
}

// ackedWrite is one acknowledged write of a block: the count of
// acknowledged fsyncs when it returned, and the bytes.
type ackedWrite struct {
	n    int
	data []byte
}

// whichWrite says which of a block's acknowledged writes (or its first
// contents) the bytes got hold, and when each was acknowledged relative
// to the kill -9 and the power loss: the report of a lost write.
func whichWrite(got, first []byte, hist []ackedWrite, killedAt, lostAt int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "kill -9 at ack %d, power loss at ack %d; acknowledged writes of the block:", killedAt, lostAt)
	for _, w := range hist {
		fmt.Fprintf(&b, " #%d", w.n)
		if bytes.Equal(got, w.data) {
			b.WriteString(" (read back)")
		}
	}
	switch {
	case bytes.Equal(got, first):
		b.WriteString("; read back: its first contents")
	case bytes.Equal(got, make([]byte, len(got))):
		b.WriteString("; read back: zeros")
	case !slices.ContainsFunc(hist, func(w ackedWrite) bool { return bytes.Equal(got, w.data) }):
		b.WriteString("; read back: bytes no acknowledged write had")
	}
	return b.String()
}

// copiesOf says what each node's copy of the block at off of VDI 1 holds,
// read from its object file.
func copiesOf(c *Cluster, off int, first []byte, hist []ackedWrite, maybe [][]byte) string {
	oid := fmt.Sprintf("%016x", uint64(1)<<32|uint64(off/(4<<20)))
	var b strings.Builder
	for node, path := range c.ObjectFiles()[oid] {
		data := make([]byte, syncBlockSize)
		f, err := os.Open(path)
		if err == nil {
			_, err = f.ReadAt(data, int64(off%(4<<20)))
			f.Close()
		}
		fmt.Fprintf(&b, " %s:", node)
		switch {
		case err != nil:
			fmt.Fprintf(&b, "%v", err)
		case bytes.Equal(data, first):
			b.WriteString("first")
		default:
			what := "other"
			for _, w := range hist {
				if bytes.Equal(data, w.data) {
					what = fmt.Sprintf("ack#%d", w.n)
				}
			}
			for i, w := range maybe {
				if bytes.Equal(data, w) {
					what = fmt.Sprintf("maybe%d", i)
				}
			}
			b.WriteString(what)
		}
	}
	return b.String()
}

// TestPowerLossKeepsSyncedWrites: what a mount answered survives a power
// loss of every node right after, with no flush in between. First an
// O_DSYNC write to an object whose copy is not on the node of the index's
// copy, after O_DIRECT writes that allocated it (the index entry written,
// not synced): the fsync the kernel sends after it must make the entry
// durable too. Then a file is written and fsynced a block at a time until
// the mount sends each write synced and answers the fsync after it itself;
// the last fsync follows a group of four writes (the first synced, three
// not) and must flush the three.
func TestPowerLossKeepsSyncedWrites(t *testing.T) {
	parallel(t)
	c := NewClusterEnv(t, 3, 1, "SHEEP_FAULTS=1")
	fsMetrics := freeAddr(t)
	m := c.mount([]string{"--metrics", fsMetrics}, c.Nodes[0].Addr())
	vdi := m.VDI("sw")
	const obj = 4 << 20
	run(t, quickTimeout, "truncate", "-s", fmt.Sprint(16*obj), vdi)
	trackDurability(t, c)
	want := map[int64][]byte{} // offset -> what must read back
	block := func(tag string, i int) []byte {
		b := alignedBlock()
		for j := range b {
			b[j] = byte(j*7 + i + len(tag))
		}
		copy(b, fmt.Sprintf("%s %d", tag, i))
		return b
	}

	plain, err := os.OpenFile(vdi, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	synced, err := os.OpenFile(vdi, os.O_RDWR|syscall.O_DIRECT|syscall.O_DSYNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		if _, err := plain.WriteAt(block("alloc", i), int64(i)*obj); err != nil {
			t.Fatal(err)
		}
	}
	// An object whose copy is not on the node of the index's copy.
	files := c.ObjectFiles()
	var indexNode string
	for node := range files["8000000100000000"] {
		indexNode = node
	}
	k := -1
	for i := range 8 {
		if _, ok := files[fmt.Sprintf("00000001%08x", i)][indexNode]; !ok && indexNode != "" {
			k = i
		}
	}
	if k < 0 {
		t.Fatalf("every object's copy is on %q, with the index's: %v", indexNode, files)
	}
	b := block("dsync", k)
	if _, err := synced.WriteAt(b, int64(k)*obj+4096); err != nil {
		t.Fatal(err)
	}
	want[int64(k)*obj+4096] = b
	// The files stay open until the nodes are back: the last close ends
	// the mount's write lock, and the gateway flushes then.
	defer plain.Close()
	defer synced.Close()

	// O_DIRECT, as qemu with cache=none: the writes of a group reach the
	// mount one after the other (write-back from the page cache would send
	// them together, and the synced one's sync could cover the others).
	f, err := os.OpenFile(vdi, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	write := func(i int, off int64) {
		t.Helper()
		b := block("fsync", i)
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		want[off] = b
	}
	for i := range 6 {
		write(i, 8*obj+int64(i)*8192)
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 4 {
		write(10+i, 8*obj+int64(i)*8192+4096) // object 8 exists: these are not creations, which stay
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ms := scrape(t, "http://"+fsMetrics+"/metrics")
	if s := ms[`sheepfs_fsyncs_total{answer="synced"}`]; s < 3 {
		t.Fatalf("%.0f fsyncs answered after a synced write, want at least 3: the mount did not switch to synced writes", s)
	}

	powerLossAndReboot(t, c, "0badc0de-0000-4000-8000-000000000002")
	// Read through a mount of its own: the writer's kernel still caches
	// what was written through its page cache.
	got, err := os.ReadFile(c.Mount(c.Nodes[1].Addr()).VDI("sw"))
	if err != nil {
		t.Fatal(err)
	}
	for off, w := range want {
		if g := got[off : off+int64(len(w))]; !bytes.Equal(g, w) {
			t.Errorf("offset %d (object %d) reads %q..., want %q...", off, off/obj, g[:12], w[:12])
		}
	}
}

// alignedBlock returns a 4 KiB buffer aligned for O_DIRECT.
func alignedBlock() []byte {
	b := make([]byte, 2*4096)
	a := int(4096 - uintptr(unsafe.Pointer(&b[0]))%4096)
	return b[a%4096 : a%4096+4096]
}

// TestPowerLossKeepsSyncedWriteFromClient: a client's synced write (as
// sheepfs sends an O_SYNC write or one it expects an fsync after) is
// durable when answered, with whatever it builds on, without a flush: with
// one copy, writes allocate eight objects through one gateway (their index
// entries written, not synced), then one synced write lands in an object
// whose copy is not on the node of the index's copy. A power loss of every
// node right after must not take the index entry and with it the write.
// (Through sheepfs the fsync that follows an allocating write covers the
// entry; the gateway must not rely on that.)
func TestPowerLossKeepsSyncedWriteFromClient(t *testing.T) {
	parallel(t)
	c := NewClusterEnv(t, 3, 1, "SHEEP_FAULTS=1")
	const obj = 4 << 20
	cl := client.New([]string{c.Nodes[1].Addr()}, client.Options{Dial: keyDial(auth.RoleClient), RetryFor: 10 * time.Second})
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	createVDI(t, cl, "raw", 16*obj)
	v, err := cl.Lock(ctx, "raw")
	if err != nil {
		t.Fatal(err)
	}
	trackDurability(t, c)
	for i := range 8 {
		if err := cl.WriteAt(ctx, v.ID, bytes.Repeat([]byte{'a'}, 4096), int64(i)*obj, false); err != nil {
			t.Fatal(err)
		}
	}
	files := c.ObjectFiles()
	var indexNode string
	for node := range files[ids.IndexObject(v.ID, 0).String()] {
		indexNode = node
	}
	k := -1
	for i := range 8 {
		if _, ok := files[ids.DataObject(v.ID, uint32(i)).String()][indexNode]; !ok && indexNode != "" {
			k = i
		}
	}
	if k < 0 {
		t.Fatalf("every object's copy is on %q, with the index's: %v", indexNode, files)
	}
	want := bytes.Repeat([]byte{'s'}, 4096)
	if err := cl.WriteAt(ctx, v.ID, want, int64(k)*obj+4096, true); err != nil {
		t.Fatal(err)
	}
	powerLossAndReboot(t, c, "0badc0de-0000-4000-8000-000000000003")
	got := make([]byte, 4096)
	if err := cl.ReadAt(ctx, v.ID, got, int64(k)*obj+4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("object %d: the synced write reads back as %q..., want %q...", k, got[:8], want[:8])
	}
}

// TestPowerLossAfterCollect: the collector frees a deleted snapshot's
// object once the live VDI copied it away (a copy on write), and that
// copy's index entry, written through another gateway, was never flushed.
// A power loss of every node right after must not leave the VDI's entry
// pointing back at the freed object: the collector has every member sync
// before it frees. With one copy the entry and the snapshot's object are
// on different nodes for most objects; eight objects are written.
func TestPowerLossAfterCollect(t *testing.T) {
	parallel(t)
	c := NewClusterEnv(t, 3, 1, "SHEEP_FAULTS=1")
	const obj = 4 << 20
	cl := client.New([]string{c.Nodes[1].Addr()}, client.Options{Dial: keyDial(auth.RoleClient), RetryFor: 10 * time.Second})
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	createVDI(t, cl, "base", 8*obj)
	v, err := cl.Lock(ctx, "base")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		if err := cl.WriteAt(ctx, v.ID, bytes.Repeat([]byte{'a'}, 4096), int64(i)*obj, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := cl.Flush(ctx, v.ID); err != nil {
		t.Fatal(err)
	}
	if err := cl.Unlock(ctx, "base"); err != nil {
		t.Fatal(err)
	}
	if r := c.SheepAt(c.Nodes[2].Addr(), "vdi", "snapshot", "base@s"); r.Code != 0 {
		t.Fatalf("snapshot: %v", r)
	}
	trackDurability(t, c)
	if v, err = cl.Lock(ctx, "base"); err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte{'b'}, 4096)
	for i := range 8 { // copies on write, not flushed
		if err := cl.WriteAt(ctx, v.ID, want, int64(i)*obj+4096, false); err != nil {
			t.Fatal(err)
		}
	}
	before := len(c.ObjectFiles())
	if r := c.SheepAt(c.Nodes[2].Addr(), "vdi", "delete", "base@s"); r.Code != 0 {
		t.Fatalf("delete: %v", r)
	}
	if r := c.SheepAt(c.Nodes[2].Addr(), "vdi", "gc"); r.Code != 0 {
		t.Fatalf("gc: %v", r)
	}
	if after := len(c.ObjectFiles()); after > before-8 {
		t.Fatalf("%d object files before the snapshot's delete, %d after: its 8 objects were not freed", before, after)
	}
	powerLossAndReboot(t, c, "0badc0de-0000-4000-8000-000000000004")
	got := make([]byte, 8192)
	for i := range 8 {
		err := cl.ReadAt(ctx, v.ID, got, int64(i)*obj)
		if err != nil || !bytes.Equal(got[:4096], bytes.Repeat([]byte{'a'}, 4096)) || !bytes.Equal(got[4096:], want) {
			t.Errorf("object %d after the power loss: %q... %q... (%v), want the copy with both writes", i, got[:4], got[4096:4100], err)
		}
	}
}

// trackDurability has every node remember what its writes replace until
// they are synced (md fault track), for powerLossAndReboot.
func trackDurability(t *testing.T, c *Cluster) {
	t.Helper()
	for _, n := range c.Nodes {
		if r := c.SheepAt(n.Addr(), "node", "md", "fault", n.Dir, "track"); r.Code != 0 {
			t.Fatalf("md fault track on %s: %v", n.ID, r)
		}
	}
}

// powerLossAndReboot cuts every node's power at once (md fault powerloss:
// what was not synced is undone) and starts them again as after a reboot
// (a new boot ID), then waits for the cluster.
func powerLossAndReboot(t *testing.T, c *Cluster, bootID string) {
	t.Helper()
	var wg sync.WaitGroup
	for _, n := range c.Nodes {
		wg.Go(func() {
			if r := c.SheepAt(n.Addr(), "node", "md", "fault", n.Dir, "powerloss"); r.Code != 0 {
				t.Errorf("md fault powerloss on %s: %v", n.ID, r)
			}
		})
	}
	wg.Wait()
	if !waitFor(30*time.Second, func() bool {
		for _, n := range c.Nodes {
			if n.Running() {
				return false
			}
		}
		return true
	}) {
		t.Fatal("the nodes did not die of the power loss")
	}
	c.SetEnv("SHEEP_BOOT_ID=" + bootID)
	for i := range c.Nodes {
		c.Restart(i)
	}
	c.WaitOK()
}

// TestFlushWaitsForTheOnlyCopyOfAWrite: a flush may pass over a node that
// is down only if every write of its VDI since the last flush has a copy
// on a node synced since. With one copy, VDI lone writes to an object
// whose copy is not on the gateway, and that node goes down before any
// flush: lone's flush must not succeed meanwhile, while a flush of VDI
// other, through the same gateway and with its writes elsewhere, must
// (the gateway's wait for lone's node holds up no other VDI). Three ways
// down:
//   - the process is killed (kill -9: the page cache keeps the write) and
//     comes back in the same boot: lone's flush succeeds, and the write
//     reads back;
//   - the power is cut (the write is on no disk) and the node comes back
//     in a new boot: lone's flush fails with "writes lost" (EIO), once;
//   - the process is killed for good: once it has left the cluster and the
//     flush has waited for it in vain, "writes lost" too, once.
//
// (Passing the down node over, as the flush did before, it succeeded at
// once, and after the power loss the write read back as what the object
// held before.)
func TestFlushWaitsForTheOnlyCopyOfAWrite(t *testing.T) {
	parallel(t)
	c := NewClusterEnv(t, 3, 1, "SHEEP_FAULTS=1")
	const obj = 4 << 20
	gw := c.Nodes[0]
	cl := client.New([]string{gw.Addr()}, client.Options{Dial: keyDial(auth.RoleClient), RetryFor: 10 * time.Second})
	defer cl.Close()
	ctx := testCtx(t)
	createVDI(t, cl, "lone", 16*obj)
	createVDI(t, cl, "other", 16*obj)
	lone, err := cl.Lock(ctx, "lone")
	if err != nil {
		t.Fatal(err)
	}
	other, err := cl.Lock(ctx, "other")
	if err != nil {
		t.Fatal(err)
	}
	block := func(b byte) []byte { return bytes.Repeat([]byte{b}, 4096) }
	for _, id := range []ids.VDIID{lone.ID, other.ID} {
		for i := range 8 {
			if err := cl.WriteAt(ctx, id, block('a'), int64(i)*obj, false); err != nil {
				t.Fatal(err)
			}
		}
		if err := cl.Flush(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	// An object of lone whose only copy is on a node x other than the
	// gateway, and an object of other on neither.
	files := c.ObjectFiles()
	holder := func(id ids.VDIID, i int) int {
		for node := range files[ids.DataObject(id, uint32(i)).String()] {
			for j, n := range c.Nodes {
				if n.ID == node {
					return j
				}
			}
		}
		t.Fatalf("object %d of VDI %v is nowhere: %v", i, id, files)
		return -1
	}
	k, x := -1, -1
	for i := range 8 {
		if j := holder(lone.ID, i); j != 0 {
			k, x = i, j
		}
	}
	if k < 0 {
		t.Fatalf("every object of lone is on the gateway %s: %v", gw.ID, files)
	}
	ko := -1
	for i := range 8 {
		if holder(other.ID, i) != x {
			ko = i
		}
	}
	if ko < 0 {
		t.Fatalf("every object of other is on %s: %v", c.Nodes[x].ID, files)
	}
	node := c.Nodes[x]
	t.Logf("lone's object %d is on %s only; other's object %d is not", k, node.ID, ko)

	// down writes b to lone's object k, takes node down with stop, and,
	// if flush is set, starts a flush of lone once the gateway sees it
	// down; the flush must still be waiting after other's write and
	// flush, which must succeed, and 2 seconds more. It returns lone's
	// flush's answer.
	down := func(b byte, stop func(), flush bool) <-chan error {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
		defer cancel()
		if err := cl.WriteAt(ctx, lone.ID, block(b), int64(k)*obj, false); err != nil {
			t.Fatal(err)
		}
		stop()
		if !waitFor(30*time.Second, func() bool { return !node.Running() }) {
			t.Fatalf("%s did not die", node.ID)
		}
		if !waitFor(readyTimeout, func() bool {
			r := runCmd(quickTimeout, nil, nil, sheepBin, "--addr", gw.Addr(), "--timeout", "2s", "--json", "cluster", "info")
			var ci ClusterInfo
			if r.Code != 0 || json.Unmarshal([]byte(r.Stdout), &ci) != nil {
				return false
			}
			for _, ni := range ci.Nodes {
				if ni.ID == node.ID && ni.State == "up" {
					return false
				}
			}
			return true
		}) {
			t.Fatalf("the gateway %s does not see %s down", gw.ID, node.ID)
		}
		flushed := make(chan error, 1)
		if flush {
			go func() {
				// A context of its own: the flush may wait for the
				// gateway's whole retry time.
				ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
				defer cancel()
				flushed <- cl.Flush(ctx, lone.ID)
			}()
		}
		if err := cl.WriteAt(ctx, other.ID, block(b), int64(ko)*obj, false); err != nil {
			t.Fatalf("write to other while %s is down: %v", node.ID, err)
		}
		if err := cl.Flush(ctx, other.ID); err != nil {
			t.Fatalf("flush of other while lone's waits for %s: %v", node.ID, err)
		}
		select {
		case err := <-flushed:
			t.Fatalf("lone's flush returned (%v) while the only copy of its write was on %s, down", err, node.ID)
		case <-time.After(2 * time.Second): // time for a wrong answer to come
		}
		return flushed
	}
	read := func(id ids.VDIID, i int) []byte {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
		defer cancel()
		got := make([]byte, 4096)
		if err := cl.ReadAt(ctx, id, got, int64(i)*obj); err != nil {
			t.Fatal(err)
		}
		return got
	}
	flushAgain := func(what string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
		defer cancel()
		if err := cl.Flush(ctx, lone.ID); err != nil {
			t.Fatalf("the flush after %s: %v", what, err)
		}
	}

	// lostHere checks that err reports lone's write lost by the gateway's
	// own record of where it went (not by the client's list of boots).
	lostHere := func(err error, what string) {
		t.Helper()
		if !errs.Is(err, errs.Lost) || !strings.Contains(err.Error(), "only copies were on {"+string(node.ID)+"}") {
			t.Fatalf("%s: %v, want writes lost, whose only copies were on %s", what, err, node.ID)
		}
		t.Logf("%s: %v", what, err)
	}

	flushed := down('k', func() { c.Kill(x) }, true)
	c.Restart(x) // the same boot
	if err := <-flushed; err != nil {
		t.Fatalf("the flush after %s came back in the same boot: %v", node.ID, err)
	}
	if got := read(lone.ID, k); !bytes.Equal(got, block('k')) {
		t.Fatalf("lone's object %d reads %q... after the flush, want the write's %q...", k, got[:4], "kkkk")
	}
	if got := read(other.ID, ko); !bytes.Equal(got, block('k')) {
		t.Fatalf("other's object %d reads %q..., want %q...", ko, got[:4], "kkkk")
	}
	c.WaitOK()

	trackDurability(t, c)
	flushed = down('w', func() {
		if r := c.SheepAt(node.Addr(), "node", "md", "fault", node.Dir, "powerloss"); r.Code != 0 {
			t.Fatalf("md fault powerloss on %s: %v", node.ID, r)
		}
	}, true)
	node.Env = append(node.Env, "SHEEP_BOOT_ID=0badc0de-0000-4000-8000-000000000005")
	c.Restart(x)
	lostHere(<-flushed, "the flush after "+string(node.ID)+" came back in a new boot")
	t.Logf("lone's object %d now reads %q... (the write %s took was lost with its power)", k, read(lone.ID, k)[:4], node.ID)
	flushAgain("the one that reported the loss") // reported once
	// The loss was lone's: other's flushes are not told of it.
	func() {
		ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
		defer cancel()
		if err := cl.WriteAt(ctx, other.ID, block('o'), int64(ko)*obj, false); err != nil {
			t.Fatal(err)
		}
		if err := cl.Flush(ctx, other.ID); err != nil {
			t.Fatalf("other's flush after lone's loss: %v", err)
		}
	}()
	c.WaitOK()

	// Last, the node is killed and stays down: it leaves the cluster
	// (after the grace period). A snapshot of lone, which flushes first,
	// fails (it waits for the node in vain); the client's flush after it
	// reports the write lost, whether the snapshot's flush found that
	// already or not; once.
	down('g', func() { c.Kill(x) }, false)
	func() {
		ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
		defer cancel()
		err := cl.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDISnapshot, Name: "lone", Tag: "after"}, nil)
		if err == nil {
			t.Fatalf("a snapshot of lone succeeded with the only copy of a write on %s, gone", node.ID)
		}
		t.Logf("the snapshot: %v", err)
		lostHere(cl.Flush(ctx, lone.ID), "the flush with "+string(node.ID)+" gone for good")
	}()
	flushAgain("the one that reported the loss")
}
