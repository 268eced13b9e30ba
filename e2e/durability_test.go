package e2e

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// TestDataSurvivesCacheDropRestartAndKill: data written with fsync through
// the mount reads back identical after the page cache is dropped, after the
// whole cluster is stopped and started again with scripts/down and
// scripts/up, after kill -9 of a daemon, and after kill -9 of the daemon
// sheepfs talks to (it must fail over to its next address).
func TestDataSurvivesCacheDropRestartAndKill(t *testing.T) {
	parallel(t)
	sc := NewScriptCluster(t, 3)
	sc.OwnKey = true // as a new user: scripts/up makes the key
	r := sc.script("up")
	if r.Code != 0 {
		t.Fatalf("scripts/up: %v", r)
	}
	key := filepath.Join(sc.Data, "cluster.key")
	if st, err := os.Stat(key); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("scripts/up left no private cluster key at %s: %v %v", key, st, err)
	}
	if !strings.Contains(r.Stdout+r.Stderr, "export SHEEP_KEY_FILE="+key) {
		t.Errorf("scripts/up does not print the line that uses its key:\n%s", r.Stdout)
	}
	vdi := sc.VDI("d")
	run(t, quickTimeout, "truncate", "-s", "1G", vdi)

	const dataMiB = 256
	src := filepath.Join(t.TempDir(), "random")
	want := writeRandomFile(t, src, dataMiB<<20)
	shell(t, cmdTimeout, fmt.Sprintf("dd if=%s of=%s bs=1M conv=fsync,notrunc status=none", q(src), q(vdi)))

	check := func(when string) {
		t.Helper()
		dropCaches(t)
		if st := statFile(t, vdi); st.Size != 1<<30 {
			t.Fatalf("%s: size of the VDI is %d, want %d", when, st.Size, 1<<30)
		}
		if got := sha256Range(t, vdi, 0, dataMiB); got != want {
			t.Fatalf("%s: the first %d MiB have SHA-256 %s, want %s (what was written)", when, dataMiB, got, want)
		}
		readZeros(t, vdi, dataMiB, 8)
		t.Logf("%s: %d MiB read back identical", when, dataMiB)
	}
	check("after dropping caches")

	sc.Down()
	sc.Up()
	check("after scripts/down and scripts/up")

	// node2 is not the first address sheepfs was given.
	sc.Kill(2)
	check("after kill -9 of node2")

	sc.Up() // starts node2 again and waits for status ok
	if r := sc.Sheep(0, "cluster", "info", "--wait"); r.Code != 0 {
		t.Fatalf("cluster not ok after restarting node2: %v", r)
	}

	// node0 is sheepfs's first address: sheepfs must move to node1.
	sc.Kill(0)
	check("after kill -9 of node0 (sheepfs's gateway)")

	// Writes go on through the next gateway too.
	src2 := filepath.Join(t.TempDir(), "random2")
	want2 := writeRandomFile(t, src2, 8<<20)
	shell(t, cmdTimeout, fmt.Sprintf("dd if=%s of=%s bs=1M seek=512 conv=fsync,notrunc status=none", q(src2), q(vdi)))
	dropCaches(t)
	if got := sha256Range(t, vdi, 512, 8); got != want2 {
		t.Fatalf("8 MiB written after node0 died read back with SHA-256 %s, want %s", got, want2)
	}
	check("after writing through the failed-over gateway")
}

