package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSystemdUnits: systemd-analyze verify passes on the units in
// dist/systemd (with the binaries built for the tests in place of
// /usr/local/bin), and says nothing: it only warns about many mistakes.
func TestSystemdUnits(t *testing.T) {
	requireEnv(t, "systemd-analyze")
	dir := t.TempDir()
	units, err := filepath.Glob(filepath.Join(repoRoot, "dist", "systemd", "*.service"))
	if err != nil || len(units) == 0 {
		t.Fatalf("no units in dist/systemd: %v", err)
	}
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		s := strings.ReplaceAll(string(b), "/usr/local/bin/", binDir+"/")
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(u)), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := runCmd(cmdTimeout, nil, nil, "sh", "-c", "cd "+dir+" && systemd-analyze verify ./sheep@node0.service ./sheepfs-mount.service")
	if r.Code != 0 || strings.TrimSpace(r.Stdout+r.Stderr) != "" {
		t.Errorf("systemd-analyze verify: %v", r)
	}
}

// systemd is a systemd running as the first process of its own PID and
// mount namespaces (as in a container), so that a test can use systemctl
// on a machine whose own init is not systemd.
type systemd struct {
	t   testing.TB
	pid int // systemd's PID as seen from the test
}

// startSystemd boots systemd in new PID and mount namespaces, to a target
// of its own, and waits until it is running. Everything it starts dies with
// it at the end of the test, and the mounts made in its namespace go with
// the namespace. It shares this machine's file systems, so the script that
// starts it masks, in a /run of its own, every unit that a boot would run
// to set up or clean a machine (systemd-tmpfiles empties /tmp at boot, and
// the test's own files are there; timers run apt and fstrim), keeping only
// the journal.
func startSystemd(t testing.TB, logPath string) *systemd {
	t.Helper()
	bin := "/lib/systemd/systemd"
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("systemd is not installed at %s: %v", bin, err)
	}
	sentinel := filepath.Join(filepath.Dir(logPath), "systemd-sentinel")
	if err := os.WriteFile(sentinel, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	log, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "--pid", "--fork", "--mount", "--propagation", "private", "--mount-proc",
		"sh", "-c", systemdBoot, "boot", bin)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		t.Fatalf("start systemd: %v", err)
	}
	sd := &systemd{t: t}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); log.Close(); close(done) }()
	t.Cleanup(func() {
		if sd.pid != 0 {
			_ = syscall.Kill(sd.pid, syscall.SIGKILL) // the namespace's init: takes every process in it along
		}
		_ = cmd.Process.Kill()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("systemd's namespace did not end")
		}
	})
	deadline := time.Now().Add(readyTimeout)
	var last Result
	for time.Now().Before(deadline) {
		if sd.pid == 0 {
			// unshare --fork: systemd is unshare's only child.
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid)); err == nil {
				if f := strings.Fields(string(b)); len(f) == 1 {
					sd.pid, _ = strconv.Atoi(f[0])
				}
			}
		}
		if sd.pid != 0 {
			last = sd.run(quickTimeout, "systemctl", "is-system-running")
			if s := strings.TrimSpace(last.Stdout); s == "running" || s == "degraded" {
				if _, err := os.Stat(sentinel); err != nil {
					t.Fatalf("booting systemd removed a file of the test: %v", err)
				}
				return sd
			}
		}
		select {
		case <-done:
			logTail(t, logPath, 40)
			t.Fatalf("systemd exited")
		case <-time.After(200 * time.Millisecond):
		}
	}
	logTail(t, logPath, 40)
	t.Fatalf("systemd did not come up: %v", last)
	return nil
}

