package fs

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/sheepfs/sheepfs/ids"
)

// A mount that outlives its sheepfs process.
//
// The kernel keeps a FUSE connection while any process holds its
// /dev/fuse file; requests wait in it meanwhile. So sheepfs hands a copy of
// the file to a small holder process (sheepfs --hold, started by the first
// sheepfs of a mount), which does nothing but keep it and give it to the
// next sheepfs for the same mount point. If sheepfs dies (kill -9, a
// crash, an upgrade), the mount stays: processes using it wait, as for a
// slow disk, instead of getting ENOTCONN forever. A new sheepfs for that
// mount point asks the holder, gets the file and the Held state, and
// serves the connection from where it stands (Mount with Held):
//
//   - go-fuse starts a server only with the connection's INIT, which the
//     kernel sent once, long ago. So the new server is given one end of a
//     socket pair with the first INIT (kept in Held) written into the
//     other; once it has answered, the /dev/fuse file is put in place of
//     its end (dup3) before it reads anything else.
//   - The kernel sends again, on FUSE_NOTIFY_RESEND (Linux 6.9), the
//     requests the dead process had read and not answered. Requests to a
//     sheepfs are safe to repeat (a write writes the same bytes again).
//   - Node IDs and file handles given out by the dead process stay valid
//     (raw.go), and the mount's ID is kept, so that the write locks it
//     took are taken again in its name at the first use of each file.
//
// The holder exits when the connection ends (unmount, or an abort through
// /sys/fs/fuse/connections): at once if no process serves it, else when
// that process exits, or within a minute (holdWatch). It answers only
// processes of its own user.

// Held is what the holder keeps besides the /dev/fuse file.
type Held struct {
	Mount     ids.MountID // the mount's ID, for its write locks
	Init      []byte      // the kernel's INIT request
	Gen       uint64      // the generation of the last process to serve the mount
	Writeback bool        // the writeback cache was negotiated
	Dir       string      // the mount point
	Server    int         // the process serving the mount (kept by the holder only)
	Error     string      `json:",omitempty"` // the holder's refusal
	Ended     bool        `json:",omitempty"` // the holder's answer: the mount has ended
}

// holdSocket is the abstract unix socket name of the holder of dir. It
// does not look at dir: a mount whose sheepfs died answers nothing.
func holdSocket(dir string) string {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	sum := sha256.Sum256([]byte(dir))
	return "@sheepfs-hold-" + hex.EncodeToString(sum[:16])
}

// Fetch asks the holder of the mount at dir for its connection. It returns
// nil, nil if no holder answers for dir (nothing to take over).
func Fetch(dir string) (*os.File, *Held, error) {
	c, err := net.DialTimeout("unix", holdSocket(dir), 5*time.Second)
	if err != nil {
		return nil, nil, nil
	}
	defer c.Close()
	uc := c.(*net.UnixConn)
	_ = uc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := uc.Write([]byte("get\n")); err != nil {
		return nil, nil, fmt.Errorf("holder of %s: %w", dir, err)
	}
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, nil, fmt.Errorf("holder of %s: %w", dir, err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return nil, nil, fmt.Errorf("holder of %s: %w", dir, err)
	}
	var h Held
	if len(msgs) == 0 && json.Unmarshal(buf[:n], &h) == nil {
		switch {
		case h.Ended:
			return nil, nil, nil // its holder was about to exit
		case h.Error != "":
			return nil, nil, errors.New(h.Error)
		}
	}
	if len(msgs) != 1 {
		return nil, nil, fmt.Errorf("holder of %s sent no file", dir)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return nil, nil, fmt.Errorf("holder of %s sent no file", dir)
	}
	f := os.NewFile(uintptr(fds[0]), "/dev/fuse")
	if err := json.Unmarshal(buf[:n], &h); err != nil || len(h.Init) != initInSize || h.Gen == 0 || h.Gen > fhGenMax {
		f.Close()
		return nil, nil, fmt.Errorf("holder of %s sent a bad state", dir)
	}
	return f, &h, nil
}

