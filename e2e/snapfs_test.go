package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/proto"
)

// The semantics of the files of a mount: the snapshot tree (touch takes a
// snapshot, rm deletes it, everything else is refused with the right
// errno), the fixed directories, and the page cache of VDI files after
// snapshots, rollbacks and re-creations. Every system call on the mount is
// made by a python3 subprocess, which issues the exact open(2) flags asked
// for and reports the errno; the calls of a test go in a few batches, one
// python3 process each.

// fsBatchScript makes the calls listed (JSON) in argv[1], in order, and
// prints a JSON list with one {"out": ..., "errno": N} per call: N is 0 if
// the call succeeded, else the errno it failed with. A call of "run"
// (another program, e.g. the admin CLI) that fails stops the batch.
const fsBatchScript = `
import hashlib, json, os, subprocess, sys

def flags(s):
    f = 0
    for n in s.split("|"):
        f |= getattr(os, n)
    return f

def pattern(seed, n):  # seedPattern
    return b"".join(bytes([(seed + k) & 255]) * 4096 for k in range((n + 4095) // 4096))[:n]

def call(op, a):
    if op == "open":  # PATH FLAGS: open (mode 0644) and close
        os.close(os.open(a[0], flags(a[1]), 0o644))
    elif op == "open-write":  # PATH FLAGS: open, then write one byte
        fd = os.open(a[0], flags(a[1]), 0o644)
        res["out"] = "opened"
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
    elif op == "write-pattern":  # PATH OFF SEED N: write through an open of its own
        data, off, done = pattern(int(a[2]), int(a[3])), int(a[1]), 0
        fd = os.open(a[0], os.O_WRONLY)
        try:
            while done < len(data):
                done += os.pwrite(fd, data[done:], off + done)
        finally:
            os.close(fd)
    elif op == "sha256":  # PATH OFF N [FLAGS]: SHA-256 of what a new open reads
        fd = os.open(a[0], flags(a[3]) if len(a) > 3 else os.O_RDONLY)
        try:
            h, off, n = hashlib.sha256(), int(a[1]), int(a[2])
            while n > 0:
                b = os.pread(fd, min(n, 1 << 20), off)
                if not b:
                    break
                h.update(b)
                off, n = off + len(b), n - len(b)
            res["out"] = h.hexdigest()
        finally:
            os.close(fd)
    elif op == "truncate":
        os.truncate(a[0], int(a[1]))
    elif op == "utime":
        os.utime(a[0])
    elif op == "chmod":
        os.chmod(a[0], int(a[1], 8))
    elif op == "chown":
        os.chown(a[0], int(a[1]), int(a[2]))
    elif op == "setxattr":
        os.setxattr(a[0], a[1], a[2].encode())
    elif op == "removexattr":
        os.removexattr(a[0], a[1])
    elif op == "getxattr":
        res["out"] = os.getxattr(a[0], a[1]).decode()
    elif op == "listxattr":  # in the order the file system gives them
        res["out"] = os.listxattr(a[0])
    elif op == "mkdir":
        os.mkdir(a[0], 0o755)
    elif op == "rmdir":
        os.rmdir(a[0])
    elif op == "unlink":
        os.unlink(a[0])
    elif op == "rename":
        os.rename(a[0], a[1])
    elif op == "mknod":  # PATH fifo|reg
        os.mknod(a[0], {"fifo": 0o010644, "reg": 0o100644}[a[1]])
    elif op == "stat":
        st = os.stat(a[0])
        res["out"] = {"mode": st.st_mode, "size": st.st_size, "blocks": st.st_blocks, "mtime": st.st_mtime_ns // 10**9}
    elif op == "listdir":  # in the directory's order
        res["out"] = os.listdir(a[0])
    elif op == "seek":  # PATH OFF data|hole
        fd = os.open(a[0], os.O_RDONLY)
        try:
            res["out"] = os.lseek(fd, int(a[1]), {"data": os.SEEK_DATA, "hole": os.SEEK_HOLE}[a[2]])
        finally:
            os.close(fd)
    elif op == "run":  # PROGRAM ARGS...
        p = subprocess.run(a, capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            sys.exit("%s: exit %d\n%s%s" % (a, p.returncode, p.stdout, p.stderr))
    else:
        sys.exit("unknown op " + op)

out = []
for c in json.loads(sys.argv[1]):
    res = {"out": None, "errno": 0}
    try:
        call(c[0], c[1:])
    except OSError as e:
        res["errno"] = e.errno
    out.append(res)
print(json.dumps(out))
`

