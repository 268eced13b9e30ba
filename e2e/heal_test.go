package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Self-healing: after a membership change every object returns to exactly
// its copies on the nodes that place it. These tests look at the object
// files in the nodes' data directories, not at what the daemons say, and
// at what cluster info reports about recovery.

// healTimeout bounds a wait for recovery to settle. It is not an
// assertion about speed: the measured time is logged.
const healTimeout = 90 * time.Second

// recoveryJSON is a "recovery" object of `sheep --json cluster info`.
type recoveryJSON struct {
	Epoch     uint64 `json:"epoch"`
	Recovered uint64 `json:"recovered"`
	State     string `json:"state"`
	Objects   int    `json:"objects"`
	Done      int    `json:"done"`
	Fetched   int    `json:"fetched"`
	Bytes     int64  `json:"bytes"`
	Degraded  int    `json:"degraded"`
	Misplaced int    `json:"misplaced"`
}

func (r recoveryJSON) String() string {
	return fmt.Sprintf("%s epoch %d recovered %d objects %d done %d fetched %d (%d bytes) degraded %d misplaced %d",
		r.State, r.Epoch, r.Recovered, r.Objects, r.Done, r.Fetched, r.Bytes, r.Degraded, r.Misplaced)
}

// healNodeJSON is a node of `sheep --json cluster info` with its zone and
// recovery.
type healNodeJSON struct {
	ID       string       `json:"id"`
	Addr     string       `json:"addr"`
	State    string       `json:"state"`
	Zone     string       `json:"zone"`
	Objects  int          `json:"objects"`
	Recovery recoveryJSON `json:"recovery"`
}

// healInfo is `sheep --json cluster info` with the recovery fields.
type healInfo struct {
	Status   string         `json:"status"`
	Epoch    uint64         `json:"epoch"`
	Copies   int            `json:"copies"`
	Nodes    []healNodeJSON `json:"nodes"`
	Recovery recoveryJSON   `json:"recovery"`
}

func (hi healInfo) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "status %q epoch %d; recovery: %v", hi.Status, hi.Epoch, hi.Recovery)
	for _, n := range hi.Nodes {
		fmt.Fprintf(&b, "\n  %s %s zone %q objects %d; recovery: %v", n.ID, n.State, n.Zone, n.Objects, n.Recovery)
	}
	return b.String()
}

// healInfoAt is `sheep --json cluster info` as the node at addr sees it.
func healInfoAt(addr string) (healInfo, error) {
	r := runCmd(quickTimeout, nil, nil, sheepBin, "--addr", addr, "--timeout", "5s", "--json", "cluster", "info")
	var hi healInfo
	if r.Code != 0 {
		return hi, fmt.Errorf("%v", r)
	}
	if err := jsonUnmarshal(r.Stdout, &hi); err != nil {
		return hi, fmt.Errorf("cluster info printed %q: %v", r.Stdout, err)
	}
	return hi, nil
}

// addNode starts node i (its ports reserved by the freeBase that made the
// cluster, i == len(c.Nodes)) with an empty data directory and the extra
// daemon flags args, joining node0.
func addNode(c *Cluster, i int, args ...string) *Node {
	c.t.Helper()
	if i != len(c.Nodes) {
		c.t.Fatalf("addNode(%d) with %d nodes", i, len(c.Nodes))
	}
	n := &Node{Index: i, ID: fmt.Sprintf("node%d", i), Port: c.Base + 10*i, Args: args, c: c}
	n.Dir = filepath.Join(c.Dir, n.ID)
	n.Log = filepath.Join(c.Dir, n.ID+".log")
	c.Nodes = append(c.Nodes, n)
	c.startNode(n, []string{c.Nodes[0].Addr()})
	return n
}

// liveDirs maps the running nodes' IDs to their data directories.
func liveDirs(c *Cluster) map[string]string {
	out := map[string]string{}
	for _, n := range c.Nodes {
		if n.Running() {
			out[n.ID] = n.Dir
		}
	}
	return out
}

