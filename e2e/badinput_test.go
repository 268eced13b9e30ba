package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/auth"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/proto"
)

// wireConn speaks the frame protocol to a daemon, building frames by hand.
type wireConn struct {
	t     *testing.T
	nc    net.Conn
	reqID uint64
}

func dialWire(t *testing.T, addr string) *wireConn {
	t.Helper()
	return dialWireAs(t, addr, auth.RoleClient)
}

// dialWireAs is dialWire with the test key's identity of role as.
func dialWireAs(t *testing.T, addr string, as auth.Role) *wireConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := keyDial(as)(ctx, addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	w := &wireConn{t: t, nc: nc}
	t.Cleanup(func() { nc.Close() })
	return w
}

// frame encodes one request frame: header, aux word, payload.
func frame(h proto.Header, aux uint64, data []byte) []byte {
	h.DLen = uint32(len(data))
	b := make([]byte, proto.HeaderSize+8, proto.HeaderSize+8+len(data))
	proto.PutHeader(b, &h)
	binary.BigEndian.PutUint64(b[proto.HeaderSize:], aux)
	return append(b, data...)
}

// call sends a request and returns its response.
func (w *wireConn) call(h proto.Header, aux uint64, data []byte) *proto.Msg {
	w.t.Helper()
	w.reqID++
	h.ReqID = w.reqID
	w.nc.SetDeadline(time.Now().Add(cmdTimeout))
	if _, err := w.nc.Write(frame(h, aux, data)); err != nil {
		w.t.Fatalf("send %v: %v", h.Op, err)
	}
	for {
		var m proto.Msg
		if err := proto.ReadMsg(w.nc, &m, nil, nil); err != nil {
			w.t.Fatalf("no answer to %v: %v", h.Op, err)
		}
		if m.ReqID == h.ReqID {
			if m.Op != h.Op|proto.RespBit {
				w.t.Fatalf("answer to %v has op %v", h.Op, m.Op)
			}
			return &m
		}
	}
}

// admin sends an admin request and returns the response.
func (w *wireConn) admin(req proto.AdminRequest) *proto.Msg {
	w.t.Helper()
	b, err := json.Marshal(req)
	if err != nil {
		w.t.Fatal(err)
	}
	return w.call(proto.Header{Op: proto.OpAdmin}, 0, b)
}

// wantErr checks that a response is an error frame of one of the kinds.
func wantErr(t *testing.T, what string, m *proto.Msg, kinds ...errs.Kind) {
	t.Helper()
	if m.Flags&proto.FlagError == 0 {
		t.Errorf("%s: answered success (%d bytes), want an error", what, len(m.Data))
		return
	}
	for _, k := range kinds {
		if m.Kind == k {
			return
		}
	}
	t.Errorf("%s: error kind %v (%q), want one of %v", what, m.Kind, m.Data, kinds)
}

// lookupWire looks VDI or snapshot name up on w.
func lookupWire(t *testing.T, w *wireConn, name string) proto.VDIInfo {
	t.Helper()
	m := w.admin(proto.AdminRequest{Cmd: proto.AdminVDILookup, Name: name})
	wantOK(t, "lookup "+name, m)
	var v proto.VDIInfo
	if err := json.Unmarshal(m.Data, &v); err != nil {
		t.Fatalf("lookup %s: %v", name, err)
	}
	return v
}

func wantOK(t *testing.T, what string, m *proto.Msg) {
	t.Helper()
	if m.Flags&proto.FlagError != 0 {
		t.Fatalf("%s: error %v: %s", what, m.Kind, m.Data)
	}
}