// systemdBoot is the shell script that starts systemd ($1) in the new
// namespaces: a /run of its own, in it masks for the units a boot must not
// run on a shared machine, an empty target to boot to, and a journal kept
// in that /run only. A service's
// default dependencies still pull in sysinit.target, which then starts
// only the journal.
const systemdBoot = `set -eu
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/systemd/system
for u in /lib/systemd/system/sysinit.target.wants/* /etc/systemd/system/sysinit.target.wants/* \
	/lib/systemd/system/timers.target.wants/* /etc/systemd/system/timers.target.wants/* \
	/lib/systemd/system/local-fs.target.wants/* /etc/systemd/system/local-fs.target.wants/* \
	systemd-tmpfiles-setup.service systemd-tmpfiles-setup-dev.service systemd-tmpfiles-clean.service \
	systemd-tmpfiles-clean.timer systemd-remount-fs.service tmp.mount; do
	case $u in /*) [ -e "$u" ] || continue ;; esac
	u=${u##*/}
	[ "$u" = systemd-journald.service ] || ln -sf /dev/null "/run/systemd/system/$u"
done
printf '[Unit]\nDescription=sheepfs end-to-end tests\n' >/run/systemd/system/sheepfs-e2e.target
mkdir -p /run/systemd/journald.conf.d
printf '[Journal]\nStorage=volatile\n' >/run/systemd/journald.conf.d/sheepfs-e2e.conf
exec env container=sheepfs-e2e "$1" --system --unit=sheepfs-e2e.target --log-target=console
`

// run runs a command inside systemd's namespaces.
func (sd *systemd) run(timeout time.Duration, name string, args ...string) Result {
	return runCmd(timeout, nil, nil, "nsenter", append([]string{"-t", strconv.Itoa(sd.pid), "-m", "-p", name}, args...)...)
}

// must runs a command inside systemd's namespaces and fails the test if it fails.
func (sd *systemd) must(timeout time.Duration, name string, args ...string) Result {
	sd.t.Helper()
	r := sd.run(timeout, name, args...)
	if r.Code != 0 {
		sd.t.Fatalf("%v", r)
	}
	return r
}