// Hold runs the holder of the mount at h.Dir, whose /dev/fuse file is dev,
// until the connection ends. ready is called once it answers.
func Hold(dev *os.File, h Held, ready func()) error {
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: holdSocket(h.Dir), Net: "unix"})
	if err != nil {
		return fmt.Errorf("hold %s: %w", h.Dir, err)
	}
	defer l.Close()
	w, err := newHoldWatch(dev)
	if err != nil {
		return fmt.Errorf("hold %s: %w", h.Dir, err)
	}
	w.serve(pidfd(h.Server))
	ready()
	go func() {
		w.run()
		l.Close()
	}()
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return nil // the connection ended
		}
		if w.ended() {
			// Unmounted, and the server that served it has not
			// exited yet (the holder waits for that): there is
			// nothing to take over, and the name is free for the
			// asker's own holder once the listener is closed.
			l.Close()
			_ = c.SetDeadline(time.Now().Add(time.Second))
			// Its request first: closed before the asker has
			// written it, the socket would fail that write.
			_, _ = request(c)
			b, _ := json.Marshal(Held{Ended: true})
			_, _ = c.Write(b)
			c.Close()
			return nil
		}
		var server int
		if h, server = handOver(c, dev, h); server >= 0 {
			w.serve(server)
		}
	}
}

// holdWatch tells the holder when the mount's connection ends.
//
// poll(2) on the /dev/fuse file with no events asked returns when the
// connection is gone; but the kernel wakes every poller of the file for
// each request it queues, so a holder waiting there woke up for every
// read and write of every program on the mount, and took about a fifth of
// the CPU that serving a 4 KiB read costs. So while a process serves the
// mount, the holder waits for that process to exit instead (a pidfd: one
// wake-up), and looks at the connection then: a server ends when the
// connection does, or dies and leaves it to the next one. Only while no
// process serves it does the holder wait on the file itself; requests
// then wait for the next sheepfs, and there are few.
type holdWatch struct {
	dev  int
	kick [2]int // a pipe: a new server to wait for

	mu     sync.Mutex
	pidfd  int  // the server to wait for, taken by run; -1 if none
	closed bool // run has returned
}

func newHoldWatch(dev *os.File) (*holdWatch, error) {
	w := &holdWatch{dev: int(dev.Fd()), pidfd: -1}
	if err := unix.Pipe2(w.kick[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, err
	}
	return w, nil
}

// serve makes the process of pidfd fd the one whose exit run waits for,
// and takes fd. With none (-1: pidfds are missing before Linux 5.3), run
// waits on the file.
func (w *holdWatch) serve(fd int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		if fd >= 0 {
			unix.Close(fd)
		}
		return
	}
	if w.pidfd >= 0 {
		unix.Close(w.pidfd)
	}
	w.pidfd = fd
	_, _ = unix.Write(w.kick[1], []byte{0})
}

