package e2e

import (
	"bytes"
	"fmt"
	"github.com/sheepfs/sheepfs/auth"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Checksums: bytes flipped in object files behind the daemons' backs are
// never read back as data. These tests damage the files directly and read
// through a mount, and compare the replicas' files afterwards.

// objData is the data part of an object file (its first 4 MiB; the
// checksums follow).
const objData = 4 << 20

// flipBytes inverts n bytes of the file at path at random offsets in
// [lo, hi), and returns the offsets.
func flipBytes(t *testing.T, r *rand.Rand, path string, n int, lo, hi int64) []int64 {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var offs []int64
	for range n {
		off := lo + r.Int64N(hi-lo)
		b := []byte{0}
		if _, err := f.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 0xff
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		offs = append(offs, off)
	}
	return offs
}

// sameData reports whether the data parts of the files are equal.
func sameData(t *testing.T, paths ...string) bool {
	t.Helper()
	var first []byte
	for i, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, objData)
		_, err = io.ReadFull(f, b)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if i == 0 {
			first = b
		} else if !bytes.Equal(first, b) {
			return false
		}
	}
	return true
}

// dataObjects lists the data objects (not index objects) with a copy on
// every one of nodes, sorted.
func dataObjects(files map[string]map[string]string, nodes ...string) []string {
	var out []string
	for oid, at := range files {
		if oid[0] >= '8' { // the top bit marks index objects
			continue
		}
		all := true
		for _, n := range nodes {
			all = all && at[n] != ""
		}
		if all {
			out = append(out, oid)
		}
	}
	sort.Strings(out)
	return out
}

