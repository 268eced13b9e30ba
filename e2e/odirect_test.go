package e2e

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// TestODirectUnaligned: an O_DIRECT write at an unaligned offset and length
// either lands (and reads back after the caches are dropped) or fails at
// once with EINVAL and changes nothing; it never reports success without
// the data. An aligned O_DIRECT write with an aligned buffer lands too.
func TestODirectUnaligned(t *testing.T) {
	parallel(t)
	requireEnv(t, "python3")
	c := NewCluster(t, 3, 3)
	m := c.Mount()
	vdi := m.VDI("d")
	run(t, quickTimeout, "truncate", "-s", "64M", vdi)

	data := bytes.Repeat([]byte("unaligned-"), 100) // 1000 bytes
	const off = 4097
	script := fmt.Sprintf(`
import os, sys, mmap
fd = os.open(sys.argv[1], os.O_RDWR | os.O_DIRECT)
try:
    n = os.pwrite(fd, %q.encode(), %d)
    print("ok", n)
except OSError as e:
    print("err", e.errno)
buf = mmap.mmap(-1, 4096)
buf.write(b"A" * 4096)
print("aligned", os.pwritev(fd, [buf], 8192))
os.fsync(fd)
os.close(fd)
`, string(data), off)
	out := strings.Fields(run(t, cmdTimeout, "python3", "-c", script, vdi).Stdout)
	if len(out) != 4 || out[2] != "aligned" || out[3] != "4096" {
		t.Fatalf("unexpected output %q", out)
	}
	dropCaches(t)
	got := readAt(t, vdi, off, len(data))
	switch out[0] {
	case "ok":
		if out[1] != fmt.Sprint(len(data)) {
			t.Fatalf("unaligned O_DIRECT write reported %s bytes, want %d", out[1], len(data))
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("unaligned O_DIRECT write reported success, but reads back %q", got[:32])
		}
	case "err":
		if out[1] != "22" { // EINVAL
			t.Fatalf("unaligned O_DIRECT write failed with errno %s, want EINVAL (22)", out[1])
		}
		if !bytes.Equal(got, make([]byte, len(data))) {
			t.Fatalf("failed unaligned O_DIRECT write changed the data: %q", got[:32])
		}
	default:
		t.Fatalf("unexpected output %q", out)
	}
	if got := readAt(t, vdi, 8192, 4096); !bytes.Equal(got, bytes.Repeat([]byte("A"), 4096)) {
		t.Fatalf("aligned O_DIRECT write reads back %q", got[:16])
	}
}

// readAt reads n bytes of path at off in a subprocess.
func readAt(t *testing.T, path string, off int64, n int) []byte {
	t.Helper()
	script := fmt.Sprintf(`
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
sys.stdout.buffer.write(os.pread(fd, %d, %d))
`, n, off)
	r := run(t, cmdTimeout, "python3", "-c", script, path)
	return []byte(r.Stdout)
}

// TestWritesAskNoCapability: the kernel asks a FUSE file system for
// security.capability before each write, to learn whether the write
// must drop privileges, unless the mount says it drops them itself (a
// GETXATTR round trip through sheepfs per write, a fifth of a 4 KiB
// write's cost). A VDI file has none to drop, so sheepfs says so; the
// kernel then asks once per file and attribute refresh. Counted by
// sheepfs_xattr_gets_total over 2000 O_DIRECT writes and 2000 cached
// ones (each write(2) asks, not each page written back).
func TestWritesAskNoCapability(t *testing.T) {
	parallel(t)
	c := NewCluster(t, 3, 3)
	fsMetrics := freeAddr(t)
	m := c.mount([]string{"--metrics", fsMetrics}, c.Nodes[0].Addr())
	vdi := m.VDI("kp")
	run(t, quickTimeout, "truncate", "-s", "64M", vdi)
	asked := func() float64 {
		return sum(scrape(t, "http://"+fsMetrics+"/metrics"), "sheepfs_xattr_gets_total", `of="other"`)
	}
	const writes = 2000
	for _, flag := range []string{"oflag=direct", "oflag=nocache"} {
		before := asked()
		run(t, cmdTimeout, "dd", "if=/dev/urandom", "of="+vdi, "bs=4k", fmt.Sprint("count=", writes), flag, "conv=notrunc,fsync", "status=none")
		n := asked() - before
		t.Logf("%s: %d writes asked for %.0f attributes not sheepfs's", flag, writes, n)
		if n > writes/10 {
			t.Fatalf("%s: %d writes asked for %.0f attributes (security.capability): the kernel asks before each write", flag, writes, n)
		}
	}
}