// run returns when the connection ends. It closes w.
func (w *holdWatch) run() {
	server := -1
	defer func() {
		if server >= 0 {
			unix.Close(server)
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		w.closed = true
		if w.pidfd >= 0 {
			unix.Close(w.pidfd)
			w.pidfd = -1
		}
		unix.Close(w.kick[0])
		unix.Close(w.kick[1])
	}()
	var buf [64]byte
	for {
		if w.ended() {
			return
		}
		fds := []unix.PollFd{{Fd: int32(w.kick[0]), Events: unix.POLLIN}}
		timeout := -1
		if server >= 0 {
			fds = append(fds, unix.PollFd{Fd: int32(server), Events: unix.POLLIN})
			// A server that lingers after the connection ended
			// (stopped, or waiting on the cluster) keeps the
			// holder for a minute at most.
			timeout = 60_000
		} else {
			// No events asked: poll returns when the connection is
			// gone (and wakes, without returning, at each request).
			fds = append(fds, unix.PollFd{Fd: int32(w.dev)})
		}
		if _, err := unix.Poll(fds, timeout); err != nil && err != unix.EINTR {
			return
		}
		// The server waited on exited: before a new one (below) takes
		// its place.
		if server >= 0 && fds[1].Revents != 0 {
			unix.Close(server)
			server = -1
		}
		if fds[0].Revents != 0 {
			for {
				if n, err := unix.Read(w.kick[0], buf[:]); n <= 0 || err != nil {
					break
				}
			}
			w.mu.Lock()
			if w.pidfd >= 0 {
				if server >= 0 {
					unix.Close(server)
				}
				server, w.pidfd = w.pidfd, -1
			}
			w.mu.Unlock()
		}
	}
}

// ended reports whether the connection is gone.
func (w *holdWatch) ended() bool {
	fds := []unix.PollFd{{Fd: int32(w.dev)}}
	for {
		_, err := unix.Poll(fds, 0)
		if err == unix.EINTR {
			continue
		}
		return err != nil || fds[0].Revents&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0
	}
}

// handOver gives dev and h, with the next generation, to the process on c
// if it runs as this one's user and the process serving the mount is gone;
// it returns the state now and, if it handed over, a pidfd of the new
// server (else -1).
func handOver(c *net.UnixConn, dev *os.File, h Held) (Held, int) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	raw, err := c.SyscallConn()
	if err != nil {
		return h, -1
	}
	var cred *unix.Ucred
	_ = raw.Control(func(fd uintptr) { cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	if err != nil || cred == nil || int(cred.Uid) != os.Geteuid() {
		return h, -1
	}
	if line, err := request(c); err != nil || line != "get\n" {
		return h, -1
	}
	if h.Server > 0 && unix.Kill(h.Server, 0) == nil && !Exiting(h.Server) {
		// Two processes serving one connection would split its
		// requests between them.
		b, _ := json.Marshal(Held{Error: fmt.Sprintf("the mount at %s is served by process %d", h.Dir, h.Server)})
		_, _ = c.Write(b)
		return h, -1
	}
	// The asker's pidfd before it has the file: it is alive (waiting
	// for the answer), so its PID is not yet anyone else's.
	server := pidfd(int(cred.Pid))
	next := h
	next.Gen = h.Gen%fhGenMax + 1
	next.Server = int(cred.Pid)
	b, _ := json.Marshal(next)
	if _, _, err := c.WriteMsgUnix(b, unix.UnixRights(int(dev.Fd())), nil); err != nil {
		if server >= 0 {
			unix.Close(server)
		}
		return h, -1
	}
	return next, server
}

// request reads the line an asker sends the holder ("get\n").
func request(c net.Conn) (string, error) {
	return bufio.NewReaderSize(io.LimitReader(c, 64), 64).ReadString('\n')
}

// pidfd returns a pidfd of process pid, or -1 (pid 0, a process gone, a
// kernel before Linux 5.3).
func pidfd(pid int) int {
	if pid <= 0 {
		return -1
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1
	}
	return fd
}

// ClearDead unmounts (lazily) a sheepfs mount at dir that nobody serves
// or holds (its sheepfs died without a holder: ENOTCONN), so that a new
// mount can be made there. Call it when Fetch found no holder: dir is then
// looked at, which would wait on a held mount.
func ClearDead(dir string) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return
	}
	var st unix.Stat_t
	if err := unix.Stat(abs, &st); err != unix.ENOTCONN {
		return
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(b), "\n") {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ... - FSTYPE SOURCE ...
		f := strings.Fields(line)
		if len(f) < 5 || f[4] != abs {
			continue
		}
		if i := slices.Index(f, "-"); i > 0 && i+1 < len(f) && f[i+1] == "fuse.sheepfs" {
			_ = unix.Unmount(abs, unix.MNT_DETACH)
		}
	}
}

// notifyResend is FUSE_NOTIFY_RESEND, as the kernel numbers it.
const notifyResend = 7

// initInSize is the size of the INIT request kept in Held.
var initInSize = binary.Size(fuse.InitIn{})

