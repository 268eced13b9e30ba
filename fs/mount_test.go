package fs

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/sheepfs/sheepfs/client"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/server"
)

// These tests mount sheepfs in this process, served by a one-node cluster
// that also runs in this process. They need root and /dev/fuse.

type mounted struct {
	c   *client.Client
	f   *FS
	mnt string
}

// freePort returns a port P with P, P+1 (TCP and UDP) and P+2 free: a
// sheep's data, gossip and raft ports.
func freePort(t *testing.T) int {
	t.Helper()
	free := func(p int) bool {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return false
		}
		l.Close()
		u, err := net.ListenPacket("udp", addr)
		if err != nil {
			return false
		}
		u.Close()
		return true
	}
	for range 200 {
		n, err := rand.Int(rand.Reader, big.NewInt(600))
		if err != nil {
			t.Fatal(err)
		}
		p := 14000 + int(n.Int64())*10
		if free(p) && free(p+1) && free(p+2) {
			return p
		}
	}
	t.Fatal("no free ports")
	return 0
}

// mount starts a one-node cluster (one copy) and mounts sheepfs on it.
func mount(t *testing.T) *mounted {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("needs /dev/fuse")
	}
	dir := t.TempDir()
	port := freePort(t)
	n, err := server.Start(server.Config{Dir: filepath.Join(dir, "node"), Port: port, DeadGrace: time.Second, Log: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	c := client.New([]string{"127.0.0.1:" + strconv.Itoa(port)}, client.Options{RetryFor: 30 * time.Second})
	t.Cleanup(c.Close)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		var ci proto.ClusterInfo
		err := c.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminClusterInfo}, &ci)
		if err == nil && ci.Status == "ok" {
			break
		}
		if err == nil && ci.Status == "unformatted" {
			_ = c.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminClusterFormat, Copies: 1}, nil)
		}
		if ctx.Err() != nil {
			t.Fatalf("cluster not ready: %v %+v", err, ci)
		}
		time.Sleep(50 * time.Millisecond)
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := Mount(mnt, c, Options{})
	if err != nil {
		t.Skipf("cannot mount: %v", err)
	}
	t.Cleanup(func() {
		for range 50 {
			if f.Unmount() == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Errorf("unmount %s failed", mnt)
	})
	return &mounted{c: c, f: f, mnt: mnt}
}

func (m *mounted) path(p string) string { return filepath.Join(m.mnt, p) }

func (m *mounted) admin(t *testing.T, req proto.AdminRequest, out any) {
	t.Helper()
	if err := m.c.Admin(context.Background(), req, out); err != nil {
		t.Fatalf("%s %s: %v", req.Cmd, req.Name, err)
	}
}

func (m *mounted) lookup(t *testing.T, full string) proto.VDIInfo {
	t.Helper()
	var v proto.VDIInfo
	m.admin(t, proto.AdminRequest{Cmd: proto.AdminVDILookup, Name: full}, &v)
	return v
}

// pattern is n bytes that differ with seed.
func pattern(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i/4096)
	}
	return b
}

// writeAt writes data at off of the file at path, through a file of its
// own (closed, so the kernel has sent the writes).
func writeAt(t *testing.T, path string, data []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// readAt reads n bytes at off of the file at path, through a new open.
func readAt(t *testing.T, path string, n int, off int64) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return b
}