// TestReplicasIdentical: once a write is flushed, every object of the VDI
// (data and index) exists on exactly copies=3 nodes with identical bytes,
// and those bytes are what was written. A node that was down during a
// write and comes back ends up with the same bytes too, and reads never
// return its old copy.
func TestReplicasIdentical(t *testing.T) {
	parallel(t)
	c := NewCluster(t, 3, 3)
	m := c.Mount()
	vdi := m.VDI("r")
	run(t, quickTimeout, "truncate", "-s", "64M", vdi)

	// 18 MiB at 2 MiB: objects 0..4, the first and last partly written.
	const offMiB, lenMiB = 2, 18
	image := make([]byte, 64<<20) // what the VDI should hold
	write := func(offMiB, lenMiB int) {
		t.Helper()
		src := filepath.Join(t.TempDir(), "random")
		writeRandomFile(t, src, int64(lenMiB)<<20)
		shell(t, cmdTimeout, fmt.Sprintf("dd if=%s of=%s bs=1M seek=%d conv=fsync,notrunc status=none", q(src), q(vdi), offMiB))
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		copy(image[offMiB<<20:], data)
	}
	write(offMiB, lenMiB)

	v := c.VDI("r")
	wantData := map[string]int{}
	for idx := int64(offMiB) << 20 / objSize; idx <= (int64(offMiB+lenMiB)<<20-1)/objSize; idx++ {
		wantData[dataOID(v.ID, uint32(idx))] = int(idx)
	}
	for _, p := range replicaProblems(c, v.ID, wantData, image) {
		t.Error(p)
	}

	// node2 misses a write, then comes back.
	c.Kill(2)
	write(5, 6) // objects 1 and 2
	dropCaches(t)
	if got := sha256Range(t, vdi, 0, 64); got != sha256Bytes(image) {
		t.Fatalf("with node2 down, the VDI does not read back what was written")
	}
	c.Restart(2)
	c.WaitOK()
	// Reads must not return node2's old copy, whichever node serves them.
	for _, n := range c.Nodes {
		m2 := c.Mount(n.Addr())
		dropCaches(t)
		if got := sha256Range(t, m2.VDI("r"), 0, 64); got != sha256Bytes(image) {
			t.Errorf("after node2 came back, reads through %s do not return the latest data", n.ID)
		}
		m2.Unmount()
	}
	// The replicas converge (recovery runs in the background).
	var problems []string
	if !waitFor(60*time.Second, func() bool {
		problems = replicaProblems(c, v.ID, wantData, image)
		return len(problems) == 0
	}) {
		for _, p := range problems {
			t.Errorf("after node2 missed a write and came back: %s", p)
		}
	}
}

// replicaProblems checks the object files of VDI vid on every node: the
// data objects wantData (oid -> index) and the first index object exist on
// exactly 3 nodes, replicas are identical, data objects hold image's bytes,
// the index maps exactly wantData's objects to the VDI, and no other object
// of the VDI exists.
func replicaProblems(c *Cluster, vid uint32, wantData map[string]int, image []byte) []string {
	var out []string
	files := c.ObjectFiles()
	idxOID := indexOID(vid, 0)
	var ofVDI []string
	for oid := range files {
		var id uint64
		fmt.Sscanf(oid, "%016x", &id)
		if uint32(id>>32)&0xffffff == vid {
			ofVDI = append(ofVDI, oid)
		}
	}
	sort.Strings(ofVDI)
	if len(ofVDI) != len(wantData)+1 {
		out = append(out, fmt.Sprintf("objects of VDI %d on disk: %v; want the %d data objects %v and index object %s",
			vid, ofVDI, len(wantData), keys(wantData), idxOID))
	}
	check := func(oid string, want []byte) {
		replicas := files[oid]
		if len(replicas) != 3 {
			out = append(out, fmt.Sprintf("object %s has %d replicas %v, want 3", oid, len(replicas), replicas))
		}
		var first, firstPath string
		for _, p := range replicas {
			b, err := readObjectData(p)
			if err != nil {
				out = append(out, fmt.Sprintf("read replica %s: %v", p, err))
				continue
			}
			if want != nil && !bytes.Equal(b, want) {
				out = append(out, fmt.Sprintf("replica %s (%d bytes, SHA-256 %s) differs from the data written (%d bytes, SHA-256 %s)",
					p, len(b), sha256Bytes(b), len(want), sha256Bytes(want)))
			}
			// Replicas equal each other (this is the check for index objects).
			if sum := sha256Bytes(b); first == "" {
				first, firstPath = sum, p
			} else if sum != first {
				out = append(out, fmt.Sprintf("replicas of object %s differ: %s has SHA-256 %s, %s has %s", oid, firstPath, first, p, sum))
			}
		}
	}
	for oid, idx := range wantData {
		check(oid, image[int64(idx)*objSize:int64(idx+1)*objSize])
	}
	check(idxOID, nil)
	// The index maps each written object to the VDI itself, others to 0.
	for _, p := range files[idxOID] {
		b, err := os.ReadFile(p)
		if err != nil {
			out = append(out, err.Error())
			continue
		}
		for idx := 0; idx < 16 && 4*idx+4 <= len(b); idx++ {
			owner := binary.LittleEndian.Uint32(b[4*idx:])
			want := uint32(0)
			if _, ok := wantData[dataOID(vid, uint32(idx))]; ok {
				want = vid
			}
			if owner != want {
				out = append(out, fmt.Sprintf("index entry %d in %s is %d, want %d", idx, p, owner, want))
			}
		}
	}
	return out
}

func keys(m map[string]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
