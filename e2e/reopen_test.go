package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestReopenForWrite: closing a VDI and opening it for writing again at
// once (truncate, then dd; qemu-img create, then qemu) always works. The
// kernel sends the first close's RELEASE after close returned, so its
// unlock races with the next open's lock; it must never win.
func TestReopenForWrite(t *testing.T) {
	parallel(t)
	c := NewCluster(t, 3, 3)
	m := c.Mount()
	// Four loops at once, each on its own VDI.
	script := ""
	for l := range 4 {
		f := q(m.VDI(fmt.Sprintf("r%d", l)))
		script += fmt.Sprintf("(for i in $(seq 60); do truncate -s 64M %s && dd if=/dev/zero of=%s bs=1M count=1 seek=$((i %% 16)) conv=notrunc oflag=direct status=none || exit 1; done) &\n", f, f)
	}
	script += "for j in 1 2 3 4; do wait -n || exit 1; done\n"
	if r := shellResult(cmdTimeout, script); r.Code != 0 {
		t.Fatalf("reopen for write failed: %v", r)
	}
	// No lock is left behind once every writer closed.
	if !waitFor(quickTimeout, func() bool {
		for _, v := range c.VDIs() {
			if v.Locked {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("VDIs still locked after every writer closed: %+v", c.VDIs())
	}
}

// TestSizeChangedElsewhereSeenAtOpen: a VDI resized elsewhere (by the CLI,
// by another mount, by a rollback to a snapshot of another size) shows its
// new size on this mount at its next stat (once the attribute timeout has
// passed) and open, and reads up to it, although the kernel keeps its own
// size of the file under the writeback cache and had the old one from
// before.
func TestSizeChangedElsewhereSeenAtOpen(t *testing.T) {
	parallel(t)
	c := NewCluster(t, 3, 3)
	m := c.Mount()
	other := c.Mount()
	path := m.VDI("sz")
	run(t, quickTimeout, "truncate", "-s", "8M", path)
	check := func(when string, want int64) {
		t.Helper()
		// stat first, once the kernel's attributes are older than
		// sheepfs's attribute timeout (1 s), then an open, then a read
		// of the last block and a seek to the end.
		script := fmt.Sprintf(`import os, sys
st = os.stat(sys.argv[1]).st_size
fd = os.open(sys.argv[1], os.O_RDONLY)
fs = os.fstat(fd).st_size
n = len(os.pread(fd, 4096, %d - 4096))
end = os.lseek(fd, 0, os.SEEK_END)
print(st, fs, n, end)
`, want)
		time.Sleep(1100 * time.Millisecond)
		r := run(t, quickTimeout, "python3", "-c", script, path)
		if got, exp := strings.TrimSpace(r.Stdout), fmt.Sprintf("%d %d 4096 %d", want, want, want); got != exp {
			t.Errorf("%s: stat, fstat after open, bytes read at the end, SEEK_END: %s, want %s", when, got, exp)
		}
	}
	check("created", 8<<20)
	if r := c.Sheep("vdi", "resize", "sz", "16M"); r.Code != 0 {
		t.Fatal(r)
	}
	check("after vdi resize", 16<<20)
	run(t, quickTimeout, "truncate", "-s", "32M", other.VDI("sz"))
	check("after a truncate through another mount", 32<<20)
	if r := c.Sheep("vdi", "snapshot", "sz@small"); r.Code != 0 {
		t.Fatal(r)
	}
	run(t, quickTimeout, "truncate", "-s", "64M", other.VDI("sz"))
	check("grown again", 64<<20)
	if r := c.Sheep("vdi", "rollback", "sz@small"); r.Code != 0 {
		t.Fatal(r)
	}
	check("after a rollback to a snapshot of another size", 32<<20)
}
