package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// maxVDISize is the largest VDI (cluster.MaxVDISize).
const maxVDISize = int64(64) << 40

// mountNoWriteback is Cluster.Mount with --no-writeback: the kernel's
// writeback cache off, every write(2) sent to sheepfs before it returns.
func mountNoWriteback(t *testing.T, c *Cluster) *Mount {
	t.Helper()
	k := len(c.mounts)
	m := &Mount{Dir: filepath.Join(c.Dir, fmt.Sprintf("mnt%d", k)), Log: filepath.Join(c.Dir, fmt.Sprintf("sheepfs%d.log", k)), Addrs: c.Addrs(), t: t}
	if err := os.MkdirAll(m.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := startProc(m.Log, nil, sheepfsBin, m.Dir, "--addr", strings.Join(m.Addrs, ","), "--no-writeback")
	if err != nil {
		t.Fatalf("start sheepfs: %v", err)
	}
	m.proc = p
	c.mounts = append(c.mounts, m) // unmounted by c.Stop
	ok := waitFor(readyTimeout, func() bool {
		return p.running() && runCmd(quickTimeout, nil, nil, "bash", "-c", "mountpoint -q "+q(m.Dir)+" && cat "+q(m.Path("cluster", "info"))).Code == 0
	})
	if !ok {
		logTail(t, m.Log, 40)
		t.Fatalf("sheepfs --no-writeback did not mount %s", m.Dir)
	}
	return m
}

// pastMaxResult is what pastMaxScript saw, errno or "ok" per call.
type pastMaxResult struct {
	Write any   `json:"write"`
	Fsync any   `json:"fsync"`
	Fstat int64 `json:"fstat"` // st_size of the open file right after the fsync
	Stat  int64 `json:"stat"`  // st_size by path, the file still open
	Read  int   `json:"read"`  // bytes read back at the write's offset
	Close any   `json:"close"`
}

// pastMaxScript writes argv[3] bytes at offset argv[2] of file argv[1],
// fsyncs, and reports every result as JSON, the file open until the end.
const pastMaxScript = `
import json, os, sys
path, off, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = {}
def call(name, f):
    try:
        f()
        out[name] = "ok"
    except OSError as e:
        out[name] = e.errno
fd = os.open(path, os.O_RDWR)
call("write", lambda: os.pwrite(fd, b"\xab" * n, off))
call("fsync", lambda: os.fsync(fd))
out["fstat"] = os.fstat(fd).st_size
out["stat"] = os.stat(path).st_size
out["read"] = len(os.pread(fd, n, off).strip(b"\0"))
call("close", lambda: os.close(fd))
print(json.dumps(out))
`

func writePastMax(t *testing.T, path string, off, n int64) pastMaxResult {
	t.Helper()
	r := run(t, cmdTimeout, "python3", "-c", pastMaxScript, path, strconv.FormatInt(off, 10), strconv.FormatInt(n, 10))
	var res pastMaxResult
	if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
		t.Fatalf("python3 printed %q: %v", r.Stdout, err)
	}
	return res
}

func isErrno(v any, e syscall.Errno) bool {
	f, ok := v.(float64)
	return ok && syscall.Errno(f) == e
}

