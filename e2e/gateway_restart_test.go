package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestGatewayRestart: a sheepfs that knows only one sheep keeps working
// while that sheep is killed and restarted: a read issued while it is down
// completes once it is back, and a file held open for writing across the
// restart keeps writing (sheepfs takes its write lock again).
func TestGatewayRestart(t *testing.T) {
	parallel(t)
	requireEnv(t, "python3")
	c := NewCluster(t, 3, 3)
	m := c.Mount(c.Nodes[0].Addr())
	vdi := m.VDI("g")
	run(t, quickTimeout, "truncate", "-s", "64M", vdi)
	src := filepath.Join(t.TempDir(), "data")
	sum := writeRandomFile(t, src, 16*miB)
	shell(t, cmdTimeout, fmt.Sprintf("dd if=%s of=%s bs=1M conv=notrunc,fsync status=none", q(src), q(vdi)))

	// A writer that holds the file open across the restart: it writes
	// "before", waits for a go-ahead file, then writes "after" and fsyncs.
	goAhead := filepath.Join(t.TempDir(), "go")
	writer := fmt.Sprintf(`
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY)
os.pwrite(fd, b"before" * 1000, 32 << 20)
os.fsync(fd)
print("ready", flush=True)
while not os.path.exists(%q):
    time.sleep(0.1)
os.pwrite(fd, b"after!" * 1000, 40 << 20)
os.fsync(fd)
os.close(fd)
print("done", flush=True)
`, goAhead)
	done := make(chan Result, 1)
	go func() { done <- runCmd(cmdTimeout, nil, nil, "python3", "-c", writer, vdi) }()
	if !waitFor(30*time.Second, func() bool { return bytes.Equal(readAt(t, vdi, 32<<20, 6), []byte("before")) }) {
		t.Fatal("the writer did not start")
	}

	c.Kill(0)
	dropCaches(t)
	type result struct {
		sum string
		err error
	}
	read := make(chan result, 1)
	go func() {
		sum, err := sha256RangeErr(vdi, 0, 16)
		read <- result{sum, err}
	}()
	time.Sleep(2 * time.Second) // the read is now waiting for the gateway
	c.Restart(0)
	if got := <-read; got.err != nil || got.sum != sum {
		t.Fatalf("read across the gateway restart: sha256 %s (%v), want %s", got.sum, got.err, sum)
	}
	if err := os.WriteFile(goAhead, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.Code != 0 {
		t.Fatalf("writer holding the file across the restart failed: %v", r)
	}
	dropCaches(t)
	if got := readAt(t, vdi, 40<<20, 6000); !bytes.Equal(got, bytes.Repeat([]byte("after!"), 1000)) {
		t.Fatalf("write after the gateway restart reads back %q...", got[:12])
	}
}
