package auth

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

type countWrites struct {
	net.Conn
	n *atomic.Int32
}

func (c countWrites) Write(b []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(b)
}

// TestTLSWriteGoesOutWhole: a 1 MiB Write of a TLS connection (64
// records) leaves in a few write(2)s, not one per record, both ways, and
// arrives intact; a write after the other side closed fails, and so do
// all after it.
func TestTLSWriteGoesOutWhole(t *testing.T) {
	ks, l := tlsListener(t)
	const size = 1 << 20
	var served atomic.Int32
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		tc := c.(*Conn).Conn.(*tlsConn)
		tc.raw.Conn = countWrites{tc.raw.Conn, &served}
		buf := make([]byte, size)
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		c.Write(buf) // echo
	}()
	c := tlsDial(t, ks, l)
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var sent atomic.Int32
	tc := c.(*tlsConn)
	tc.raw.Conn = countWrites{tc.raw.Conn, &sent}
	data := make([]byte, size)
	rand.Read(data)
	if n, err := c.Write(data); n != size || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	got := make([]byte, size)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read the echo: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("the echo differs from what was sent")
	}
	t.Logf("1 MiB went out in %d writes and came back in %d", sent.Load(), served.Load())
	if sent.Load() > 8 || served.Load() > 8 {
		t.Fatalf("1 MiB went out in %d writes and came back in %d: want at most 8 each", sent.Load(), served.Load())
	}

	// The server has closed: writes fail, sooner or later, and then always.
	var first error
	for i := 0; i < 100 && first == nil; i++ {
		_, first = c.Write(data[:4096])
		time.Sleep(time.Millisecond)
	}
	if first == nil {
		t.Fatal("writes to a closed connection kept succeeding")
	}
	if _, err := c.Write(data[:10]); err == nil {
		t.Fatalf("a write after a failed one (%v) succeeded", first)
	}
}

// TestCloseEndsBlockedCorkedWrite: Close of a connection whose Write is
// blocked sending its kept records (the peer does not read) ends that
// Write at once, as Go's TLS does for a Write blocked inside it. Before,
// TLS's Close sent its close_notify alert first, which waited behind the
// blocked write until the 5 s write deadline TLS sets for it: Close and
// the Write took 5 s. The bound below is that deadline's, not a speed.
func TestCloseEndsBlockedCorkedWrite(t *testing.T) {
	ks, l := tlsListener(t)
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(accepted)
			return
		}
		// Completes the handshake, then never reads again.
		c.(*Conn).Conn.(*tlsConn).Handshake()
		accepted <- c
	}()
	c := tlsDial(t, ks, l)
	peer := <-accepted
	if peer == nil {
		t.Fatal("no connection accepted")
	}
	defer peer.Close()
	tc := c.(*tlsConn)
	_ = tc.raw.Conn.(*net.TCPConn).SetWriteBuffer(32 << 10)
	buf := make([]byte, 100<<10) // several records, fewer than corkMax: sent at uncork
	var inWrite atomic.Int64     // when the Write under way began (ns), 0: none
	done := make(chan error, 1)
	go func() {
		for {
			inWrite.Store(time.Now().UnixNano())
			_, err := c.Write(buf)
			inWrite.Store(0)
			if err != nil {
				done <- err
				return
			}
		}
	}()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if s := inWrite.Load(); s != 0 && time.Since(time.Unix(0, s)) > 300*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the writer never blocked")
		}
	}
	start := time.Now()
	go c.Close()
	select {
	case err := <-done:
		t.Logf("the blocked Write ended %v after Close began: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(4 * time.Second):
		t.Fatal("the blocked Write did not end within 4 s of Close: Close waited for TLS's 5 s alert deadline")
	}
}

// tlsListener returns a key set and a TLS listener of it on loopback
// (closed when the test ends).
func tlsListener(t *testing.T) (*Keys, *Listener) {
	t.Helper()
	ks := New(mustKey(t))
	cfg, err := ks.ServerConfig(RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := Listen(ln, cfg, ks)
	t.Cleanup(func() { l.Close() })
	return ks, l
}

// tlsDial dials l as a client of ks.
func tlsDial(t *testing.T, ks *Keys, l *Listener) net.Conn {
	t.Helper()
	d, err := ks.NewDialer(RoleClient, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.DialContext(context.Background(), l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return c
}