// fsResult is the result of one call of a batch.
type fsResult struct {
	Out   json.RawMessage `json:"out"`
	Errno syscall.Errno   `json:"errno"`
}

// fsBatch collects calls on a mount to make in one python3 process.
type fsBatch struct {
	calls  [][]string
	res    []*fsResult
	checks []fsCheck
}

// fsCheck is a call expected to fail with an errno (or succeed, for 0).
// The test cannot go on without a fatal one.
type fsCheck struct {
	what  string
	want  syscall.Errno
	fatal bool
	res   *fsResult
}

// do adds a call; its result is there once run returned.
func (b *fsBatch) do(op string, args ...string) *fsResult {
	r := &fsResult{}
	b.calls = append(b.calls, append([]string{op}, args...))
	b.res = append(b.res, r)
	return r
}

// expect adds a call that must end with errno want (0: succeed); run
// reports it if it does not.
func (b *fsBatch) expect(what string, want syscall.Errno, op string, args ...string) {
	b.checks = append(b.checks, fsCheck{what: what, want: want, res: b.do(op, args...)})
}

// must adds a call that must succeed; run stops the test if it does not.
func (b *fsBatch) must(what string, op string, args ...string) {
	b.checks = append(b.checks, fsCheck{what: what, fatal: true, res: b.do(op, args...)})
}

// run makes the calls added so far, in order, in one python3 process, and
// reports every expectation not met. The batch is empty afterwards.
func (b *fsBatch) run(t *testing.T) {
	t.Helper()
	calls, err := json.Marshal(b.calls)
	if err != nil {
		t.Fatal(err)
	}
	r := run(t, cmdTimeout, "python3", "-c", fsBatchScript, string(calls))
	var out []fsResult
	if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil || len(out) != len(b.calls) {
		t.Fatalf("batch printed %d results for %d calls (%v): %v", len(out), len(b.calls), err, r)
	}
	for i := range out {
		*b.res[i] = out[i]
	}
	for _, c := range b.checks {
		if c.fatal && c.res.Errno != 0 {
			t.Fatalf("%s: %s", c.what, errnoText(c.res.Errno))
		}
	}
	for _, c := range b.checks {
		if !c.fatal && c.res.Errno != c.want {
			t.Errorf("%s: %s, want %s", c.what, errnoText(c.res.Errno), errnoText(c.want))
		}
	}
	*b = fsBatch{}
}

func errnoText(e syscall.Errno) string {
	if e == 0 {
		return "success"
	}
	return fmt.Sprintf("%q (errno %d)", e.Error(), int(e))
}

// decode fails the test unless the call r succeeded, and decodes its
// output into out.
func (r *fsResult) decode(t *testing.T, what string, out any) {
	t.Helper()
	if r.Errno != 0 {
		t.Fatalf("%s: %s", what, errnoText(r.Errno))
	}
	if err := json.Unmarshal(r.Out, out); err != nil {
		t.Fatalf("%s printed %s: %v", what, r.Out, err)
	}
}

// str is the call's output as a string ("error: ..." if it failed).
func (r *fsResult) str() string {
	var s string
	if r.Errno != 0 {
		return "error: " + errnoText(r.Errno)
	}
	if json.Unmarshal(r.Out, &s) != nil {
		return "output " + string(r.Out)
	}
	return s
}

// list is the call's output as a list of strings (nil if it failed).
func (r *fsResult) list() []string {
	var l []string
	if r.Errno != 0 || json.Unmarshal(r.Out, &l) != nil {
		return nil
	}
	if l == nil {
		l = []string{}
	}
	return l
}

// seedPattern is n bytes that differ with seed: seed+k in the k-th 4 KiB
// (write-pattern of fsBatchScript).
func seedPattern(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i/4096)
	}
	return b
}

// writePattern adds a write of seedPattern(seed, n) at off of path, through
// an open of its own (closed, so the kernel has sent the writes), which
// must succeed.
func (b *fsBatch) writePattern(path string, off int64, seed byte, n int) {
	b.must(fmt.Sprintf("write of pattern %d to %s", seed, path), "write-pattern", path, fmt.Sprint(off), fmt.Sprint(seed), fmt.Sprint(n))
}

// read adds a read of n bytes at off of path, through a new open with
// flags (default O_RDONLY); is compares what it read.
func (b *fsBatch) read(path string, off int64, n int, flags ...string) *fsResult {
	return b.do("sha256", append([]string{path, fmt.Sprint(off), fmt.Sprint(n)}, flags...)...)
}

