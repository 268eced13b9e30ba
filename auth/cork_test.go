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
	defer l.Close()
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
	d, err := ks.NewDialer(RoleClient, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.DialContext(context.Background(), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
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