// TestSystemctlRestartMount: the mount's unit from dist/systemd, run by a
// real systemd. `systemctl restart sheepfs-mount` and then a crash of
// sheepfs (SIGKILL to the unit's main process; Restart=always brings a new
// one) while fio writes with O_DIRECT and verifies every block: fio sees no
// error, each new sheepfs takes the mount over from the holder that
// KillMode=process keeps, and the holder is the same process throughout.
// Then `systemctl stop` leaves the mount paused (a read waits), `systemctl
// start` serves it again (the read returns), and `fusermount3 -u` ends the
// holder.
func TestSystemctlRestartMount(t *testing.T) {
	requireEnv(t, "fio", "systemctl", "journalctl", "nsenter", "unshare", "pgrep")
	c := NewCluster(t, 3, 3)
	sd := startSystemd(t, filepath.Join(c.Dir, "systemd.log"))
	mnt := filepath.Join(c.Dir, "mnt-systemd")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	unit, err := os.ReadFile(filepath.Join(repoRoot, "dist", "systemd", "sheepfs-mount.service"))
	if err != nil {
		t.Fatal(err)
	}
	envFile := filepath.Join(c.Dir, "sheepfs-mount.env")
	s := strings.ReplaceAll(string(unit), "/usr/local/bin/", binDir+"/")
	s = strings.ReplaceAll(s, "/mnt/sheep", mnt)
	s = strings.ReplaceAll(s, "/etc/sheepfs/sheepfs-mount.env", envFile)
	if !strings.Contains(s, envFile) || !strings.Contains(s, mnt) {
		t.Fatalf("dist/systemd/sheepfs-mount.service no longer names /mnt/sheep and its env file; update the test")
	}
	key := keyFile
	if c.KeyFile != "" {
		key = c.KeyFile
	}
	args := "SHEEPFS_ARGS=--addr " + strings.Join(c.Addrs(), ",") + " --key-file " + key
	if err := os.WriteFile(envFile, []byte(args+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	unitFile := filepath.Join(c.Dir, "sheepfs-mount.service")
	if err := os.WriteFile(unitFile, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	// /run is systemd's own tmpfs in its namespace: the unit goes nowhere else.
	sd.must(quickTimeout, "cp", unitFile, "/run/systemd/system/sheepfs-mount.service")
	sd.must(quickTimeout, "systemctl", "daemon-reload")
	sd.must(quickTimeout, "systemctl", "start", "sheepfs-mount")
	info := filepath.Join(mnt, "cluster", "info")
	deadline := time.Now().Add(readyTimeout)
	for sd.run(quickTimeout, "sh", "-c", "mountpoint -q "+q(mnt)+" && cat "+q(info)).Code != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the unit did not mount %s: %v", mnt, sd.run(quickTimeout, "journalctl", "-u", "sheepfs-mount", "--no-pager"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	mainPID := func() string {
		return strings.TrimSpace(sd.must(quickTimeout, "systemctl", "show", "-p", "MainPID", "--value", "sheepfs-mount").Stdout)
	}
	holder := func() string {
		return strings.TrimSpace(sd.run(quickTimeout, "pgrep", "-f", "sheepfs "+mnt+" --hold").Stdout)
	}
	holderPID := holder()
	if holderPID == "" || strings.Contains(holderPID, "\n") {
		t.Fatalf("want one holder process for %s, have %q", mnt, holderPID)
	}

	vdi := filepath.Join(mnt, "vdi", "sd")
	sd.must(quickTimeout, "truncate", "-s", "256M", vdi)
	done := make(chan Result, 1)
	go func() {
		done <- sd.run(5*time.Minute, "fio", fioVerifyArgs(vdi, "192M", 1, "--fsync=64")...)
	}()
	pids := []string{mainPID()}
	steps := []struct {
		at   time.Duration
		args []string
	}{
		{2 * time.Second, []string{"restart", "sheepfs-mount"}},
		{3 * time.Second, []string{"kill", "--kill-whom=main", "--signal=KILL", "sheepfs-mount"}},
	}
	for _, st := range steps {
		select {
		case r := <-done:
			t.Fatalf("fio ended before systemctl %s (make it write more): %v", strings.Join(st.args, " "), r)
		case <-time.After(st.at):
		}
		sd.must(quickTimeout, "systemctl", st.args...)
		// Wait for the unit's next main process (after a crash, RestartSec).
		deadline := time.Now().Add(quickTimeout)
		for p := mainPID(); p == "0" || p == pids[len(pids)-1]; p = mainPID() {
			if time.Now().After(deadline) {
				t.Fatalf("no new sheepfs after systemctl %s: %v", strings.Join(st.args, " "), sd.run(quickTimeout, "systemctl", "status", "sheepfs-mount", "--no-pager"))
			}
			time.Sleep(100 * time.Millisecond)
		}
		pids = append(pids, mainPID())
	}
	r := <-done
	if r.Code != 0 {
		t.Fatalf("fio: %v", r)
	}
	written := checkFioVerify(t, r.Stdout)
	if h := holder(); h != holderPID {
		t.Fatalf("the holder was %s and is now %q: want the same process throughout", holderPID, h)
	}
	journal := sd.must(quickTimeout, "journalctl", "-u", "sheepfs-mount", "--no-pager", "-o", "cat").Stdout
	if n := strings.Count(journal, "taking over the mount"); n != 2 {
		t.Fatalf("want 2 take-overs in the unit's journal, have %d:\n%s", n, trimOut(journal))
	}
	t.Logf("fio wrote and verified %d MiB across a restart and a crash of the unit's sheepfs (main PIDs %s)", written>>20, strings.Join(pids, ", "))

	// Stopped: the mount stays and a read waits for the next sheepfs.
	sd.must(quickTimeout, "systemctl", "stop", "sheepfs-mount")
	read := make(chan Result, 1)
	go func() { read <- sd.run(cmdTimeout, "cat", info) }()
	select {
	case r := <-read:
		t.Fatalf("a read of the stopped unit's mount returned: %v", r)
	case <-time.After(2 * time.Second):
	}
	sd.must(quickTimeout, "systemctl", "start", "sheepfs-mount")
	if r := <-read; r.Code != 0 || !strings.Contains(r.Stdout, "status:") {
		t.Fatalf("the read waiting on the stopped mount: %v", r)
	}
	sd.must(quickTimeout, "fusermount3", "-u", mnt)
	deadline = time.Now().Add(quickTimeout)
	for holder() != "" {
		if time.Now().After(deadline) {
			t.Fatalf("the holder %s outlived the unmount", holderPID)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
