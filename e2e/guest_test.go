package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// TestGuestMigrateAndRestart: a Linux guest under qemu (TCG) with its disk
// on sheepfs makes an ext4 file system and writes files to it, each synced,
// listed with its checksum and read back. While it writes, it migrates
// live from a mount whose gateway is node0 to a mount whose gateway is
// node1 (qemu opens its disk auto-read-only: the destination's stays
// read-only until the guest runs there); then the destination's sheepfs
// is killed with SIGKILL and a new one takes the mount over. The guest
// writes on through all of it, and a last boot through the first mount
// checks the file system (e2fsck) and every file. No console line of any
// phase may show an I/O error.
//
// It runs with qemu's cache=none (O_DIRECT, what libvirt uses on shared
// storage) and with cache=writeback. With writeback the source's hand-over
// must flush the first mount's page cache, and the last boot reads through
// it: the first mount reads the whole disk into its page cache while the
// destination writes, and the last boot must not see those pages, which
// the destination wrote over since.
//
// A destination that stops making progress while no request of it waits
// on either mount is a qemu hang after the migration, not sheepfs's (see
// TestGuestMigrateWithLibvirt): that cache mode runs once more on a new
// VDI, and a second such stall fails.
func TestGuestMigrateAndRestart(t *testing.T) {
	parallel(t)
	requireEnv(t, "qemu-system-x86_64", "apt-get", "apt-cache", "dpkg", "ldd", "mke2fs", "e2fsck")
	start := time.Now()
	img := buildGuest(t)
	t.Logf("guest: %s (ready in %v)", img.About, time.Since(start).Round(time.Millisecond))

	c := NewCluster(t, 3, 3)
	n0, n1, n2 := c.Nodes[0].Addr(), c.Nodes[1].Addr(), c.Nodes[2].Addr()
	a := c.Mount(n0, n1, n2)
	b := c.Mount(n1, n2, n0)
	// One after the other in this test, not as subtests: the cluster's
	// helpers fail the test that made it.
	for _, cache := range []string{"none", "writeback"} {
		runAgainIfQemuStalls(t, func(try int) {
			guestMigrateAndRestart(t, img, a, b, fmt.Sprintf("g-%s-%d", cache, try), cache)
		})
	}
	t.Logf("%v in all", time.Since(start).Round(time.Millisecond))
}

