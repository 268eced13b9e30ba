package fs

import (
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/sheepfs/sheepfs/errs"
)

func TestFixedAttrs(t *testing.T) {
	cur := fuse.Attr{Mode: syscall.S_IFREG | 0o644}
	const (
		mode   = fuse.FATTR_MODE
		uid    = fuse.FATTR_UID
		gid    = fuse.FATTR_GID
		size   = fuse.FATTR_SIZE
		atime  = fuse.FATTR_ATIME
		mtime  = fuse.FATTR_MTIME
		fh     = fuse.FATTR_FH
		atNow  = fuse.FATTR_ATIME_NOW
		mtNow  = fuse.FATTR_MTIME_NOW
		owner  = fuse.FATTR_LOCKOWNER
		ctime  = fuse.FATTR_CTIME
		denied = syscall.EPERM
	)
	// The valid masks are what the kernel sends for each command, with the
	// writeback cache (wb) and without (direct).
	for _, tc := range []struct {
		name  string
		valid uint32
		mode  uint32
		uid   uint32
		gid   uint32
		want  syscall.Errno
	}{
		{name: "chmod 600", valid: mode, mode: syscall.S_IFREG | 0o600, want: denied},
		{name: "chmod u+s", valid: mode, mode: syscall.S_IFREG | 0o4644, want: denied},
		{name: "chmod 644 (what it has)", valid: mode, mode: syscall.S_IFREG | 0o644},
		{name: "chown 1000", valid: uid, uid: 1000, want: denied},
		{name: "chgrp 1000", valid: gid, gid: 1000, want: denied},
		{name: "chown 0 (what it has)", valid: uid | gid},
		{name: "touch, wb", valid: atime | atNow | mtime | ctime},
		{name: "touch, direct", valid: atime | atNow | mtime | mtNow},
		{name: "touch -d, wb", valid: atime | mtime | ctime, want: denied},
		{name: "touch -d, direct", valid: atime | mtime, want: denied},
		{name: "touch -a -d", valid: atime | ctime, want: denied},
		{name: "touch -m -d, direct", valid: mtime, want: denied},
		// Looks like the kernel's own flush: let through.
		{name: "touch -m -d, wb", valid: mtime | ctime},
		{name: "kernel flush of mtime, wb", valid: mtime | ctime | fh},
		{name: "ftruncate, wb", valid: size | mtime | ctime | fh | owner},
		{name: "ftruncate, direct", valid: size | mtime | mtNow | fh | owner},
		{name: "truncate by path", valid: size | owner},
	} {
		in := &fuse.SetAttrIn{SetAttrInCommon: fuse.SetAttrInCommon{Valid: tc.valid, Mode: tc.mode, Owner: fuse.Owner{Uid: tc.uid, Gid: tc.gid}}}
		if got := fixedAttrs(in, &cur); got != tc.want {
			t.Errorf("%s (valid %#x): %v, want %v", tc.name, tc.valid, got, tc.want)
		}
	}
}

func TestCheckSize(t *testing.T) {
	for _, tc := range []struct {
		size uint64
		ok   bool
	}{
		{0, true},
		{64 << 40, true},
		{64<<40 + 1, false},
		{1 << 63, false},
		{^uint64(0), false},
	} {
		err := checkSize("v", tc.size)
		if (err == nil) != tc.ok {
			t.Errorf("checkSize(%d) = %v, want ok %v", tc.size, err, tc.ok)
		}
		if err != nil && (!errs.Is(err, errs.TooLarge) || toErrno(err) != syscall.EFBIG) {
			t.Errorf("checkSize(%d) = %v (errno %v), want TooLarge (EFBIG)", tc.size, err, toErrno(err))
		}
	}
}
