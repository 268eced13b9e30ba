package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// lsNames lists a directory on the mount with ls(1).
func lsNames(t testing.TB, dir string) []string {
	t.Helper()
	return strings.Fields(run(t, quickTimeout, "ls", "-1", dir).Stdout)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// lsSize returns the size column of ls -l for a file.
func lsSize(t testing.TB, path string) int64 {
	t.Helper()
	r := run(t, quickTimeout, "ls", "-l", path)
	f := strings.Fields(r.Stdout)
	if len(f) < 5 {
		t.Fatalf("ls -l printed %q", r.Stdout)
	}
	var n int64
	if _, err := fmt.Sscan(f[4], &n); err != nil {
		t.Fatalf("ls -l printed %q", r.Stdout)
	}
	return n
}

// TestVDILifecycle: VDIs are created by truncate and by the CLI, grow by
// truncate, are deleted by rm (freeing their objects), and cannot be
// deleted or opened for writing elsewhere while a process has them open
// for writing.
func TestVDILifecycle(t *testing.T) {
	parallel(t)
	requireEnv(t, "python3", "truncate", "getfattr")
	c := NewCluster(t, 3, 3)
	m := c.Mount()

	// truncate creates a thin VDI.
	a := m.VDI("a")
	run(t, quickTimeout, "truncate", "-s", "1G", a)
	if n := lsSize(t, a); n != giB {
		t.Errorf("ls -l shows a new 1 GiB VDI as %d bytes", n)
	}
	if du := duKiB(t, a); du != 0 {
		t.Errorf("du of a new VDI is %d KiB, want 0", du)
	}
	if v := c.VDI("a"); v.Size != uint64(giB) || v.Copies != 3 {
		t.Errorf("sheep vdi list shows a as %+v, want 1 GiB with 3 copies", v)
	}
	// ... and grows it.
	run(t, quickTimeout, "truncate", "-s", "2G", a)
	if n := lsSize(t, a); n != 2*giB {
		t.Errorf("after truncate -s 2G, ls -l shows %d bytes", n)
	}
	if v := c.VDI("a"); v.Size != uint64(2*giB) {
		t.Errorf("after truncate -s 2G, sheep vdi list shows %d bytes", v.Size)
	}

	// The CLI creates VDIs that the mount shows.
	if r := c.Sheep("vdi", "create", "x", "10G"); r.Code != 0 {
		t.Fatalf("sheep vdi create x 10G: %v", r)
	}
	if names := lsNames(t, m.Path("vdi")); !contains(names, "x") || !contains(names, "a") {
		t.Errorf("ls vdi shows %v, want a and x", names)
	}
	if n := lsSize(t, m.VDI("x")); n != 10*giB {
		t.Errorf("ls -l shows x (created as 10G) as %d bytes", n)
	}

	// rm deletes a written VDI, frees its objects and its space.
	w := m.VDI("w")
	run(t, quickTimeout, "truncate", "-s", "64M", w)
	src := filepath.Join(t.TempDir(), "random")
	writeRandomFile(t, src, 16*miB)
	shell(t, cmdTimeout, fmt.Sprintf("dd if=%s of=%s bs=1M conv=fsync,notrunc status=none", q(src), q(w)))
	wid := c.VDI("w").ID
	objectsOf := func() []string {
		var out []string
		for oid, reps := range c.ObjectFiles() {
			var id uint64
			fmt.Sscanf(oid, "%016x", &id)
			if uint32(id>>32)&0xffffff == wid {
				for n := range reps {
					out = append(out, oid+"@"+n)
				}
			}
		}
		return out
	}
	if objs := objectsOf(); len(objs) != 3*(4+1) {
		t.Errorf("after writing 16 MiB, VDI w has object replicas %v, want 4 data + 1 index objects, 3 copies each", objs)
	}
	usedBefore := readClusterJSON(t, m).Used
	run(t, quickTimeout, "rm", w)
	if names := lsNames(t, m.Path("vdi")); contains(names, "w") {
		t.Errorf("ls vdi still shows w after rm: %v", names)
	}
	for _, v := range c.VDIs() {
		if v.Name == "w" {
			t.Errorf("sheep vdi list still shows w after rm")
		}
	}
	if objs := objectsOf(); len(objs) != 0 {
		t.Errorf("after rm, replicas of w's objects remain: %v", objs)
	}
	usedAfter := readClusterJSON(t, m).Used
	if usedBefore-usedAfter < 3*16*miB {
		t.Errorf("cluster/info.json used went from %d to %d after deleting a VDI with 16 MiB written (3 copies), want it %d bytes lower",
			usedBefore, usedAfter, 3*16*miB)
	}

	// rm of a VDI open for writing: EBUSY, until the writer closes it.
	b := m.VDI("b")
	run(t, quickTimeout, "truncate", "-s", "100M", b)
	h, errMsg := holdOpen(t, b, "os.O_RDWR")
	if h == nil {
		t.Fatalf("open b for writing: %s", errMsg)
	}
	r := runCmd(quickTimeout, nil, nil, "rm", b)
	if r.Code == 0 || !strings.Contains(r.Stderr, "Device or resource busy") {
		t.Errorf("rm of a VDI open for writing: want \"Device or resource busy\", got %v", r)
	}
	if !contains(lsNames(t, m.Path("vdi")), "b") {
		t.Errorf("the refused rm deleted b anyway")
	}
	if v := c.VDI("b"); !v.Locked {
		t.Errorf("sheep vdi list does not show b as locked while it is open for writing: %+v", v)
	}
	// A read-only open does not block deletion.
	ro, errMsg := holdOpen(t, m.VDI("x"), "os.O_RDONLY")
	if ro == nil {
		t.Fatalf("open x read-only: %s", errMsg)
	}

	// A second mount may read b but not open it for writing.
	m2 := c.Mount(c.Nodes[1].Addr(), c.Nodes[2].Addr())
	if h2, errMsg := holdOpen(t, m2.VDI("b"), "os.O_RDWR"); h2 != nil {
		h2.Release()
		t.Errorf("a second mount opened b for writing while the first holds it")
	} else if !strings.Contains(errMsg, "Device or resource busy") {
		t.Errorf("a second mount opening b for writing: want \"Device or resource busy\", got %q", errMsg)
	}
	// The program sees only EBUSY; the refusing mount's log and the
	// writer attribute name the writer.
	if !waitFor(5*time.Second, func() bool {
		log, _ := os.ReadFile(m2.Log)
		return regexp.MustCompile(`open vdi/b for writing: .*open for writing by mount m~[0-9a-f]+ on node node0`).Match(log)
	}) {
		logTail(t, m2.Log, 5)
		t.Errorf("the second mount's log does not name the writer of b")
	}
	writer := strings.TrimSpace(run(t, quickTimeout, "getfattr", "--only-values", "-n", "user.sheepfs.writer", m2.VDI("b")).Stdout)
	if !regexp.MustCompile(`^mount m~[0-9a-f]+ on node node0$`).MatchString(writer) {
		t.Errorf("user.sheepfs.writer of b through the second mount: %q, want mount ... on node node0", writer)
	}
	own := strings.TrimSpace(run(t, quickTimeout, "getfattr", "--only-values", "-n", "user.sheepfs.writer", b).Stdout)
	if own != writer+", this mount" {
		t.Errorf("user.sheepfs.writer of b through the writing mount: %q, want %q", own, writer+", this mount")
	}
	if h2, errMsg := holdOpen(t, m2.VDI("b"), "os.O_RDONLY"); h2 == nil {
		t.Errorf("a second mount cannot open b read-only while the first writes it: %s", errMsg)
	} else {
		h2.Release()
	}

	h.Release()
	// The kernel sends FUSE RELEASE after close(2) returns: allow it to
	// arrive.
	var last Result
	if !waitFor(30*time.Second, func() bool {
		last = runCmd(quickTimeout, nil, nil, "rm", b)
		return last.Code == 0
	}) {
		t.Errorf("rm of b after its writer exited: %v", last)
	}
	if contains(lsNames(t, m.Path("vdi")), "b") {
		t.Errorf("b is still listed after rm")
	}
	run(t, quickTimeout, "rm", m.VDI("x")) // open read-only elsewhere: fine
	ro.Release()

	// Once the first mount let go, the second may write.
	c2 := m2.VDI("c")
	run(t, quickTimeout, "truncate", "-s", "10M", m.VDI("c"))
	hc, errMsg := holdOpen(t, m.VDI("c"), "os.O_RDWR")
	if hc == nil {
		t.Fatalf("open c for writing: %s", errMsg)
	}
	if h2, _ := holdOpen(t, c2, "os.O_RDWR"); h2 != nil {
		h2.Release()
		t.Fatalf("the second mount opened c for writing while the first holds it")
	}
	hc.Release()
	var msg string
	if !waitFor(30*time.Second, func() bool {
		var h2 *holder
		h2, msg = holdOpen(t, c2, "os.O_RDWR")
		h2.Release()
		return h2 != nil
	}) {
		t.Errorf("the second mount cannot open c for writing after the first closed it: %s", msg)
	}
}

// readClusterJSON reads cluster/info.json on the mount.
func readClusterJSON(t testing.TB, m *Mount) ClusterInfo {
	t.Helper()
	r := run(t, quickTimeout, "cat", m.Path("cluster", "info.json"))
	var ci ClusterInfo
	if err := jsonUnmarshal(r.Stdout, &ci); err != nil {
		t.Fatalf("cluster/info.json: %v\n%s", err, r.Stdout)
	}
	return ci
}
