package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// cachedScript writes the same data to a VDI and to a plain file without
// fsync (under the writeback cache it stays in the kernel), in four rounds,
// and after each asks one of the things that must count the cached data:
// SEEK_DATA/SEEK_HOLE on the writer's fd, the same on a second fd, st_blocks
// by fstat and stat, and a cp --sparse=always made by the writer process.
// The VDI's answers must be the plain file's, its data regions rounded out
// to whole 4 MiB objects (a VDI allocates whole objects). It prints the
// differences as a JSON list, and the number of probes made.
const cachedScript = `
import errno, json, os, subprocess, sys
vdi, plain, copy = sys.argv[1:4]
OBJ, SIZE = 4 << 20, 64 << 20
w = os.open(vdi, os.O_RDWR)
p = os.open(plain, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(p, SIZE)
bad, probes = [], 0

def write(off, n, seed):
    data = bytes((seed * 7 + i * 13) & 0xff for i in range(n))
    for fd in (w, p):
        if os.pwrite(fd, data, off) != n:
            sys.exit("short write")

def seek(fd, off, whence):
    try:
        return os.lseek(fd, off, whence)
    except OSError as e:
        if e.errno == errno.ENXIO:
            return "ENXIO"
        raise

def objects():
    # The plain file's data regions rounded out to objects, merged.
    out, off = [], 0
    while True:
        d = seek(p, off, os.SEEK_DATA)
        if d == "ENXIO":
            break
        h = seek(p, d, os.SEEK_HOLE)
        s, e = d // OBJ * OBJ, min(SIZE, -(-h // OBJ) * OBJ)
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
        off = h
        if off >= SIZE:
            break
    return out

def want(off, whence, regs):
    if off >= SIZE:
        return "ENXIO"
    for s, e in regs:
        if e > off:
            if whence == os.SEEK_DATA:
                return max(off, s)
            return e if s <= off else off
    return "ENXIO" if whence == os.SEEK_DATA else off

def check_seeks(fd, name):
    global probes
    regs = objects()
    for off in sorted({0, 1, OBJ - 1, OBJ, OBJ + 1, SIZE - 1} | {k << 20 for k in range(0, 64, 3)}):
        for whence, wn in ((os.SEEK_DATA, "SEEK_DATA"), (os.SEEK_HOLE, "SEEK_HOLE")):
            got, exp = seek(fd, off, whence), want(off, whence, regs)
            probes += 1
            if got != exp:
                bad.append("%s(%d) on %s: %s, want %s (objects with data %s)" % (wn, off, name, got, exp, regs))

# Round 1: the writer's own fd.
write(0, 4096, 1)
write(9 << 20, 3 << 20, 2)
write((24 << 20) - 4096, 8192, 3)  # across two objects
check_seeks(w, "the writer's fd")

# Round 2: a second fd, opened after the writes.
write(40 << 20, 1, 4)
write(52 << 20, 1 << 20, 5)
r = os.open(vdi, os.O_RDONLY)
check_seeks(r, "a second fd")
os.close(r)

# Round 3: st_blocks, by fstat on the writer's fd and by stat of the path.
write(44 << 20, 4096, 6)
write(60 << 20, 4096, 7)
blocks = sum(e - s for s, e in objects()) // 512
for name, st in (("fstat", os.fstat(w)), ("stat", os.stat(vdi))):
    probes += 1
    if st.st_blocks != blocks:
        bad.append("st_blocks by %s: %d, want %d (objects with data %s)" % (name, st.st_blocks, blocks, objects()))

# Round 4: cp --sparse=always from the writer, its fd still open.
write(28 << 20, 64 << 10, 8)
write((64 << 20) - 100, 100, 9)
subprocess.run(["cp", "--sparse=always", vdi, copy], check=True)
with open(copy, "rb") as c, open(plain, "rb") as f:
    probes += 1
    a, b = c.read(), f.read()
    if a != b:
        first = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
        bad.append("cp --sparse=always made a copy of %d bytes that differs from the data at byte %d" % (len(a), first))
os.close(w)
os.close(p)
print(json.dumps({"bad": bad, "probes": probes}))
`

// TestSeekSeesCachedWrites: SEEK_DATA/SEEK_HOLE, st_blocks and a sparse
// copy count writes that are still in the kernel's writeback cache, on the
// writer's fd and on another, as a plain file's answers do.
func TestSeekSeesCachedWrites(t *testing.T) {
	requireEnv(t, "python3", "cp")
	c := NewCluster(t, 3, 3)
	m := c.Mount()
	vdi := m.VDI("cached")
	run(t, quickTimeout, "truncate", "-s", "64M", vdi)
	tmp := t.TempDir()
	r := run(t, cmdTimeout, "python3", "-c", cachedScript, vdi, filepath.Join(tmp, "plain"), filepath.Join(tmp, "copy"))
	var out struct {
		Bad    []string
		Probes int
	}
	if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil {
		t.Fatalf("script printed %q: %v", r.Stdout, err)
	}
	if out.Probes < 100 {
		t.Fatalf("the script made %d probes, want more than 100", out.Probes)
	}
	if len(out.Bad) > 0 {
		t.Errorf("%d of %d answers differ from a plain file's:\n%s", len(out.Bad), out.Probes, strings.Join(out.Bad, "\n"))
	}
}