// is reports whether the read r read want.
func (r *fsResult) is(want []byte) bool { return r.Errno == 0 && r.str() == sha256Bytes(want) }

// sheep adds a run of the admin CLI with args, which must succeed (or the
// batch stops).
func (b *fsBatch) sheep(c *Cluster, args ...string) {
	b.do("run", append([]string{sheepBin, "--addr", c.anyAddr(), "--timeout", "60s"}, args...)...)
}

// sheepOK runs the admin CLI and fails the test unless it succeeds.
func sheepOK(t *testing.T, c *Cluster, args ...string) {
	t.Helper()
	if r := c.Sheep(args...); r.Code != 0 {
		t.Fatalf("sheep %v: %v", args, r)
	}
}

// snapshotsOf lists the snapshots of VDI name as the CLI reports them.
func snapshotsOf(t *testing.T, c *Cluster, name string) []proto.VDIInfo {
	t.Helper()
	var list []proto.VDIInfo
	c.SheepJSON(&list, "vdi", "snapshots", name)
	return list
}

// snapshotInfo returns snapshot name@tag, or fails the test.
func snapshotInfo(t *testing.T, c *Cluster, name, tag string) proto.VDIInfo {
	t.Helper()
	for _, v := range snapshotsOf(t, c, name) {
		if v.Tag == tag {
			return v
		}
	}
	t.Fatalf("snapshot %s@%s not in the snapshot list", name, tag)
	return proto.VDIInfo{}
}

