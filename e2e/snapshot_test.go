package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/auth"
	"github.com/sheepfs/sheepfs/client"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
)

// The test process may talk to the daemons as a client (it serves no FUSE
// mount, so nothing deadlocks); file I/O on mounts stays in subprocesses.

// newClient returns a cluster client through addrs, closed at the end.
func newClient(t testing.TB, addrs ...string) *client.Client {
	cl := client.New(addrs, client.Options{Dial: keyDial(auth.RoleClient), RetryFor: 30 * time.Second})
	t.Cleanup(cl.Close)
	return cl
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	t.Cleanup(cancel)
	return ctx
}

// lookupVDI returns the VDI NAME or snapshot NAME@TAG.
func lookupVDI(t testing.TB, cl *client.Client, full string) proto.VDIInfo {
	t.Helper()
	var v proto.VDIInfo
	if err := cl.Admin(testCtx(t), proto.AdminRequest{Cmd: proto.AdminVDILookup, Name: full}, &v); err != nil {
		t.Fatalf("lookup %s: %v", full, err)
	}
	return v
}

// createVDI creates VDI name of size bytes through cl and returns it.
func createVDI(t testing.TB, cl *client.Client, name string, size uint64) proto.VDIInfo {
	t.Helper()
	if err := cl.Admin(testCtx(t), proto.AdminRequest{Cmd: proto.AdminVDICreate, Name: name, Size: size}, nil); err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	return lookupVDI(t, cl, name)
}

// readAll reads the whole of VDI or snapshot full through cl.
func readAll(t testing.TB, cl *client.Client, full string) []byte {
	t.Helper()
	v := lookupVDI(t, cl, full)
	buf := make([]byte, v.Size)
	for off := 0; off < len(buf); off += 1 << 20 {
		if err := cl.ReadAt(testCtx(t), v.ID, buf[off:min(off+1<<20, len(buf))], int64(off)); err != nil {
			t.Fatalf("read %s at %d: %v", full, off, err)
		}
	}
	return buf
}

// firstDiff describes where a and b first differ.
func firstDiff(a, b []byte) string {
	if len(a) != len(b) {
		return fmt.Sprintf("sizes %d and %d", len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			return fmt.Sprintf("byte %d (object %d): %#x, want %#x", i, int64(i)/objSize, a[i], b[i])
		}
	}
	return "no difference"
}

