package e2e

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/fs"
)

// TestSheepfsRestartUnderFio: sheepfs is killed with SIGKILL twice while
// fio writes with libaio (O_DIRECT, then through the page cache) and
// verifies every block; each time a new sheepfs takes the mount over from
// its holder. fio sees no error and verifies everything it wrote: the
// requests the dead process had read are sent again, its file handles
// and the VDI's write lock carry over.
func TestSheepfsRestartUnderFio(t *testing.T) {
	parallel(t)
	requireEnv(t, "fio")
	c := NewCluster(t, 3, 3)
	m := c.Mount()
	for _, direct := range []int{1, 0} {
		t.Run(fmt.Sprintf("direct=%d", direct), func(t *testing.T) {
			vdi := m.VDI(fmt.Sprintf("r%d", direct))
			run(t, quickTimeout, "truncate", "-s", "256M", vdi)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "fio", fioVerifyArgs(vdi, "192M", direct, "--fsync=64")...)
			done := make(chan struct{})
			var out []byte
			var err error
			go func() {
				out, err = cmd.Output()
				close(done)
			}()
			for i, at := range []time.Duration{2 * time.Second, 3 * time.Second} {
				select {
				case <-done:
					t.Fatalf("fio ended before kill %d of sheepfs (make it write more): %v", i+1, err)
				case <-time.After(at):
				}
				m.KillAndRestart(500 * time.Millisecond)
			}
			<-done
			if err != nil {
				t.Fatalf("fio: %v\n%s", err, trimOut(string(out)))
			}
			t.Logf("fio wrote and verified %d MiB across two restarts of sheepfs", checkFioVerify(t, string(out))>>20)
		})
	}
}

// TestSheepfsKilledUnderMemoryPressure: a kill -9 of sheepfs fails no
// write in flight. The kernel copies a request into the buffer of the
// thread reading /dev/fuse by pinning its pages, and ends the request
// with EIO if it must fault one in while that thread is being killed
// (cli/memlock.go). A small memory limit (GOMEMLIMIT) makes the Go
// runtime give free pages back all the time, so that fresh buffers are
// not in memory. Before sheepfs locked its memory, fio got EIO in 4 of 7
// runs (40-60 kills each), after 8 to 42 kills; locked, in none of 9.
// The test also checks that the memory is locked.
func TestSheepfsKilledUnderMemoryPressure(t *testing.T) {
	parallel(t)
	requireEnv(t, "fio")
	c := NewCluster(t, 3, 3)
	m := c.MountEnv([]string{"GOGC=5", "GOMEMLIMIT=24MiB"})
	if lck := vmLocked(t, m.proc.cmd.Process.Pid); lck == 0 {
		t.Fatalf("sheepfs (pid %d) has no memory locked (VmLck 0)", m.proc.cmd.Process.Pid)
	}
	vdi := m.VDI("mp")
	run(t, quickTimeout, "truncate", "-s", "1G", vdi)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "fio", "--name=mp", "--filename="+vdi, "--direct=1", "--ioengine=libaio",
		"--iodepth=16", "--rw=randwrite", "--bsrange=4k-512k", "--time_based", "--runtime=600", "--size=1G")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	seed := time.Now().UnixNano()
	rnd := rand.New(rand.NewPCG(uint64(seed), 0))
	t.Logf("seed %d", seed)
	const kills = 40
	for i := 1; i <= kills; i++ {
		select {
		case err := <-done:
			t.Fatalf("fio ended before kill %d of sheepfs: %v\n%s", i, err, trimOut(out.String()))
		case <-time.After(time.Duration(100+rnd.IntN(800)) * time.Millisecond):
		}
		m.KillAndRestart(200 * time.Millisecond)
	}
	if lck := vmLocked(t, m.proc.cmd.Process.Pid); lck == 0 {
		t.Fatalf("the restarted sheepfs has no memory locked (VmLck 0)")
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatalf("fio did not stop on SIGINT\n%s", trimOut(out.String()))
	}
	if o := out.String(); !strings.Contains(o, "err= 0") || strings.Contains(o, "error=") {
		t.Fatalf("fio saw an error across %d kills of sheepfs:\n%s", kills, trimOut(o))
	}
	t.Logf("%d kills of sheepfs under fio, no error", kills)
}

// vmLocked returns the memory process pid has locked, in KiB (VmLck).
func vmLocked(t *testing.T, pid int) int64 { t.Helper(); return procStatusKiB(t, pid, "VmLck") }