// TestRotRepairedOnRead: four bytes flipped in three object files on the
// node a mount reads through: the mount reads back what was written, the
// node logs and counts the damage, and its files are repaired to equal
// the other replicas'. Then one block damaged on every replica: a read
// of it fails with EIO, never with other bytes, and the rest of the VDI
// still reads.
func TestRotRepairedOnRead(t *testing.T) {
	parallel(t)
	requireEnv(t)
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(uint64(seed), 0))
	c := NewCluster(t, 3, 3)
	n0 := c.Nodes[0]
	m := c.Mount(n0.Addr())
	vdi := m.VDI("rot")
	src := filepath.Join(c.Dir, "rot.src")
	shell(t, cmdTimeout, fmt.Sprintf("head -c 24M /dev/urandom > %s && truncate -s 24M %s && dd if=%s of=%s bs=1M conv=notrunc,fsync status=none",
		q(src), q(vdi), q(src), q(vdi)))

	files := c.ObjectFiles()
	objs := dataObjects(files, n0.ID)
	if len(objs) < 6 {
		t.Fatalf("only %d data objects", len(objs))
	}
	bad := objs[:3]
	for _, oid := range bad {
		t.Logf("flipped %s on %s at %v", oid, n0.ID, flipBytes(t, r, files[oid][n0.ID], 4, 0, objData))
	}
	dropCaches(t)
	if res := runCmd(cmdTimeout, nil, nil, "cmp", src, vdi); res.Code != 0 {
		t.Fatalf("the VDI does not read back as written after the flips: %v", res)
	}
	// The damaged copies are repaired from the others.
	deadline := time.Now().Add(30 * time.Second)
	for _, oid := range bad {
		var paths []string
		for _, n := range c.Nodes {
			paths = append(paths, files[oid][n.ID])
		}
		for !sameData(t, paths...) {
			if time.Now().After(deadline) {
				t.Fatalf("%s on %s was not repaired", oid, n0.ID)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	var info NodeInfo
	for _, ni := range c.Info().Nodes {
		if ni.ID == n0.ID {
			info = ni
		}
	}
	t.Logf("%s integrity: %+v", n0.ID, info.Integrity)
	if info.Integrity.Damaged < 3 || info.Integrity.Repaired < 3 {
		t.Fatalf("%s counts %+v, want at least 3 damaged and 3 repaired", n0.ID, info.Integrity)
	}
	if b, _ := os.ReadFile(n0.Log); !bytes.Contains(b, []byte("damaged copy")) {
		t.Fatal("the damage was not logged")
	}

	// Flips on another node are not read through the mount (it reads
	// the gateway's copies): vdi check finds and repairs them.
	n1 := c.Nodes[1]
	bad1 := objs[3:6]
	for _, oid := range bad1 {
		t.Logf("flipped %s on %s at %v", oid, n1.ID, flipBytes(t, r, files[oid][n1.ID], 4, 0, objData))
	}
	res := c.Sheep("vdi", "check", "rot")
	t.Logf("vdi check: %s", res.Stdout)
	if res.Code != 0 {
		t.Fatalf("vdi check: %v", res)
	}
	for _, oid := range bad1 {
		if !strings.Contains(res.Stdout, "repaired  "+oid) {
			t.Errorf("vdi check did not report %s repaired", oid)
		}
		var paths []string
		for _, n := range c.Nodes {
			paths = append(paths, files[oid][n.ID])
		}
		if !sameData(t, paths...) {
			t.Errorf("%s on %s was not repaired by vdi check", oid, n1.ID)
		}
	}
	var sum struct {
		Checked, OK, Repaired, Lost int
	}
	c.SheepJSON(&sum, "vdi", "check", "rot")
	if sum.Repaired != 0 || sum.Lost != 0 || sum.OK == 0 {
		t.Fatalf("a second vdi check: %+v, want everything ok", sum)
	}

	// One block of one object damaged on every replica: EIO for it.
	oid := objs[4]
	var blockOff int64 = 8 << 12 // block 8 of the object
	for _, n := range c.Nodes {
		flipBytes(t, r, files[oid][n.ID], 1, blockOff, blockOff+4096)
	}
	var idx int64
	fmt.Sscanf(oid[8:], "%x", &idx)
	vdiOff := idx*objData + blockOff
	dropCaches(t)
	res = runCmd(cmdTimeout, nil, nil, "dd", "if="+vdi, "of=/dev/null", "bs=4096", "iflag=direct",
		fmt.Sprintf("skip=%d", vdiOff/4096), "count=1")
	if res.Code == 0 || !strings.Contains(res.Stderr, "Input/output error") {
		t.Fatalf("a block damaged on every copy: %v, want EIO", res)
	}
	res = runCmd(cmdTimeout, nil, nil, "dd", "if="+vdi, "of=/dev/null", "bs=4096", "iflag=direct",
		fmt.Sprintf("skip=%d", vdiOff/4096+1), "count=1")
	if res.Code != 0 {
		t.Fatalf("the next block: %v", res)
	}
	res = c.Sheep("vdi", "check", "rot")
	if res.Code == 0 || !strings.Contains(res.Stdout, "lost      "+oid) {
		t.Fatalf("vdi check with an object damaged on every copy: %v, want a failure naming %s", res, oid)
	}
}

// scrubJSON is `sheep --json cluster scrub`.
type scrubJSON struct {
	Nodes []struct {
		ID    string `json:"id"`
		Scrub struct {
			State    string `json:"state"`
			Finished int64  `json:"finished"`
			Checked  int    `json:"checked"`
			Repaired int    `json:"repaired"`
			Lost     int    `json:"lost"`
		} `json:"scrub"`
	} `json:"nodes"`
}

// scrubPass starts a scrub pass on every node (at a high rate) and waits
// until each has finished it; it returns the scrub's status then.
func scrubPass(t *testing.T, c *Cluster) scrubJSON {
	t.Helper()
	start := time.Now().Unix()
	if r := c.Sheep("cluster", "scrub", "--max-rate", "400MB/s", "--start"); r.Code != 0 {
		t.Fatalf("cluster scrub --start: %v", r)
	}
	var sj scrubJSON
	if !waitFor(2*time.Minute, func() bool {
		sj = scrubJSON{}
		c.SheepJSON(&sj, "cluster", "scrub")
		for _, n := range sj.Nodes {
			if n.Scrub.Finished < start || n.Scrub.State == "scrubbing" {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("scrub passes did not finish: %+v", sj)
	}
	return sj
}

// TestScrubRepairs: copies damaged behind the daemons' backs on nodes no
// mount reads through (bytes flipped, a file truncated, a file deleted)
// are found by a scrub pass and repaired: afterwards every replica's file
// holds the same data, and the scrub's status says what it did.
func TestScrubRepairs(t *testing.T) {
	parallel(t)
	requireEnv(t)
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(uint64(seed), 1))
	c := NewCluster(t, 3, 3)
	m := c.Mount(c.Nodes[0].Addr())
	vdi := m.VDI("scrub")
	shell(t, cmdTimeout, fmt.Sprintf("truncate -s 24M %s && head -c 24M /dev/urandom | dd of=%s bs=1M conv=notrunc,fsync iflag=fullblock status=none", q(vdi), q(vdi)))
	n1, n2 := c.Nodes[1], c.Nodes[2]
	files := c.ObjectFiles()
	objs := dataObjects(files, n1.ID, n2.ID)
	if len(objs) < 6 {
		t.Fatalf("only %d data objects", len(objs))
	}
	flipBytes(t, r, files[objs[0]][n1.ID], 4, 0, objData)
	flipBytes(t, r, files[objs[1]][n2.ID], 4, 0, objData)
	// Its checksums: both sums of a block's 8-byte entry (the current
	// one, and the one from before the last write, which also counts).
	blk := r.Int64N(1024)
	flipBytes(t, r, files[objs[2]][n2.ID], 1, objData+8*blk, objData+8*blk+4)
	flipBytes(t, r, files[objs[2]][n2.ID], 1, objData+8*blk+4, objData+8*blk+8)
	if err := os.Truncate(files[objs[3]][n1.ID], objData/2); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(files[objs[4]][n2.ID]); err != nil {
		t.Fatal(err)
	}
	damaged := objs[:5]

	sj := scrubPass(t, c)
	repaired, checked := 0, 0
	for _, n := range sj.Nodes {
		repaired += n.Scrub.Repaired
		checked += n.Scrub.Checked
		if n.Scrub.Lost != 0 {
			t.Errorf("%s: scrub found %d objects lost", n.ID, n.Scrub.Lost)
		}
	}
	t.Logf("scrub checked %d objects, repaired %d", checked, repaired)
	if repaired != len(damaged) || checked < len(objs) {
		for _, n := range c.Nodes {
			logTail(t, n.Log, 30)
		}
		t.Fatalf("scrub checked %d, repaired %d objects, want %d repaired", checked, repaired, len(damaged))
	}
	files = c.ObjectFiles()
	for _, oid := range damaged {
		var paths []string
		for _, n := range c.Nodes {
			if files[oid][n.ID] == "" {
				t.Fatalf("%s has no copy on %s after the scrub", oid, n.ID)
			}
			paths = append(paths, files[oid][n.ID])
		}
		if !sameData(t, paths...) {
			t.Errorf("%s: the replicas differ after the scrub", oid)
		}
	}
	info := string(c.Sheep("cluster", "info").Stdout)
	if !strings.Contains(info, "scrub:      last passes finished by") {
		t.Errorf("cluster info says nothing of the scrub:\n%s", info)
	}
}

// TestFaultSeams: a disk that returns damaged data on every read, on the
// node a mount reads through: the mount still reads what was written.
// Then a write torn inside a block on another node, which is killed in
// the middle of it (the store's fault seam tears it and kills the daemon):
// the write is acknowledged by the others, and after the node restarts
// nothing reads back as rot, nothing acknowledged is lost, and the
// replicas agree.
func TestFaultSeams(t *testing.T) {
	parallel(t)
	c := NewClusterEnv(t, 3, 3, "SHEEP_FAULTS=1")
	n0, n1 := c.Nodes[0], c.Nodes[1]
	m := c.Mount(n0.Addr())
	vdi := m.VDI("seams")
	run(t, quickTimeout, "truncate", "-s", "16M", vdi)
	src := filepath.Join(c.Dir, "seams.src")
	writeRandomFile(t, src, 16*miB)
	shell(t, cmdTimeout, fmt.Sprintf("dd if=%s of=%s bs=1M conv=notrunc,fsync status=none", q(src), q(vdi)))

	if res := c.SheepAt(n0.Addr(), "node", "md", "fault", n0.Dir, "corrupt"); res.Code != 0 {
		t.Fatalf("md fault corrupt: %v", res)
	}
	dropCaches(t)
	if res := runCmd(cmdTimeout, nil, nil, "cmp", src, vdi); res.Code != 0 {
		t.Fatalf("reads through a disk returning damaged data: %v", res)
	}
	if res := c.SheepAt(n0.Addr(), "node", "md", "fault", n0.Dir, "heal"); res.Code != 0 {
		t.Fatalf("md fault heal: %v", res)
	}

	// A torn write and a kill on node1.
	if res := c.SheepAt(n1.Addr(), "node", "md", "fault", n1.Dir, "tear"); res.Code != 0 {
		t.Fatalf("md fault tear: %v", res)
	}
	src2 := filepath.Join(c.Dir, "seams.src2")
	writeRandomFile(t, src2, 8*miB)
	shell(t, cmdTimeout, fmt.Sprintf("dd if=%s of=%s bs=1M seek=4 conv=notrunc,fsync status=none && dd if=%s of=%s bs=1M seek=4 conv=notrunc status=none",
		q(src2), q(vdi), q(src2), q(src)))
	if !waitFor(30*time.Second, func() bool { return !n1.Running() }) {
		t.Fatal("node1 was not killed by its torn write")
	}
	c.Restart(1)
	dropCaches(t)
	if res := runCmd(cmdTimeout, nil, nil, "cmp", src, vdi); res.Code != 0 {
		t.Fatalf("after the torn write and the restart: %v", res)
	}
	// Once node1 is back in the placement and recovery has settled,
	// vdi check finds every copy good, and the replicas' files hold the
	// same data.
	var last Result
	var differ []string
	if !waitFor(90*time.Second, func() bool {
		hi, err := healInfoAt(n0.Addr())
		if err != nil || hi.Recovery.State != "idle" || hi.Recovery.Degraded > 0 {
			return false
		}
		last = c.Sheep("vdi", "check", "seams")
		if last.Code != 0 || !strings.Contains(last.Stdout, " 0 repaired, 0 lost") {
			return false
		}
		differ = nil
		files := c.ObjectFiles()
		objs := dataObjects(files, n0.ID, n1.ID, c.Nodes[2].ID)
		for _, oid := range objs {
			if !sameData(t, files[oid][n0.ID], files[oid][n1.ID], files[oid][c.Nodes[2].ID]) {
				differ = append(differ, oid)
			}
		}
		return len(differ) == 0 && len(objs) == 4
	}) {
		t.Fatalf("after the torn write: vdi check %v; replicas differ for %v", last, differ)
	}
}

// TestFullDiskLeavesNoOrphans: one node's disk (a 48 MiB tmpfs) fills
// while a VDI is written, the VDI is deleted, and a scrub pass runs: no
// object of the VDI is left on any node.
func TestFullDiskLeavesNoOrphans(t *testing.T) {
	parallel(t)
	requireEnv(t)
	c := newFullDiskCluster(t, "48m")
	m := c.Mount(c.Nodes[0].Addr())
	vdi := m.VDI("full")
	run(t, quickTimeout, "truncate", "-s", "256M", vdi)
	var id uint32
	for _, v := range c.VDIs() {
		if v.Name == "full" {
			id = v.ID
		}
	}
	// Written until the full node makes writes fail (or to the end).
	res := shellResult(cmdTimeout, fmt.Sprintf("dd if=/dev/urandom of=%s bs=1M count=160 conv=notrunc,fsync status=none", q(vdi)))
	t.Logf("writing past the full disk: %v", res)
	m.Unmount()
	mine := func() []string {
		var out []string
		for oid, at := range c.ObjectFiles() {
			var v uint64
			fmt.Sscanf(oid, "%x", &v)
			if uint32(v>>32)&0xffffff == id {
				for n := range at {
					out = append(out, oid+"@"+n)
				}
			}
		}
		sort.Strings(out)
		return out
	}
	t.Logf("%d copies of the VDI's objects before the delete", len(mine()))
	if r := c.Sheep("vdi", "delete", "full"); r.Code != 0 {
		t.Fatalf("vdi delete: %v", r)
	}
	scrubPass(t, c)
	if left := mine(); len(left) != 0 {
		t.Fatalf("after the delete and a scrub pass, copies of the VDI's objects remain: %v", left)
	}
}

// newFullDiskCluster starts 3 nodes with 3 copies, node2's data directory
// on a tmpfs of the given size (a disk that fills).
func newFullDiskCluster(t *testing.T, size string) *Cluster {
	t.Helper()
	return newCluster(t, 3, 3, freeBase(t, 3), func(n *Node) {
		if n.Index != 2 {
			return
		}
		if err := os.MkdirAll(n.Dir, 0o755); err != nil {
			t.Fatal(err)
		}
		shell(t, quickTimeout, fmt.Sprintf("mount -t tmpfs -o size=%s tmpfs %s", size, q(n.Dir)))
		t.Cleanup(func() { runCmd(quickTimeout, nil, nil, "umount", "-l", n.Dir) })
	})
}

// flipProxy forwards TCP connections to target and inverts one byte in
// each direction of the first connections it carries, after the first
// 64 KiB (past the TLS handshake): the bytes damaged on the wire.
type flipProxy struct {
	ln      net.Listener
	target  string
	flipped atomic.Int64
	conns   atomic.Int64
}

func startFlipProxy(t *testing.T, target string) *flipProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &flipProxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			first := p.conns.Add(1) <= 2 // damage the first two connections only
			go p.serve(c, first)
		}
	}()
	return p
}

func (p *flipProxy) serve(c net.Conn, damage bool) {
	defer c.Close()
	u, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer u.Close()
	pipe := func(dst, src net.Conn) {
		var seen int64
		buf := make([]byte, 32<<10)
		done := !damage
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if !done && seen+int64(n) > 64<<10 {
					buf[n-1] ^= 0x01
					done = true
					p.flipped.Add(1)
				}
				seen += int64(n)
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				if tc, ok := dst.(*net.TCPConn); ok {
					tc.CloseWrite()
				}
				return
			}
		}
	}
	go pipe(u, c)
	pipe(c, u)
}