// initRequest encodes the kernel's INIT request of srv.
func initRequest(srv *fuse.Server) []byte {
	in := *srv.KernelSettings()
	in.Length = uint32(initInSize)
	in.Opcode = 26 // FUSE_INIT
	in.Unique = 1
	var b bytes.Buffer
	_ = binary.Write(&b, binary.LittleEndian, &in)
	return b.Bytes()
}

// deviceFD returns the number of this process's /dev/fuse file, which
// go-fuse opened for the mount and does not show.
func deviceFD() (int, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1, err
	}
	found := -1
	for _, e := range ents {
		if t, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && t == "/dev/fuse" {
			if found >= 0 {
				return -1, errors.New("more than one /dev/fuse file open")
			}
			found, _ = strconv.Atoi(e.Name())
		}
	}
	if found < 0 {
		return -1, errors.New("no /dev/fuse file open")
	}
	return found, nil
}

// Device returns a copy of the mount's /dev/fuse file and the state a
// holder keeps for it.
func (f *FS) Device() (*os.File, Held, error) {
	fd, err := deviceFD()
	if err != nil {
		return nil, Held{}, err
	}
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, Held{}, err
	}
	return os.NewFile(uintptr(nfd), "/dev/fuse"), Held{Mount: f.c.Mount(), Init: f.init, Gen: f.gen, Writeback: f.writeback, Dir: f.dir, Server: os.Getpid()}, nil
}

// serveHeld starts a server for the held connection dev, through raw.
func serveHeld(dev *os.File, h *Held, raw fuse.RawFileSystem, o *fuse.MountOptions) (*fuse.Server, error) {
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ours, its := pair[0], pair[1]
	defer unix.Close(ours)
	if _, err := unix.Write(ours, h.Init); err != nil {
		unix.Close(its)
		return nil, err
	}
	mo := *o
	mo.DirectMount = false // the magic /dev/fd/N mount point: serve its
	srv, err := fuse.NewServer(raw, "/dev/fd/"+strconv.Itoa(its), &mo)
	if err != nil {
		unix.Close(its)
		return nil, fmt.Errorf("take over %s: %w", h.Dir, err)
	}
	// The server answered the INIT; from now on its file is the
	// connection itself.
	if err := unix.Dup3(int(dev.Fd()), its, unix.O_CLOEXEC); err != nil {
		return nil, fmt.Errorf("take over %s: %w", h.Dir, err)
	}
	// FUSE_NOTIFY_RESEND: the requests the dead process read come again.
	resend := make([]byte, 16)
	binary.LittleEndian.PutUint32(resend[0:], 16)
	binary.LittleEndian.PutUint32(resend[4:], notifyResend)
	if _, err := unix.Write(its, resend); err != nil {
		// Before Linux 6.9: requests it had read wait until they
		// time out, if ever; everything else is served.
		fmt.Fprintf(os.Stderr, "sheepfs: the kernel did not take FUSE_NOTIFY_RESEND (%v): requests the previous process had read are lost\n", err)
	}
	return srv, nil
}

// Exiting reports whether process pid is gone or every thread of it is
// exiting (PF_EXITING, or a zombie): it reads no more requests. Such a
// process may not end before a new sheepfs serves the mount: a file it
// held on a FUSE mount is closed by its exit, whose FLUSH waits for an
// answer (the kernel's request_wait_answer, which a dying process cannot
// leave), so the mount is handed over without waiting for it to end.
func Exiting(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return true
	}
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, t.Name()))
		if err != nil {
			continue // that thread is gone
		}
		// "pid (comm) state ppid pgrp session tty tpgid flags ...": comm
		// may hold spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			return false
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 7 {
			return false
		}
		if f[0] == "Z" || f[0] == "X" {
			continue
		}
		flags, err := strconv.ParseUint(f[6], 10, 64)
		if err != nil || flags&pfExiting == 0 {
			return false
		}
	}
	return true
}

// pfExiting is the kernel's PF_EXITING task flag.
const pfExiting = 0x4
