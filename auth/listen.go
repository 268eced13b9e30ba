package auth

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/sheepfs/sheepfs/errs"
)

// Limits of a Listener.
const (
	// HandshakeTimeout bounds a TLS handshake: a connection that does
	// not finish one in time is dropped.
	HandshakeTimeout = 10 * time.Second
	// maxHandshakes bounds the handshakes in progress at once, and
	// maxHandshakesPerIP those from one address: a connection beyond
	// either is dropped at once. The second keeps one flooding host from
	// taking every slot from the others.
	maxHandshakes      = 1024
	maxHandshakesPerIP = 64
)

// Conn is an authenticated connection: the TLS connection and the role of
// the other side.
type Conn struct {
	net.Conn // a *tls.Conn, or a unix connection for the local channel
	role     Role
}

// Role is the other side's role.
func (c *Conn) Role() Role { return c.role }

// IsLocal reports whether c came through the local channel (ListenLocal):
// the other side runs on this machine as root or as this process's user.
func IsLocal(c net.Conn) bool {
	ac, ok := c.(*Conn)
	if !ok {
		return false
	}
	_, unix := ac.Conn.(*net.UnixConn)
	return unix
}

// Listener accepts TLS connections whose handshake completed with an
// identity of this cluster. Handshakes run in their own goroutines, at
// most maxHandshakes at once and each for at most HandshakeTimeout, so a
// connection that stalls or never speaks TLS holds up nobody else's. It
// keeps accepting after errors such as running out of file descriptors.
type Listener struct {
	ln    net.Listener
	cfg   *tls.Config
	keys  *Keys
	local bool // the local channel (ListenLocal)
	// OnRefused, if set, is told of connections dropped: a failed
	// handshake, or one beyond the handshakes in progress. It is called at
	// most once a second, with n the connections dropped since the last
	// call, this one included, so that a flood does not flood the log.
	OnRefused func(remote string, err error, n int)

	ready chan *Conn
	done  chan struct{}
	once  sync.Once
	start sync.Once // the accept loop, from the first Accept
	err   error

	mu      sync.Mutex
	total   int
	perIP   map[string]int
	lastRef time.Time // when OnRefused was last called
	heldRef int       // refusals since
}

// Listen wraps ln: connections are admitted with cfg (from ServerConfig)
// and their role is worked out with keys.
func Listen(ln net.Listener, cfg *tls.Config, keys *Keys) *Listener {
	return listen(ln, cfg, keys, false)
}

func listen(ln net.Listener, cfg *tls.Config, keys *Keys, local bool) *Listener {
	l := &Listener{ln: ln, cfg: cfg, keys: keys, local: local, ready: make(chan *Conn),
		done: make(chan struct{}), perIP: map[string]int{}}
	return l
}

func (l *Listener) acceptLoop() {
	var backoff time.Duration
	for {
		nc, err := l.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				l.close(err)
				return
			}
			// Out of descriptors, or a connection aborted before it
			// was accepted: wait a little and go on.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			select {
			case <-time.After(backoff):
				continue
			case <-l.done:
				return
			}
		}
		backoff = 0
		ip := hostOf(nc.RemoteAddr())
		if !l.take(ip) {
			l.refused(nc.RemoteAddr().String(), errs.E(errs.Busy, "too many handshakes in progress"))
			nc.Close()
			continue
		}
		go l.handshake(nc, ip)
	}
}

// refused tells OnRefused of a dropped connection, at most once a second.
func (l *Listener) refused(remote string, err error) {
	if l.OnRefused == nil {
		return
	}
	l.mu.Lock()
	l.heldRef++
	now := time.Now()
	if now.Sub(l.lastRef) < time.Second {
		l.mu.Unlock()
		return
	}
	l.lastRef = now
	n := l.heldRef
	l.heldRef = 0
	l.mu.Unlock()
	l.OnRefused(remote, err, n)
}

// take reserves a handshake slot for a connection from ip.
func (l *Listener) take(ip string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= maxHandshakes || l.perIP[ip] >= maxHandshakesPerIP {
		return false
	}
	l.total++
	l.perIP[ip]++
	return true
}

func (l *Listener) release(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.perIP[ip]--; l.perIP[ip] <= 0 {
		delete(l.perIP, ip)
	}
}

func hostOf(a net.Addr) string {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.IP.String()
	}
	return a.String()
}

func (l *Listener) handshake(nc net.Conn, ip string) {
	defer l.release(ip)
	if l.local {
		c, err := l.serverLocal(nc)
		if err != nil {
			l.refused("local", err)
			nc.Close()
			return
		}
		l.deliver(c)
		return
	}
	tc := newTLSConn(nc, l.cfg, true)
	ctx, cancel := context.WithTimeout(context.Background(), HandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		l.refused(nc.RemoteAddr().String(), err)
		nc.Close()
		return
	}
	l.deliver(&Conn{Conn: tc, role: l.keys.RoleOf(tc.ConnectionState())})
}

func (l *Listener) deliver(c *Conn) {
	select {
	case l.ready <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *Listener) close(err error) {
	l.once.Do(func() {
		l.err = err
		close(l.done)
	})
}

// Accept returns the next authenticated connection. Connections are taken
// from the socket from the first call on (so OnRefused may be set before).
func (l *Listener) Accept() (net.Conn, error) {
	l.start.Do(func() { go l.acceptLoop() })
	select {
	case c := <-l.ready:
		return c, nil
	case <-l.done:
		return nil, errs.E(errs.Closed, "listener closed: %w", net.ErrClosed)
	}
}

// Close stops accepting.
func (l *Listener) Close() error {
	err := l.ln.Close()
	l.close(net.ErrClosed)
	return err
}

// Addr is the listening address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// RoleOf returns the role of a connection a Listener accepted (RoleNone
// for any other).
func RoleOf(c net.Conn) Role {
	if ac, ok := c.(*Conn); ok {
		return ac.role
	}
	return RoleNone
}

// Dialer connects to daemons over TLS with one identity.
type Dialer struct {
	keys    *Keys
	as      Role
	Timeout time.Duration
	// Local: try the daemon's local channel first (see ListenLocal), and
	// fall back to TLS over TCP when there is none this process may use.
	Local bool
}

// NewDialer returns a Dialer presenting the identity of role as.
func (ks *Keys) NewDialer(as Role, timeout time.Duration) (*Dialer, error) {
	if _, err := ks.dialConfig(as); err != nil {
		return nil, err
	}
	return &Dialer{keys: ks, as: as, Timeout: timeout}, nil
}

// DialContext connects to addr and completes the handshake (within the
// dialer's timeout, if ctx allows as long). A key file changed since it
// was read is read again first.
func (d *Dialer) DialContext(ctx context.Context, addr string) (net.Conn, error) {
	d.keys.Reload()
	cfg, err := d.keys.dialConfig(d.as)
	if err != nil {
		return nil, err
	}
	if d.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.Timeout)
		defer cancel()
	}
	if d.Local {
		if c, err := dialLocal(ctx, addr, cfg); err == nil {
			return c, nil
		}
	}
	var nd net.Dialer
	nc, err := nd.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if t, ok := nc.(*net.TCPConn); ok {
		_ = t.SetNoDelay(true)
	}
	tc := newTLSConn(nc, cfg, false)
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, err
	}
	return tc, nil
}