// TestWireDamageRetried: bytes damaged on the wire between a mount and a
// daemon (a proxy inverts one bit each way) break the connection, never
// the data: the mount reconnects, retries, and what it wrote and reads
// back is what was written.
func TestWireDamageRetried(t *testing.T) {
	parallel(t)
	requireEnv(t)
	c := NewCluster(t, 3, 3)
	p := startFlipProxy(t, c.Nodes[0].Addr())
	m := c.MountTLS(p.ln.Addr().String())
	vdi := m.VDI("wire")
	run(t, quickTimeout, "truncate", "-s", "32M", vdi)
	src := filepath.Join(c.Dir, "wire.src")
	writeRandomFile(t, src, 32*miB)
	shell(t, cmdTimeout, fmt.Sprintf("dd if=%s of=%s bs=1M conv=notrunc,fsync status=none", q(src), q(vdi)))
	dropCaches(t)
	if res := runCmd(cmdTimeout, nil, nil, "cmp", src, vdi); res.Code != 0 {
		t.Fatalf("after damage on the wire: %v", res)
	}
	t.Logf("%d connections through the proxy, %d bytes damaged", p.conns.Load(), p.flipped.Load())
	if p.flipped.Load() == 0 || p.conns.Load() < 2 {
		t.Fatalf("the proxy damaged %d bytes over %d connections: the test did not test", p.flipped.Load(), p.conns.Load())
	}
	// The other nodes hold what was written too.
	m2 := c.Mount(c.Nodes[1].Addr())
	if res := runCmd(cmdTimeout, nil, nil, "cmp", src, m2.VDI("wire")); res.Code != 0 {
		t.Fatalf("read through another node: %v", res)
	}
}

