package auth

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/sheepfs/sheepfs/errs"
)

// The local channel. A sheepfs mount nearly always talks to the sheep on
// its own machine, and encrypting what never leaves the kernel costs that
// mount a third of its sequential throughput on a small machine
// (docs/BENCHMARKS.md). So a daemon also listens on an abstract unix
// socket named after its data address. A connection there is authenticated
// exactly as on the data port, by a TLS 1.3 handshake with the cluster's
// pinned identities, and then leaves TLS (both sides send close_notify)
// and carries frames in the clear over the socket. What makes that safe
// is the kernel: a unix socket has no wire, and each side checks the
// other's credentials (SO_PEERCRED): only root or the daemon's own user
// may use it, so a local user who binds the name first, or connects to
// it, to relay the handshake and read what follows, is refused by the
// other side. An abstract name lives in the network namespace, as the
// TCP address does, so a name and an address always mean the same daemon.

// localName is the abstract unix socket of the daemon serving addr.
func localName(addr string) string { return "@sheepfs/" + addr }

// ListenLocal listens on the local channel of the daemon serving the data
// address addr. It fails if another process holds the name.
func ListenLocal(addr string, cfg *tls.Config, keys *Keys) (*Listener, error) {
	ln, err := net.Listen("unix", localName(addr))
	if err != nil {
		return nil, errs.E(errs.IO, "local channel for %s: %w", addr, err)
	}
	return listen(ln, cfg, keys, true), nil
}

// trustedPeer reports whether the process at the other end of the unix
// connection c runs as root or as this process's user.
func trustedPeer(c net.Conn) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return errs.E(errs.Denied, "not a unix socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return cerr
	}
	if cred.Uid != 0 && int(cred.Uid) != os.Getuid() {
		return errs.E(errs.Denied, "local channel: process %d runs as uid %d", cred.Pid, cred.Uid)
	}
	return nil
}

// leaveTLS ends TLS on tc after its handshake without closing the
// connection under it. The client sends close_notify first; the server
// answers with its own only after reading it; the client, once it has read
// that, sends one byte in the clear (localReady), and the server sends
// nothing before it has read that byte. So neither side's TLS layer can
// have read ahead into what follows (a TLS layer reads what has arrived,
// not one record at a time).
func leaveTLS(tc *tls.Conn, client bool) error {
	var one [1]byte
	drain := func() error {
		n, err := tc.Read(one[:])
		if n > 0 {
			return errs.E(errs.Invalid, "local channel: data before close_notify")
		}
		if !errors.Is(err, io.EOF) {
			return err
		}
		return nil
	}
	if client {
		if err := tc.CloseWrite(); err != nil {
			return err
		}
		if err := drain(); err != nil {
			return err
		}
		// CloseWrite set a write deadline in the past on the socket.
		tc.NetConn().SetWriteDeadline(time.Time{})
		_, err := tc.NetConn().Write([]byte{localReady})
		return err
	}
	if err := drain(); err != nil {
		return err
	}
	if err := tc.CloseWrite(); err != nil {
		return err
	}
	var b [1]byte
	if _, err := io.ReadFull(tc.NetConn(), b[:]); err != nil {
		return err
	}
	if b[0] != localReady {
		return errs.E(errs.Invalid, "local channel: bad byte after close_notify")
	}
	return nil
}

// localReady is the client's byte that ends the local channel's set-up.
const localReady = 'R'

// serverLocal is the server's side of a local channel's set-up, on nc
// accepted by the listener; it returns the connection to use.
func (l *Listener) serverLocal(nc net.Conn) (*Conn, error) {
	if err := trustedPeer(nc); err != nil {
		return nil, err
	}
	nc.SetDeadline(time.Now().Add(HandshakeTimeout))
	tc := tls.Server(nc, l.cfg)
	if err := tc.Handshake(); err != nil {
		return nil, err
	}
	if err := leaveTLS(tc, false); err != nil {
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	return &Conn{Conn: nc, role: l.keys.RoleOf(tc.ConnectionState())}, nil
}

// dialLocal sets up the local channel of the daemon serving addr, if it
// has one this process may trust.
func dialLocal(ctx context.Context, addr string, cfg *tls.Config) (net.Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", localName(addr))
	if err != nil {
		return nil, err
	}
	if err := trustedPeer(nc); err != nil {
		nc.Close()
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	} else {
		nc.SetDeadline(time.Now().Add(HandshakeTimeout))
	}
	tc := tls.Client(nc, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, err
	}
	if err := leaveTLS(tc, true); err != nil {
		nc.Close()
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	return nc, nil
}