// guestMigrateAndRestart runs TestGuestMigrateAndRestart's guest on a new
// VDI vdi, from mount a to mount b, with the cache mode cache.
func guestMigrateAndRestart(t *testing.T, img guestImage, a, b *Mount, vdi, cache string) {
	logf := func(format string, args ...any) {
		t.Helper()
		t.Logf("cache=%s: "+format, append([]any{cache}, args...)...)
	}
	fatalf := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("cache=%s: "+format, append([]any{cache}, args...)...)
	}
	start := time.Now()
	run(t, quickTimeout, "truncate", "-s", "256M", a.VDI(vdi))
	wroteRe := regexp.MustCompile(`sheepfs-guest: wrote (\d+)$`)
	// wrote waits until g says it has written at least n files.
	wrote := func(g *guest, n int, timeout time.Duration) (time.Time, int) {
		t.Helper()
		deadline := time.Now().Add(timeout)
		for {
			at, m := g.wait(wroteRe, time.Until(deadline))
			if k, _ := strconv.Atoi(m[1]); k >= n {
				return at, k
			}
		}
	}

	// Phase write, through mount a.
	src := startGuest(t, "source (cache="+cache+")", img, a.VDI(vdi), cache, "write", false)
	booted, _ := src.wait(regexp.MustCompile(`sheepfs-guest: phase write$`), 5*time.Minute)
	mkfs, _ := src.wait(regexp.MustCompile(`sheepfs-guest: writing$`), 5*time.Minute)
	wrote(src, 10, 5*time.Minute)
	logf("source: booted in %v, made the file system in %v, wrote 10 files in %v", booted.Sub(start).Round(time.Millisecond),
		mkfs.Sub(booted).Round(time.Millisecond), time.Since(mkfs).Round(time.Millisecond))

	// Live migration to a qemu with the same VDI through mount b.
	dst := startGuest(t, "destination (cache="+cache+")", img, b.VDI(vdi), cache, "write", true)
	dst.stalled = func() string { return stalledOutsideSheepfs(t, vdi, b, a) }
	defer func() {
		if r := recover(); r != nil {
			dst.cmd.Process.Kill() // a stalled guest, tried again at once
			panic(r)
		}
	}()
	if s := dst.status(); s != "inmigrate" {
		fatalf("destination: status %q before the migration, want inmigrate", s)
	}
	took, downtime := src.migrateTo(dst, 5*time.Minute)
	if s := dst.status(); s != "running" {
		fatalf("destination: status %q after the migration, want running", s)
	}
	if s := src.status(); s != "postmigrate" {
		fatalf("source: status %q after the migration, want postmigrate", s)
	}
	src.qmpCall("quit", nil)
	src.exited(time.Minute)
	src.checkConsole()
	srcWrote := src.times(wroteRe)
	firstDst, m := dst.wait(wroteRe, 3*time.Minute)
	logf("migration: %v, downtime %v by qemu; the source wrote %d files, the destination's first (%s) came %v after the source's last",
		took.Round(time.Millisecond), downtime, len(srcWrote), m[1], firstDst.Sub(srcWrote[len(srcWrote)-1]).Round(time.Millisecond))
	n, _ := strconv.Atoi(m[1])
	_, n = wrote(dst, n+5, 3*time.Minute)

	// Mount a's page cache takes the whole disk as it is now (a buffered
	// read, as by another program on the source's host). Nothing opens
	// the file through mount a again until the last boot, whose open
	// must drop these pages.
	shell(t, cmdTimeout, "dd if="+q(a.VDI(vdi))+" of=/dev/null bs=1M status=none")

	// Kill the sheepfs under the destination; a new one takes over.
	killAt := time.Now()
	b.KillAndRestart(500 * time.Millisecond)
	restarted := time.Since(killAt)
	_, n = wrote(dst, n+10, 5*time.Minute)
	gaps, stall := writeGaps(dst.times(wroteRe), killAt)
	logf("sheepfs restart: serving again %v after the kill; the guest's longest pause between files since the kill was %v (median time per file on the destination %v); %d files written",
		restarted.Round(time.Millisecond), stall.Round(time.Millisecond), gaps[len(gaps)/2].Round(time.Millisecond), n)

	// Stop the guest: a line on its serial port.
	if _, err := dst.stdin.Write([]byte("stop\n")); err != nil {
		t.Fatal(err)
	}
	_, done := dst.wait(regexp.MustCompile(`sheepfs-guest: done (\d+)$`), 3*time.Minute)
	dst.exited(time.Minute)
	dst.checkConsole()
	logf("write phase: %s files in %v", done[1], time.Since(start).Round(time.Millisecond))

	// A last boot, through mount a again, checks everything.
	phase := time.Now()
	v := startGuest(t, "verify (cache="+cache+")", img, a.VDI(vdi), cache, "verify", false)
	_, m = v.wait(regexp.MustCompile(`sheepfs-guest: verified (\d+) files$`), 5*time.Minute)
	if m[1] != done[1] {
		fatalf("the verify boot checked %s files; the guest wrote %s", m[1], done[1])
	}
	v.exited(time.Minute)
	v.checkConsole()
	logf("verify phase: e2fsck clean, %s files intact, in %v", m[1], time.Since(phase).Round(time.Millisecond))
}

// writeGaps returns the sorted times between consecutive console lines at
// times, and the longest of those that end after since.
func writeGaps(times []time.Time, since time.Time) (gaps []time.Duration, longest time.Duration) {
	for i := 1; i < len(times); i++ {
		d := times[i].Sub(times[i-1])
		gaps = append(gaps, d)
		if times[i].After(since) && d > longest {
			longest = d
		}
	}
	return sortedDurations(gaps), longest
}
