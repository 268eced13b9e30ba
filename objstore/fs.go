package objstore

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// FS is the filesystem seam of a Store: every file and directory operation
// on object files and on the index log goes through it, so tests can
// inject faults (see FaultFS). The bbolt index file does not go through FS;
// bbolt opens it itself.
//
// Implementations return the operating system's errors unchanged
// (*os.PathError wrapping a syscall.Errno), because the Store classifies
// them with errors.Is: ENOSPC and EDQUOT become errs.NoSpace, the rest
// errs.IO.
type FS interface {
	// OpenFile opens a file as os.OpenFile does. A Store opens directories
	// with os.O_RDONLY|unix.O_DIRECTORY so that File.Sync knows to fsync
	// rather than fdatasync.
	OpenFile(name string, flag int, perm os.FileMode) (File, error)
	// Rename renames a file atomically, as os.Rename.
	Rename(oldpath, newpath string) error
	// Remove removes a file, as os.Remove.
	Remove(name string) error
	// MkdirAll creates a directory and its parents, as os.MkdirAll.
	MkdirAll(path string, perm os.FileMode) error
	// ReadDir lists a directory, as os.ReadDir.
	ReadDir(name string) ([]os.DirEntry, error)
	// Statfs returns the size and the bytes available to unprivileged
	// users of the filesystem holding path.
	Statfs(path string) (total, free int64, err error)
}

// File is an open object file or directory.
type File interface {
	io.ReaderAt
	io.WriterAt
	io.Closer
	// Sync makes the file durable: fdatasync for regular files, fsync for
	// directories.
	Sync() error
	// Truncate sets the file's size in bytes; growing it leaves a hole
	// that reads as zeros.
	Truncate(size int64) error
	// Punch deallocates [off, off+length) (fallocate with
	// FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE): the range reads as zeros
	// and the size is unchanged. Filesystems without hole punching return
	// an error wrapping unix.EOPNOTSUPP.
	Punch(off, length int64) error
	// Fd returns the file descriptor.
	Fd() uintptr
	// Stat returns the file's metadata; Sys() is a *syscall.Stat_t for
	// the real OS, from which the Store reads st_blocks.
	Stat() (os.FileInfo, error)
}

// OSFS returns the FS of the real operating system (Linux).
func OSFS() FS { return osFS{} }

type osFS struct{}

var (
	_ FS   = osFS{}
	_ File = (*osFile)(nil)
)

func (osFS) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &osFile{File: f, dir: flag&unix.O_DIRECTORY != 0}, nil
}

func (osFS) Rename(oldpath, newpath string) error         { return os.Rename(oldpath, newpath) }
func (osFS) Remove(name string) error                     { return os.Remove(name) }
func (osFS) MkdirAll(path string, perm os.FileMode) error { return os.MkdirAll(path, perm) }
func (osFS) ReadDir(name string) ([]os.DirEntry, error)   { return os.ReadDir(name) }

func (osFS) Statfs(path string) (total, free int64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, 0, &os.PathError{Op: "statfs", Path: path, Err: err}
	}
	return int64(st.Blocks) * st.Bsize, int64(st.Bavail) * st.Bsize, nil
}

// osFile is an *os.File whose Sync is fdatasync (fsync for directories)
// and which can punch holes.
type osFile struct {
	*os.File
	dir bool
}

func (f *osFile) Sync() error {
	op, sync := "fdatasync", unix.Fdatasync
	if f.dir {
		op, sync = "fsync", unix.Fsync
	}
	for {
		err := sync(int(f.File.Fd()))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return &os.PathError{Op: op, Path: f.Name(), Err: err}
		}
		return nil
	}
}

func (f *osFile) Punch(off, length int64) error {
	for {
		err := unix.Fallocate(int(f.File.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "fallocate", Path: f.Name(), Err: err}
		}
		return nil
	}
}
