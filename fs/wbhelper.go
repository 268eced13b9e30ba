package fs

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// The write-back helper.
//
// sheepfs reaches the kernel's cached writes of a file the one way there
// is: through a file of its own mount (ownWriteBack: before answering
// SEEK_DATA or a stat, cached.go; before a snapshot, snapshot.go; for a
// size fix, size.go). The thread
// that then waits for the kernel's write-back waits unkillably (on the
// pages' writeback bit) until sheepfs has answered the WRITE requests. If
// sheepfs is killed meanwhile, nothing answers them: that thread never
// leaves the kernel, the killed process never ends, and since it has not
// ended, no new sheepfs may take the mount over (Exiting): the mount
// hangs for good. So the waiting is done by another process, the helper
// (sheepfs --write-back DIR, started the first time it is needed): a
// helper stuck in the kernel holds nobody, sheepfs ends when killed, the
// next sheepfs answers the helper's WRITE requests, and the helper, whose
// parent is gone, then exits.
//
// The helper reads requests on its stdin and answers each on its stdout
// when done, in any order; it exits when its stdin ends. A request is
// wbReqHead (id, op, offset, length of the name) then the VDI's name; an
// answer is the id and an errno (4 + 4 bytes, little-endian).

const (
	wbOpRange   = 1 // sync_file_range (write and wait) from the offset to the end
	wbOpFsync   = 2 // fsync: the cached writes, then sheepfs's Fsync
	wbOpFixSize = 3 // fsync, then truncate to the offset: the kernel's size is the cluster's (size.go)
	wbOpSetSize = 4 // truncate to the offset, with nothing to write back: the same, at an open (size.go)

	wbReqHead  = 4 + 1 + 8 + 2
	wbMaxName  = 4096
	wbMaxSlots = 64 // requests a helper serves at once
)

// wbHelper is this process's side of a helper.
type wbHelper struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	done   chan struct{} // closed when its answers end (it died)
	exited atomic.Bool   // set before it is reaped: its pid may be another's after

	wmu sync.Mutex // one request written at a time

	mu      sync.Mutex
	next    uint32
	waiting map[uint32]chan syscall.Errno
}

// startWBHelper starts a helper with cmd.
func startWBHelper(cmd *exec.Cmd) (*wbHelper, error) {
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	h := &wbHelper{cmd: cmd, in: in, done: make(chan struct{}), waiting: map[uint32]chan syscall.Errno{}}
	go h.answers(out)
	return h, nil
}

// answers hands the helper's answers to their callers until it dies.
func (h *wbHelper) answers(out io.Reader) {
	r := bufio.NewReader(out)
	var b [8]byte
	for {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			break
		}
		id, errno := binary.LittleEndian.Uint32(b[:4]), syscall.Errno(binary.LittleEndian.Uint32(b[4:]))
		h.mu.Lock()
		ch := h.waiting[id]
		delete(h.waiting, id)
		h.mu.Unlock()
		if ch != nil {
			ch <- errno
		}
	}
	h.in.Close()
	h.exited.Store(true)
	_ = h.cmd.Process.Kill()
	_ = h.cmd.Wait()
	close(h.done)
}

// errHelperGone: the helper died before it answered.
var errHelperGone = errors.New("the write-back helper is gone")

// call asks the helper to do op on vdi/name and waits for its answer.
func (h *wbHelper) call(op byte, name string, off uint64) (syscall.Errno, error) {
	if len(name) > wbMaxName {
		return syscall.ENAMETOOLONG, nil
	}
	ch := make(chan syscall.Errno, 1)
	h.mu.Lock()
	h.next++
	id := h.next
	h.waiting[id] = ch
	h.mu.Unlock()
	req := wbRequest(id, op, off, name)
	h.wmu.Lock()
	_, err := h.in.Write(req)
	h.wmu.Unlock()
	if err == nil {
		select {
		case errno := <-ch:
			return errno, nil
		case <-h.done:
		}
	} else {
		// Its input is closed: it is ending (or ended). Once done is
		// closed, helper starts another.
		_ = h.cmd.Process.Kill()
		<-h.done
	}
	h.mu.Lock()
	delete(h.waiting, id)
	h.mu.Unlock()
	return 0, errHelperGone
}

// wbRequest encodes a request.
func wbRequest(id uint32, op byte, off uint64, name string) []byte {
	req := make([]byte, wbReqHead, wbReqHead+len(name))
	binary.LittleEndian.PutUint32(req, id)
	req[4] = op
	binary.LittleEndian.PutUint64(req[5:], off)
	binary.LittleEndian.PutUint16(req[13:], uint16(len(name)))
	return append(req, name...)
}

// owns reports whether thread tid belongs to the helper.
func (h *wbHelper) owns(tid uint32) bool {
	if h.exited.Load() {
		return false
	}
	_, err := os.Stat("/proc/" + strconv.Itoa(h.cmd.Process.Pid) + "/task/" + strconv.FormatUint(uint64(tid), 10))
	return err == nil
}