// TestWritePastMaxSize: a write that ends past the largest VDI size (64
// TiB) fails with EFBIG and changes nothing, and the mount goes on
// reporting the size the cluster has. Without the writeback cache
// write(2) fails. With it (the default) write(2) succeeds, since FUSE
// cannot tell the kernel a largest file size, and fsync fails; the file,
// still open, then shows its old size at once.
func TestWritePastMaxSize(t *testing.T) {
	parallel(t)
	requireEnv(t, "python3")
	c := NewCluster(t, 1, 1)
	for _, mode := range []struct {
		name      string
		m         *Mount
		writeback bool
	}{
		{"writeback", c.Mount(), true},
		{"no-writeback", mountNoWriteback(t, c), false},
	} {
		m := mode.m
		small, full := "small-"+mode.name, "full-"+mode.name
		run(t, quickTimeout, "truncate", "-s", "16M", m.VDI(small))
		run(t, quickTimeout, "truncate", "-s", strconv.FormatInt(maxVDISize, 10), m.VDI(full))
		for _, tc := range []struct {
			what    string
			vdi     string
			size    int64
			off, n  int64
			zeroEnd bool // the write's first bytes are in bounds: check the VDI has zeros there
		}{
			{what: "4 KiB at 64 TiB", vdi: small, size: 16 * miB, off: maxVDISize, n: 4096},
			{what: "1 MiB at 100 TiB", vdi: small, size: 16 * miB, off: 100 << 40, n: miB},
			{what: "8 KiB across 64 TiB", vdi: full, size: maxVDISize, off: maxVDISize - 4096, n: 8192, zeroEnd: true},
		} {
			what := mode.name + ": " + tc.what + " of " + tc.vdi
			res := writePastMax(t, m.VDI(tc.vdi), tc.off, tc.n)
			if mode.writeback {
				// write(2) goes to the page cache; the refusal comes
				// back at fsync.
				if res.Write != "ok" || !isErrno(res.Fsync, syscall.EFBIG) {
					t.Errorf("%s: write %v, fsync %v; want the write cached and fsync to fail with EFBIG", what, res.Write, res.Fsync)
				}
			} else if !isErrno(res.Write, syscall.EFBIG) {
				t.Errorf("%s: write(2) gave %v, want EFBIG", what, res.Write)
			}
			if res.Fstat != tc.size || res.Stat != tc.size {
				t.Errorf("%s: after the refused write the open file shows %d bytes (fstat) and %d (stat), want %d", what, res.Fstat, res.Stat, tc.size)
			}
			if res.Read != 0 {
				t.Errorf("%s: %d bytes of the refused write read back", what, res.Read)
			}
			if v := c.VDI(tc.vdi); v.Size != uint64(tc.size) {
				t.Errorf("%s: the cluster has %s at %d bytes, want %d", what, tc.vdi, v.Size, tc.size)
			}
			if st := statFile(t, m.VDI(tc.vdi)); st.Size != tc.size {
				t.Errorf("%s: stat shows %d bytes, want %d", what, st.Size, tc.size)
			}
			if tc.zeroEnd {
				dropCaches(t)
				if b := readAt(t, m.VDI(tc.vdi), maxVDISize-4096, 4096); strings.Trim(string(b), "\x00") != "" {
					t.Errorf("%s: the refused write's bytes below 64 TiB reached the VDI", what)
				}
			}
		}
		// dd, with and without fsync: the error shows at write(2),
		// fsync or close, and the size stays.
		seek := "seek=" + strconv.FormatInt(maxVDISize/4096, 10)
		for _, conv := range []string{"conv=notrunc,fsync", "conv=notrunc"} {
			r := runCmd(cmdTimeout, nil, nil, "dd", "if=/dev/zero", "of="+m.VDI(small), "bs=4k", "count=1", seek, conv)
			if r.Code == 0 || !strings.Contains(r.Stderr, "File too large") && !strings.Contains(r.Stderr, "Input/output error") {
				t.Errorf("%s: dd %s past 64 TiB: want a failure, got %v", mode.name, conv, r)
			}
			if st := statFile(t, m.VDI(small)); st.Size != 16*miB {
				t.Errorf("%s: after dd %s past 64 TiB, stat shows %d bytes, want %d", mode.name, conv, st.Size, 16*miB)
			}
		}
		// Writes in bounds go on working.
		run(t, cmdTimeout, "dd", "if=/dev/zero", "of="+m.VDI(small), "bs=1M", "count=1", "seek=16", "conv=notrunc,fsync", "status=none")
		if st := statFile(t, m.VDI(small)); st.Size != 17*miB || c.VDI(small).Size != uint64(17*miB) {
			t.Errorf("%s: after a write in bounds, stat shows %d bytes and the cluster %d, want %d", mode.name, st.Size, c.VDI(small).Size, 17*miB)
		}
	}
}

