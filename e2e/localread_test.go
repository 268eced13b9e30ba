package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// Local reads: a mount reads a VDI from the object files of the daemon on
// its machine, under leases that every change moving, replacing or
// doubting those files ends. These tests check that such a read never
// returns anything but the last write, and that reads do go local.

// aligned returns n bytes aligned for O_DIRECT.
func aligned(n int) []byte {
	b := make([]byte, n+4096)
	a := int(4096-uintptr(unsafe.Pointer(&b[0]))%4096) % 4096
	return b[a : a+n]
}

// directFile opens path for O_DIRECT reads and writes.
func directFile(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// pattern returns n bytes made from seed.
func pattern(n int, seed uint64) []byte {
	b := aligned(n)
	r := rand.New(rand.NewPCG(seed, 7))
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// TestLocalReadsFollowChanges: reads through a mount go to the files of
// the daemon it talks to, and still return the last write after each
// change that ends their leases: an overwrite, a discard and the write
// that allocates the object again, bytes flipped in the daemon's file (the
// read goes through the daemon, which repairs its copy), a snapshot, the
// reads of the objects the VDI then shares with it and the copy-on-write
// after them, and the daemon killed while a write
// goes through another node (the mount moves to it) and then started
// again (its copy is stale until recovered).
func TestLocalReadsFollowChanges(t *testing.T) {
	requireEnv(t)
	c := NewCluster(t, 3, 3)
	fsMetrics := freeAddr(t)
	n0 := c.Nodes[0]
	m := c.mount([]string{"--metrics", fsMetrics}, n0.Addr(), c.Nodes[1].Addr())
	localReads := func() float64 {
		return sum(scrape(t, "http://"+fsMetrics+"/metrics"), "sheepfs_local_reads_total", `path="local"`)
	}
	path := m.VDI("lr")
	run(t, quickTimeout, "truncate", "-s", "16M", path)
	f := directFile(t, path)
	const obj = 4 << 20
	want := make([]byte, 16<<20) // the model
	write := func(off int64, b []byte) {
		t.Helper()
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatalf("write at %d: %v", off, err)
		}
		copy(want[off:], b)
	}
	check := func(step string) {
		t.Helper()
		got := aligned(1 << 20)
		for off := int64(0); off < int64(len(want)); off += int64(len(got)) {
			if _, err := f.ReadAt(got, off); err != nil {
				t.Fatalf("%s: read at %d: %v", step, off, err)
			}
			if !bytes.Equal(got, want[off:off+int64(len(got))]) {
				i := 0
				for got[i] == want[off+int64(i)] {
					i++
				}
				t.Fatalf("%s: byte %d reads %#x, want %#x", step, off+int64(i), got[i], want[off+int64(i)])
			}
		}
	}

	write(0, pattern(8<<20, 1))
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	before := localReads()
	check("written")
	check("written, again")
	if got := localReads(); got <= before {
		t.Fatalf("no read went local: sheepfs_local_reads_total{path=\"local\"} %v, before %v", got, before)
	}

	write(obj+8192, pattern(4096, 2))
	check("overwritten")

	if err := syscall.Fallocate(int(f.Fd()), 0x01|0x02, obj, obj); err != nil { // KEEP_SIZE|PUNCH_HOLE
		t.Fatalf("punch object 1: %v", err)
	}
	clear(want[obj : 2*obj])
	check("object 1 discarded")
	write(obj+4096, pattern(4096, 3))
	check("object 1 written again")

	// Bytes flipped in node0's copy of object 0.
	id := c.VDI("lr").ID
	files := c.ObjectFiles()
	p0 := files[dataOID(id, 0)][n0.ID]
	if p0 == "" {
		t.Fatalf("no copy of object 0 of VDI %d on %s", id, n0.ID)
	}
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0))
	t.Logf("flipped %s at %v", p0, flipBytes(t, r, p0, 4, 4096, 8192))
	dropCaches(t)
	check("bytes flipped in the local copy")
	var paths []string
	for _, n := range c.Nodes {
		paths = append(paths, files[dataOID(id, 0)][n.ID])
	}
	if !waitFor(30*time.Second, func() bool { return sameData(t, paths...) }) {
		t.Fatalf("node0's copy of object 0 was not repaired")
	}
	// The mount asks for a lease on object 0 again only a while after
	// its copy failed a check: it is local again before the snapshot.
	time.Sleep(3 * time.Second)
	before = localReads()
	check("repaired")
	if got := localReads(); got <= before {
		t.Fatalf("no read went local after the repair: %v, before %v", got, before)
	}

	// After a snapshot the VDI shares every object with it: reads go
	// local on the snapshot's objects, until a write gives the VDI its
	// own copy of one.
	snap := m.Path("snapshot", "lr", "s1")
	run(t, quickTimeout, "touch", snap)
	atSnap := bytes.Clone(want)
	before = localReads()
	check("after a snapshot")
	if got := localReads(); got <= before {
		t.Fatalf("no read of the objects shared with the snapshot went local: %v, before %v", got, before)
	}
	write(4096, pattern(4096, 4))
	check("written after a snapshot")
	got := make([]byte, len(atSnap))
	sf, err := os.Open(snap)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sf.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	sf.Close()
	if !bytes.Equal(got, atSnap) {
		t.Fatal("the snapshot does not read as the VDI was when it was taken")
	}

	// node0 killed: the next write goes through node1, to node1 and
	// node2 only.
	c.Kill(0)
	write(4096, pattern(4096, 5))
	write(2*obj, pattern(4096, 6))
	check("written through node1 while node0 is down")
	c.Restart(0)
	c.WaitOK()
	check("node0 back")
	before = localReads()
	check("node0 back, again")
	if got := localReads(); got <= before {
		t.Fatalf("no read went local through node1: %v, before %v", got, before)
	}
}