// helper returns the running helper, starting one if there is none (or
// the last one died); nil if write-backs are done in this process.
func (f *FS) helper() *wbHelper {
	if f.helperCmd == nil || f.dir == "" {
		return nil
	}
	f.wbhMu.Lock()
	defer f.wbhMu.Unlock()
	if h := f.wbh.Load(); h != nil {
		select {
		case <-h.done:
		default:
			return h
		}
	}
	h, err := startWBHelper(f.helperCmd(f.dir))
	if err != nil {
		f.logf("write-back helper", "no write-back helper (a sheepfs killed during a write-back may not end): %v", err)
		f.wbh.Store(nil)
		return nil
	}
	f.wbh.Store(h)
	return h
}

// ownWriteBack has the kernel write the cached pages of vdi/name back, by
// op (from off; for wbOpFixSize, off is the size) through a file of the
// mount: in the helper, or, without one, on a thread of this process (and
// then a kill during the wait keeps sheepfs from ending: see above).
func (f *FS) ownWriteBack(op byte, name string, off uint64) syscall.Errno {
	if f.dir == "" {
		return 0
	}
	// A helper that dies before it answers (killed, out of memory) is
	// replaced once; only if the new one dies too is the wait done here.
	for range 2 {
		h := f.helper()
		if h == nil {
			break
		}
		if errno, err := h.call(op, name, off); err == nil {
			return errno
		}
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid := unix.Gettid()
	f.own.add(tid)
	defer f.own.remove(tid)
	fd, errno := writeBackOp(filepath.Join(f.dir, "vdi", name), op, int64(off))
	if fd >= 0 {
		// Closed by a goroutine of its own, as in the helper: the
		// close's FLUSH may wait for the inode lock that the caller's
		// request holds. Held, the file would keep a sheepfs killed
		// meanwhile from ending (Exiting).
		go unix.Close(fd)
	}
	return errno
}

// ownRequest reports whether the FUSE request of ctx comes from a
// write-back of sheepfs's own (ownWriteBack): from the helper, or from a
// thread of this process doing one. Its open is answered as sheepfs's own
// (the file is open for writing here, so no write lock, and the cache
// holds its data), its truncate as a size fix (size.go), and it does not
// wait for a size fix.
func (f *FS) ownRequest(ctx context.Context) bool {
	c, ok := fuse.FromContext(ctx)
	if !ok {
		return false
	}
	if f.own.has(int(c.Pid)) {
		return true
	}
	h := f.wbh.Load()
	return h != nil && h.owns(c.Pid)
}

// RunWriteBackHelper is the helper's side (sheepfs --write-back): it
// serves requests from in for the mount at dir until in ends. A request
// it cannot parse ends it.
func RunWriteBackHelper(dir string, in io.Reader, out io.Writer) error {
	var (
		wmu   sync.Mutex
		slots = make(chan struct{}, wbMaxSlots)
		r     = bufio.NewReader(in)
		head  [wbReqHead]byte
	)
	for {
		if _, err := io.ReadFull(r, head[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		id, op := binary.LittleEndian.Uint32(head[:4]), head[4]
		off := binary.LittleEndian.Uint64(head[5:])
		n := int(binary.LittleEndian.Uint16(head[13:]))
		if n == 0 || n > wbMaxName || op < wbOpRange || op > wbOpSetSize {
			return fmt.Errorf("bad request: op %d, name of %d bytes", op, n)
		}
		name := make([]byte, n)
		if _, err := io.ReadFull(r, name); err != nil {
			return err
		}
		if filepath.Base(string(name)) != string(name) || string(name) == "." || string(name) == ".." {
			return fmt.Errorf("bad request: name %q", name)
		}
		slots <- struct{}{}
		go func() {
			fd, errno := writeBackOp(filepath.Join(dir, "vdi", string(name)), op, int64(off))
			var b [8]byte
			binary.LittleEndian.PutUint32(b[:4], id)
			binary.LittleEndian.PutUint32(b[4:], uint32(errno))
			wmu.Lock()
			_, _ = out.Write(b[:])
			wmu.Unlock()
			// The slot is free before the close: the close's FLUSH
			// waits for the file's inode lock, which the request
			// waiting for the answer holds (an LSEEK), and so may
			// others waiting for a slot.
			<-slots
			// Closed after the answer, for the same reason.
			if fd >= 0 {
				unix.Close(fd)
			}
		}()
	}
}

// writeBackOp does op on the file at path, opened through the mount; it
// returns the file (or -1), for the caller to close after it answered.
func writeBackOp(path string, op byte, off int64) (int, syscall.Errno) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, 0 // renamed or deleted: its writers' data is theirs to flush
	}
	switch op {
	case wbOpFsync:
		err = unix.Fsync(fd)
	case wbOpFixSize, wbOpSetSize:
		if op == wbOpFixSize {
			_ = unix.Fsync(fd) // an error here is a writer's, told at its own fsync
		}
		// Through /proc/self/fd: the inode just opened (the file is
		// open read-only).
		err = unix.Truncate("/proc/self/fd/"+strconv.Itoa(fd), off)
	default:
		err = unix.SyncFileRange(fd, off, 0,
			unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER)
	}
	var errno syscall.Errno
	if err != nil && !errors.As(err, &errno) {
		errno = syscall.EIO
	}
	return fd, errno
}
