package fs

import (
	"fmt"
	"os"
	"syscall"
	"time"

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

// toErrno maps err to the errno the kernel should see.
func toErrno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	if e, ok := errnoOf[errs.KindOf(err)]; ok {
		return e
	}
	return syscall.EIO
}

// logEvery is the least time between two log lines of one kind.
const logEvery = 10 * time.Second

// logf writes a line to sheepfs's log (stderr), at most one per logEvery
// for each key: a program retrying a refused open must not flood it.
func (f *FS) logf(key, format string, args ...any) {
	now := time.Now()
	f.logMu.Lock()
	if t, ok := f.logged[key]; ok && now.Sub(t) < logEvery {
		f.logMu.Unlock()
		return
	}
	if len(f.logged) >= 1024 {
		for k, t := range f.logged {
			if now.Sub(t) >= logEvery {
				delete(f.logged, k)
			}
		}
	}
	f.logged[key] = now
	f.logMu.Unlock()
	fmt.Fprintf(os.Stderr, "sheepfs: "+format+"\n", args...)
}
