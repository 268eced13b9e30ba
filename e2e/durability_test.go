package e2e

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
)

// TestDataSurvivesCacheDropRestartAndKill: data written with fsync through
// the mount reads back identical after the page cache is dropped, after the
// whole cluster is stopped and started again with scripts/down and
// scripts/up, after kill -9 of a daemon, and after kill -9 of the daemon
// sheepfs talks to (it must fail over to its next address).
func TestDataSurvivesCacheDropRestartAndKill(t *testing.T) {
	sc := NewScriptCluster(t, 3)
	sc.Up()
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
// and those bytes are what was written.
func TestReplicasIdentical(t *testing.T) {
	c := NewCluster(t, 3, 3)
	m := c.Mount()
	vdi := m.VDI("r")
	run(t, quickTimeout, "truncate", "-s", "64M", vdi)

	// 18 MiB at 2 MiB: objects 0..4, the first and last partly written.
	const offMiB, lenMiB = 2, 18
	src := filepath.Join(t.TempDir(), "random")
	writeRandomFile(t, src, lenMiB<<20)
	shell(t, cmdTimeout, fmt.Sprintf("dd if=%s of=%s bs=1M seek=%d conv=fsync,notrunc status=none", q(src), q(vdi), offMiB))
	shell(t, quickTimeout, "sync "+q(vdi))

	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	image := make([]byte, 64<<20) // what the VDI should hold
	copy(image[offMiB<<20:], data)

	v := c.VDI("r")
	const objSize = 4 << 20
	wantData := map[string]int{}
	for idx := uint32(offMiB << 20 / objSize); idx <= uint32(((offMiB+lenMiB)<<20-1)/objSize); idx++ {
		wantData[dataOID(v.ID, idx)] = int(idx)
	}
	files := c.ObjectFiles()

	// Exactly the written data objects exist, nothing else of this VDI.
	var ofVDI []string
	for oid := range files {
		var id uint64
		fmt.Sscanf(oid, "%016x", &id)
		if uint32(id>>32)&0xffffff == v.ID {
			ofVDI = append(ofVDI, oid)
		}
	}
	sort.Strings(ofVDI)
	idxOID := indexOID(v.ID, 0)
	if len(ofVDI) != len(wantData)+1 {
		t.Errorf("objects of VDI %d on disk: %v; want the %d data objects %v and index object %s", v.ID, ofVDI, len(wantData), keys(wantData), idxOID)
	}

	check := func(oid string, want []byte) {
		t.Helper()
		replicas := files[oid]
		if len(replicas) != 3 {
			t.Errorf("object %s has %d replicas %v, want 3", oid, len(replicas), replicas)
		}
		var first, firstPath string
		for _, p := range replicas {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Errorf("read replica %s: %v", p, err)
				continue
			}
			if want != nil && !bytes.Equal(b, want) {
				t.Errorf("replica %s (%d bytes, SHA-256 %s) differs from the data written (%d bytes, SHA-256 %s)",
					p, len(b), sha256Bytes(b), len(want), sha256Bytes(want))
			}
			// Replicas equal each other (this is the check for index objects).
			if sum := sha256Bytes(b); first == "" {
				first, firstPath = sum, p
			} else if sum != first {
				t.Errorf("replicas of object %s differ: %s has SHA-256 %s, %s has %s", oid, firstPath, first, p, sum)
			}
		}
	}
	for oid, idx := range wantData {
		check(oid, image[idx*objSize:(idx+1)*objSize])
	}
	check(idxOID, nil)

	// The index maps each written object to the VDI itself, others to 0.
	for _, p := range files[idxOID] {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for idx := 0; idx < 16 && 4*idx+4 <= len(b); idx++ {
			owner := binary.LittleEndian.Uint32(b[4*idx:])
			want := uint32(0)
			if _, ok := wantData[dataOID(v.ID, uint32(idx))]; ok {
				want = v.ID
			}
			if owner != want {
				t.Errorf("index entry %d is %d, want %d", idx, owner, want)
			}
		}
		break
	}
}

func keys(m map[string]int) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