// filesIn is ObjectFiles over the given data directories (node ID ->
// directory): object ID -> node ID -> path.
func filesIn(t testing.TB, dirs map[string]string) map[string]map[string]string {
	out := map[string]map[string]string{}
	for id, dir := range dirs {
		for oid, p := range objectFilesIn(t, dir) {
			if out[oid] == nil {
				out[oid] = map[string]string{}
			}
			out[oid][id] = p
		}
	}
	return out
}

// holders lists the nodes of one object's replicas, sorted.
func holders(reps map[string]string) []string {
	var out []string
	for id := range reps {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// healWant is what a healed cluster looks like.
type healWant struct {
	members  int             // members of the epoch, every one up
	copies   int             // replicas of every object
	oids     map[string]bool // exactly these objects (nil: whatever is on disk)
	zoneOf   map[string]string
	holdSome []string // nodes that must hold at least one object
}

// healProblems says how the cluster (cluster info through addr, object
// files in dirs) differs from w; nothing when it is healed.
func healProblems(t testing.TB, addr string, dirs map[string]string, w healWant) ([]string, healInfo, map[string]map[string]string) {
	var out []string
	hi, err := healInfoAt(addr)
	if err != nil {
		out = append(out, "cluster info: "+err.Error())
	} else {
		if hi.Status != "ok" {
			out = append(out, fmt.Sprintf("cluster status %q, want ok", hi.Status))
		}
		if len(hi.Nodes) != w.members {
			out = append(out, fmt.Sprintf("%d members, want %d", len(hi.Nodes), w.members))
		}
		if r := hi.Recovery; r.State != "idle" || r.Degraded != 0 || r.Misplaced != 0 {
			out = append(out, fmt.Sprintf("cluster recovery %v, want idle with nothing degraded or misplaced", r))
		}
		for _, n := range hi.Nodes {
			if n.State != "up" {
				out = append(out, fmt.Sprintf("%s is %s", n.ID, n.State))
			} else if n.Recovery.State != "idle" || n.Recovery.Epoch != hi.Epoch {
				out = append(out, fmt.Sprintf("%s recovery %v, want idle at epoch %d", n.ID, n.Recovery, hi.Epoch))
			}
		}
	}
	files := filesIn(t, dirs)
	var oids []string
	for oid := range files {
		oids = append(oids, oid)
	}
	for oid := range w.oids {
		if files[oid] == nil {
			oids = append(oids, oid)
		}
	}
	sort.Strings(oids)
	for _, oid := range oids {
		reps := files[oid]
		if w.oids != nil && !w.oids[oid] {
			out = append(out, fmt.Sprintf("object %s on %v was not written by the test", oid, holders(reps)))
			continue
		}
		if len(reps) != w.copies {
			out = append(out, fmt.Sprintf("object %s has %d copies on %v, want %d", oid, len(reps), holders(reps), w.copies))
			continue
		}
		if w.zoneOf != nil {
			zones := map[string]bool{}
			for id := range reps {
				zones[w.zoneOf[id]] = true
			}
			if len(zones) != w.copies {
				var where []string
				for _, id := range holders(reps) {
					where = append(where, id+"@"+w.zoneOf[id])
				}
				out = append(out, fmt.Sprintf("object %s has its copies in %d zones (%v), want %d distinct zones", oid, len(zones), where, w.copies))
			}
		}
	}
	for _, id := range w.holdSome {
		n := 0
		for _, reps := range files {
			if reps[id] != "" {
				n++
			}
		}
		if n == 0 {
			out = append(out, fmt.Sprintf("%s holds no object", id))
		}
	}
	return out, hi, files
}

// waitHealed waits until healProblems finds nothing twice in a row (a
// second apart), and returns how long that took, the last cluster info and
// object files. It fails the test with what is still wrong after timeout.
func waitHealed(t testing.TB, timeout time.Duration, addr string, dirs func() map[string]string, w healWant) (time.Duration, healInfo, map[string]map[string]string) {
	t.Helper()
	start := time.Now()
	var (
		problems []string
		hi       healInfo
		files    map[string]map[string]string
		good     int
	)
	for {
		problems, hi, files = healProblems(t, addr, dirs(), w)
		if len(problems) == 0 {
			good++
			if good == 2 {
				return time.Since(start), hi, files
			}
			time.Sleep(time.Second)
			continue
		}
		good = 0
		if time.Since(start) > timeout {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if len(problems) > 25 {
		problems = append(problems[:25], fmt.Sprintf("... and %d more", len(problems)-25))
	}
	t.Fatalf("not healed after %v: %d problems:\n%s\ncluster info: %v", timeout, len(problems), strings.Join(problems, "\n"), hi)
	return 0, hi, files
}

// copyMoves counts the replicas in after that were not in before
// (created on a new holder) and those in before that are gone.
func copyMoves(before, after map[string]map[string]string) (created, deleted int) {
	for oid, reps := range after {
		for id := range reps {
			if before[oid][id] == "" {
				created++
			}
		}
	}
	for oid, reps := range before {
		for id := range reps {
			if after[oid][id] == "" {
				deleted++
			}
		}
	}
	return created, deleted
}

// replicaMismatches reads every replica in files and reports those that
// differ from want[oid] (if given) or from the object's other replicas.
// Contents are compared without trailing zeros: an object reads as zeros
// past the end of its file.
func replicaMismatches(files map[string]map[string]string, want map[string][]byte) []string {
	var out []string
	for oid, reps := range files {
		var first []byte
		var firstID string
		for _, id := range holders(reps) {
			b, err := readObjectData(reps[id])
			if err != nil {
				out = append(out, fmt.Sprintf("read %s's copy of %s: %v", id, oid, err))
				continue
			}
			b = bytes.TrimRight(b, "\x00")
			if w, ok := want[oid]; ok && !bytes.Equal(b, bytes.TrimRight(w, "\x00")) {
				out = append(out, fmt.Sprintf("%s's copy of %s (%d bytes without trailing zeros, SHA-256 %s) differs from the data written (SHA-256 %s)",
					id, oid, len(b), sha256Bytes(b), sha256Bytes(bytes.TrimRight(w, "\x00"))))
			}
			if first == nil {
				first, firstID = b, id
			} else if !bytes.Equal(b, first) {
				out = append(out, fmt.Sprintf("copies of %s differ: %s's SHA-256 %s, %s's %s", oid, firstID, sha256Bytes(first), id, sha256Bytes(b)))
			}
		}
	}
	sort.Strings(out)
	return out
}

// dataImage maps the data objects of VDI vid to their bytes in image (the
// VDI's content from offset 0).
func dataImage(vid uint32, image []byte) map[string][]byte {
	out := map[string][]byte{}
	for idx := int64(0); idx*objSize < int64(len(image)); idx++ {
		out[dataOID(vid, uint32(idx))] = image[idx*objSize : min((idx+1)*objSize, int64(len(image)))]
	}
	return out
}

// objectSet is the set of object IDs in files.
func objectSet(files map[string]map[string]string) map[string]bool {
	out := map[string]bool{}
	for oid := range files {
		out[oid] = true
	}
	return out
}

// exactCopies reports the objects in files that do not have n copies.
func exactCopies(files map[string]map[string]string, n int) []string {
	var out []string
	for oid, reps := range files {
		if len(reps) != n {
			out = append(out, fmt.Sprintf("%s on %v", oid, holders(reps)))
		}
	}
	sort.Strings(out)
	return out
}

// perNode counts the objects each node holds.
func perNode(files map[string]map[string]string) map[string]int {
	out := map[string]int{}
	for _, reps := range files {
		for id := range reps {
			out[id]++
		}
	}
	return out
}

// TestHealNodeLossAndJoins: a node is killed and its disk lost; the
// survivors copy its objects until every object has its 3 copies again.
// Then two empty nodes join: they receive the objects now placed on them,
// and the copies no longer placed are deleted, again leaving exactly 3.
// The data reads back identical after each phase, and every copy on disk
// holds it.
func TestHealNodeLossAndJoins(t *testing.T) {
	parallel(t)
	requireEnv(t)
	base := freeBase(t, 6)
	c := newCluster(t, 4, 3, base, nil)
	m := c.Mount(c.Nodes[0].Addr())
	vdi := m.VDI("heal")
	run(t, quickTimeout, "truncate", "-s", "128M", vdi)
	const dataMiB = 96
	src := filepath.Join(t.TempDir(), "data")
	sum := writeRandomFile(t, src, dataMiB*miB)
	start := time.Now()
	shell(t, cmdTimeout, fmt.Sprintf("dd if=%s of=%s bs=1M conv=notrunc,fsync status=none", q(src), q(vdi)))
	t.Logf("wrote %d MiB in %v", dataMiB, time.Since(start).Round(time.Millisecond))
	image, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	vid := c.VDI("heal").ID
	want := dataImage(vid, image)

	before := c.ObjectFiles()
	oids := objectSet(before)
	if len(oids) != dataMiB/4+1 {
		t.Fatalf("after writing %d MiB: %d objects on disk, want %d data objects and 1 index object", dataMiB, len(oids), dataMiB/4)
	}
	if bad := exactCopies(before, 3); len(bad) > 0 {
		t.Fatalf("before any failure, objects without exactly 3 copies: %v", bad)
	}
	t.Logf("before: objects per node %v", perNode(before))

	// Lose node2: process and disk. A client writing 4 KiB and fsyncing
	// in a loop meanwhile measures the longest stall the loss costs it.
	stall := m.VDI("stall")
	run(t, quickTimeout, "truncate", "-s", "64M", stall)
	writer := startStallWriter(t, stall, 12*time.Second)
	time.Sleep(2 * time.Second)
	victim := c.Nodes[2]
	killed := time.Now()
	c.Kill(victim.Index)
	if err := os.RemoveAll(victim.Dir); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed %s and removed its data directory (it held %d objects)", victim.ID, perNode(before)[victim.ID])
	t.Logf("client writes (4 KiB + fsync) around the kill: %s", writer())
	oids = objectSet(c.ObjectFiles()) // and the objects of the stall VDI
	_, hi, after := waitHealed(t, healTimeout, c.Nodes[0].Addr(), func() map[string]string { return liveDirs(c) },
		healWant{members: 3, copies: 3, oids: oids})
	took := time.Since(killed)
	created, deleted := copyMoves(before, after)
	t.Logf("phase 1 (loss of %s): healed %v after the kill (DeadGrace included); %d copies created on survivors (%d MiB), %d removed with %s's disk; epoch %d",
		victim.ID, took.Round(time.Millisecond), created, int64(created)*objSize/miB, deleted, victim.ID, hi.Epoch)
	t.Logf("phase 1: objects per node %v", perNode(after))
	if bad := replicaMismatches(after, want); len(bad) > 0 {
		t.Errorf("after healing the loss of %s, copies on disk differ from what was written:\n%s", victim.ID, strings.Join(bad, "\n"))
	}
	dropCaches(t)
	if got := sha256Range(t, vdi, 0, dataMiB); got != sum {
		t.Fatalf("after healing the loss of %s: the VDI reads back with SHA-256 %s, want %s", victim.ID, got, sum)
	}

	// Two empty nodes join.
	before = after
	n4 := addNode(c, 4)
	n5 := addNode(c, 5)
	took, hi, after = waitHealed(t, healTimeout, c.Nodes[0].Addr(), func() map[string]string { return liveDirs(c) },
		healWant{members: 5, copies: 3, oids: oids, holdSome: []string{n4.ID, n5.ID}})
	created, deleted = copyMoves(before, after)
	t.Logf("phase 2 (%s and %s join): healed %v after they started; %d copies moved to them (%d MiB), %d misplaced copies deleted; epoch %d",
		n4.ID, n5.ID, took.Round(time.Millisecond), created, int64(created)*objSize/miB, deleted, hi.Epoch)
	t.Logf("phase 2: objects per node %v; recovery at the last epoch: %v", perNode(after), hi.Recovery)
	if bad := replicaMismatches(after, want); len(bad) > 0 {
		t.Errorf("after the joins, copies on disk differ from what was written:\n%s", strings.Join(bad, "\n"))
	}
	dropCaches(t)
	if got := sha256Range(t, vdi, 0, dataMiB); got != sum {
		t.Fatalf("after %s and %s joined: the VDI reads back with SHA-256 %s, want %s", n4.ID, n5.ID, got, sum)
	}
}

// startStallWriter writes 4 KiB and fsyncs in a loop to path for d, from
// a subprocess, and returns a function that waits for it and describes the
// longest single write+fsync (any failure of the writer fails the test).
func startStallWriter(t testing.TB, path string, d time.Duration) func() string {
	t.Helper()
	script := `
import os, random, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
buf = os.urandom(4096)
end = time.time() + float(sys.argv[2])
worst, n = 0.0, 0
while time.time() < end:
    s = time.time()
    os.pwrite(fd, buf, random.randrange(0, 64 * 256) * 4096)
    os.fsync(fd)
    worst = max(worst, time.time() - s)
    n += 1
print(f"{n} writes, longest {worst * 1000:.0f} ms")
`
	done := make(chan Result, 1)
	go func() {
		done <- runCmd(d+cmdTimeout, nil, nil, "python3", "-c", script, path, fmt.Sprint(d.Seconds()))
	}()
	return func() string {
		r := <-done
		if r.Code != 0 {
			t.Fatalf("stall writer: %v", r)
		}
		return strings.TrimSpace(r.Stdout)
	}
}

// nodeListAt is `sheep --json node list` through node i of a script
// cluster.
func nodeListAt(sc *ScriptCluster, i int) ([]NodeInfo, error) {
	r := runCmd(quickTimeout, nil, nil, sheepBin, "--addr", sc.Addr(i), "--timeout", "3s", "--json", "node", "list")
	if r.Code != 0 {
		return nil, fmt.Errorf("%v", r)
	}
	var nodes []NodeInfo
	if err := jsonUnmarshal(r.Stdout, &nodes); err != nil {
		return nil, fmt.Errorf("node list printed %q: %v", r.Stdout, err)
	}
	return nodes, nil
}

// stateOf is node id's state in a node list ("" if it is not listed).
func stateOf(nodes []NodeInfo, id string) string {
	for _, n := range nodes {
		if n.ID == id {
			return n.State
		}
	}
	return ""
}

// TestHealNode0Rejoins: the bootstrap node (started without --join) is
// killed and dropped from the cluster; scripts/up starts it again, it
// rejoins, and the mount serves reads and writes; what was written while
// it was away, and before, reads back, and every object ends with its 3
// copies.
func TestHealNode0Rejoins(t *testing.T) {
	parallel(t)
	sc := NewScriptCluster(t, 3)
	sc.Up()
	src := filepath.Join(t.TempDir(), "data")
	writeVDI := func(name string, mib int64) string {
		t.Helper()
		sum := writeRandomFile(t, src, mib*miB)
		vdi := sc.VDI(name)
		shell(t, cmdTimeout, fmt.Sprintf("truncate -s 64M %s && dd if=%s of=%s bs=1M conv=notrunc,fsync status=none", q(vdi), q(src), q(vdi)))
		return sum
	}
	sums := map[string]string{"before": writeVDI("before", 16)}
	sizes := map[string]int64{"before": 16}

	killed := time.Now()
	sc.Kill(0)
	// The others drop node0: it leaves node1's node list after DeadGrace.
	var last []NodeInfo
	var lastErr error
	if !waitFor(60*time.Second, func() bool {
		last, lastErr = nodeListAt(sc, 1)
		return lastErr == nil && len(last) > 0 && stateOf(last, "node0") == ""
	}) {
		t.Fatalf("60 s after node0 was killed, node1 still lists it: %+v (%v)", last, lastErr)
	}
	t.Logf("node0 dropped from node1's node list %v after the kill", time.Since(killed).Round(time.Millisecond))
	if d := time.Until(killed.Add(8 * time.Second)); d > 0 {
		time.Sleep(d) // DeadGrace (5 s) plus some
	}

	// The mount (which used node0 as its gateway) writes without it.
	sums["during"] = writeVDI("during", 8)
	sizes["during"] = 8

	restarted := time.Now()
	sc.Up()
	t.Logf("scripts/up ran again in %v", time.Since(restarted).Round(time.Millisecond))
	for _, via := range []int{1, 0} {
		if !waitFor(readyTimeout, func() bool {
			last, lastErr = nodeListAt(sc, via)
			return lastErr == nil && stateOf(last, "node0") == "up"
		}) {
			t.Fatalf("%v after scripts/up, node%d does not list node0 up: %+v (%v)", readyTimeout, via, last, lastErr)
		}
	}
	t.Logf("node0 listed up again %v after scripts/up", time.Since(restarted).Round(time.Millisecond))

	sums["after"] = writeVDI("after", 8)
	sizes["after"] = 8
	dropCaches(t)
	for name, sum := range sums {
		if got := sha256Range(t, sc.VDI(name), 0, sizes[name]); got != sum {
			t.Errorf("after node0 rejoined: VDI %s reads back with SHA-256 %s, want %s", name, got, sum)
		}
	}

	dirs := map[string]string{}
	for i := 0; i < 3; i++ {
		dirs[fmt.Sprintf("node%d", i)] = filepath.Join(sc.Data, fmt.Sprintf("node%d", i))
	}
	took, hi, files := waitHealed(t, healTimeout, sc.Addr(1), func() map[string]string { return dirs }, healWant{members: 3, copies: 3})
	t.Logf("healed %v after node0 was listed up: %d objects, each on all 3 nodes; epoch %d", took.Round(time.Millisecond), len(files), hi.Epoch)
	if want := (16/4 + 1) + (8/4 + 1) + (8/4 + 1); len(files) != want {
		t.Errorf("%d objects on disk, want %d (data and index objects of the 3 VDIs)", len(files), want)
	}
	if bad := replicaMismatches(files, nil); len(bad) > 0 {
		t.Errorf("after node0 rejoined, copies differ:\n%s", strings.Join(bad, "\n"))
	}
}

// TestHealZones: with 6 nodes in 3 zones and 3 copies, every object has
// one copy in each zone; after a zone loses one of its two nodes, the
// objects are healed back to one copy per zone.
func TestHealZones(t *testing.T) {
	parallel(t)
	requireEnv(t)
	zones := []string{"rack0", "rack0", "rack1", "rack1", "rack2", "rack2"}
	c := newCluster(t, len(zones), 3, freeBase(t, len(zones)), func(n *Node) { n.Args = []string{"--zone", zones[n.Index]} })
	zoneOf := map[string]string{}
	for i, z := range zones {
		zoneOf[c.Nodes[i].ID] = z
	}
	hi, err := healInfoAt(c.Nodes[0].Addr())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range hi.Nodes {
		if n.Zone != zoneOf[n.ID] {
			t.Errorf("cluster info shows %s in zone %q, started with --zone %q", n.ID, n.Zone, zoneOf[n.ID])
		}
	}

	m := c.Mount(c.Nodes[0].Addr())
	vdi := m.VDI("z")
	run(t, quickTimeout, "truncate", "-s", "128M", vdi)
	const dataMiB = 64
	src := filepath.Join(t.TempDir(), "data")
	sum := writeRandomFile(t, src, dataMiB*miB)
	shell(t, cmdTimeout, fmt.Sprintf("dd if=%s of=%s bs=1M conv=notrunc,fsync status=none", q(src), q(vdi)))

	files := c.ObjectFiles()
	oids := objectSet(files)
	if len(oids) != dataMiB/4+1 {
		t.Errorf("after writing %d MiB: %d objects on disk, want %d data objects and 1 index object", dataMiB, len(oids), dataMiB/4)
	}
	// Written in one epoch with every node up: placed at once, nothing to
	// heal.
	_, _, files = waitHealed(t, healTimeout, c.Nodes[0].Addr(), func() map[string]string { return liveDirs(c) },
		healWant{members: 6, copies: 3, oids: oids, zoneOf: zoneOf})
	t.Logf("objects per node: %v", perNode(files))

	// rack2 loses node5: node4 must then hold a copy of every object.
	c.Kill(5)
	took, hi, after := waitHealed(t, healTimeout, c.Nodes[0].Addr(), func() map[string]string { return liveDirs(c) },
		healWant{members: 5, copies: 3, oids: oids, zoneOf: zoneOf})
	created, _ := copyMoves(files, after)
	t.Logf("healed %v after node5 (holding %d objects) was killed: %d copies created on the survivors; epoch %d; objects per node %v",
		took.Round(time.Millisecond), perNode(files)["node5"], created, hi.Epoch, perNode(after))
	if n := perNode(after)["node4"]; n != len(oids) {
		t.Errorf("node4, alone in rack2, holds %d of %d objects", n, len(oids))
	}
	image, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if bad := replicaMismatches(after, dataImage(c.VDI("z").ID, image)); len(bad) > 0 {
		t.Errorf("copies on disk differ from what was written:\n%s", strings.Join(bad, "\n"))
	}
	dropCaches(t)
	if got := sha256Range(t, vdi, 0, dataMiB); got != sum {
		t.Fatalf("the VDI reads back with SHA-256 %s, want %s", got, sum)
	}
}

// fioJob is one fio run's job in its JSON output.
type fioJob struct {
	Error int `json:"error"`
	Read  struct {
		IOBytes int64 `json:"io_bytes"`
	} `json:"read"`
	Write struct {
		IOBytes int64 `json:"io_bytes"`
	} `json:"write"`
}

// runFio runs fio with args (plus JSON output) and returns its job, or an
// error that says why it failed.
func runFio(args ...string) (fioJob, Result, error) {
	r := runCmd(4*time.Minute, nil, nil, "fio", append(args, "--output-format=json")...)
	var out struct {
		Jobs []fioJob `json:"jobs"`
	}
	if r.Code != 0 {
		return fioJob{}, r, fmt.Errorf("fio failed: %v", r)
	}
	// fio may print warnings before the JSON.
	s := r.Stdout
	if i := strings.Index(s, "{"); i > 0 {
		s = s[i:]
	}
	if err := json.Unmarshal([]byte(s), &out); err != nil || len(out.Jobs) != 1 {
		return fioJob{}, r, fmt.Errorf("fio output: %v\n%s", err, trimOut(r.Stdout))
	}
	if out.Jobs[0].Error != 0 {
		return out.Jobs[0], r, fmt.Errorf("fio job error %d: %v", out.Jobs[0].Error, r)
	}
	return out.Jobs[0], r, nil
}

// TestHealWhileWriting: fio writes random blocks with crc32c verification
// to a mounted VDI while a node joins, a node (not the gateway) is killed,
// and another node joins. Every fio round verifies what it wrote; once
// recovery is idle every object has exactly 3 copies on the live nodes,
// they are identical, and a verify pass over the whole VDI finds every
// block intact.
//
// fio's verify phase never starts after a time_based write phase, so the
// ~60 s of writing are rounds of 32 MiB of random writes (each with a new
// seed), each verified at its end. The VDI is first filled sequentially
// with fio's headers (one every 4 KiB, --verify_interval), so the last
// pass can read and check all of it whichever rounds wrote what.
func TestHealWhileWriting(t *testing.T) {
	parallel(t)
	requireEnv(t, "fio")
	base := freeBase(t, 6)
	c := newCluster(t, 4, 3, base, nil)
	m := c.Mount(c.Nodes[0].Addr()) // node0 is the gateway
	vdi := m.VDI("w")
	run(t, quickTimeout, "truncate", "-s", "256M", vdi)
	common := []string{"--name=heal", "--filename=" + vdi, "--size=256M", "--ioengine=libaio", "--iodepth=16",
		"--direct=1", "--fallocate=none", "--verify=crc32c", "--verify_interval=4k", "--verify_fatal=1", "--verify_state_save=0"}

	start := time.Now()
	if _, _, err := runFio(append(common, "--rw=write", "--bs=1M", "--do_verify=0", "--end_fsync=1")...); err != nil {
		t.Fatalf("filling the VDI: %v", err)
	}
	t.Logf("filled 256 MiB in %v", time.Since(start).Round(time.Millisecond))
	before := c.ObjectFiles()
	oids := objectSet(before)
	if len(oids) != 64+1 {
		t.Fatalf("after filling 256 MiB: %d objects on disk, want 64 data objects and 1 index object", len(oids))
	}
	if bad := exactCopies(before, 3); len(bad) > 0 {
		t.Fatalf("before any change, objects without exactly 3 copies: %v", bad)
	}

	// fio rounds until the writing time is up.
	const writeFor = 60 * time.Second
	type round struct {
		job  fioJob
		took time.Duration
		err  error
	}
	var (
		mu     sync.Mutex
		rounds []round
	)
	fioStart := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for seed := 1; time.Since(fioStart) < writeFor; seed++ {
			s := time.Now()
			job, _, err := runFio(append(common, "--rw=randwrite", "--bsrange=4k-64k", "--io_size=32M",
				"--do_verify=1", "--fsync=16", "--randseed="+strconv.Itoa(seed))...)
			mu.Lock()
			rounds = append(rounds, round{job, time.Since(s), err})
			mu.Unlock()
			if err == nil && (job.Write.IOBytes == 0 || job.Read.IOBytes != job.Write.IOBytes) {
				err = fmt.Errorf("fio wrote %d bytes and verified %d", job.Write.IOBytes, job.Read.IOBytes)
				mu.Lock()
				rounds[len(rounds)-1].err = err
				mu.Unlock()
			}
			if err != nil {
				return
			}
		}
	}()
	at := func(d time.Duration) {
		if w := time.Until(fioStart.Add(d)); w > 0 {
			select {
			case <-time.After(w):
			case <-done:
			}
		}
	}
	failed := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(rounds) > 0 && rounds[len(rounds)-1].err != nil
	}
	var added []string
	at(10 * time.Second)
	if !failed() {
		added = append(added, addNode(c, 4).ID)
		t.Logf("%v: started node4", time.Since(fioStart).Round(time.Millisecond))
	}
	at(25 * time.Second)
	victim := c.Nodes[2]
	if !failed() {
		c.Kill(victim.Index)
		t.Logf("%v: killed %s", time.Since(fioStart).Round(time.Millisecond), victim.ID)
	}
	at(40 * time.Second)
	if !failed() {
		added = append(added, addNode(c, 5).ID)
		t.Logf("%v: started node5", time.Since(fioStart).Round(time.Millisecond))
	}
	<-done
	var written int64
	var times []string
	for i, r := range rounds {
		if r.err != nil {
			t.Fatalf("fio round %d (seed %d) after %v: %v", i+1, i+1, r.took.Round(time.Millisecond), r.err)
		}
		written += r.job.Write.IOBytes
		times = append(times, r.took.Round(100*time.Millisecond).String())
	}
	t.Logf("fio: %d rounds in %v, %d MiB written and verified; rounds took %s", len(rounds), time.Since(fioStart).Round(time.Millisecond),
		written>>20, strings.Join(times, " "))
	if len(added) != 2 || victim.Running() {
		t.Fatalf("membership changes not all made (added %v, %s running %v)", added, victim.ID, victim.Running())
	}

	dropCaches(t)
	sum := sha256Range(t, vdi, 0, 256)
	took, hi, after := waitHealed(t, healTimeout, c.Nodes[0].Addr(), func() map[string]string { return liveDirs(c) },
		healWant{members: 5, copies: 3, oids: oids, holdSome: added})
	t.Logf("healed %v after fio ended; epoch %d; objects per node %v; recovery at the last epoch: %v",
		took.Round(time.Millisecond), hi.Epoch, perNode(after), hi.Recovery)
	if bad := replicaMismatches(after, nil); len(bad) > 0 {
		t.Errorf("after healing, copies differ:\n%s", strings.Join(bad, "\n"))
	}
	start = time.Now()
	job, _, err := runFio(append(common, "--rw=read", "--bs=64k", "--do_verify=1")...)
	if err != nil {
		t.Fatalf("verify pass over the whole VDI: %v", err)
	}
	if job.Read.IOBytes != 256*miB {
		t.Fatalf("verify pass read %d bytes, want all 256 MiB", job.Read.IOBytes)
	}
	t.Logf("verify pass over 256 MiB: intact (%v)", time.Since(start).Round(time.Millisecond))
	dropCaches(t)
	if got := sha256Range(t, vdi, 0, 256); got != sum {
		t.Fatalf("the VDI read %s when fio ended and %s after healing", sum, got)
	}
}