// TestScrubFreesUnreferenced: data objects of a VDI that its index does
// not reference (what a crash between an object's creation and its index
// entry leaves), made here with replica writes from a peer, are freed by
// a scrub pass once nothing wrote them for the grace period; one written
// within it, and the VDI's real data, stay.
func TestScrubFreesUnreferenced(t *testing.T) {
	// Freed at the second pass that finds it so, 2 s after the first.
	parallel(t)
	c := NewClusterEnv(t, 3, 3, "SHEEP_SCRUB_CONFIRM=2")
	m := c.Mount(c.Nodes[0].Addr())
	vdi := m.VDI("u")
	run(t, quickTimeout, "truncate", "-s", "64M", vdi)
	src := filepath.Join(c.Dir, "u.src")
	writeRandomFile(t, src, 4*miB)
	shell(t, cmdTimeout, fmt.Sprintf("dd if=%s of=%s bs=1M conv=notrunc,fsync status=none", q(src), q(vdi)))
	var info struct {
		Image uint32 `json:"image"`
	}
	var list []struct {
		Name  string `json:"name"`
		Image uint32 `json:"image"`
	}
	c.SheepJSON(&list, "vdi", "list")
	for _, v := range list {
		if v.Name == "u" {
			info.Image = v.Image
		}
	}
	epoch := ids.Epoch(c.Info().Epoch)
	old := ids.Version(time.Now().Add(-2 * time.Hour).UnixNano())
	fresh := ids.Version(time.Now().UnixNano())
	plant := func(idx uint32, ver ids.Version) string {
		oid := ids.DataObject(ids.VDIID(info.Image), idx)
		for _, n := range c.Nodes {
			w := dialWireAs(t, n.Addr(), auth.RolePeer)
			if r := w.call(proto.Header{Op: proto.OpWriteObj, ID: uint64(oid), Epoch: epoch, Flags: proto.FlagCreate}, uint64(ver), []byte("left by a crash")); r.Flags&proto.FlagError != 0 {
				t.Fatalf("plant %v on %s: %v %q", oid, n.ID, r.Kind, r.Data)
			}
		}
		return oid.String()
	}
	inside, past, young := plant(5, old), plant(20, old), plant(6, fresh)
	scrubPass(t, c)
	// One pass finds them; they are freed only by a later one.
	if files := c.ObjectFiles(); len(files[inside]) != 3 {
		t.Fatalf("an unreferenced object was freed at the first pass that found it: %v", files[inside])
	}
	time.Sleep(3 * time.Second)
	scrubPass(t, c)
	files := c.ObjectFiles()
	for _, oid := range []string{inside, past} {
		if len(files[oid]) != 0 {
			t.Errorf("unreferenced object %s past the grace period is still on %v", oid, files[oid])
		}
	}
	if len(files[young]) != 3 {
		t.Errorf("unreferenced object %s written within the grace period has %d copies, want 3 kept", young, len(files[young]))
	}
	if first := dataOID(info.Image, 0); len(files[first]) != 3 {
		t.Errorf("the VDI's own object %s has %d copies", first, len(files[first]))
	}
	dropCaches(t)
	if r := shellResult(cmdTimeout, fmt.Sprintf("cmp -n %d %s %s", 4*miB, q(src), q(vdi))); r.Code != 0 {
		t.Fatalf("the VDI's data after the scrub: %v", r)
	}
}

