package e2e

import (
	"fmt"
	"testing"
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
