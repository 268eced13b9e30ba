package cli

import (
	"bufio"
	"errors"
	"os"
	"runtime/debug"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Why sheepfs locks its memory.
//
// The kernel copies a FUSE request into the buffer of the thread reading
// /dev/fuse, and a reply out of the server's buffer, by pinning the
// buffer's pages. A page that is not in memory (never touched, or given
// back to the system by the Go runtime's scavenger) must be faulted in,
// and the kernel's slow path gives up if the thread has a fatal signal
// pending. The request is then ended with EIO (fs/fuse/dev.c,
// fuse_dev_do_read and fuse_dev_do_write): a kill -9 of sheepfs that
// lands while a thread copies a write into such a page fails that write
// for the program that made it, typically a VM, although a new sheepfs
// would have served it (the holder keeps the requests the dead process
// had read and not answered; fs/takeover.go). Seen in a guest's kernel
// log after a live migration and a kill, and made reproducible by a
// small memory limit: fio got EIO after 8 to 42 kills in 4 runs of 7.
// With every page of the process locked in memory (mlockall, current and
// future mappings) the pinning never faults: none in 9 runs.
//
// The cost: every page mapped is resident, including two sparse tables of
// the Go runtime and its libraries (32 MiB each: the heap arena index and
// crypto/internal/fips140/drbg.memory), so an idle sheepfs holds about 90
// MiB instead of 15; and the runtime cannot give memory back to the
// system (it remaps the pages instead, still locked), so the resident size
// stays at its peak. A binary built with cgo runs its threads on pthread
// stacks of 8 MiB, which would be locked whole, one per thread: such a
// sheepfs does not lock (scripts/up and the tests build with
// CGO_ENABLED=0). Locking needs CAP_IPC_LOCK or an unlimited
// RLIMIT_MEMLOCK: under a limit, a future mapping beyond it would fail and
// the runtime would die, so sheepfs then does not lock either. It says
// why not in its log.

// memCapIPCLock is CAP_IPC_LOCK's bit in /proc/self/status's CapEff.
const memCapIPCLock = 14

// lockMemory locks the process's current and future pages in memory if
// it may without a limit; it returns why not otherwise.
func lockMemory() error {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, st := range bi.Settings {
			if st.Key == "CGO_ENABLED" && st.Value == "1" {
				return errors.New("built with cgo, whose threads' 8 MiB stacks would be locked whole (build with CGO_ENABLED=0)")
			}
		}
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
		return err
	}
	if lim.Cur != unix.RLIM_INFINITY && !hasCap(memCapIPCLock) {
		return errors.New("neither CAP_IPC_LOCK nor an unlimited RLIMIT_MEMLOCK (ulimit -l unlimited)")
	}
	return unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE)
}

// hasCap reports whether capability bit is in the process's effective
// set (false if that cannot be read).
func hasCap(bit uint) bool {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<bit) != 0
		}
	}
	return false
}