// TestScriptsUpTakesOverMount: as the README says, after the sheepfs that
// scripts/up started dies (kill -9), running scripts/up again brings a new
// sheepfs onto the same mount, and $SHEEP_DATA/sheepfs.pid names it. A
// file open for writing across it goes on working: a write and fsync
// after the takeover succeed, and a second writable open through the
// mount is not refused (the write lock stayed with the mount).
func TestScriptsUpTakesOverMount(t *testing.T) {
	parallel(t)
	requireEnv(t, "python3")
	sc := NewScriptCluster(t, 3)
	sc.Up()
	vdi := sc.VDI("up")
	run(t, quickTimeout, "truncate", "-s", "16M", vdi)
	stdin, rd := startPython(t, `
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
os.pwrite(fd, b"a" * 4096, 0)
os.fsync(fd)
print("open", flush=True)
sys.stdin.readline()
os.pwrite(fd, b"b" * 4096, 4096)
os.fsync(fd)
fd2 = os.open(sys.argv[1], os.O_RDWR)
os.close(fd2)
os.close(fd)
print("written", flush=True)
`, vdi)
	if line := readLine(t, rd); line != "open" {
		t.Fatalf("writer: %q", line)
	}
	old := sc.pid("sheepfs")
	if old == 0 {
		t.Fatalf("no sheepfs.pid after scripts/up")
	}
	_ = syscall.Kill(old, syscall.SIGKILL)
	if !waitFor(30*time.Second, func() bool { return gone(old) }) {
		t.Fatalf("the killed sheepfs %d did not end", old)
	}
	sc.Up()
	cur := sc.pid("sheepfs")
	if cur == 0 || cur == old || syscall.Kill(cur, 0) != nil {
		t.Fatalf("after scripts/up, sheepfs.pid names %d (the killed one was %d): want a new, live process", cur, old)
	}
	if b, _ := os.ReadFile(filepath.Join(sc.Data, "sheepfs.log")); !strings.Contains(string(b), "taking over the mount") {
		t.Fatalf("the new sheepfs did not take the mount over:\n%s", trimOut(string(b)))
	}
	if _, err := io.WriteString(stdin, "go\n"); err != nil {
		t.Fatal(err)
	}
	if line := readLine(t, rd); line != "written" {
		t.Fatalf("the writer after the takeover: %q", line)
	}
	r := run(t, quickTimeout, "sh", "-c", "dd if="+q(vdi)+" bs=4096 count=2 status=none | sha256sum")
	want := run(t, quickTimeout, "sh", "-c", "(head -c 4096 /dev/zero | tr '\\0' a; head -c 4096 /dev/zero | tr '\\0' b) | sha256sum")
	if r.Stdout != want.Stdout {
		t.Fatalf("the file's first 8 KiB are not the writes made before and after the takeover")
	}
}

// TestSheepfsRestartDuringDiscard: the writer's sheepfs is killed while a
// discard (fallocate punch hole over 48 objects) is in flight, and a new
// one takes the mount over. The discard returns success, and afterwards
// the range reads as zeros through the new sheepfs and through a mount on
// another node, and the bytes past it are intact. The delay of the kill is
// random (logged; TAKEOVER_DISCARD_DELAY_MS repeats one).
func TestSheepfsRestartDuringDiscard(t *testing.T) {
	parallel(t)
	requireEnv(t, "fallocate")
	c := NewCluster(t, 3, 3)
	mw := c.Mount(c.Nodes[1].Addr())
	mr := c.Mount(c.Nodes[0].Addr())
	const punchMiB, tailMiB = 192, 8
	vdi := mw.VDI("punch")
	run(t, quickTimeout, "truncate", "-s", fmt.Sprint((punchMiB+tailMiB)<<20), vdi)
	src := filepath.Join(t.TempDir(), "data")
	writeRandomFile(t, src, (punchMiB+tailMiB)<<20)
	shell(t, cmdTimeout, fmt.Sprintf("dd if=%s of=%s bs=1M conv=notrunc,fsync status=none", q(src), q(vdi)))
	tail := sha256Range(t, src, punchMiB, tailMiB)
	zeros := sha256Range(t, "/dev/zero", 0, punchMiB)

	delay := time.Duration(rand.IntN(60)) * time.Millisecond
	if s := os.Getenv("TAKEOVER_DISCARD_DELAY_MS"); s != "" {
		var ms int
		fmt.Sscan(s, &ms)
		delay = time.Duration(ms) * time.Millisecond
	}
	t.Logf("killing the writer's sheepfs %v into the discard", delay)
	done := make(chan Result, 1)
	go func() {
		done <- runCmd(cmdTimeout, nil, nil, "fallocate", "--punch-hole", "--offset", "0", "--length", fmt.Sprint(punchMiB<<20), vdi)
	}()
	start := time.Now()
	time.Sleep(delay)
	select {
	case r := <-done:
		t.Fatalf("the discard ended (%v) within %v, before the kill: make it longer", r, time.Since(start))
	default:
	}
	mw.KillAndRestart(100 * time.Millisecond)
	if r := <-done; r.Code != 0 {
		t.Fatalf("the discard across the restart: %v", r)
	}
	t.Logf("the discard returned %v after it started", time.Since(start))
	dropCaches(t)
	for _, m := range []*Mount{mw, mr} {
		path := m.VDI("punch")
		if got := sha256Range(t, path, 0, punchMiB); got != zeros {
			t.Errorf("through %s: the discarded range does not read as zeros", m.Dir)
		}
		if got := sha256Range(t, path, punchMiB, tailMiB); got != tail {
			t.Errorf("through %s: the bytes past the discard changed", m.Dir)
		}
	}
}