// TestSheepfsKilledAfterSeekEnds: a SEEK_DATA on a file open for writing
// makes sheepfs open that file through its own mount to write the cached
// pages back (fs/cached.go). A sheepfs killed afterwards must still end
// by itself: a file of its own mount held open would be closed by its
// exit, whose FLUSH waits for a server that is gone, and the process
// would hang until a new sheepfs took the mount over (which a supervisor
// waiting for it to end never starts). Then a new sheepfs takes over and
// the writer's close succeeds.
func TestSheepfsKilledAfterSeekEnds(t *testing.T) {
	requireEnv(t, "python3")
	c := NewCluster(t, 3, 2)
	m := c.Mount()
	vdi := m.VDI("seek")
	run(t, quickTimeout, "truncate", "-s", "16M", vdi)
	stdin, rd := startPython(t, `
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
os.pwrite(fd, b"x" * 4096, 8192)
print(os.lseek(fd, 0, os.SEEK_DATA), flush=True)
sys.stdin.read()
os.fsync(fd)
os.close(fd)
print("closed", flush=True)
`, vdi)
	if line := readLine(t, rd); line != "0" {
		t.Fatalf("SEEK_DATA answered %q, want 0 (the object of the cached write)", line)
	}
	if state, ended := killEnds(m); !ended {
		t.Fatalf("sheepfs killed after a SEEK_DATA did not end within 10 s (%s): it held a file of its own mount", state)
	}
	m.KillAndRestart(0)
	stdin.Close()
	if line := readLine(t, rd); line != "closed" {
		t.Fatalf("the writer's fsync and close after the restart: %q", line)
	}
}

// killEnds kills m's sheepfs with SIGKILL and reports whether it ended
// within 10 s, and else the State line of its status.
func killEnds(m *Mount) (string, bool) {
	_ = m.proc.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-m.proc.done:
		return "", true
	case <-time.After(10 * time.Second):
		return procState(m.proc.cmd.Process.Pid), false
	}
}

// procState is the State line of process pid's status.
func procState(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "State:") {
			return strings.TrimSpace(l)
		}
	}
	return "gone"
}

// TestSheepfsKilledDuringWriteBackEnds: sheepfs is killed while it waits
// for the kernel to write a file's cached pages back (a SEEK_DATA on a
// file open for writing, with the cluster stopped so that the write-back
// cannot finish). The killed sheepfs must end at once: a thread of its
// own waiting for its own mount's write-back would wait, unkillable, for
// a server that is gone, and a new sheepfs could not take the mount over
// while the old one lives. Then the cluster goes on, a new sheepfs takes
// over, and the SEEK_DATA, the writer's fsync and close, and a read of
// the data succeed.
func TestSheepfsKilledDuringWriteBackEnds(t *testing.T) {
	requireEnv(t, "python3")
	c := NewCluster(t, 3, 2)
	m := c.Mount()
	vdi := m.VDI("wb")
	run(t, quickTimeout, "truncate", "-s", "16M", vdi)
	stdin, rd := startPython(t, `
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
os.pwrite(fd, b"w" * 4096, 8192)
print("written", flush=True)
sys.stdin.readline()
print(os.lseek(fd, 0, os.SEEK_DATA), flush=True)
sys.stdin.readline()
os.fsync(fd)
os.close(fd)
print("closed", flush=True)
`, vdi)
	if line := readLine(t, rd); line != "written" {
		t.Fatalf("writer: %q", line)
	}
	signalNodes := func(sig syscall.Signal) {
		for _, n := range c.Nodes {
			_ = n.proc.cmd.Process.Signal(sig)
		}
	}
	signalNodes(syscall.SIGSTOP)
	defer signalNodes(syscall.SIGCONT)
	if _, err := io.WriteString(stdin, "seek\n"); err != nil {
		t.Fatal(err)
	}
	// The SEEK_DATA now waits for the write-back, which waits for the cluster.
	time.Sleep(2 * time.Second)
	if state, ended := killEnds(m); !ended {
		t.Errorf("sheepfs killed during a write-back did not end within 10 s (%s)", state)
	}
	signalNodes(syscall.SIGCONT)
	m.KillAndRestart(0)
	if line := readLine(t, rd); line != "0" {
		t.Fatalf("SEEK_DATA after the restart answered %q, want 0 (the object of the cached write)", line)
	}
	if _, err := io.WriteString(stdin, "close\n"); err != nil {
		t.Fatal(err)
	}
	if line := readLine(t, rd); line != "closed" {
		t.Fatalf("the writer's fsync and close after the restart: %q", line)
	}
	r := run(t, quickTimeout, "sh", "-c", "dd if="+q(vdi)+" bs=4096 skip=2 count=1 status=none | tr -d w | wc -c")
	if strings.TrimSpace(r.Stdout) != "0" {
		t.Fatalf("the written block reads back with %s bytes that are not the data", strings.TrimSpace(r.Stdout))
	}
}

// startPython runs a python3 script with args, and returns its stdin and
// its stdout; it is killed at the end of the test.
func startPython(t *testing.T, script string, args ...string) (io.WriteCloser, *bufio.Reader) {
	t.Helper()
	cmd := exec.Command("python3", append([]string{"-c", script}, args...)...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			// Waiting on a mount nobody serves: the cluster's
			// cleanup (its unmount) ends it.
		}
	})
	return stdin, bufio.NewReader(out)
}

// readLine reads a line of a startPython script's output, without its
// newline; it fails the test if none comes within cmdTimeout.
func readLine(t *testing.T, rd *bufio.Reader) string {
	t.Helper()
	got := make(chan string, 1)
	go func() {
		line, err := rd.ReadString('\n')
		if err != nil {
			line = fmt.Sprintf("(%v after %q)", err, line)
		}
		got <- strings.TrimSuffix(line, "\n")
	}()
	select {
	case line := <-got:
		return line
	case <-time.After(cmdTimeout):
		t.Fatalf("no line from the script within %v", cmdTimeout)
		return ""
	}
}