// TestSnapshotDirectory: snapshot/NAME/ lists a VDI's snapshots oldest
// first; touch (or mknod) of a tag takes a snapshot that later writes do not
// reach, rm deletes it; a snapshot file is read-only (EROFS) with the VDI's
// size, its allocation, the time it was taken and its attributes; the tree
// refuses what would change it (EPERM); and a tag deleted and taken again,
// through the mount or elsewhere, reads as the new snapshot.
func TestSnapshotDirectory(t *testing.T) {
	parallel(t)
	requireEnv(t, "python3", "touch")
	c := NewCluster(t, 1, 1)
	m := c.Mount()
	const size, n = 64 << 20, 5 << 20
	a, b := seedPattern(1, n), seedPattern(100, n)
	vdiPath := m.VDI("d")
	snap := func(elem ...string) string { return m.Path(append([]string{"snapshot"}, elem...)...) }
	s1 := snap("d", "s1")

	var f fsBatch
	f.must("create vdi/d", "open", vdiPath, "O_WRONLY|O_CREAT|O_TRUNC")
	f.must("truncate vdi/d", "truncate", vdiPath, fmt.Sprint(size))
	f.writePattern(vdiPath, 0, 1, n)
	// A VDI without snapshots has its directory, empty.
	top, dir := f.do("listdir", snap()), f.do("listdir", snap("d"))
	// touch takes the snapshot; later writes do not reach it.
	f.must("touch", "open", s1, "O_WRONLY|O_CREAT")
	f.writePattern(vdiPath, 0, 100, n)
	snapData, vdiData := f.read(s1, 0, n), f.read(vdiPath, 0, n)
	stat := f.do("stat", s1)
	f.run(t)
	if got := top.list(); !slices.Equal(got, []string{"d"}) {
		t.Fatalf("snapshot/ lists %v (%s)", got, errnoText(top.Errno))
	}
	if got := dir.list(); got == nil || len(got) != 0 {
		t.Fatalf("snapshot/d lists %v (%s)", got, errnoText(dir.Errno))
	}
	if !snapData.is(a) {
		t.Error("snapshot does not hold the data written before it")
	}
	if !vdiData.is(b) {
		t.Error("VDI does not hold the data written after the snapshot")
	}

	// Attributes: read-only, the VDI's size, two objects allocated, the
	// time it was taken.
	info := snapshotInfo(t, c, "d", "s1")
	var st struct{ Mode, Size, Blocks, Mtime int64 }
	stat.decode(t, "stat", &st)
	if st.Mode != syscall.S_IFREG|0o444 || st.Size != size || st.Blocks != 2*(4<<20)/512 || st.Mtime != info.SnapTime {
		t.Errorf("stat: mode %o size %d blocks %d mtime %d; want snapshot time %d", st.Mode, st.Size, st.Blocks, st.Mtime, info.SnapTime)
	}

	// Touching it again works (touch(1) too); an exclusive create does
	// not.
	if r := runCmd(quickTimeout, nil, nil, "touch", s1); r.Code != 0 {
		t.Errorf("touch(1) of an existing snapshot: %v", r)
	}
	f.expect("utimes of a snapshot", 0, "utime", s1)
	f.expect("O_CREAT open of an existing snapshot", 0, "open", s1, "O_RDONLY|O_CREAT")
	f.expect("O_EXCL create of an existing tag", syscall.EEXIST, "open", s1, "O_WRONLY|O_CREAT|O_EXCL")

	// Read-only.
	f.expect("open for writing", syscall.EROFS, "open", s1, "O_WRONLY")
	f.expect("O_TRUNC", syscall.EROFS, "open", s1, "O_RDONLY|O_TRUNC")
	f.expect("truncate", syscall.EROFS, "truncate", s1, "0")
	f.expect("chmod", syscall.EROFS, "chmod", s1, "644")
	f.expect("chown", syscall.EROFS, "chown", s1, "1", "1")
	f.expect("setxattr", syscall.ENOTSUP, "setxattr", s1, "user.x", "1")
	f.expect("removexattr", syscall.ENOTSUP, "removexattr", s1, "user.sheepfs.id")

	// Names.
	f.expect("invalid tag", syscall.EINVAL, "open", snap("d", "a@b"), "O_WRONLY|O_CREAT")
	f.expect("no such VDI", syscall.ENOENT, "open", snap("nosuch", "t"), "O_WRONLY|O_CREAT")
	f.expect("mkdir", syscall.EPERM, "mkdir", snap("d", "x"))
	f.expect("mkdir at the top", syscall.EPERM, "mkdir", snap("x"))
	f.expect("rename", syscall.EPERM, "rename", s1, snap("d", "s9"))
	f.expect("rmdir", syscall.EPERM, "rmdir", snap("d"))
	f.expect("mknod of a fifo", syscall.EPERM, "mknod", snap("d", "p"), "fifo")
	f.expect("vdi/d@s1 (snapshots live under snapshot/)", syscall.ENOENT, "stat", m.VDI("d@s1"))

	// A create that would truncate takes no snapshot; the handle of a
	// writable create refuses writes at once.
	f.expect("O_TRUNC create", syscall.EROFS, "open", snap("d", "tr"), "O_WRONLY|O_CREAT|O_TRUNC")
	f.expect("stat after the O_TRUNC create (it took a snapshot?)", syscall.ENOENT, "stat", snap("d", "tr"))
	w := f.do("open-write", snap("d", "w"), "O_WRONLY|O_CREAT")
	f.expect("mknod", 0, "mknod", snap("d", "mk"), "reg")
	dir = f.do("listdir", snap("d"))

	// SEEK_DATA and SEEK_HOLE.
	hole := f.do("seek", s1, "0", "hole")
	f.expect("SEEK_DATA past the data", syscall.ENXIO, "seek", s1, fmt.Sprint(8<<20), "data")

	// Extended attributes.
	id, taken := f.do("getxattr", s1, "user.sheepfs.id"), f.do("getxattr", s1, "user.sheepfs.snapshot_time")
	parent, copies := f.do("getxattr", vdiPath, "user.sheepfs.parent"), f.do("getxattr", vdiPath, "user.sheepfs.copies")
	xattrs := f.do("listxattr", vdiPath)
	f.run(t)

	if string(w.Out) != `"opened"` {
		t.Errorf("writable create of snapshot/d/w: %s", errnoText(w.Errno))
	} else if w.Errno != syscall.EROFS {
		t.Errorf("write through the create handle: %s, want %s", errnoText(w.Errno), errnoText(syscall.EROFS))
	}
	if got := dir.list(); !slices.Equal(got, []string{"s1", "w", "mk"}) {
		t.Errorf("snapshot/d lists %v, want s1 w mk (oldest first)", got)
	}
	var off int64
	if hole.decode(t, "SEEK_HOLE", &off); off != 8<<20 {
		t.Errorf("SEEK_HOLE: %d", off)
	}
	if got := id.str(); got != info.ID.String() {
		t.Errorf("snapshot id %q, want %q", got, info.ID)
	}
	if got, want := taken.str(), time.Unix(info.SnapTime, 0).UTC().Format(time.RFC3339); got != want {
		t.Errorf("snapshot_time %q, want %q", got, want)
	}
	if got := parent.str(); got != "d@mk" {
		t.Errorf("VDI parent %q, want d@mk", got)
	}
	if got := copies.str(); got != "1" {
		t.Errorf("VDI copies %q", got)
	}
	if got, want := xattrs.list(), []string{"user.sheepfs.id", "user.sheepfs.copies", "user.sheepfs.parent"}; !slices.Equal(got, want) {
		t.Errorf("listxattr: %q (%s); want %q", got, errnoText(xattrs.Errno), want)
	}

	// rm deletes the snapshot. The tag taken again is a new snapshot,
	// not read from the old one's cached pages.
	f.must("rm", "unlink", s1)
	f.run(t)
	for _, v := range snapshotsOf(t, c, "d") {
		if v.Tag == "s1" {
			t.Errorf("d@s1 still exists after rm")
		}
	}
	f.must("touch after rm", "open", s1, "O_WRONLY|O_CREAT")
	again := f.read(s1, 0, n)
	f.run(t)
	if !again.is(b) {
		t.Error("s1 taken again reads as the deleted s1")
	}

	// A snapshot taken elsewhere shows up at once, and one deleted and
	// taken again elsewhere while this mount still has the old one's
	// name (for a second) and pages cached is read as the new one.
	sheepOK(t, c, "vdi", "snapshot", "d@cli")
	cli := f.read(snap("d", "cli"), 0, n)
	f.writePattern(vdiPath, 0, 1, n)
	f.must("read of s1", "sha256", s1, "0", fmt.Sprint(n))
	f.sheep(c, "vdi", "delete", "d@s1")
	f.sheep(c, "vdi", "snapshot", "d@s1")
	newS1 := f.read(s1, 0, n)
	f.run(t)
	if !cli.is(b) {
		t.Errorf("snapshot taken elsewhere (%s)", errnoText(cli.Errno))
	}
	if !newS1.is(a) {
		t.Errorf("s1 taken again elsewhere reads as the deleted s1 (%s)", errnoText(newS1.Errno))
	}
}

