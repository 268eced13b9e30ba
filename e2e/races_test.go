package e2e

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"
)

// parallelWriteScript PATH N SIZE SHIFT CREATE writes SIZE bytes of
// value i+1 at i<<SHIFT for i < N, from N threads at once (opening PATH
// with O_CREAT if CREATE is 1), fsyncs, and prints the errors as JSON.
const parallelWriteScript = `
import json, os, sys, threading
path, n, size, shift = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fd = os.open(path, os.O_RDWR | (os.O_CREAT if sys.argv[5] == "1" else 0), 0o644)
errors = []
def w(i):
    try:
        os.pwrite(fd, bytes([i + 1]) * size, i << shift)
    except OSError as e:
        errors.append("pwrite %d at %d: %s" % (size, i << shift, e.strerror))
ts = [threading.Thread(target=w, args=(i,)) for i in range(n)]
for t in ts: t.start()
for t in ts: t.join()
try:
    os.fsync(fd)
except OSError as e:
    errors.append("fsync: " + e.strerror)
os.close(fd)
print(json.dumps(errors))
`

// checkExtendScript checks what parallelWriteScript wrote for
// TestConcurrentWritesPastEOF, after caches are dropped: the size and
// every region.
const checkExtendScript = `
import json, os, sys
path, n = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
bad = [i for i in range(n) if os.pread(fd, 65536, i << 20) != bytes([i + 1]) * 65536]
print(json.dumps({"size": size, "bad": bad}))
`

// TestConcurrentWritesPastEOF: writes that extend a VDI, issued in
// parallel (as a VM's image format does), all succeed, and all their data
// and the final size survive an fsync and a cache drop. Each write past
// the end grows the VDI; growth by one write must never undo another's.
func TestConcurrentWritesPastEOF(t *testing.T) {
	parallel(t)
	requireEnv(t, "python3")
	c := NewCluster(t, 3, 3)
	m := c.Mount()
	const n = 16
	for round := 0; round < 3; round++ {
		vdi := m.VDI(fmt.Sprintf("grow%d", round))
		// 64 KiB at i MiB into a new file: each write extends it, as
		// qcow2 and other image formats do.
		r := run(t, cmdTimeout, "python3", "-c", parallelWriteScript, vdi, fmt.Sprint(n), "65536", "20", "1")
		var errs []string
		if err := json.Unmarshal([]byte(r.Stdout), &errs); err != nil {
			t.Fatalf("extend script printed %q: %v", r.Stdout, err)
		}
		if len(errs) > 0 {
			t.Errorf("round %d: parallel writes past the end failed: %s", round, strings.Join(errs, "; "))
		}
		dropCaches(t)
		r = run(t, cmdTimeout, "python3", "-c", checkExtendScript, vdi, fmt.Sprint(n))
		var res struct {
			Size int64 `json:"size"`
			Bad  []int `json:"bad"`
		}
		if err := json.Unmarshal([]byte(r.Stdout), &res); err != nil {
			t.Fatalf("check script printed %q: %v", r.Stdout, err)
		}
		if want := int64(n-1)<<20 + 65536; res.Size != want {
			t.Errorf("round %d: size after %d parallel extending writes is %d, want %d", round, n, res.Size, want)
		}
		if len(res.Bad) > 0 {
			t.Errorf("round %d: the 64 KiB written at these MiB offsets did not read back: %v", round, res.Bad)
		}
	}
}

// interruptScript creates VDIs with open(O_CREAT) through libc while a
// SIGALRM timer (no-op handler, no SA_RESTART) interrupts the calls, as
// happens to qemu (io_uring task work counts as a pending signal), and
// prints which opens succeeded and which failed with which errno.
const interruptScript = `
import ctypes, errno, json, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
d, prefix, n, period = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
signal.signal(signal.SIGALRM, lambda *a: None)
signal.siginterrupt(signal.SIGALRM, True)
signal.setitimer(signal.ITIMER_REAL, period, period)
out = {}
for i in range(n):
    name = "%s%d" % (prefix, i)
    fd = libc.open(os.path.join(d, name).encode(), os.O_RDWR | os.O_CREAT, 0o644)
    if fd < 0:
        out[name] = errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
        continue
    out[name] = "ok"
    while libc.close(fd) < 0 and ctypes.get_errno() == errno.EINTR:
        pass
signal.setitimer(signal.ITIMER_REAL, 0)
print(json.dumps(out))
`

