package e2e

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestDaemonKeepsSysmonAwake: sheep daemon executes itself again, once,
// with GODEBUG=schedtrace=2147483647, which keeps the Go runtime's
// monitor thread out of its deep sleep (docs/ARCHITECTURE.md, Processes
// on one machine). The process the harness started (the exec keeps its
// PID) has it in its environment and is still named sheep (ps, pgrep and
// scripts/down find it by that name). With SHEEP_SYSMON_SLEEPS=1 it does
// not execute itself again. (Nothing else fails if the re-execution stops
// happening: the daemons only get slower.)
func TestDaemonKeepsSysmonAwake(t *testing.T) {
	requireEnv(t)
	c := NewCluster(t, 1, 1)
	n := c.Nodes[0]
	check := func(awake bool) {
		t.Helper()
		pid := n.proc.cmd.Process.Pid
		comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(comm)); got != "sheep" {
			t.Errorf("the daemon's process is named %q, want sheep", got)
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			t.Fatal(err)
		}
		var godebug string
		for _, e := range bytes.Split(env, []byte{0}) {
			if v, ok := bytes.CutPrefix(e, []byte("GODEBUG=")); ok {
				godebug = string(v)
			}
		}
		if got := strings.Contains(godebug, "schedtrace=2147483647"); got != awake {
			t.Errorf("the daemon's GODEBUG is %q; sysmon kept awake: %v, want %v", godebug, got, awake)
		}
	}
	check(true)

	c.Kill(0)
	t.Setenv("SHEEP_SYSMON_SLEEPS", "1")
	c.Restart(0)
	c.WaitOK()
	check(false)
}
