package auth

import (
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
)

// corkMax is the most a corked connection holds before it writes.
const corkMax = 256 << 10

var corkBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, corkMax)
	return &b
}}

// rawConn is the TCP connection under a TLS one. TLS writes each record
// of at most 16 KiB with a write(2) of its own: a 1 MiB frame was 64
// system calls, each waking the reader at the other end, and a batch of
// small frames flushed together several. While corked (for the length
// of one Write of the TLS connection: tlsConn) rawConn keeps the records
// and sends them in one write(2) when uncorked, or whenever corkMax is
// reached. The buffer comes from a pool and goes back at each flush, so
// an idle connection holds none. The first failed write is kept: every
// later one fails with it, as TLS's own writes would.
type rawConn struct {
	net.Conn
	mu     sync.Mutex
	corked bool
	buf    *[]byte // while corked with records kept
	err    error
}

func (r *rawConn) Write(b []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return 0, r.err
	}
	if !r.corked {
		return r.write(b)
	}
	if r.buf != nil && len(*r.buf)+len(b) > corkMax {
		if err := r.flushLocked(); err != nil {
			return 0, err
		}
	}
	if len(b) > corkMax {
		return r.write(b)
	}
	if r.buf == nil {
		r.buf = corkBufs.Get().(*[]byte)
	}
	*r.buf = append(*r.buf, b...)
	return len(b), nil
}

func (r *rawConn) write(b []byte) (int, error) {
	n, err := r.Conn.Write(b)
	if err != nil {
		r.err = err
	}
	return n, err
}

func (r *rawConn) flushLocked() error {
	if r.buf == nil {
		return r.err
	}
	_, err := r.write(*r.buf)
	*r.buf = (*r.buf)[:0]
	corkBufs.Put(r.buf)
	r.buf = nil
	return err
}

func (r *rawConn) cork() {
	r.mu.Lock()
	r.corked = true
	r.mu.Unlock()
}

// uncork sends what was kept.
func (r *rawConn) uncork() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.corked = false
	return r.flushLocked()
}

// tlsConn is a TLS connection over a rawConn: each Write of more than
// one record goes out in as few write(2)s as its records fit in, at the
// cost of one copy of them.
type tlsConn struct {
	*tls.Conn
	raw *rawConn
	// corking counts the Writes that corked raw and have not uncorked
	// it yet (see Close).
	corking atomic.Int32
}

func newTLSConn(nc net.Conn, cfg *tls.Config, server bool) *tlsConn {
	raw := &rawConn{Conn: nc}
	if server {
		return &tlsConn{Conn: tls.Server(raw, cfg), raw: raw}
	}
	return &tlsConn{Conn: tls.Client(raw, cfg), raw: raw}
}

// tlsRecord is the most plaintext one TLS record carries.
const tlsRecord = 16 << 10

func (c *tlsConn) Write(b []byte) (int, error) {
	if len(b) <= tlsRecord {
		// One record, one write(2) anyway: keeping it would only copy it.
		return c.Conn.Write(b)
	}
	c.corking.Add(1)
	defer c.corking.Add(-1)
	c.raw.cork()
	n, err := c.Conn.Write(b)
	if ferr := c.raw.uncork(); err == nil && ferr != nil {
		return 0, ferr
	}
	return n, err
}

// Close ends the connection. A Write blocked in sending what it kept
// (to a peer that does not read) ends at once, as one blocked inside
// TLS does: TLS's Close closes the socket without a close_notify alert
// when a Write of its own is under way, but the kept records are sent
// after TLS's Write has returned. TLS would then send its alert first,
// which waits behind the blocked write until the 5 s deadline it sets.
func (c *tlsConn) Close() error {
	if c.corking.Load() > 0 {
		err := c.raw.Conn.Close()
		_ = c.Conn.Close() // its alert fails at once now
		return err
	}
	return c.Conn.Close()
}