// TestLocalReadsRandomModel: a random sequence of O_DIRECT writes,
// discards of whole objects, snapshots and reads of a VDI, checked
// against a model after every step: a read under a lease that a change
// should have ended would return old bytes. The seed is logged
// (LOCALREAD_SEED repeats a run).
func TestLocalReadsRandomModel(t *testing.T) {
	requireEnv(t)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("LOCALREAD_SEED"); s != "" {
		fmt.Sscan(s, &seed)
	}
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 1))
	c := NewCluster(t, 3, 2)
	fsMetrics := freeAddr(t)
	m := c.mount([]string{"--metrics", fsMetrics}, c.Nodes[0].Addr())
	const objs, obj, blk = 6, 4 << 20, 4096
	path := m.VDI("model")
	run(t, quickTimeout, "truncate", "-s", fmt.Sprint(objs*obj), path)
	f := directFile(t, path)
	want := make([]byte, objs*obj)
	got := aligned(blk)
	snaps := 0
	for i := range 400 {
		o := int64(r.IntN(objs))
		off := o*obj + int64(r.IntN(8))*blk // a few blocks per object: reads hit written ones
		switch k := r.IntN(20); {
		case k < 8:
			b := pattern(blk, seed+uint64(i))
			if _, err := f.WriteAt(b, off); err != nil {
				t.Fatalf("op %d: write at %d: %v", i, off, err)
			}
			copy(want[off:], b)
		case k < 10:
			if err := syscall.Fallocate(int(f.Fd()), 0x01|0x02, o*obj, obj); err != nil {
				t.Fatalf("op %d: punch object %d: %v", i, o, err)
			}
			clear(want[o*obj : (o+1)*obj])
		case k == 10 && snaps < 5:
			snaps++
			run(t, quickTimeout, "touch", m.Path("snapshot", "model", fmt.Sprint("s", snaps)))
		default:
			if _, err := f.ReadAt(got, off); err != nil {
				t.Fatalf("op %d: read at %d: %v", i, off, err)
			}
			if !bytes.Equal(got, want[off:off+blk]) {
				t.Fatalf("op %d (seed %d): the block at %d reads %x..., want %x...", i, seed, off, got[:8], want[off:off+8])
			}
		}
	}
	if n := sum(scrape(t, "http://"+fsMetrics+"/metrics"), "sheepfs_local_reads_total", `path="local"`); n == 0 {
		t.Fatal("no read went local")
	}
}