// TestSnapshotsReadBackThroughEveryNode: nine snapshots of one VDI, each
// taken after qemu-io wrote a different pattern; each reads back exactly
// its own data through every node, the snapshot files are read-only, and a
// clone of the third, written to, leaves the snapshot and the VDI as they
// were.
func TestSnapshotsReadBackThroughEveryNode(t *testing.T) {
	parallel(t)
	requireEnv(t, "qemu-io")
	c := NewCluster(t, 3, 3)
	m := c.Mount()
	const size = 40 << 20
	run(t, quickTimeout, "truncate", "-s", "40M", m.VDI("s"))
	model := make([]byte, size)
	var snaps [][]byte
	for i := 1; i <= 9; i++ {
		// A region every round overwrites (shared objects get copied on
		// write), plus a region of its own (objects only this round and
		// later snapshots own).
		off := int64(i) * 4 << 20
		run(t, cmdTimeout, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P %d 1M 2M", i),
			"-c", fmt.Sprintf("write -P %d %d 1M", i+100, off+int64(i)*4096), m.VDI("s"))
		fill(model[1<<20:3<<20], byte(i))
		fill(model[off+int64(i)*4096:off+int64(i)*4096+1<<20], byte(i+100))
		if r := c.Sheep("vdi", "snapshot", fmt.Sprintf("s@snap%d", i)); r.Code != 0 {
			t.Fatalf("snapshot %d: %v", i, r)
		}
		snaps = append(snaps, bytes.Clone(model))
	}
	check := func(when string) {
		t.Helper()
		for _, n := range c.Nodes {
			cl := newClient(t, n.Addr())
			for i, want := range snaps {
				if got := readAll(t, cl, fmt.Sprintf("s@snap%d", i+1)); !bytes.Equal(got, want) {
					t.Errorf("%s: snapshot %d read through %s: %s", when, i+1, n.ID, firstDiff(got, want))
				}
			}
			if got := readAll(t, cl, "s"); !bytes.Equal(got, model) {
				t.Errorf("%s: the VDI read through %s: %s", when, n.ID, firstDiff(got, model))
			}
		}
	}
	check("after nine snapshots")
	// The snapshot files on the mount: qemu-io reads each one's patterns.
	for i := 1; i <= 9; i++ {
		off := int64(i)*4<<20 + int64(i)*4096
		run(t, cmdTimeout, "qemu-io", "-r", "-f", "raw", "-c", fmt.Sprintf("read -P %d 1M 2M", i),
			"-c", fmt.Sprintf("read -P %d %d 1M", i+100, off), m.Path("snapshot", "s", fmt.Sprintf("snap%d", i)))
	}

	// A clone of snapshot 3, written to.
	if r := c.Sheep("vdi", "clone", "s@snap3", "web"); r.Code != 0 {
		t.Fatalf("clone: %v", r)
	}
	run(t, cmdTimeout, "qemu-io", "-f", "raw", "-c", "write -P 77 0 6M", m.VDI("web"))
	web := bytes.Clone(snaps[2])
	fill(web[:6<<20], 77)
	cl := newClient(t, c.Addrs()...)
	if got := readAll(t, cl, "web"); !bytes.Equal(got, web) {
		t.Errorf("the clone: %s", firstDiff(got, web))
	}
	check("after writing to a clone of snapshot 3")

	// The family as sheep vdi tree draws it: the chain of snapshots with
	// the VDI at its end, and the clone under snapshot 3.
	tree := c.Sheep("vdi", "tree").Stdout
	for _, want := range []string{"s@snap1  (snapshot", "└─ s@snap9  (snapshot", "└─ s  (current", "─ web  (current"} {
		if !strings.Contains(tree, want) {
			t.Errorf("vdi tree lacks %q:\n%s", want, tree)
		}
	}

	// No rollback while the VDI is open for writing; then one to snap4.
	h, msg := holdOpen(t, m.VDI("s"), "os.O_RDWR")
	if h == nil {
		t.Fatalf("open for writing: %s", msg)
	}
	if r := c.Sheep("vdi", "rollback", "s@snap4"); r.Code == 0 || !strings.Contains(r.Stderr, "open for writing") {
		t.Errorf("rollback of a VDI open for writing: %v", r)
	}
	h.Release()
	if !waitFor(10*time.Second, func() bool { return c.Sheep("vdi", "rollback", "s@snap4").Code == 0 }) {
		t.Fatalf("rollback after the writer closed: %v", c.Sheep("vdi", "rollback", "s@snap4"))
	}
	model = bytes.Clone(snaps[3])
	check("after a rollback to snapshot 4")
	run(t, cmdTimeout, "qemu-io", "-r", "-f", "raw", "-c", "read -P 4 1M 2M", "-c", fmt.Sprintf("read -P 104 %d 1M", 16<<20+4*4096), "-c", "read -P 0 36M 1M", m.VDI("s"))

	// Snapshots refuse writes, through the gateway and through the mount.
	v := lookupVDI(t, cl, "s@snap2")
	if err := cl.WriteAt(testCtx(t), v.ID, []byte("x"), 0, false); err == nil {
		t.Errorf("a write to a snapshot through the gateway succeeded")
	}
	check("after a refused write")
}

