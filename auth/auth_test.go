package auth

import (
	"context"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/errs"
)

func mustKey(t *testing.T) *Key {
	t.Helper()
	k, err := Generate()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestKeyFileRoundTrip: a key file reads back as the same keys, a client
// key keeps the fingerprint of its cluster key, and damaged files are
// refused with a clear error.
func TestKeyFileRoundTrip(t *testing.T) {
	k1, k2 := mustKey(t), mustKey(t)
	ks, err := Parse(File(k1, k2))
	if err != nil {
		t.Fatal(err)
	}
	if len(ks.All()) != 2 || ks.Current().ID() != k1.ID() || ks.All()[1].ID() != k2.ID() || !ks.IsCluster() {
		t.Fatalf("read back %d keys, current %s, want %s first", len(ks.All()), ks.Current().ID(), k1.ID())
	}
	ck, err := Parse(File(k1.Client()))
	if err != nil {
		t.Fatal(err)
	}
	if ck.IsCluster() || ck.Current().ID() != k1.ID() || len(ck.Gossip()) != 0 {
		t.Fatalf("client key: cluster %v, ID %s (want %s), gossip keys %d", ck.IsCluster(), ck.Current().ID(), k1.ID(), len(ck.Gossip()))
	}
	if strings.Contains(string(File(k1.Client())), k1.Line()[len(clusterPrefix):]) {
		t.Fatal("the client key file contains the cluster secret")
	}
	for _, bad := range []string{"", "# nothing\n", "cluster-key: abc\n", "client-key: " + strings.Repeat("A", 20) + "\n", "ssh-rsa AAAA\n"} {
		if _, err := Parse([]byte(bad)); !errs.Is(err, errs.Invalid) {
			t.Errorf("Parse(%q) = %v, want invalid", bad, err)
		}
	}
}

// serve runs a Listener with keys ks admitting role min, answering each
// connection's first line with its role.
func serve(t *testing.T, ks *Keys, min Role) string {
	t.Helper()
	cfg, err := ks.ServerConfig(min)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := Listen(raw, cfg, ks)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 1)
				if _, err := c.Read(buf); err == nil {
					io.WriteString(c, RoleOf(c).String())
				}
			}()
		}
	}()
	return raw.Addr().String()
}

// roleVia connects to addr with keys ks as role as and returns the role
// the server saw, or the error.
func roleVia(ks *Keys, addr string, as Role) (string, error) {
	d, err := ks.NewDialer(as, 5*time.Second)
	if err != nil {
		return "", err
	}
	c, err := d.DialContext(context.Background(), addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte{1}); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// TestRoles: peers and clients of a cluster are told apart, a client key
// cannot pose as a peer, a listener for peers refuses clients, and
// another cluster's key gets nowhere, in either direction.
func TestRoles(t *testing.T) {
	k := mustKey(t)
	cluster := New(k)
	client := New(k.Client())
	other := New(mustKey(t))
	addr := serve(t, cluster, RoleClient)
	for _, c := range []struct {
		keys *Keys
		as   Role
		want string
	}{
		{cluster, RolePeer, "peer"},
		{cluster, RoleClient, "client"},
		{client, RoleClient, "client"},
	} {
		got, err := roleVia(c.keys, addr, c.as)
		if err != nil || got != c.want {
			t.Errorf("as %v: server saw %q (%v), want %q", c.as, got, err, c.want)
		}
	}
	if _, err := roleVia(client, addr, RolePeer); !errs.Is(err, errs.Denied) {
		t.Errorf("a client key posing as a peer: %v, want denied", err)
	}
	if got, err := roleVia(other, addr, RoleClient); err == nil {
		t.Errorf("another cluster's key connected (server saw %q)", got)
	} else if !errs.Is(err, errs.Denied) {
		t.Errorf("another cluster's key: %v, want denied (the daemon's identity does not match)", err)
	}
	peers := serve(t, cluster, RolePeer)
	if got, err := roleVia(cluster, peers, RoleClient); err == nil {
		t.Errorf("a client connected to a peers-only listener (server saw %q)", got)
	}
	// A daemon holding another key: the cluster's client refuses it.
	rogue := serve(t, other, RoleNone)
	if _, err := roleVia(cluster, rogue, RoleClient); !errs.Is(err, errs.Denied) {
		t.Errorf("connecting to a daemon of another key: %v, want denied", err)
	}
}

// TestListenerNotHeldUp: connections that never finish a handshake, or
// speak something else than TLS, hold up nobody: a good client connects
// meanwhile, and the silent ones are dropped.
func TestListenerNotHeldUp(t *testing.T) {
	k := New(mustKey(t))
	addr := serve(t, k, RoleClient)
	var silent []net.Conn
	// More than one address may hold in handshakes, from another
	// address (127.0.0.2 is loopback too).
	flood := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	for range 3 * maxHandshakesPerIP {
		c, err := flood.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, c)
	}
	garbage, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(garbage, "GET / HTTP/1.0\r\n\r\n")
	if got, err := roleVia(k, addr, RoleClient); err != nil || got != "client" {
		t.Fatalf("with %d silent connections open from another address: %q, %v", len(silent), got, err)
	}
	garbage.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(garbage); err != nil {
		t.Errorf("a connection speaking HTTP was not dropped: %v", err)
	}
	for _, c := range silent {
		c.Close()
	}
}

// TestRoll: through a key roll (servers holding old, then old and new,
// then using new, then new only), a side that holds both keys, in either
// order, gets in at every step, answering with the key the daemon
// presents; a side with only the old key is out once the daemon uses the
// new one; Reload picks up a key file changed on disk.
func TestRoll(t *testing.T) {
	old, nu := mustKey(t), mustKey(t)
	server := New(old)
	addr := serve(t, server, RoleClient)
	both := New(old.Client(), nu.Client())
	bothRev := New(nu.Client(), old.Client())
	oldOnly := New(old.Client())
	for _, st := range []struct {
		name    string
		keys    []*Key
		oldOnly bool
	}{
		{"old", []*Key{old}, true},
		{"old, new accepted", []*Key{old, nu}, true},
		{"new in use, old accepted", []*Key{nu, old}, false},
		{"new only", []*Key{nu}, false},
	} {
		server.Set(st.keys)
		for name, ks := range map[string]*Keys{"old+new": both, "new+old": bothRev} {
			if got, err := roleVia(ks, addr, RoleClient); err != nil || got != "client" {
				t.Errorf("server %s, client holding %s: %q, %v", st.name, name, got, err)
			}
		}
		got, err := roleVia(oldOnly, addr, RoleClient)
		if ok := err == nil && got == "client"; ok != st.oldOnly {
			t.Errorf("server %s, client holding the old key only: %q, %v", st.name, got, err)
		}
	}

	p := t.TempDir() + "/key"
	if err := osWriteFile(p, File(old.Client())); err != nil {
		t.Fatal(err)
	}
	ks, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := roleVia(ks, addr, RoleClient); err == nil {
		t.Fatal("the old key got in after the roll")
	}
	time.Sleep(reloadEvery + 10*time.Millisecond)
	if err := osWriteFile(p, File(nu.Client())); err != nil {
		t.Fatal(err)
	}
	if got, err := roleVia(ks, addr, RoleClient); err != nil || got != "client" {
		t.Fatalf("after the key file was changed: %q, %v", got, err)
	}
}

func osWriteFile(p string, b []byte) error { return os.WriteFile(p, b, 0o600) }