// TestLocalReadsEndWithTheirDaemon: a mount reading under leases from a
// daemon that is killed never returns the bytes from before a write that
// another mount got acknowledged through another node after the kill.
// Both mounts go through node2 first (objects are lent by the node the
// VDI is locked through); the writer moves to node0. The cluster marks a
// node whose port refuses down at once, so that write can be acknowledged
// within milliseconds of the kill: a lease must end with the daemon's
// process, not a heartbeat later.
func TestLocalReadsEndWithTheirDaemon(t *testing.T) {
	requireEnv(t)
	c := NewCluster(t, 3, 3)
	fsMetrics := freeAddr(t)
	reader := c.mount([]string{"--metrics", fsMetrics}, c.Nodes[2].Addr(), c.Nodes[0].Addr())
	writer := c.Mount(c.Nodes[2].Addr(), c.Nodes[0].Addr())
	path := writer.VDI("kw")
	run(t, quickTimeout, "truncate", "-s", "8M", path)
	wf := directFile(t, path)
	old, next := pattern(4096, 1), pattern(4096, 2)
	if _, err := wf.WriteAt(old, 0); err != nil {
		t.Fatal(err)
	}
	if err := wf.Sync(); err != nil {
		t.Fatal(err)
	}
	rf, err := os.OpenFile(reader.VDI("kw"), os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	got := aligned(4096)
	for range 5 {
		if _, err := rf.ReadAt(got, 0); err != nil || !bytes.Equal(got, old) {
			t.Fatalf("the reader reads %x... (%v), want %x...", got[:8], err, old[:8])
		}
	}
	if n := sum(scrape(t, "http://"+fsMetrics+"/metrics"), "sheepfs_local_reads_total", `path="local"`); n == 0 {
		t.Fatal("the reader's reads did not go local")
	}

	killed := time.Now()
	c.Kill(2)
	if _, err := wf.WriteAt(next, 0); err != nil {
		t.Fatal(err)
	}
	t.Logf("the write was acknowledged %v after the kill", time.Since(killed))
	for i := range 20 {
		if _, err := rf.ReadAt(got, 0); err != nil {
			t.Fatalf("read %d after the write: %v", i, err)
		}
		if !bytes.Equal(got, next) {
			t.Fatalf("read %d, %v after the kill, returned the bytes from before the acknowledged write", i, time.Since(killed))
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// TestLocalReadsOnlyFromTheWritersNode: a writable VDI's objects are lent
// only by the node it is locked through, whose index is current. A reader
// on another node, whose cached index may predate a copy-on-write made
// elsewhere, reads through its daemon, which drops that cache within a
// second (indexTTL): from then on every read returns the write. (A lease
// from that cache would have lasted until the next cluster state.)
func TestLocalReadsOnlyFromTheWritersNode(t *testing.T) {
	requireEnv(t)
	c := NewCluster(t, 3, 3)
	fsMetrics := freeAddr(t)
	reader := c.mount([]string{"--metrics", fsMetrics}, c.Nodes[0].Addr())
	writer := c.Mount(c.Nodes[1].Addr())
	const obj = 4 << 20
	path := writer.VDI("sh")
	run(t, quickTimeout, "truncate", "-s", "8M", path)
	wf, err := os.OpenFile(path, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	old, next := pattern(4096, 1), pattern(4096, 2)
	for _, off := range []int64{0, obj} {
		if _, err := wf.WriteAt(old, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := wf.Sync(); err != nil {
		t.Fatal(err)
	}
	run(t, quickTimeout, "touch", writer.Path("snapshot", "sh", "s1"))
	rf, err := os.OpenFile(reader.VDI("sh"), os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rf.Close()
	got := aligned(4096)
	if _, err := rf.ReadAt(got, obj); err != nil { // node0 loads the index page
		t.Fatal(err)
	}
	if _, err := wf.WriteAt(next, 0); err != nil { // copy-on-write through node1
		t.Fatal(err)
	}
	if err := wf.Close(); err != nil { // and the unlock: the VDI is locked nowhere
		t.Fatal(err)
	}
	written := time.Now()
	// A read at once may still be old (the reader's daemon's cache);
	// whatever it asks for then must not outlive that cache.
	time.Sleep(300 * time.Millisecond)
	if _, err := rf.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	for i := range 20 {
		if _, err := rf.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, next) {
			t.Fatalf("read %d, %v after the write, returned the bytes from before it", i, time.Since(written))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := sum(scrape(t, "http://"+fsMetrics+"/metrics"), "sheepfs_local_reads_total", `path="local"`); n != 0 {
		t.Fatalf("%v reads of a VDI locked through another node, or nowhere, went local", n)
	}
}

// TestLocalReadsLetGoOfRemovedFiles: a mount does not keep the files of
// objects the daemon removed (a deleted VDI) open, which would keep their
// disk space.
func TestLocalReadsLetGoOfRemovedFiles(t *testing.T) {
	requireEnv(t)
	c := NewCluster(t, 3, 3)
	m := c.Mount(c.Nodes[0].Addr())
	path := m.VDI("del")
	run(t, quickTimeout, "truncate", "-s", "64M", path)
	f := directFile(t, path)
	got := aligned(4096)
	for o := int64(0); o < 16; o++ {
		if _, err := f.WriteAt(pattern(4096, uint64(o)), o<<22); err != nil {
			t.Fatal(err)
		}
		if _, err := f.ReadAt(got, o<<22); err != nil {
			t.Fatal(err)
		}
	}
	held := func() int {
		n := 0
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", m.proc.cmd.Process.Pid))
		for _, fd := range fds {
			l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", m.proc.cmd.Process.Pid, fd.Name()))
			if strings.HasPrefix(l, c.Dir) && strings.Contains(l, "/obj/") {
				n++
			}
		}
		return n
	}
	if held() == 0 {
		t.Fatal("the mount holds no object file: its reads did not go local")
	}
	f.Close()
	run(t, quickTimeout, "rm", path)
	if !waitFor(30*time.Second, func() bool { return held() == 0 }) {
		t.Fatalf("the mount still holds %d object files of a deleted VDI", held())
	}
}