// TestConcurrentSnapshots: two mounts on different nodes take snapshots of
// one VDI at the same time (touch in snapshot/NAME/); every one of them is
// recorded, and each mount lists all of them. Snapshots and clones made
// through one node are seen at once through another.
func TestConcurrentSnapshots(t *testing.T) {
	parallel(t)
	c := NewCluster(t, 3, 3)
	m1, m2 := c.Mount(c.Nodes[1].Addr()), c.Mount(c.Nodes[2].Addr())
	run(t, quickTimeout, "truncate", "-s", "16M", m1.VDI("c"))
	run(t, quickTimeout, "dd", "if=/dev/urandom", "of="+m1.VDI("c"), "bs=1M", "count=8", "conv=notrunc,fsync", "status=none")
	const each = 12
	done := make(chan Result, 2)
	for k, m := range []*Mount{m1, m2} {
		go func() {
			var script strings.Builder
			for i := range each {
				fmt.Fprintf(&script, "touch %s\n", q(m.Path("snapshot", "c", fmt.Sprintf("m%d-%d", k+1, i))))
			}
			done <- shellResult(cmdTimeout, script.String())
		}()
	}
	for range 2 {
		if r := <-done; r.Code != 0 {
			t.Fatalf("touch: %v", r)
		}
	}
	want := []string{}
	for k := 1; k <= 2; k++ {
		for i := range each {
			want = append(want, fmt.Sprintf("m%d-%d", k, i))
		}
	}
	sort.Strings(want)
	for _, m := range []*Mount{m1, m2} {
		var got []string
		ok := waitFor(10*time.Second, func() bool {
			got = strings.Fields(shell(t, quickTimeout, "ls "+q(m.Path("snapshot", "c"))).Stdout)
			sort.Strings(got)
			return slices.Equal(got, want)
		})
		if !ok {
			t.Errorf("%s lists snapshots %v, want %v", m.Dir, got, want)
		}
	}
	// Read your writes through any node: a snapshot or clone made through
	// node1 is there at once through node2 and on node2's mount.
	for i := range 8 {
		tag := fmt.Sprintf("n1-%d", i)
		if r := c.SheepAt(c.Nodes[1].Addr(), "vdi", "snapshot", "c@"+tag); r.Code != 0 {
			t.Fatal(r)
		}
		if r := c.SheepAt(c.Nodes[2].Addr(), "vdi", "snapshots", "c"); r.Code != 0 || !strings.Contains(r.Stdout, "c@"+tag+" ") {
			t.Errorf("snapshot c@%s made through node1 is not listed through node2 at once: %v", tag, r)
		}
		if r := shellResult(quickTimeout, "stat "+q(m2.Path("snapshot", "c", tag))); r.Code != 0 {
			t.Errorf("snapshot c@%s made through node1 is not on node2's mount at once: %v", tag, r)
		}
		if r := c.SheepAt(c.Nodes[1].Addr(), "vdi", "clone", "c@"+tag, "k"+tag); r.Code != 0 {
			t.Fatal(r)
		}
		if r := shellResult(quickTimeout, "stat "+q(m2.VDI("k"+tag))); r.Code != 0 {
			t.Errorf("clone k%s made through node1 is not on node2's mount at once: %v", tag, r)
		}
	}

	cl := newClient(t, c.Addrs()...)
	data := readAll(t, cl, "c")
	for _, tag := range want {
		if got := readAll(t, cl, "c@"+tag); !bytes.Equal(got, data) {
			t.Errorf("snapshot c@%s: %s", tag, firstDiff(got, data))
		}
	}
}

// TestPerVDICopies: a VDI created with --copies 2 in a 3-copy cluster keeps
// 2 replicas of every object, and so do its snapshots' and clones' (a clone
// cannot ask for another count); its file shows the count as an xattr.
func TestPerVDICopies(t *testing.T) {
	parallel(t)
	requireEnv(t, "getfattr")
	c := NewCluster(t, 3, 3)
	m := c.Mount()
	if r := c.Sheep("vdi", "create", "two", "32M", "--copies", "2"); r.Code != 0 {
		t.Fatal(r)
	}
	run(t, quickTimeout, "truncate", "-s", "32M", m.VDI("three"))
	for _, name := range []string{"two", "three"} {
		run(t, cmdTimeout, "dd", "if=/dev/urandom", "of="+m.VDI(name), "bs=1M", "count=12", "conv=notrunc,fsync", "status=none")
	}
	if r := c.Sheep("vdi", "snapshot", "two@s"); r.Code != 0 {
		t.Fatal(r)
	}
	run(t, cmdTimeout, "dd", "if=/dev/urandom", "of="+m.VDI("two"), "bs=1M", "seek=2", "count=1", "conv=notrunc,fsync", "status=none")
	if r := c.Sheep("vdi", "clone", "two@s", "two-c", "--copies", "3"); r.Code == 0 {
		t.Errorf("a clone with another copies count than its source was made")
	}
	if r := c.Sheep("vdi", "clone", "two@s", "two-c"); r.Code != 0 {
		t.Fatal(r)
	}
	run(t, cmdTimeout, "dd", "if=/dev/urandom", "of="+m.VDI("two-c"), "bs=1M", "seek=9", "count=1", "conv=notrunc,fsync", "status=none")
	cl := newClient(t, c.Addrs()...)
	if problems := objectsVsReferences(t, c, cl); len(problems) > 0 {
		t.Errorf("replica counts: %s", strings.Join(problems, "; "))
	}
	for file, want := range map[string]string{m.VDI("two"): "2", m.VDI("two-c"): "2", m.VDI("three"): "3", m.Path("snapshot", "two", "s"): "2"} {
		got := strings.TrimSpace(run(t, quickTimeout, "getfattr", "--only-values", "-n", "user.sheepfs.copies", file).Stdout)
		if got != want {
			t.Errorf("%s: user.sheepfs.copies = %q, want %q", file, got, want)
		}
	}
}

func fill(b []byte, v byte) {
	for i := range b {
		b[i] = v
	}
}

