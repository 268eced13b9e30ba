package e2e

import (
	"bytes"
	"fmt"
	"testing"
)

// TestPageCacheAcrossMounts: a mount keeps its page cache of a VDI across
// opens only while nobody else writes the VDI. After another mount has
// written it, the next open reads the new data (no cache drop needed).
func TestPageCacheAcrossMounts(t *testing.T) {
	requireEnv(t, "python3")
	c := NewCluster(t, 3, 3)
	a, b := c.Mount(), c.Mount()
	run(t, quickTimeout, "truncate", "-s", "16M", a.VDI("v"))
	write := func(m *Mount, pattern string) {
		t.Helper()
		script := fmt.Sprintf(`
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
os.pwrite(fd, %q.encode() * 4096, 0)
os.fsync(fd)
os.close(fd)
`, pattern)
		run(t, cmdTimeout, "python3", "-c", script, m.VDI("v"))
	}
	check := func(m *Mount, pattern, when string) {
		t.Helper()
		want := bytes.Repeat([]byte(pattern), 4096)
		if got := readAt(t, m.VDI("v"), 0, len(want)); !bytes.Equal(got, want) {
			t.Fatalf("%s: mount reads %q..., want %q...", when, got[:8], want[:8])
		}
	}
	write(a, "x")
	check(b, "x", "first read through mount b")
	check(b, "x", "second read through mount b (cached)")
	write(a, "y")
	check(b, "y", "after mount a rewrote the VDI")
	check(a, "y", "mount a reads its own write")
	write(b, "z")
	check(a, "z", "after mount b wrote the VDI")
}