// TestInterruptedOpens: opens for writing that a signal interrupts either
// fail having done nothing, or succeed; either way, once the process has
// exited no VDI stays locked for writing, and every VDI can be deleted.
func TestInterruptedOpens(t *testing.T) {
	parallel(t)
	requireEnv(t, "python3")
	c := NewCluster(t, 3, 3)
	m := c.Mount()
	results := map[string]string{}
	for _, period := range []string{"0.005", "0.01", "0.02"} {
		r := run(t, 3*time.Minute, "python3", "-c", interruptScript, m.Path("vdi"), "v"+period+"-", "30", period)
		var out map[string]string
		if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil {
			t.Fatalf("interrupt script printed %q: %v", r.Stdout, err)
		}
		for k, v := range out {
			results[k] = v
		}
	}
	exists := map[string]bool{}
	for _, v := range c.VDIs() {
		exists[v.Name] = true
	}
	var ok, eintr, lies, other []string
	for name, res := range results {
		switch {
		case res == "ok":
			ok = append(ok, name)
			if !exists[name] {
				t.Errorf("open(O_CREAT) of %s succeeded but there is no such VDI", name)
			}
		case res == "EINTR" && exists[name]:
			lies = append(lies, name)
		case res == "EINTR":
			eintr = append(eintr, name)
		default:
			other = append(other, name+": "+res)
		}
	}
	t.Logf("of %d interrupted creates: %d succeeded, %d failed with EINTR and did nothing", len(results), len(ok), len(eintr))
	if len(lies) > 0 {
		t.Errorf("%d creates failed with EINTR but created the VDI anyway: %v", len(lies), first(lies, 10))
	}
	if len(other) > 0 {
		t.Errorf("creates failed with errors other than EINTR: %v", other)
	}

	// Nobody has anything open now: no VDI may stay locked. (The kernel
	// sends FUSE RELEASE after close returns, so allow it to arrive.)
	var locked []string
	waitFor(10*time.Second, func() bool {
		locked = nil
		for _, v := range c.VDIs() {
			if v.Locked {
				locked = append(locked, v.Name)
			}
		}
		return len(locked) == 0
	})
	if len(locked) > 0 {
		t.Errorf("%d VDIs stay locked for writing after the process that opened them exited: %v", len(locked), locked)
	}
	var undeletable []string
	for name := range exists {
		if r := runCmd(quickTimeout, nil, nil, "rm", m.VDI(name)); r.Code != 0 {
			undeletable = append(undeletable, name+": "+strings.TrimSpace(r.Stderr))
		}
	}
	if len(undeletable) > 0 {
		t.Errorf("%d VDIs cannot be deleted: %v", len(undeletable), first(undeletable, 3))
	}
}

// first returns at most the first n elements of list, sorted.
func first(list []string, n int) []string {
	sort.Strings(list)
	if len(list) > n {
		return append(list[:n:n], fmt.Sprintf("... (%d more)", len(list)-n))
	}
	return list
}

// TestConcurrentAllocationsReplicasAgree: writes that allocate objects of
// a new VDI in parallel all set their index entries on every replica. The
// replicas must hold the same bytes: a copy one replica fetched while
// another write to the same object was landing there must not undo that
// write (the gateway acknowledged it, so nothing would ever repair it, and
// the VDI would lose data once the other replicas were gone).
func TestConcurrentAllocationsReplicasAgree(t *testing.T) {
	parallel(t)
	requireEnv(t, "python3")
	c := NewCluster(t, 3, 3)
	m := c.Mount()
	const n, rounds = 24, 12
	var vids []uint32
	for round := 0; round < rounds; round++ {
		name := fmt.Sprintf("alloc%d", round)
		run(t, quickTimeout, "truncate", "-s", "1G", m.VDI(name))
		// 4 KiB into each of n objects (at i*4 MiB): each write allocates
		// its object and sets its entry in the one index object that the
		// new VDI starts without, so the replicas see n writes race to
		// create that index object.
		r := run(t, cmdTimeout, "python3", "-c", parallelWriteScript, m.VDI(name), fmt.Sprint(n), "4096", "22", "0")
		var errs []string
		if err := json.Unmarshal([]byte(r.Stdout), &errs); err != nil {
			t.Fatalf("alloc script printed %q: %v", r.Stdout, err)
		}
		if len(errs) > 0 {
			t.Errorf("round %d: parallel allocating writes failed: %s", round, strings.Join(errs, "; "))
		}
		vids = append(vids, c.VDI(name).ID)
	}
	files := c.ObjectFiles()
	for _, vid := range vids {
		reps := files[indexOID(vid, 0)]
		if len(reps) != 3 {
			t.Errorf("index object of VDI %d has %d copies, want 3", vid, len(reps))
		}
		for id, p := range reps {
			b, err := readObjectData(p)
			if err != nil {
				t.Fatal(err)
			}
			var missing []int
			for i := 0; i < n; i++ {
				if len(b) < 4*i+4 || binary.LittleEndian.Uint32(b[4*i:]) != vid {
					missing = append(missing, i)
				}
			}
			if len(missing) > 0 {
				t.Errorf("%s's copy of the index of VDI %d lacks the entries of objects %v", id, vid, missing)
			}
		}
	}
	if bad := replicaMismatches(files, nil); len(bad) > 0 {
		t.Errorf("replicas differ:\n%s", strings.Join(bad, "\n"))
	}
}
