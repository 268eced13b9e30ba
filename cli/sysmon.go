package cli

import (
	"os"
	"strings"
	"syscall"
)

// sysmonAwake is the GODEBUG setting that keeps the Go runtime's monitor
// thread (sysmon) from its deep sleep: schedtrace, with a period of 2^31-1
// milliseconds (24.8 days), so that the trace it also asks for is in
// practice never printed (once every 24.8 days of the machine's uptime).
const sysmonAwake = "schedtrace=2147483647"

// keepSysmonAwake re-executes the program with sysmonAwake added to
// GODEBUG, unless GODEBUG sets schedtrace already or SHEEP_SYSMON_SLEEPS
// is set and not empty; it returns only if it does not (or cannot)
// re-execute.
//
// The runtime puts sysmon into a deep sleep whenever every P is idle, and
// wakes it (a futex wake, a switch to its thread) at the first system call
// after. A daemon that answers one request at a time goes idle and wakes
// several times per request, and so does sysmon: measured with scripts/bench
// on 2 vCPUs, 18 to 26 % of all daemon CPU samples were sysmon's sleeps
// and wake-ups. Awake, sysmon polls with a back-off to 10 ms while nothing
// needs it. The runtime reads schedtrace only at start, hence the exec.
// See docs/ARCHITECTURE.md, Processes on one machine.
func keepSysmonAwake() {
	env, ok := sysmonEnv(os.Environ())
	if !ok {
		return
	}
	// The binary by its path (the kernel names the process after it:
	// exec'ing /proc/self/exe would make it "exe" in ps and pgrep); the
	// arguments and every inherited descriptor stay as they are (Go opens
	// its own with close-on-exec). If the binary cannot be run again (it
	// was deleted), the process goes on as it is.
	exe, err := os.Executable()
	if err != nil {
		return
	}
	_ = syscall.Exec(exe, os.Args, env)
}

// sysmonEnv returns environ with sysmonAwake added to GODEBUG, or false if
// the process should not re-execute: SHEEP_SYSMON_SLEEPS is set to
// something, or GODEBUG sets schedtrace already (as it does after the
// re-execution).
func sysmonEnv(environ []string) ([]string, bool) {
	godebug := ""
	out := make([]string, 0, len(environ)+1)
	for _, e := range environ {
		k, v, _ := strings.Cut(e, "=")
		switch {
		case k == "SHEEP_SYSMON_SLEEPS" && v != "":
			return nil, false
		case k == "GODEBUG":
			godebug = v
		default:
			out = append(out, e)
		}
	}
	for _, f := range strings.Split(godebug, ",") {
		if strings.HasPrefix(f, "schedtrace=") {
			return nil, false
		}
	}
	if godebug != "" {
		godebug += ","
	}
	return append(out, "GODEBUG="+godebug+sysmonAwake), true
}