// TestFixedAttrs: a VDI's mode, owner and times are not kept, so chmod,
// chown and setting given times fail with EPERM and change nothing, while
// touch, truncate, dd, cp and qemu-img, and snapshots taken with touch,
// work.
func TestFixedAttrs(t *testing.T) {
	parallel(t)
	requireEnv(t, "python3", "qemu-img")
	c := NewCluster(t, 1, 1)
	src := filepath.Join(t.TempDir(), "src.img")
	sum := writeRandomFile(t, src, 8*miB)
	if err := os.Chmod(src, 0o640); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []struct {
		name string
		m    *Mount
	}{
		{"writeback", c.Mount()},
		{"no-writeback", mountNoWriteback(t, c)},
	} {
		m := mode.m
		v := "v-" + mode.name
		path := m.VDI(v)
		run(t, quickTimeout, "truncate", "-s", "8M", path)
		attrs := func() string {
			return strings.TrimSpace(run(t, quickTimeout, "stat", "-c", "%a %u %g %Y %s", path).Stdout)
		}
		before := attrs()
		for _, args := range [][]string{
			{"chmod", "600", path},
			{"chmod", "755", path},
			{"chown", "1000", path},
			{"chown", "0:1000", path},
			{"touch", "-d", "2001-01-01", path},
			{"touch", "-a", "-d", "2001-01-01", path},
		} {
			r := runCmd(quickTimeout, nil, nil, args[0], args[1:]...)
			if r.Code == 0 || !strings.Contains(r.Stderr, "Operation not permitted") {
				t.Errorf("%s: %s: want EPERM, got %v", mode.name, strings.Join(args, " "), r)
			}
			if got := attrs(); got != before {
				t.Errorf("%s: %s changed mode, owner, mtime or size: %q, was %q", mode.name, strings.Join(args, " "), got, before)
			}
		}
		dropCaches(t)
		if got := attrs(); got != before {
			t.Errorf("%s: after refused changes and a cache drop: %q, was %q", mode.name, got, before)
		}
		// What changes nothing succeeds: the mode and owner it has,
		// and touch.
		run(t, quickTimeout, "chmod", "644", path)
		run(t, quickTimeout, "chown", "0:0", path)
		run(t, quickTimeout, "touch", path)
		run(t, quickTimeout, "touch", m.VDI("touched-"+mode.name))
		if v := c.VDI("touched-" + mode.name); v.Size != 0 {
			t.Errorf("%s: touch made a VDI of %d bytes", mode.name, v.Size)
		}
		// A snapshot is taken with touch, and touched again.
		snap := m.Path("snapshot", v, "t1")
		run(t, quickTimeout, "touch", snap)
		run(t, quickTimeout, "touch", snap)
		if r := runCmd(quickTimeout, nil, nil, "chmod", "600", snap); r.Code == 0 {
			t.Errorf("%s: chmod of a snapshot succeeded", mode.name)
		}
		// Copying tools that set no attributes work; cp
		// --preserve=mode copies the data and says the mode is not kept.
		copies := []string{"cp-" + mode.name, "cp2-" + mode.name, "dd-" + mode.name, "qemu-" + mode.name}
		run(t, cmdTimeout, "cp", src, m.VDI(copies[0]))
		run(t, cmdTimeout, "cp", src, m.VDI(copies[0])) // over an existing VDI
		if r := runCmd(cmdTimeout, nil, nil, "cp", "--preserve=mode", src, m.VDI(copies[1])); r.Code == 0 || !strings.Contains(r.Stderr, "Operation not permitted") {
			t.Errorf("%s: cp --preserve=mode of a 0640 file: want a failure to preserve the mode, got %v", mode.name, r)
		}
		run(t, cmdTimeout, "dd", "if="+src, "of="+m.VDI(copies[2]), "bs=1M", "conv=fsync", "status=none")
		run(t, cmdTimeout, "qemu-img", "convert", "-O", "raw", src, m.VDI(copies[3]))
		run(t, quickTimeout, "truncate", "-s", "16M", m.VDI(copies[0]))
		run(t, quickTimeout, "truncate", "-s", "8M", m.VDI(copies[0]))
		dropCaches(t)
		for _, name := range copies {
			if got := sha256File(t, m.VDI(name)); got != sum {
				t.Errorf("%s: %s does not hold the copied data", mode.name, name)
			}
		}
	}
}

// TestCloseReportsWriteBackError: a write that the cluster refuses when
// the kernel writes it back (past 64 TiB, under the writeback cache) is
// reported at the writer's close even when a stat(2) in between made
// sheepfs write the file back itself (which takes the kernel's one report
// meant for a close).
func TestCloseReportsWriteBackError(t *testing.T) {
	parallel(t)
	requireEnv(t, "python3", "stat")
	c := NewCluster(t, 3, 3)
	m := c.Mount()
	vdi := m.VDI("v")
	run(t, quickTimeout, "truncate", "-s", "16M", vdi)
	script := fmt.Sprintf(`
import os, subprocess, sys
fd = os.open(sys.argv[1], os.O_RDWR)
os.pwrite(fd, b"x" * 4096, %d)
subprocess.run(["stat", sys.argv[1]], check=True, stdout=subprocess.DEVNULL)
try:
    os.close(fd)
except OSError as e:
    print("close:", e.strerror)
    sys.exit(0)
print("close: ok")
`, maxVDISize)
	r := run(t, cmdTimeout, "python3", "-c", script, vdi)
	if out := strings.TrimSpace(r.Stdout); out != "close: Input/output error" && out != "close: File too large" {
		t.Errorf("close after a refused write-back and a stat: %q, want the error", out)
	}
	if st := statFile(t, vdi); st.Size != 16*miB {
		t.Errorf("after the refused write the VDI shows %d bytes, want %d", st.Size, 16*miB)
	}
}
