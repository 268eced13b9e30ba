package auth

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/errs"
)

// fakeAddr is a data address nobody listens on, naming a local channel of
// its own.
func fakeAddr() string {
	var b [6]byte
	rand.Read(b[:])
	return "local-test-" + hex.EncodeToString(b[:]) + ":1"
}

// serveLocal runs the local channel of addr with keys ks, echoing what
// each connection sends after a first line naming its role. It returns
// what the listener refused.
func serveLocal(t *testing.T, ks *Keys, addr string) func() []error {
	t.Helper()
	cfg, err := ks.ServerConfig(RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	l, err := ListenLocal(addr, cfg, ks)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var refused []error
	l.OnRefused = func(_ string, err error, _ int) { mu.Lock(); refused = append(refused, err); mu.Unlock() }
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, RoleOf(c).String()+"\n")
				io.Copy(c, c)
			}()
		}
	}()
	return func() []error { mu.Lock(); defer mu.Unlock(); return append([]error(nil), refused...) }
}

// TestLocalChannel: a client on the daemon's machine is authenticated by
// the handshake, then talks in the clear over the unix socket, with no
// byte of what follows lost to the TLS layer; another cluster's key is
// refused.
func TestLocalChannel(t *testing.T) {
	k := mustKey(t)
	ks, _ := Parse(File(k))
	addr := fakeAddr()
	serveLocal(t, ks, addr)

	for _, as := range []Role{RoleClient, RolePeer} {
		d, err := ks.NewDialer(as, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		d.Local = true
		c, err := d.DialContext(context.Background(), addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := c.(*net.UnixConn); !ok {
			t.Fatalf("dialled a %T, want the unix socket in the clear", c)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		line, err := br.ReadString('\n')
		if err != nil || strings.TrimSpace(line) != as.String() {
			t.Fatalf("role seen %q (%v), want %s", line, err, as)
		}
		// 4 MiB each way, written while read, as frames are.
		want := make([]byte, 4<<20)
		rand.Read(want)
		go c.Write(want)
		got := make([]byte, len(want))
		if _, err := io.ReadFull(br, got); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("echo: %v, equal %v", err, bytes.Equal(got, want))
		}
		c.Close()
	}

	// Another cluster's key: refused on the local channel, and the
	// fall-back to the (absent) data port fails too.
	other, _ := Parse(File(mustKey(t)))
	if _, err := dialLocal(context.Background(), addr, mustDialConfig(t, other)); err == nil {
		t.Fatal("another cluster's key was let in on the local channel")
	}
	d, _ := other.NewDialer(RoleClient, 2*time.Second)
	d.Local = true
	if c, err := d.DialContext(context.Background(), addr); err == nil {
		c.Close()
		t.Fatal("another cluster's key connected")
	}
	// No local channel under that name: TLS over TCP is used.
	tcp := serve(t, ks, RoleClient)
	d, _ = ks.NewDialer(RoleClient, 5*time.Second)
	d.Local = true
	if c, err := d.DialContext(context.Background(), tcp); err != nil {
		t.Fatal(err)
	} else {
		if _, ok := c.(*net.UnixConn); ok {
			t.Fatal("a unix socket for an address with no local channel")
		}
		c.Close()
	}
}

func mustDialConfig(t *testing.T, ks *Keys) *tls.Config {
	t.Helper()
	cfg, err := ks.dialConfig(RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// The helper process of TestLocalChannelOtherUser: it runs as another user
// and either dials a local channel or serves one.
func init() {
	what, addr, ok := strings.Cut(os.Getenv("SHEEP_LOCAL_HELPER"), " ")
	if !ok {
		return
	}
	ks, err := Parse([]byte(os.Getenv("SHEEP_LOCAL_KEY")))
	if err != nil {
		fmt.Println("key:", err)
		os.Exit(1)
	}
	switch what {
	case "dial":
		cfg, _ := ks.dialConfig(RoleClient)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := dialLocal(ctx, addr, cfg)
		if err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			_, err = bufio.NewReader(c).ReadString('\n')
		}
		fmt.Println("dial:", err)
	case "serve":
		cfg, _ := ks.ServerConfig(RoleClient)
		l, err := ListenLocal(addr, cfg, ks)
		if err != nil {
			fmt.Println("listen:", err)
			os.Exit(1)
		}
		fmt.Println("ready")
		for {
			c, err := l.Accept()
			if err != nil {
				os.Exit(0)
			}
			io.WriteString(c, "served\n")
		}
	}
	os.Exit(0)
}

// TestLocalChannelOtherUser: a process of another user can neither use a
// daemon's local channel nor pose as one.
func TestLocalChannelOtherUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root, to run a helper as another user")
	}
	k := mustKey(t)
	ks, _ := Parse(File(k))
	// The test binary, where that user may run it.
	dir, err := os.MkdirTemp("", "sheep-local-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bin, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	exe := dir + "/auth.test"
	if err := os.WriteFile(exe, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	helper := func(what, addr string) *exec.Cmd {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), "SHEEP_LOCAL_HELPER="+what+" "+addr, "SHEEP_LOCAL_KEY="+string(File(k)))
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		return cmd
	}

	// Another user dials the daemon's channel: refused before any TLS.
	addr := fakeAddr()
	refused := serveLocal(t, ks, addr)
	out, err := helper("dial", addr).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "dial: ") || strings.TrimSpace(string(out)) == "dial: <nil>" {
		t.Fatalf("another user's dial: %s (%v)", out, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(refused()) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if r := refused(); len(r) == 0 || !errs.Is(r[0], errs.Denied) || !strings.Contains(r[0].Error(), "uid 65534") {
		t.Fatalf("refusals logged: %v, want the other user's uid", r)
	}

	// Another user holds the name: a client does not trust it.
	addr = fakeAddr()
	cmd := helper("serve", addr)
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); line != "ready\n" {
		t.Fatalf("helper: %q", line)
	}
	_, err = dialLocal(context.Background(), addr, mustDialConfig(t, ks))
	if !errs.Is(err, errs.Denied) {
		t.Fatalf("dial to another user's socket: %v, want denied", err)
	}
}