func touch(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

func wantErrno(t *testing.T, what string, err error, want syscall.Errno) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("%s: %v, want %v", what, err, want)
	}
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out, err := f.Readdirnames(-1) // in the directory's order
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestSnapshotDirectory(t *testing.T) {
	m := mount(t)
	const size = 64 << 20
	a, b := pattern(1, 5<<20), pattern(100, 5<<20)
	vdiPath := m.path("vdi/d")
	if err := os.WriteFile(vdiPath, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(vdiPath, size); err != nil {
		t.Fatal(err)
	}
	writeAt(t, vdiPath, a, 0)

	// A VDI without snapshots has its directory, empty.
	if got := names(t, m.path("snapshot")); !slices.Equal(got, []string{"d"}) {
		t.Fatalf("snapshot/ lists %v", got)
	}
	if got := names(t, m.path("snapshot/d")); len(got) != 0 {
		t.Fatalf("snapshot/d lists %v", got)
	}

	// touch takes the snapshot; later writes do not reach it.
	s1 := m.path("snapshot/d/s1")
	if err := touch(s1); err != nil {
		t.Fatalf("touch: %v", err)
	}
	writeAt(t, vdiPath, b, 0)
	if !bytes.Equal(readAt(t, s1, len(a), 0), a) {
		t.Error("snapshot does not hold the data written before it")
	}
	if !bytes.Equal(readAt(t, vdiPath, len(b), 0), b) {
		t.Error("VDI does not hold the data written after the snapshot")
	}

	// Attributes: read-only, the VDI's size, two objects allocated, the
	// time it was taken.
	info := m.lookup(t, "d@s1")
	var st syscall.Stat_t
	if err := syscall.Stat(s1, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode != syscall.S_IFREG|0o444 || st.Size != size || st.Blocks != 2*(4<<20)/512 || st.Mtim.Sec != info.SnapTime {
		t.Errorf("stat: mode %o size %d blocks %d mtime %d; want snapshot time %d", st.Mode, st.Size, st.Blocks, st.Mtim.Sec, info.SnapTime)
	}

	// Touching it again works; an exclusive create does not.
	if err := os.Chtimes(s1, time.Now(), time.Now()); err != nil {
		t.Errorf("utimes of a snapshot: %v", err)
	}
	if f, err := os.OpenFile(s1, os.O_RDONLY|os.O_CREATE, 0o644); err != nil {
		t.Errorf("O_CREAT open of an existing snapshot: %v", err)
	} else {
		f.Close()
	}
	_, err := os.OpenFile(s1, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	wantErrno(t, "O_EXCL create of an existing tag", err, syscall.EEXIST)

	// Read-only.
	_, err = os.OpenFile(s1, os.O_WRONLY, 0)
	wantErrno(t, "open for writing", err, syscall.EROFS)
	_, err = os.OpenFile(s1, os.O_RDONLY|os.O_TRUNC, 0)
	wantErrno(t, "O_TRUNC", err, syscall.EROFS)
	wantErrno(t, "truncate", os.Truncate(s1, 0), syscall.EROFS)
	wantErrno(t, "chmod", os.Chmod(s1, 0o644), syscall.EROFS)
	wantErrno(t, "chown", os.Chown(s1, 1, 1), syscall.EROFS)
	wantErrno(t, "setxattr", unix.Setxattr(s1, "user.x", []byte("1"), 0), syscall.ENOTSUP)
	wantErrno(t, "removexattr", unix.Removexattr(s1, "user.sheepfs.id"), syscall.ENOTSUP)

	// Names.
	wantErrno(t, "invalid tag", touch(m.path("snapshot/d/a@b")), syscall.EINVAL)
	wantErrno(t, "no such VDI", touch(m.path("snapshot/nosuch/t")), syscall.ENOENT)
	wantErrno(t, "mkdir", os.Mkdir(m.path("snapshot/d/x"), 0o755), syscall.EPERM)
	wantErrno(t, "mkdir at the top", os.Mkdir(m.path("snapshot/x"), 0o755), syscall.EPERM)
	wantErrno(t, "rename", os.Rename(s1, m.path("snapshot/d/s9")), syscall.EPERM)
	wantErrno(t, "rmdir", syscall.Rmdir(m.path("snapshot/d")), syscall.EPERM)
	wantErrno(t, "mknod of a fifo", syscall.Mknod(m.path("snapshot/d/p"), syscall.S_IFIFO|0o644, 0), syscall.EPERM)
	if _, err := os.Stat(m.path("vdi/d@s1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("vdi/d@s1: %v, want ENOENT (snapshots live under snapshot/)", err)
	}

	// A create that would truncate takes no snapshot; the handle of a
	// writable create refuses writes at once.
	_, err = os.OpenFile(m.path("snapshot/d/tr"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	wantErrno(t, "O_TRUNC create", err, syscall.EROFS)
	if _, err := os.Stat(m.path("snapshot/d/tr")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("O_TRUNC create took a snapshot: %v", err)
	}
	f, err := os.OpenFile(m.path("snapshot/d/w"), os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.Write([]byte("x"))
	wantErrno(t, "write through the create handle", err, syscall.EROFS)
	f.Close()
	if err := syscall.Mknod(m.path("snapshot/d/mk"), syscall.S_IFREG|0o644, 0); err != nil {
		t.Errorf("mknod: %v", err)
	}
	if got := names(t, m.path("snapshot/d")); !slices.Equal(got, []string{"s1", "w", "mk"}) {
		t.Errorf("snapshot/d lists %v, want s1 w mk (oldest first)", got)
	}

	// SEEK_DATA and SEEK_HOLE.
	fd, err := unix.Open(s1, unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if off, err := unix.Seek(fd, 0, unix.SEEK_HOLE); err != nil || off != 8<<20 {
		t.Errorf("SEEK_HOLE: %d, %v", off, err)
	}
	if _, err := unix.Seek(fd, 8<<20, unix.SEEK_DATA); !errors.Is(err, syscall.ENXIO) {
		t.Errorf("SEEK_DATA past the data: %v", err)
	}
	unix.Close(fd)

	// Extended attributes.
	xattr := func(path, name string) string {
		buf := make([]byte, 256)
		n, err := unix.Getxattr(path, name, buf)
		if err != nil {
			return "error: " + err.Error()
		}
		return string(buf[:n])
	}
	if got := xattr(s1, "user.sheepfs.id"); got != info.ID.String() {
		t.Errorf("snapshot id %q, want %q", got, info.ID)
	}
	if got := xattr(s1, "user.sheepfs.snapshot_time"); got != time.Unix(info.SnapTime, 0).UTC().Format(time.RFC3339) {
		t.Errorf("snapshot_time %q", got)
	}
	if got := xattr(vdiPath, "user.sheepfs.parent"); got != "d@mk" {
		t.Errorf("VDI parent %q, want d@mk", got)
	}
	if got := xattr(vdiPath, "user.sheepfs.copies"); got != "1" {
		t.Errorf("VDI copies %q", got)
	}
	buf := make([]byte, 256)
	n, err := unix.Listxattr(vdiPath, buf)
	if want := "user.sheepfs.id\x00user.sheepfs.copies\x00user.sheepfs.parent\x00"; err != nil || string(buf[:n]) != want {
		t.Errorf("listxattr: %q, %v; want %q", buf[:n], err, want)
	}

	// rm deletes the snapshot. The tag taken again is a new snapshot,
	// not read from the old one's cached pages.
	if err := os.Remove(s1); err != nil {
		t.Fatal(err)
	}
	var list []proto.VDIInfo
	m.admin(t, proto.AdminRequest{Cmd: proto.AdminSnapList, Name: "d"}, &list)
	for _, v := range list {
		if v.Tag == "s1" {
			t.Errorf("d@s1 still exists after rm")
		}
	}
	if err := touch(s1); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readAt(t, s1, len(b), 0), b) {
		t.Error("s1 taken again reads as the deleted s1")
	}

	// A snapshot taken elsewhere shows up at once, and one deleted and
	// taken again elsewhere while this mount still has the old one's
	// name cached is read as the new one.
	m.admin(t, proto.AdminRequest{Cmd: proto.AdminVDISnapshot, Name: "d", Tag: "cli"}, nil)
	if !bytes.Equal(readAt(t, m.path("snapshot/d/cli"), len(b), 0), b) {
		t.Error("snapshot taken elsewhere")
	}
	_ = readAt(t, s1, len(b), 0)
	writeAt(t, vdiPath, a, 0)
	m.admin(t, proto.AdminRequest{Cmd: proto.AdminSnapDelete, Name: "d", Tag: "s1"}, nil)
	m.admin(t, proto.AdminRequest{Cmd: proto.AdminVDISnapshot, Name: "d", Tag: "s1"}, nil)
	if !bytes.Equal(readAt(t, s1, len(a), 0), a) {
		t.Error("s1 taken again elsewhere reads as the deleted s1")
	}
}

// A snapshot taken through the mount holds what a writer of the same mount
// has written, also what is still in the page cache.
func TestSnapshotHoldsCachedWrites(t *testing.T) {
	m := mount(t)
	vdiPath := m.path("vdi/d")
	if err := os.WriteFile(vdiPath, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(vdiPath, 16<<20); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(vdiPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a := pattern(7, 8192)
	if _, err := f.WriteAt(a, 4096); err != nil {
		t.Fatal(err)
	}
	if err := touch(m.path("snapshot/d/s")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(pattern(50, 8192), 4096); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readAt(t, m.path("snapshot/d/s"), len(a), 4096), a) {
		t.Error("the snapshot misses a write made before it")
	}
}

// The page cache of a VDI file is dropped at open after a rollback, and
// after the VDI was deleted and created again under the same name.
func TestCacheAfterRollbackAndRecreate(t *testing.T) {
	m := mount(t)
	vdiPath := m.path("vdi/d")
	if err := os.WriteFile(vdiPath, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(vdiPath, 16<<20); err != nil {
		t.Fatal(err)
	}
	a, b := pattern(1, 1<<20), pattern(100, 1<<20)
	writeAt(t, vdiPath, a, 0)
	m.admin(t, proto.AdminRequest{Cmd: proto.AdminVDISnapshot, Name: "d", Tag: "a"}, nil)
	writeAt(t, vdiPath, b, 0)
	m.admin(t, proto.AdminRequest{Cmd: proto.AdminVDISnapshot, Name: "d", Tag: "b"}, nil)

	// Rollback while this mount has b cached (read and written here).
	if !bytes.Equal(readAt(t, vdiPath, len(b), 0), b) {
		t.Fatal("VDI before rollback")
	}
	m.admin(t, proto.AdminRequest{Cmd: proto.AdminVDIRollback, Name: "d", Tag: "a"}, nil)
	if !bytes.Equal(readAt(t, vdiPath, len(a), 0), a) {
		t.Error("read after rollback came from the old cache")
	}
	// And a writable open after the next rollback.
	m.admin(t, proto.AdminRequest{Cmd: proto.AdminVDIRollback, Name: "d", Tag: "b"}, nil)
	f, err := os.OpenFile(vdiPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(b))
	if _, err := f.ReadAt(got, 0); err != nil || !bytes.Equal(got, b) {
		t.Errorf("writable open after rollback: %v, same data %v", err, bytes.Equal(got, b))
	}
	f.Close()

	// Deleted and created again (a clone of another snapshot) while this
	// mount has the old VDI's name and pages cached.
	m.admin(t, proto.AdminRequest{Cmd: proto.AdminVDIClone, Source: "d@a", Name: "e"}, nil)
	ePath := m.path("vdi/e")
	old := m.lookup(t, "e")
	if !bytes.Equal(readAt(t, ePath, len(a), 0), a) {
		t.Fatal("clone of d@a")
	}
	m.admin(t, proto.AdminRequest{Cmd: proto.AdminVDIDelete, Name: "e"}, nil)
	m.admin(t, proto.AdminRequest{Cmd: proto.AdminVDIClone, Source: "d@b", Name: "e"}, nil)
	if m.lookup(t, "e").ID == old.ID {
		t.Fatal("the new e has the old one's ID")
	}
	if !bytes.Equal(readAt(t, ePath, len(b), 0), b) {
		t.Error("read of the new e came from the old one's cache")
	}
	f, err = os.OpenFile(ePath, os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("writable open of the new e: %v", err)
	}
	f.Close()
}

// go-fuse answers unlink and rmdir with success by default; the fixed
// directories must not lose entries.
func TestFixedDirectories(t *testing.T) {
	m := mount(t)
	wantErrno(t, "rmdir cluster", syscall.Rmdir(m.path("cluster")), syscall.EPERM)
	wantErrno(t, "rm cluster/info", syscall.Unlink(m.path("cluster/info")), syscall.EPERM)
	wantErrno(t, "rm node/list", syscall.Unlink(m.path("node/list")), syscall.EPERM)
	if _, err := os.Stat(m.path("cluster/info")); err != nil {
		t.Error(err)
	}
}