// TestKillAllDuringRandomWritesLeavesNoRot: every node is killed with -9
// at once while fio writes 4 KiB blocks at random (O_DIRECT, queue depth
// 16) to objects whose checksum trailers the nodes have mapped into
// memory (objstore/tmap.go: a change's entries are a copy into the page
// cache, made before its data is written). After the restart no copy of
// any block looks damaged: the whole image reads through the mount, vdi
// check finds no damaged copy and loses nothing, and no node counts
// damage. (Entries that did not reach the file, as with a private
// mapping, make every block written since the mapping read as rot.)
func TestKillAllDuringRandomWritesLeavesNoRot(t *testing.T) {
	parallel(t)
	requireEnv(t, "fio")
	c := NewCluster(t, 3, 3)
	m := c.Mount()
	vdi := m.VDI("kr")
	const size = 32 << 20
	run(t, quickTimeout, "truncate", "-s", fmt.Sprint(size), vdi)
	src := filepath.Join(c.Dir, "kr.src")
	writeRandomFile(t, src, size)
	shell(t, cmdTimeout, fmt.Sprintf("dd if=%s of=%s bs=1M conv=notrunc,fsync status=none", q(src), q(vdi)))

	for round := range 2 {
		fio := exec.Command("fio", "--name=kr", "--filename="+vdi, "--size=32M", "--rw=randwrite", "--bs=4k",
			"--ioengine=libaio", "--direct=1", "--iodepth=16", "--time_based", "--runtime=20", "--randrepeat=0")
		var out bytes.Buffer
		fio.Stdout, fio.Stderr = &out, &out
		if err := fio.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(4 * time.Second) // every object changed many times: mapped
		for i := range c.Nodes {
			c.Kill(i)
		}
		for i := range c.Nodes {
			c.Restart(i)
		}
		c.WaitOK()
		// fio's writes in flight at the kill wait for the cluster and
		// go on; what it says about them is not this test's concern.
		_ = fio.Wait()
		t.Logf("round %d: fio after the kill: %s", round, lastLines(out.String(), 3))

		dropCaches(t)
		if r := runCmd(cmdTimeout, nil, nil, "dd", "if="+vdi, "of=/dev/null", "bs=1M", "iflag=direct"); r.Code != 0 {
			t.Fatalf("round %d: the image does not read whole after every node was killed: %v", round, r)
		}
		r := c.Sheep("vdi", "check", "kr")
		t.Logf("round %d: vdi check: %s", round, lastLines(r.Stdout, 3))
		if r.Code != 0 || strings.Contains(r.Stdout, "damaged") {
			t.Fatalf("round %d: vdi check after every node was killed: %v", round, r)
		}
		for _, ni := range c.Info().Nodes {
			if ni.Integrity.Damaged != 0 {
				t.Fatalf("round %d: %s counts %+v after the kill, want no damage", round, ni.ID, ni.Integrity)
			}
		}
	}
}

// lastLines is the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