// sendJunk writes b to addr, half-closes, and checks that the daemon
// answers with at most error frames and then closes the connection
// (rather than hanging or crashing).
// The connection is authenticated as a peer, so that the junk reaches
// every handler; junk from a connection without the key never gets past
// the TLS handshake (sendJunkUnauthenticated).
func sendJunk(t *testing.T, addr, what string, b []byte, allowOK bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := keyDial(auth.RolePeer)(ctx, addr)
	if err != nil {
		t.Fatalf("%s: dial %s: %v", what, addr, err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := nc.Write(b); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Logf("%s: write: %v (the daemon may have closed the connection already)", what, err)
	}
	nc.(interface{ CloseWrite() error }).CloseWrite()
	for {
		var m proto.Msg
		err := proto.ReadMsg(nc, &m, nil, nil)
		if err == nil {
			if m.Flags&proto.FlagError == 0 && !allowOK {
				t.Errorf("%s: the daemon answered junk with a success frame %v", what, m.Op)
			}
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Errorf("%s: the daemon neither answered nor closed the connection", what)
		}
		return // EOF or reset: the daemon dropped the connection
	}
}

// sendJunkUnauthenticated writes b to addr over plain TCP and checks that
// the daemon drops the connection without answering a frame.
func sendJunkUnauthenticated(t *testing.T, addr, what string, b []byte) {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("%s: dial %s: %v", what, addr, err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	nc.Write(b)
	nc.(*net.TCPConn).CloseWrite()
	var m proto.Msg
	err = proto.ReadMsg(nc, &m, nil, nil)
	var ne net.Error
	switch {
	case err == nil:
		t.Errorf("%s: the daemon answered a connection without the key with a frame %v", what, m.Op)
	case errors.As(err, &ne) && ne.Timeout():
		t.Errorf("%s: the daemon neither answered nor closed the connection", what)
	}
}

// TestBadInput: bad names, sizes, offsets and frames get clear errors and
// change nothing; junk on the daemons' ports does not crash them; a second
// format is refused; a write past the largest VDI size fails with EFBIG.
func TestBadInput(t *testing.T) {
	parallel(t)
	c := NewCluster(t, 3, 3)
	m := c.Mount()

	// A VDI with known contents, checked after every kind of bad input.
	good := m.VDI("good")
	run(t, quickTimeout, "truncate", "-s", "16M", good)
	src := filepath.Join(t.TempDir(), "random")
	goodSum := writeRandomFile(t, src, 8*miB)
	shell(t, cmdTimeout, fmt.Sprintf("dd if=%s of=%s bs=1M conv=fsync,notrunc status=none", q(src), q(good)))
	formatTime := c.Info().FormatTime
	checkIntact := func(when string) {
		t.Helper()
		for _, n := range c.Nodes {
			if !n.Running() {
				t.Fatalf("%s: %s exited: %v", when, n.ID, n.proc.err)
			}
		}
		ci := c.Info()
		if ci.Status != "ok" || ci.Copies != 3 || ci.FormatTime != formatTime {
			t.Errorf("%s: cluster info %+v, want status ok, 3 copies, format time %d", when, ci, formatTime)
		}
		var names []string
		for _, v := range c.VDIs() {
			names = append(names, v.Name)
		}
		if len(names) != 2 || names[0] != "good" || names[1] != "wire" {
			t.Errorf("%s: VDIs %v, want [good wire]", when, names)
		}
		dropCaches(t)
		if st := statFile(t, good); st.Size != 16*miB {
			t.Errorf("%s: good is %d bytes, want %d", when, st.Size, 16*miB)
		}
		if got := sha256Range(t, good, 0, 8); got != goodSum {
			t.Errorf("%s: good's data changed", when)
		}
		readZeros(t, good, 8, 8)
	}
	if r := c.Sheep("vdi", "create", "wire", "8M"); r.Code != 0 {
		t.Fatalf("vdi create wire: %v", r)
	}

	// Bad names and sizes through the CLI.
	for _, tc := range []struct{ name, size, want string }{
		{"", "1G", "name"},
		{strings.Repeat("n", 300), "1G", "name"},
		{"a/b", "1G", "name"},
		{"..", "1G", "name"},
		{"big", "100P", "size"},
		{"neg", "-1G", "size"},
		{"unit", "12Q", "size"},
	} {
		r := c.Sheep("vdi", "create", "--", tc.name, tc.size)
		if r.Code == 0 || !strings.HasPrefix(r.Stderr, "sheep: ") || !strings.Contains(strings.ToLower(r.Stderr), tc.want) {
			t.Errorf("sheep vdi create %q %s: want a nonzero exit and an error about the %s, got %v", tc.name, tc.size, tc.want, r)
		}
	}
	// ... and through the mount.
	if r := runCmd(quickTimeout, nil, nil, "truncate", "-s", "1G", m.VDI(strings.Repeat("n", 300))); r.Code == 0 {
		t.Errorf("truncate created a VDI with a 300-byte name: %v", r)
	}
	if r := runCmd(quickTimeout, nil, nil, "truncate", "-s", "1G", m.VDI("-dash")); r.Code == 0 {
		t.Errorf("truncate created a VDI named -dash, which sheep vdi create refuses: %v", r)
	}
	checkIntact("after bad names and sizes")

	// Requests past the end, by hand-built frames.
	wire := c.VDI("wire")
	w := dialWire(t, c.Nodes[0].Addr())
	read := func(off uint64, n uint32) *proto.Msg {
		return w.call(proto.Header{Op: proto.OpVDIRead, ID: uint64(wire.ID), Offset: off, Length: n}, 0, nil)
	}
	write := func(off uint64, data []byte) *proto.Msg {
		return w.call(proto.Header{Op: proto.OpVDIWrite, ID: uint64(wire.ID), Offset: off}, 0, data)
	}
	size := wire.Size
	wantErr(t, "read at the end", read(size, 4096), errs.TooLarge, errs.Invalid)
	wantErr(t, "read across the end", read(size-4096, 8192), errs.TooLarge, errs.Invalid)
	wantErr(t, "read at offset 2^63", read(1<<63, 4096), errs.TooLarge, errs.Invalid)
	wantErr(t, "read of an unknown VDI", w.call(proto.Header{Op: proto.OpVDIRead, ID: 0xabcdef, Length: 4096}, 0, nil), errs.NotFound, errs.Invalid)
	wantErr(t, "read of VDI 0", w.call(proto.Header{Op: proto.OpVDIRead, ID: 0, Length: 4096}, 0, nil), errs.NotFound, errs.Invalid)
	wantErr(t, "write without the write lock", write(0, bytes.Repeat([]byte{1}, 4096)), errs.Busy)
	wantErr(t, "undecodable admin request", w.call(proto.Header{Op: proto.OpAdmin}, 0, []byte("{not json")), errs.Invalid)
	wantErr(t, "unknown admin command", w.admin(proto.AdminRequest{Cmd: "no.such.command"}), errs.Invalid)
	wantErr(t, "lock without a mount ID", w.admin(proto.AdminRequest{Cmd: proto.AdminVDILock, Name: "wire"}), errs.Invalid)
	// Snapshot, clone, rollback, backup and collector requests with bad
	// names, missing targets or ranges past the end.
	admin := func(cmd, name, tag string) *proto.Msg {
		return w.admin(proto.AdminRequest{Cmd: cmd, Name: name, Tag: tag})
	}
	wantErr(t, "snapshot with an empty tag", admin(proto.AdminVDISnapshot, "wire", ""), errs.Invalid)
	wantErr(t, "snapshot with a tag holding '@'", admin(proto.AdminVDISnapshot, "wire", "a@b"), errs.Invalid)
	wantErr(t, "snapshot with a 300-byte tag", admin(proto.AdminVDISnapshot, "wire", strings.Repeat("t", 300)), errs.Invalid)
	wantErr(t, "snapshot of a missing VDI", admin(proto.AdminVDISnapshot, "no-such-vdi", "t"), errs.NotFound)
	wantErr(t, "rollback to a missing snapshot", admin(proto.AdminVDIRollback, "wire", "no-such-tag"), errs.NotFound)
	wantErr(t, "delete of a missing snapshot", admin(proto.AdminSnapDelete, "wire", "no-such-tag"), errs.NotFound)
	wantErr(t, "lookup of NAME@ (no tag)", admin(proto.AdminVDILookup, "wire@", ""), errs.Invalid)
	wantErr(t, "clone of a VDI, not a snapshot", w.admin(proto.AdminRequest{Cmd: proto.AdminVDIClone, Source: "wire", Name: "c1"}), errs.Invalid)
	wantErr(t, "clone of a missing snapshot", w.admin(proto.AdminRequest{Cmd: proto.AdminVDIClone, Source: "wire@none", Name: "c1"}), errs.NotFound)
	wantErr(t, "owners past the end", w.admin(proto.AdminRequest{Cmd: proto.AdminVDIOwners, Name: "wire", Offset: 1 << 40, Count: 10}), errs.Invalid)
	wantErr(t, "owners of a missing snapshot", w.admin(proto.AdminRequest{Cmd: proto.AdminVDIOwners, Name: "wire@none", Count: 10}), errs.NotFound)
	wantOK(t, "a snapshot of wire", admin(proto.AdminVDISnapshot, "wire", "ok"))
	wantErr(t, "the same snapshot again", admin(proto.AdminVDISnapshot, "wire", "ok"), errs.Exists)
	wantErr(t, "a clone named like a VDI", w.admin(proto.AdminRequest{Cmd: proto.AdminVDIClone, Source: "wire@ok", Name: "wire"}), errs.Exists)
	wantErr(t, "a clone with a bad name", w.admin(proto.AdminRequest{Cmd: proto.AdminVDIClone, Source: "wire@ok", Name: "a/b"}), errs.Invalid)
	snap := lookupWire(t, w, "wire@ok")
	wantErr(t, "write to a snapshot", w.call(proto.Header{Op: proto.OpVDIWrite, ID: uint64(snap.ID)}, 0, []byte("x")), errs.ReadOnly, errs.Busy)
	wantOK(t, "delete the snapshot", admin(proto.AdminSnapDelete, "wire", "ok"))
	wantOK(t, "gc", admin(proto.AdminGC, "", ""))
	checkIntact("after bad snapshot requests")

	// Take the write lock on this connection, as sheepfs does.
	wantOK(t, "lock wire", w.admin(proto.AdminRequest{Cmd: proto.AdminVDILock, Name: "wire", Mount: "e2e-wire"}))
	pattern := bytes.Repeat([]byte{0x5a}, 4096)
	wantOK(t, "write inside the VDI", write(0, pattern))
	if r := read(0, 4096); r.Flags&proto.FlagError != 0 || !bytes.Equal(r.Data, pattern) {
		t.Errorf("read back of a write by hand-built frames: %v %q", r.Kind, r.Data[:min(len(r.Data), 16)])
	}
	wantErr(t, "write at the end", write(size, pattern), errs.TooLarge, errs.Invalid)
	wantErr(t, "write across the end", write(size-4096, bytes.Repeat([]byte{0xff}, 8192)), errs.TooLarge, errs.Invalid)
	wantErr(t, "write at offset 2^63", write(1<<63, pattern), errs.TooLarge, errs.Invalid)
	wantErr(t, "discard across the end", w.call(proto.Header{Op: proto.OpVDIDiscard, ID: uint64(wire.ID), Offset: size - 4096}, 8192, nil), errs.TooLarge, errs.Invalid)
	// The refused requests changed nothing.
	if r := read(size-4096, 4096); r.Flags&proto.FlagError != 0 || !bytes.Equal(r.Data, make([]byte, 4096)) {
		t.Errorf("the last 4 KiB of wire changed after refused writes past the end")
	}
	if r := read(0, 4096); r.Flags&proto.FlagError != 0 || !bytes.Equal(r.Data, pattern) {
		t.Errorf("the first 4 KiB of wire changed after refused requests")
	}
	if v := c.VDI("wire"); v.Size != size {
		t.Errorf("wire's size changed from %d to %d", size, v.Size)
	}
	// Closing the connection releases its lock.
	w.nc.Close()
	if !waitFor(30*time.Second, func() bool { return !c.VDI("wire").Locked }) {
		t.Errorf("the write lock taken by a connection outlived it")
	}

	// Junk on the data ports.
	hdr := func(mod func(b []byte)) []byte {
		b := frame(proto.Header{Op: proto.OpVDIRead, ID: uint64(wire.ID), Length: 4096, ReqID: 1}, 0, nil)
		mod(b)
		return b
	}
	junk := make([]byte, 64<<10)
	rand.Read(junk)
	cases := []struct {
		what    string
		b       []byte
		allowOK bool // a valid frame in front of the junk gets a real answer
	}{
		{what: "random bytes", b: junk},
		{what: "a truncated header", b: hdr(func([]byte) {})[:20]},
		{what: "a header without its aux word", b: hdr(func([]byte) {})[:proto.HeaderSize]},
		{what: "bad magic", b: hdr(func(b []byte) { b[0] = 'X' })},
		{what: "an unknown op", b: hdr(func(b []byte) { b[2] = 0x7f })},
		{what: "a response op", b: hdr(func(b []byte) { b[2] |= byte(proto.RespBit) })},
		{what: "reserved bits", b: hdr(func(b []byte) { b[6] = 1 })},
		{what: "unknown flags", b: hdr(func(b []byte) { b[4] = 0x80 })},
		{what: "an unknown error kind", b: hdr(func(b []byte) { b[3] = 0xee })},
		{what: "dlen 4 GiB", b: hdr(func(b []byte) { binary.BigEndian.PutUint32(b[44:], 0xffffffff) })},
		{what: "length 4 GiB", b: hdr(func(b []byte) { binary.BigEndian.PutUint32(b[40:], 0xffffffff) })},
		{what: "a payload cut short", b: append(hdr(func(b []byte) { binary.BigEndian.PutUint32(b[44:], proto.MaxPayload) }), junk[:100]...)},
		{what: "a valid frame then junk", b: append(hdr(func([]byte) {}), junk[:1000]...), allowOK: true},
		{what: "garbage JSON admin", b: frame(proto.Header{Op: proto.OpAdmin, ReqID: 7}, 0, junk[:5000])},
		{what: "a replica write with a bad object ID", b: frame(proto.Header{Op: proto.OpWriteObj, ReqID: 8, ID: 0x7f00000000000001}, 0, junk[:100])},
		{what: "a replica read past the object", b: frame(proto.Header{Op: proto.OpReadObj, ReqID: 9, ID: 1, Offset: 1 << 40, Length: 4096}, 0, nil)},
		{what: "a forwarded cluster command that is junk", b: frame(proto.Header{Op: proto.OpApply, ReqID: 10}, 0, junk[:300])},
	}
	for _, n := range c.Nodes {
		for _, tc := range cases {
			sendJunk(t, n.Addr(), tc.what+" to "+n.ID, tc.b, tc.allowOK)
		}
	}
	// Junk on the gossip (TCP and UDP) and raft ports.
	for _, n := range c.Nodes {
		for _, p := range []int{n.Port + 1, n.Port + 2} {
			addr := "127.0.0.1:" + strconv.Itoa(p)
			if nc, err := net.DialTimeout("tcp", addr, 10*time.Second); err == nil {
				nc.Write(junk)
				nc.Close()
			}
		}
		if uc, err := net.Dial("udp", "127.0.0.1:"+strconv.Itoa(n.Port+1)); err == nil {
			uc.Write(junk[:1400])
			uc.Close()
		}
	}
	// The same junk without the key: the daemon drops the connection
	// at the handshake and answers nothing.
	for _, n := range c.Nodes {
		for _, tc := range cases {
			sendJunkUnauthenticated(t, n.Addr(), tc.what+" without a key to "+n.ID, tc.b)
		}
	}
	checkIntact("after junk frames")

	// A second format is refused and changes nothing.
	r := c.Sheep("cluster", "format", "--copies", "2")
	if r.Code == 0 || !strings.Contains(r.Stderr, "already formatted") {
		t.Errorf("second cluster format: want a failure saying \"already formatted\", got %v", r)
	}
	checkIntact("after a second format")

	// Writes past the largest VDI size (64 TiB) fail with EFBIG. (With the
	// kernel's writeback cache the error may only show at fsync: dd
	// fsyncs.)
	r = runCmd(cmdTimeout, nil, nil, "dd", "if=/dev/zero", "of="+good, "bs=4k", "count=1",
		"seek="+strconv.FormatInt((64<<40)/4096, 10), "conv=notrunc,fsync")
	if r.Code == 0 || !strings.Contains(r.Stderr, "File too large") {
		t.Errorf("dd past 64 TiB: want \"File too large\", got %v", r)
	}
	// The kernel had grown the file for the cached write; the mount shows
	// the size the cluster has again (TestWritePastMaxSize has more).
	if st := statFile(t, good); st.Size != 16*miB {
		t.Errorf("after dd past 64 TiB, good shows %d bytes, want %d", st.Size, 16*miB)
	}
	if r := runCmd(quickTimeout, nil, nil, "truncate", "-s", "65T", good); r.Code == 0 {
		t.Errorf("truncate -s 65T succeeded")
	}
	checkIntact("after writes past the maximum size")
}