// cachedWriterScript writes pattern 7 at 4 KiB of argv[1] through an open
// it keeps, says "written" and waits for a line on stdin (the snapshot
// argv[2] is taken meanwhile), writes pattern 50 at the same place, and
// prints (hex) 8 KiB of the snapshot at 4 KiB before it closes the VDI. It
// starts no process: a child's exec would close its copy of the open file,
// and that close (FUSE FLUSH) writes the dirty pages back by itself.
const cachedWriterScript = `
import os, sys
def pattern(seed, n):
    return b"".join(bytes([(seed + k) & 255]) * 4096 for k in range(n // 4096))
fd = os.open(sys.argv[1], os.O_RDWR)
if os.pwrite(fd, pattern(7, 8192), 4096) != 8192:
    sys.exit("short write")
print("written", flush=True)
sys.stdin.readline()
if os.pwrite(fd, pattern(50, 8192), 4096) != 8192:
    sys.exit("short write")
s = os.open(sys.argv[2], os.O_RDONLY)
print(os.pread(s, 8192, 4096).hex(), flush=True)
os.close(s)
os.close(fd)
`

// TestSnapshotHoldsCachedWrites: a snapshot taken through the mount (touch
// by another process) holds what a writer on the same mount has written,
// also what is still in the page cache (the mount's writeback cache).
func TestSnapshotHoldsCachedWrites(t *testing.T) {
	requireEnv(t, "python3", "touch")
	c := NewCluster(t, 1, 1)
	m := c.Mount()
	vdiPath, s := m.VDI("d"), m.Path("snapshot", "d", "s")
	var f fsBatch
	f.must("create vdi/d", "open", vdiPath, "O_WRONLY|O_CREAT|O_TRUNC")
	f.must("truncate vdi/d", "truncate", vdiPath, fmt.Sprint(16<<20))
	f.run(t)

	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	writer := exec.CommandContext(ctx, "python3", "-c", cachedWriterScript, vdiPath, s)
	writer.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	writer.Stderr = &stderr
	stdin, err := writer.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := writer.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := writer.Start(); err != nil {
		t.Fatal(err)
	}
	out := bufio.NewReader(stdout)
	line, _ := out.ReadString('\n')
	var touch Result
	if strings.TrimSpace(line) == "written" {
		touch = runCmd(quickTimeout, nil, nil, "touch", s)
	}
	io.WriteString(stdin, "go on\n")
	stdin.Close()
	rest, _ := io.ReadAll(out)
	if err := writer.Wait(); err != nil || strings.TrimSpace(line) != "written" {
		t.Fatalf("writer: %v (printed %q)\n%s", err, line, stderr.String())
	}
	if touch.Code != 0 {
		t.Fatalf("touch: %v", touch)
	}
	a := seedPattern(7, 8192)
	if got, err := hex.DecodeString(strings.TrimSpace(string(rest))); err != nil || !bytes.Equal(got, a) {
		t.Errorf("the snapshot misses a write made before it (%v)", err)
	}
	// Also once the writer closed (and the kernel sent its last write).
	later := f.read(s, 4096, len(a))
	f.run(t)
	if !later.is(a) {
		t.Error("the snapshot changed after the writer closed")
	}
}