// TestHolderSleepsWhileServed: the holder of a mount does not wake up for
// the mount's requests while a sheepfs serves it, neither the first
// sheepfs nor one that took the mount over after a kill -9 (it woke for
// every request, and cost a fifth of a 4 KiB read's CPU); it still keeps
// the mount while no sheepfs serves it and exits when it is unmounted.
func TestHolderSleepsWhileServed(t *testing.T) {
	parallel(t)
	c := NewCluster(t, 1, 1)
	m := c.Mount()
	vdi := m.VDI("h")
	run(t, quickTimeout, "truncate", "-s", "16M", vdi)
	const reads = 3000
	check := func(when string) {
		t.Helper()
		h := holderOf(t, m.Dir)
		before := contextSwitches(h)
		run(t, cmdTimeout, "dd", "if="+vdi, "of=/dev/null", "bs=4k", fmt.Sprint("count=", reads), "iflag=direct", "status=none")
		if woke := contextSwitches(h) - before; woke > reads/10 {
			t.Fatalf("%s: the holder (pid %d) woke %d times during %d reads of the mount", when, h, woke, reads)
		} else {
			t.Logf("%s: the holder woke %d times during %d reads", when, woke, reads)
		}
	}
	check("first sheepfs")
	m.KillAndRestart(300 * time.Millisecond)
	check("after a takeover")
	h := holderOf(t, m.Dir)
	m.Unmount()
	if !waitFor(quickTimeout, func() bool { return gone(h) }) {
		t.Fatalf("the holder %d outlived the unmount of %s", h, m.Dir)
	}
}

// gone reports whether process pid has ended (or is ending).
func gone(pid int) bool { return syscall.Kill(pid, 0) != nil || fs.Exiting(pid) }

// holderOf returns the PID of the holder of the mount at dir.
func holderOf(t *testing.T, dir string) int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) >= 3 && filepath.Base(args[0]) == "sheepfs" && args[1] == dir && args[2] == "--hold" {
			return pid
		}
	}
	t.Fatalf("no holder for %s", dir)
	return 0
}

// contextSwitches returns how many times the threads of process pid gave
// up or were taken off a CPU.
func contextSwitches(pid int) int {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	n := 0
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, task.Name()))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) == 2 && strings.HasSuffix(f[0], "ctxt_switches:") {
				v, _ := strconv.Atoi(f[1])
				n += v
			}
		}
	}
	return n
}

// TestRemountWhileOldServerLingers: a mount is unmounted while its
// sheepfs is stopped (SIGSTOP), so that the process has not exited when a
// new sheepfs is started on the same mount point. The holder of the old
// mount waits for its server's exit, but it must not offer the ended
// connection, nor refuse: the new sheepfs mounts afresh.
func TestRemountWhileOldServerLingers(t *testing.T) {
	parallel(t)
	c := NewCluster(t, 1, 1)
	m := c.Mount()
	old := m.proc
	if err := old.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer old.kill()
	run(t, quickTimeout, "fusermount3", "-u", m.Dir)
	var before int64
	if st, err := os.Stat(m.Log); err == nil {
		before = st.Size()
	}
	p, err := startProc(m.Log, m.env, sheepfsBin, m.args...)
	if err != nil {
		t.Fatal(err)
	}
	m.proc = p
	m.waitServed()
	if b, _ := os.ReadFile(m.Log); strings.Contains(string(b[min(before, int64(len(b))):]), "taking over the mount") {
		t.Fatalf("the new sheepfs took over the ended mount")
	}
	run(t, quickTimeout, "truncate", "-s", "4M", m.VDI("again"))
}
