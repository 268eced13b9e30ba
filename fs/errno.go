package fs

import (
	"syscall"

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