// TestCacheAfterRollbackAndRecreate: the page cache of a VDI file is
// dropped at open after a rollback, and after the VDI was deleted and
// created again under the same name (the old inode is stale).
func TestCacheAfterRollbackAndRecreate(t *testing.T) {
	requireEnv(t, "python3")
	c := NewCluster(t, 1, 1)
	m := c.Mount()
	const n = 1 << 20
	a, b := seedPattern(1, n), seedPattern(100, n)
	vdiPath, ePath := m.VDI("d"), m.VDI("e")
	var f fsBatch
	f.must("create vdi/d", "open", vdiPath, "O_WRONLY|O_CREAT|O_TRUNC")
	f.must("truncate vdi/d", "truncate", vdiPath, fmt.Sprint(16<<20))
	f.writePattern(vdiPath, 0, 1, n)
	f.sheep(c, "vdi", "snapshot", "d@a")
	f.writePattern(vdiPath, 0, 100, n)
	f.sheep(c, "vdi", "snapshot", "d@b")
	// This mount has b cached (written and read here).
	before := f.read(vdiPath, 0, n)
	f.run(t)
	if !before.is(b) {
		t.Fatalf("VDI before rollback (%s)", errnoText(before.Errno))
	}
	// A rollback waits for the writer's lock, which the kernel drops
	// (RELEASE) after close returned.
	if !waitFor(quickTimeout, func() bool { return !c.VDI("d").Locked }) {
		t.Fatal("vdi/d still locked after its writers closed")
	}

	f.sheep(c, "vdi", "rollback", "d@a")
	after := f.read(vdiPath, 0, n)
	// And a writable open after the next rollback.
	f.sheep(c, "vdi", "rollback", "d@b")
	rw := f.read(vdiPath, 0, n, "O_RDWR")
	f.sheep(c, "vdi", "clone", "d@a", "e")
	f.run(t)
	if !after.is(a) {
		t.Errorf("read after rollback came from the old cache (%s)", errnoText(after.Errno))
	}
	if !rw.is(b) {
		t.Errorf("writable open after rollback: %s, same data %v", errnoText(rw.Errno), rw.is(b))
	}

	// Deleted and created again (a clone of another snapshot) while this
	// mount has the old VDI's name (for a second) and pages cached.
	old := c.VDI("e")
	oldE := f.read(ePath, 0, n)
	f.sheep(c, "vdi", "delete", "e")
	f.sheep(c, "vdi", "clone", "d@b", "e")
	newE := f.read(ePath, 0, n)
	f.expect("writable open of the new e", 0, "open", ePath, "O_RDWR")
	f.run(t)
	if !oldE.is(a) {
		t.Fatalf("clone of d@a (%s)", errnoText(oldE.Errno))
	}
	if c.VDI("e").ID == old.ID {
		t.Fatal("the new e has the old one's ID")
	}
	if !newE.is(b) {
		t.Errorf("read of the new e came from the old one's cache (%s)", errnoText(newE.Errno))
	}
}

// TestFixedDirectories: go-fuse answers unlink and rmdir with success by
// default; the fixed directories must not lose entries.
func TestFixedDirectories(t *testing.T) {
	parallel(t)
	requireEnv(t, "python3")
	c := NewCluster(t, 1, 1)
	m := c.Mount()
	var f fsBatch
	f.expect("rmdir cluster", syscall.EPERM, "rmdir", m.Path("cluster"))
	f.expect("rm cluster/info", syscall.EPERM, "unlink", m.Path("cluster", "info"))
	f.expect("rm node/list", syscall.EPERM, "unlink", m.Path("node", "list"))
	f.expect("stat cluster/info after the refused rm", 0, "stat", m.Path("cluster", "info"))
	f.run(t)
	if r := runCmd(quickTimeout, nil, nil, "cat", m.Path("cluster", "info")); r.Code != 0 || strings.TrimSpace(r.Stdout) == "" {
		t.Errorf("cluster/info after the refused rm: %v", r)
	}
}
