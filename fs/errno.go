package fs

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sheepfs/sheepfs/errs"
)

// errnoOf is the one table from error kinds to errno.
var errnoOf = map[errs.Kind]syscall.Errno{
	errs.Other:       syscall.EIO,
	errs.Invalid:     syscall.EINVAL,
	errs.NotFound:    syscall.ENOENT,
	errs.Exists:      syscall.EEXIST,
	errs.Busy:        syscall.EBUSY,
	errs.StaleEpoch:  syscall.EAGAIN,
	errs.ReadOnly:    syscall.EROFS,
	errs.NoSpace:     syscall.ENOSPC,
	errs.IO:          syscall.EIO,
	errs.NotReady:    syscall.EAGAIN,
	errs.Unsupported: syscall.EOPNOTSUPP,
	errs.TooLarge:    syscall.EFBIG,
	errs.Closed:      syscall.EIO,
	errs.Denied:      syscall.EACCES,
	errs.Corrupt:     syscall.EIO,
	errs.Lost:        syscall.EIO,
}

// toErrno maps err to the errno the kernel should see, and logs its cause
// (the program sees only the errno): at most one line per error kind
// every logEvery, at a level that keeps the errors programs cause on
// purpose (ENOENT of a lookup, EEXIST) out of the log by default.
func toErrno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	k := errs.KindOf(err)
	e, ok := errnoOf[k]
	if !ok {
		e = syscall.EIO
	}
	level := LogWarn
	switch k {
	case errs.NotFound, errs.Exists, errs.Invalid, errs.Busy: // a refused open logs its own line
		level = LogDebug
	case errs.ReadOnly, errs.Unsupported:
		level = LogInfo
	}
	if logs(level) { // ENOENT of a lookup is common: no message made for nothing
		logLimited(level, "errno "+k.String(), "%s to the kernel: %s", errnoName(e), strings.TrimSpace(err.Error()))
	}
	return e
}

// errnoName is e's symbolic name (EIO), or its number.
func errnoName(e syscall.Errno) string {
	if n := unix.ErrnoName(e); n != "" {
		return n
	}
	return strconv.Itoa(int(e))
}

// Log levels of sheepfs (--log-level).
const (
	LogDebug = iota
	LogInfo
	LogWarn
	LogError
)

// logLevel is the least level logged.
var logLevel atomic.Int32

// SetLogLevel sets the least level sheepfs logs (LogDebug .. LogError).
func SetLogLevel(l int) { logLevel.Store(int32(l)) }

func init() { logLevel.Store(LogInfo) }

// logs reports whether lines of level are logged.
func logs(level int) bool { return int32(level) >= logLevel.Load() }

// logEvery is the least time between two log lines of one key.
const logEvery = 10 * time.Second

// logged is when a line of each key was last written, and how many of
// that key were left out since.
var logged = struct {
	sync.Mutex
	at      map[string]time.Time
	skipped map[string]int
}{at: map[string]time.Time{}, skipped: map[string]int{}}

// logLimited writes a line to sheepfs's log (stderr) at level, at most one
// per logEvery for each key (a program retrying a failing call must not
// flood it); the next line of a key says how many were left out.
func logLimited(level int, key, format string, args ...any) {
	if !logs(level) {
		return
	}
	now := time.Now()
	logged.Lock()
	if t, ok := logged.at[key]; ok && now.Sub(t) < logEvery {
		logged.skipped[key]++
		logged.Unlock()
		return
	}
	if len(logged.at) >= 1024 {
		for k, t := range logged.at {
			if now.Sub(t) >= logEvery {
				delete(logged.at, k)
				delete(logged.skipped, k)
			}
		}
	}
	logged.at[key] = now
	skipped := logged.skipped[key]
	delete(logged.skipped, key)
	logged.Unlock()
	line := fmt.Sprintf(format, args...)
	if skipped > 0 {
		line += fmt.Sprintf(" (and %d more like it since the last)", skipped)
	}
	fmt.Fprintf(os.Stderr, "sheepfs: %s\n", line)
}

// logf logs a warning, limited per key (logLimited).
func (f *FS) logf(key, format string, args ...any) {
	logLimited(LogWarn, key, format, args...)
}
