package e2e

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// diskInfo is one line of `sheep node md info --json`.
type diskInfo struct {
	Path    string `json:"path"`
	State   string `json:"state"`
	Objects int    `json:"objects"`
}

func mdInfo(t testing.TB, c *Cluster, n *Node) []diskInfo {
	t.Helper()
	r := c.SheepAt(n.Addr(), "--json", "node", "md", "info")
	if r.Code != 0 {
		t.Fatalf("md info: %v", r)
	}
	var out []diskInfo
	if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil {
		t.Fatalf("md info: %v: %s", err, r.Stdout)
	}
	return out
}

// healedOnDisk reports whether every object has exactly 3 copies in the
// running nodes' data directories plus the disk directories extra (as
// node3's), and describes what is wrong if not.
func healedOnDisk(t testing.TB, c *Cluster, extra ...string) (bool, string) {
	dirs := liveDirs(c)
	for i, d := range extra {
		dirs[fmt.Sprintf("disk%d", i)] = d
	}
	files := filesIn(t, dirs)
	if bad := exactCopies(files, 3); len(bad) > 0 || len(files) == 0 {
		return false, fmt.Sprintf("%d objects, not at 3 copies: %v", len(files), bad)
	}
	return true, ""
}

// TestDiskFailure: a node with two disks. One starts failing (EIO on every
// write and read, injected through the store's filesystem seam): it leaves
// service at once, client I/O goes on without an error, and its objects
// come back at full copies on the node's other disk. Then a real unplug:
// a new disk is plugged, the old one unplugged, and again every object is
// back at 3 copies with the data intact.
func TestDiskFailure(t *testing.T) {
	t.Setenv("SHEEP_FAULTS", "1")
	requireEnv(t)
	base := freeBase(t, 4)
	dir := t.TempDir()
	d1, d2, d3 := filepath.Join(dir, "d1"), filepath.Join(dir, "d2"), filepath.Join(dir, "d3")
	c := newCluster(t, 4, 3, base, func(n *Node) {
		if n.Index == 3 {
			n.Args = []string{"--disk", d1, "--disk", d2}
		}
	})
	md := c.Nodes[3]
	m := c.Mount(c.Nodes[0].Addr())
	vdi := m.VDI("disks")
	run(t, quickTimeout, "truncate", "-s", "256M", vdi)
	src := filepath.Join(t.TempDir(), "data")
	writeRandomFile(t, src, 96*miB)
	shell(t, cmdTimeout, fmt.Sprintf("dd if=%s of=%s bs=1M conv=notrunc,fsync status=none", q(src), q(vdi)))

	info := mdInfo(t, c, md)
	if len(info) != 2 || info[0].Objects == 0 || info[1].Objects == 0 {
		t.Fatalf("objects not spread over both disks: %+v", info)
	}
	if n := len(objectFilesIn(t, md.Dir)); n != 0 {
		t.Fatalf("%d object files in the metadata directory of a node with disks", n)
	}
	t.Logf("disks before the fault: %+v", info)

	// d2 fails.
	for _, op := range []string{"write", "read"} {
		if r := c.SheepAt(md.Addr(), "node", "md", "fault", d2, op); r.Code != 0 {
			t.Fatalf("md fault: %v", r)
		}
	}
	start := time.Now()
	// Client I/O goes on: overwrite the first 32 MiB and read it all.
	src2 := filepath.Join(t.TempDir(), "data2")
	sum2 := writeRandomFile(t, src2, 32*miB)
	shell(t, cmdTimeout, fmt.Sprintf("dd if=%s of=%s bs=1M conv=notrunc,fsync status=none", q(src2), q(vdi)))
	dropCaches(t)
	if got := sha256Range(t, vdi, 0, 32); got != sum2 {
		t.Fatalf("after the disk fault: first 32 MiB sha256 %s, want %s", got, sum2)
	}
	// And all of it through the node with the disks, which reads its own
	// copies first: the overwrite may not have touched d2 (the disks'
	// ring places objects by random disk IDs), this does.
	if _, bad, err := readVia(md.Addr(), "disks", time.Minute); err != nil || len(bad) > 0 {
		t.Fatalf("read through %s after the disk fault: objects %v unread: %v", md.ID, bad, err)
	}
	var why string
	ok := waitFor(90*time.Second, func() bool {
		info = mdInfo(t, c, md)
		if len(info) != 2 || info[1].State == "in service" {
			why = fmt.Sprintf("disks %+v", info)
			return false
		}
		var done bool
		done, why = healedOnDisk(t, c, d1)
		return done
	})
	if !ok {
		t.Fatalf("after d2 failed: %s", why)
	}
	t.Logf("d2 out of service, every object back at 3 copies in %v: %+v", time.Since(start).Round(time.Millisecond), info)
	if !strings.Contains(info[1].State, "failed") {
		t.Fatalf("failed disk's state: %q", info[1].State)
	}
	dropCaches(t)
	if got := sha256Range(t, vdi, 32, 64); got != sha256Range(t, src, 32, 64) {
		t.Fatalf("after recovery: bytes 32-96 MiB differ from what was written")
	}

	// A real unplug: plug d3, unplug d1.
	if r := c.SheepAt(md.Addr(), "node", "md", "plug", d3); r.Code != 0 {
		t.Fatalf("md plug: %v", r)
	}
	if r := c.SheepAt(md.Addr(), "node", "md", "unplug", d1); r.Code != 0 {
		t.Fatalf("md unplug: %v", r)
	}
	start = time.Now()
	ok = waitFor(90*time.Second, func() bool {
		var done bool
		done, why = healedOnDisk(t, c, d3)
		return done
	})
	if !ok {
		t.Fatalf("after unplugging d1: %s", why)
	}
	t.Logf("d1 unplugged, every object back at 3 copies (on d3) in %v: %+v", time.Since(start).Round(time.Millisecond), mdInfo(t, c, md))
	dropCaches(t)
	if got := sha256Range(t, vdi, 0, 32); got != sum2 {
		t.Fatalf("after the unplug: first 32 MiB differ")
	}
	if got, want := sha256Range(t, vdi, 32, 64), sha256Range(t, src, 32, 64); got != want {
		t.Fatalf("after the unplug: bytes 32-96 MiB differ")
	}
}