// TestSnapshotWhileWriting: a snapshot taken while qemu-io writes (O_DIRECT,
// one write after another, each 64 KiB of a pass's pattern, pass after pass)
// is the image of one moment: the blocks written by pass k+1 so far, then
// pass k's. And it never changes afterwards.
func TestSnapshotWhileWriting(t *testing.T) {
	parallel(t)
	requireEnv(t, "qemu-io")
	c := NewCluster(t, 3, 3)
	m := c.Mount()
	const region, block = 8 << 20, 64 << 10
	run(t, quickTimeout, "truncate", "-s", "16M", m.VDI("w"))
	var script strings.Builder
	for pass := 1; pass <= 40; pass++ {
		for off := 0; off < region; off += block {
			fmt.Fprintf(&script, "write -P %d %d %d\n", pass, off, block)
		}
	}
	cmdFile := t.TempDir() + "/cmds"
	if err := os.WriteFile(cmdFile, []byte(script.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan Result, 1)
	go func() {
		done <- shellResult(5*time.Minute, fmt.Sprintf("qemu-io -f raw -t none %s < %s > /dev/null", q(m.VDI("w")), q(cmdFile)))
	}()
	cl := newClient(t, c.Addrs()...)
	var taken []string
	for i := 0; ; i++ {
		select {
		case r := <-done:
			if r.Code != 0 {
				t.Fatalf("qemu-io: %v", r)
			}
			if len(taken) < 3 {
				t.Fatalf("qemu-io finished after only %d snapshots; the test did not test", len(taken))
			}
			goto check
		case <-time.After(200 * time.Millisecond):
		}
		tag := fmt.Sprintf("w@t%d", i)
		if r := c.Sheep("vdi", "snapshot", tag); r.Code != 0 {
			t.Fatalf("snapshot while writing: %v", r)
		}
		taken = append(taken, tag)
	}
check:
	first := map[string][]byte{}
	for _, tag := range taken {
		img := readAll(t, cl, tag)[:region]
		first[tag] = img
		if err := cutOfPasses(img, block); err != "" {
			t.Errorf("snapshot %s is not the image of one moment: %s", tag, err)
		}
	}
	// More writes to the VDI, then the snapshots again: unchanged.
	run(t, cmdTimeout, "qemu-io", "-f", "raw", "-c", "write -P 99 0 8M", m.VDI("w"))
	for _, tag := range taken {
		if got := readAll(t, cl, tag)[:region]; !bytes.Equal(got, first[tag]) {
			t.Errorf("snapshot %s changed after later writes: %s", tag, firstDiff(got, first[tag]))
		}
	}
}

// cutOfPasses checks that img (blocks written in order, pass after pass,
// each block filled with its pass number) is a prefix of blocks with
// pattern k+1 followed by blocks with pattern k (or all one pattern, or
// zeros before the first pass ended); "" if so.
func cutOfPasses(img []byte, block int) string {
	var pats []byte
	for off := 0; off < len(img); off += block {
		b := img[off : off+block]
		for _, x := range b {
			if x != b[0] {
				return fmt.Sprintf("block at %d is torn (%#x and %#x)", off, b[0], x)
			}
		}
		pats = append(pats, b[0])
	}
	hi := pats[0]
	i := 0
	for i < len(pats) && pats[i] == hi {
		i++
	}
	if i == len(pats) {
		return "" // between two passes
	}
	lo := pats[i]
	for j := i; j < len(pats); j++ {
		if pats[j] != lo || lo+1 != hi {
			return fmt.Sprintf("blocks 0-%d hold pass %d, block %d holds %d, block %d holds %d", i-1, hi, i, lo, j, pats[j])
		}
	}
	return ""
}

// TestDeleteInEveryOrder: a small family (a VDI, two snapshots, a clone
// of the first) deleted in every order, one family per order, all side by
// side; after each round of deletes the objects on the nodes are exactly
// those still referenced, and after the last none is left.
func TestDeleteInEveryOrder(t *testing.T) {
	parallel(t)
	c := NewCluster(t, 3, 3)
	cl := newClient(t, c.Addrs()...)
	baseUsed := c.Info().Used
	orders := permutations([]string{"a", "a@1", "a@2", "b"})
	for k := range orders {
		buildFamily(t, c, cl, fmt.Sprintf("r%d", k))
	}
	if problems := objectsVsReferences(t, c, cl); len(problems) > 0 {
		t.Fatalf("before any delete: %s", strings.Join(problems, "; "))
	}
	for i := range orders[0] {
		for k, order := range orders {
			name := fmt.Sprintf("r%d", k) + order[i]
			if r := c.Sheep("vdi", "delete", name); r.Code != 0 {
				t.Fatalf("order %v: delete %s: %v", order, name, r)
			}
		}
		if problems := objectsVsReferences(t, c, cl); len(problems) > 0 {
			t.Fatalf("after deleting the first %d of each order: %s", i+1, strings.Join(problems, "; "))
		}
	}
	if files := c.ObjectFiles(); len(files) != 0 {
		t.Errorf("%d objects left after deleting everything", len(files))
	}
	if used := c.Info().Used; used > baseUsed+(16<<20) {
		t.Errorf("cluster space used is %d bytes after deleting everything, %d before", used, baseUsed)
	}
}

// buildFamily makes VDI pa with snapshots pa@1, pa@2 and clone pb of pa@1,
// with writes in between that share some objects and copy others. pb was
// snapshotted as pb@x, which is deleted again: its image stays, dead, for
// pb to inherit from.
func buildFamily(t testing.TB, c *Cluster, cl *client.Client, p string) {
	t.Helper()
	ctx := testCtx(t)
	sheep := func(args ...string) {
		t.Helper()
		if r := c.Sheep(args...); r.Code != 0 {
			t.Fatalf("sheep %v: %v", args, r)
		}
	}
	write := func(name string, idx ...int) {
		t.Helper()
		v, err := cl.Lock(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range idx {
			if err := cl.WriteAt(ctx, v.ID, bytes.Repeat([]byte{byte(i + 1)}, 4096), int64(i)*objSize+8192, false); err != nil {
				t.Fatal(err)
			}
		}
		if err := cl.Flush(ctx, v.ID); err != nil {
			t.Fatal(err)
		}
		if err := cl.Unlock(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	sheep("vdi", "create", p+"a", "24M")
	write(p+"a", 0, 1, 2)
	sheep("vdi", "snapshot", p+"a@1")
	write(p+"a", 1, 3)
	sheep("vdi", "snapshot", p+"a@2")
	write(p+"a", 3, 4)
	sheep("vdi", "clone", p+"a@1", p+"b")
	write(p+"b", 2, 5)
	sheep("vdi", "snapshot", p+"b@x")
	write(p+"b", 0)
	sheep("vdi", "delete", p+"b@x")
}

// objectsVsReferences compares the object files on the nodes with what the
// cluster's VDIs and snapshots reference: each referenced data object on
// exactly as many nodes as its VDI's copies, no other data object anywhere, and index objects
// only of images the cluster still knows.
func objectsVsReferences(t testing.TB, c *Cluster, cl *client.Client) []string {
	t.Helper()
	ctx := testCtx(t)
	var imgs []proto.ImageInfo
	if err := cl.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDITree}, &imgs); err != nil {
		t.Fatal(err)
	}
	known := map[ids.VDIID]bool{}
	want := map[string]int{} // data object -> copies
	for _, im := range imgs {
		known[im.ID] = true
		if im.VDI == nil {
			continue
		}
		var owners []ids.VDIID
		if err := cl.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDIOwners, Name: im.VDI.FullName(), Count: 1 << 16}, &owners); err != nil {
			t.Fatal(err)
		}
		for idx, o := range owners {
			if o != 0 {
				want[dataOID(uint32(o), uint32(idx))] = im.VDI.Copies
			}
		}
	}
	var problems []string
	files := c.ObjectFiles()
	for oid, where := range files {
		v, err := ids.ParseObjectID(oid)
		if err != nil {
			continue
		}
		switch {
		case v.IsIndex() && !known[v.VDI()]:
			problems = append(problems, fmt.Sprintf("index object %s of a forgotten image is left", oid))
		case !v.IsIndex() && want[oid] == 0:
			problems = append(problems, fmt.Sprintf("data object %s is referenced by nothing but left on %d nodes", oid, len(where)))
		case !v.IsIndex() && len(where) != want[oid]:
			problems = append(problems, fmt.Sprintf("data object %s is on %d nodes, want %d", oid, len(where), want[oid]))
		}
	}
	for oid := range want {
		if files[oid] == nil {
			problems = append(problems, fmt.Sprintf("referenced data object %s is on no node", oid))
		}
	}
	sort.Strings(problems)
	return problems
}

func permutations(xs []string) [][]string {
	if len(xs) <= 1 {
		return [][]string{append([]string(nil), xs...)}
	}
	var out [][]string
	for i := range xs {
		rest := append(append([]string(nil), xs[:i]...), xs[i+1:]...)
		for _, p := range permutations(rest) {
			out = append(out, append([]string{xs[i]}, p...))
		}
	}
	return out
}
