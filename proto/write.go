package proto

import (
	"bufio"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
)

// directPayload is the payload size from which a frame is sent with one
// writev of header and payload, instead of being copied through the
// connection's bufio.Writer.
const directPayload = 64 << 10

// writeFrame writes a frame (hdr, then payload) to w, buffered behind it.
// Small frames are buffered so that several share one syscall; a large
// payload goes out with its header in one writev, without a copy. The
// caller holds the connection's write lock, and flushes when nobody else
// is waiting to write.
func writeFrame(bw *bufio.Writer, nc net.Conn, hdr, payload []byte) error {
	if len(payload) < directPayload {
		if _, err := bw.Write(hdr); err != nil {
			return err
		}
		_, err := bw.Write(payload)
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	bufs := net.Buffers{hdr, payload}
	_, err := bufs.WriteTo(nc)
	return err
}

// sendLock is a connection's write lock, which also decides who flushes
// what the senders buffered, so that frames sent at about the same time
// share one write(2), and their receiver one wake-up.
//
// A sender on a busy connection (other requests in flight on it) that
// finds nobody else about to flush becomes the one who does: it lets the
// other goroutines ready to run go first (Gosched), and then flushes
// what everyone buffered meanwhile. With one P, as our processes run on
// small machines, the requests of one batch read from a connection are
// handled one after the other, each to its first wait, before their
// sends go out together: a queue of 16 writes shares a few write(2)s to
// each peer instead of 16. A request alone on its connection flushes at
// once: there is nobody to wait for, and the goroutines that may be
// ready to run (timers, other connections) would only delay it. A sender
// queued on the lock leaves the flush to whoever comes after it.
type sendLock struct {
	mu      sync.Mutex
	waiting atomic.Int32 // senders queued on mu
	due     bool         // a sender will flush (under mu)
}

// lock takes the lock to buffer a frame.
func (l *sendLock) lock() {
	l.waiting.Add(1)
	l.mu.Lock()
	l.waiting.Add(-1)
}

// unlock is called, holding the lock, after a frame was buffered. It
// releases the lock, having flushed (with flush, under the lock) unless
// another sender will; the error is flush's. busy says that other
// requests are in flight on the connection.
func (l *sendLock) unlock(flush func() error, busy bool) error {
	if l.due || l.waiting.Load() > 0 {
		l.mu.Unlock()
		return nil
	}
	if busy {
		l.due = true
		l.mu.Unlock()
		runtime.Gosched()
		l.mu.Lock()
		l.due = false
	}
	err := flush()
	l.mu.Unlock()
	return err
}

// unlockNow releases the lock without flushing (after a failed write).
func (l *sendLock) unlockNow() { l.mu.Unlock() }
