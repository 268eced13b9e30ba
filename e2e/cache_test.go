package e2e

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
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

// TestReadOpenKeepsWritersCache: while this mount writes a VDI, opening
// it read-only here (qemu probing its own disk, cat, cp) keeps the page
// cache: nobody else can have changed the VDI. The read-only open used to
// take the lock as another mount's and drop the cache every time.
func TestReadOpenKeepsWritersCache(t *testing.T) {
	requireEnv(t, "python3", "fincore")
	c := NewCluster(t, 3, 3)
	m := c.Mount()
	vdi := m.VDI("v")
	run(t, quickTimeout, "truncate", "-s", "64M", vdi)
	h, msg := holdOpen(t, vdi, "os.O_RDWR") // this mount holds the write lock
	if h == nil {
		t.Fatalf("open for writing: %s", msg)
	}
	defer h.Release()
	run(t, cmdTimeout, "dd", "if=/dev/urandom", "of="+vdi, "bs=1M", "count=16", "conv=notrunc,fsync", "status=none")
	run(t, cmdTimeout, "cat", vdi) // read-only opens from here on
	for i := range 3 {
		r := run(t, quickTimeout, "fincore", "--bytes", "--noheadings", "--output", "RES", vdi)
		res, err := strconv.ParseInt(strings.TrimSpace(r.Stdout), 10, 64)
		if err != nil {
			t.Fatalf("fincore: %q: %v", r.Stdout, err)
		}
		if res < 16<<20 {
			t.Fatalf("read-only open %d through the writing mount: %d bytes of the VDI cached, want the 16 MiB written and read", i+1, res)
		}
	}
}
