package e2e

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// TestReadsSurviveLossOfTwoReplicas: data written and fsynced with 3
// copies reads back intact after kill -9 of two of the three daemons (N-1
// replicas lost), through the survivor, although the survivor has lost the
// cluster's majority and accepts no writes.
func TestReadsSurviveLossOfTwoReplicas(t *testing.T) {
	parallel(t)
	c := NewCluster(t, 3, 3)
	m := c.Mount(c.Nodes[2].Addr())
	vdi := m.VDI("l")
	run(t, quickTimeout, "truncate", "-s", "256M", vdi)
	src := filepath.Join(t.TempDir(), "data")
	sum := writeRandomFile(t, src, 64*miB)
	shell(t, cmdTimeout, fmt.Sprintf("dd if=%s of=%s bs=1M conv=notrunc,fsync status=none", q(src), q(vdi)))

	c.Kill(0)
	c.Kill(1)
	dropCaches(t)
	if got := sha256Range(t, vdi, 0, 64); got != sum {
		t.Fatalf("after losing 2 of 3 replicas: sha256 %s, want %s", got, sum)
	}
	// The writer's close left a write lock to release, a cluster command
	// that one node of three cannot commit. An unmount must end sheepfs
	// all the same (the gateway drops the lock with the connection): it
	// used to wait out the unlock's minute.
	if !m.unmount(30 * time.Second) {
		t.Errorf("sheepfs did not end within 30 s of its unmount (a cluster without quorum)")
	}
}
