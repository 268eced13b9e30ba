package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sheepfs/sheepfs/auth"
	"github.com/sheepfs/sheepfs/client"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
)

// sheepWithKey runs the sheep CLI against addr with the key file key
// ("" for none at all).
func sheepWithKey(key, addr string, args ...string) Result {
	env := []string{auth.EnvFile + "=" + key}
	if key == "" {
		env = []string{auth.EnvFile + "=" + filepath.Join(os.TempDir(), "no-such-sheep-key")}
	}
	return runCmd(quickTimeout, env, nil, sheepBin, append([]string{"--addr", addr, "--timeout", "5s"}, args...)...)
}

func writeKey(t *testing.T, keys ...*auth.Key) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(p, auth.File(keys...), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTrust: without the cluster key nothing works and nothing changes;
// a client connection cannot do what only nodes do; a lock is released
// only by its holder (or by force with the cluster key); a daemon with
// another key is not admitted and is given no data; the data port speaks
// TLS 1.3.
func TestTrust(t *testing.T) {
	parallel(t)
	requireEnv(t, "openssl")
	c := newCluster(t, 3, 3, freeBase(t, 4), nil)
	addr := c.Nodes[0].Addr()
	other, err := auth.Generate()
	if err != nil {
		t.Fatal(err)
	}
	wrong := writeKey(t, other)
	clientKey := writeKey(t, testKeys.Current().Client())

	// The CLI without a key, or with another cluster's: a clear error,
	// and nothing created.
	if r := sheepWithKey("", addr, "vdi", "create", "nokey", "1G"); r.Code == 0 || !strings.Contains(r.Stderr, "no cluster key") {
		t.Errorf("vdi create without a key: %v, want a failure saying there is no cluster key", r)
	}
	start := time.Now()
	if r := sheepWithKey(wrong, addr, "vdi", "create", "wrongkey", "1G"); r.Code == 0 || !strings.Contains(r.Stderr, "not authorized") {
		t.Errorf("vdi create with another cluster's key: %v, want a failure saying not authorized", r)
	}
	t.Logf("refused with another cluster's key in %v", time.Since(start).Round(time.Millisecond))
	for _, v := range c.VDIs() {
		if v.Name == "nokey" || v.Name == "wrongkey" {
			t.Errorf("VDI %s was created without the key", v.Name)
		}
	}

	// openssl sees TLS 1.3 on the data port, and the handshake without a
	// certificate of this cluster fails.
	r := runCmd(quickTimeout, nil, strings.NewReader(""), "openssl", "s_client", "-connect", addr, "-brief")
	if !strings.Contains(r.Stdout+r.Stderr, "TLSv1.3") {
		t.Errorf("openssl s_client does not see TLS 1.3 on the data port: %v", r)
	}

	// A forged raft RPC (once: a RequestVote that moved the leader's term
	// from 3 to 1003) does not get through without the key.
	tr, err := raft.NewTCPTransport("127.0.0.1:0", nil, 1, 5*time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	raftAddr := raft.ServerAddress(fmt.Sprintf("127.0.0.1:%d", c.Nodes[0].Port+2))
	var vote raft.RequestVoteResponse
	if err := tr.RequestVote("node0", raftAddr, &raft.RequestVoteRequest{RPCHeader: raft.RPCHeader{Addr: []byte("evil")}, Term: 1003, LastLogIndex: 1 << 40, LastLogTerm: 1003}, &vote); err == nil {
		t.Errorf("a RequestVote without the key was answered: %+v", vote)
	}
	c.WaitOK()

	// A client key works for client things, not for a node's disks or a
	// forced unlock.
	if r := sheepWithKey(clientKey, addr, "vdi", "create", "v", "64M"); r.Code != 0 {
		t.Fatalf("vdi create with the client key: %v", r)
	}
	if r := sheepWithKey(clientKey, addr, "node", "md", "plug", filepath.Join(t.TempDir(), "evil")); r.Code == 0 || !strings.Contains(r.Stderr, "not authorized") {
		t.Errorf("md plug with a client key: %v, want not authorized", r)
	}

	// Replica operations and cluster commands on a client connection are
	// refused, and change nothing.
	ctx := testCtx(t)
	holder := client.New([]string{addr}, client.Options{Dial: keyDial(auth.RoleClient), RetryFor: 10 * time.Second, Mount: "mholder"})
	defer holder.Close()
	v, err := holder.Lock(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	data := []byte(strings.Repeat("the holder's data ", 200))
	if err := holder.WriteAt(ctx, v.ID, data, 0, true); err != nil {
		t.Fatal(err)
	}
	w := dialWire(t, addr)
	oid := uint64(v.ID) << 32
	wantErr(t, "write_obj on a client connection", w.call(proto.Header{Op: proto.OpWriteObj, ID: oid, Epoch: ids.Epoch(c.Info().Epoch)}, 1<<62, []byte("intruder")), errs.Denied)
	wantErr(t, "remove_obj on a client connection", w.call(proto.Header{Op: proto.OpRemoveObj, ID: oid, Epoch: ids.Epoch(c.Info().Epoch)}, 0, nil), errs.Denied)
	evil, _ := json.Marshal(map[string]any{"op": "members", "members": []map[string]string{{"id": "evil", "addr": "127.0.0.1:1"}}})
	wantErr(t, "a members command on a client connection", w.call(proto.Header{Op: proto.OpApply}, 0, evil), errs.Denied)
	wantErr(t, "a forced unlock on a client connection", w.admin(proto.AdminRequest{Cmd: proto.AdminVDIUnlock, Name: "v", Force: true}), errs.Denied)
	// Not even with the cluster key does a command change membership.
	p := dialWireAs(t, addr, auth.RolePeer)
	wantErr(t, "a forwarded members command", p.call(proto.Header{Op: proto.OpApply}, 0, evil), errs.Invalid)
	var many []map[string]string
	for i := range 20000 {
		many = append(many, map[string]string{"id": fmt.Sprintf("fake%05d", i), "addr": "127.0.0.1:1"})
	}
	big, _ := json.Marshal(map[string]any{"op": "members", "members": many})
	wantErr(t, "a forwarded members command with 20,000 members", p.call(proto.Header{Op: proto.OpApply}, 0, big), errs.Invalid)

	// Nobody is shown the holder's mount ID (whoever knew it could take
	// the lock over): a lock under what is shown is refused.
	if r := sheepWithKey(clientKey, addr, "--json", "vdi", "list"); r.Code != 0 || strings.Contains(r.Stdout, "mholder") {
		t.Errorf("vdi list shows the holder's mount ID: %v", r)
	}
	shown := lookupWire(t, w, "v").Mount
	wantErr(t, "a lock under the mount shown for the holder", w.admin(proto.AdminRequest{Cmd: proto.AdminVDILock, Name: "v", Mount: shown}), errs.Busy)

	// Another client cannot release the holder's lock, even naming its
	// mount; the holder's writes go on.
	wantErr(t, "unlock by a non-holder", w.admin(proto.AdminRequest{Cmd: proto.AdminVDIUnlock, Name: "v", Mount: "mholder"}), errs.Denied)
	if r := sheepWithKey(keyFile, addr, "vdi", "unlock", "v"); r.Code == 0 {
		t.Errorf("sheep vdi unlock without --force succeeded: %v", r)
	}
	if err := holder.WriteAt(ctx, v.ID, data, 1<<20, true); err != nil {
		t.Errorf("the holder's write after others tried to unlock: %v", err)
	}
	got := make([]byte, len(data))
	if err := holder.ReadAt(ctx, v.ID, got, 0); err != nil || string(got) != string(data) {
		t.Errorf("the holder's data reads back %q... (%v)", got[:min(len(got), 40)], err)
	}
	for _, n := range c.Info().Nodes {
		if n.ID == "evil" || strings.HasPrefix(n.ID, "fake") {
			t.Errorf("a forged member %s is listed", n.ID)
		}
	}
	// The admin's forced unlock works, with the cluster key.
	if r := sheepWithKey(keyFile, addr, "vdi", "unlock", "--force", "v"); r.Code != 0 {
		t.Errorf("sheep vdi unlock --force: %v", r)
	}
	for _, vi := range c.VDIs() {
		if vi.Name == "v" && vi.Locked {
			t.Errorf("VDI v still locked after a forced unlock")
		}
	}

	// A daemon with another cluster's key is not admitted and holds no
	// object written afterwards.
	rogue := addNode(c, 3, "--key-file", wrong)
	m := c.Mount()
	run(t, quickTimeout, "truncate", "-s", "64M", m.VDI("after"))
	shell(t, cmdTimeout, fmt.Sprintf("dd if=/dev/urandom of=%s bs=1M count=32 conv=notrunc,fsync status=none", q(m.VDI("after"))))
	time.Sleep(3 * time.Second) // a few gossip and join rounds
	for _, n := range c.Info().Nodes {
		if n.ID == rogue.ID {
			t.Errorf("the daemon with another key is listed: %+v", n)
		}
	}
	if files := objectFilesIn(t, rogue.Dir); len(files) > 0 {
		t.Errorf("the daemon with another key holds %d objects", len(files))
	}
	if b, err := os.ReadFile(rogue.Log); err == nil && !strings.Contains(string(b), "another cluster key") {
		t.Errorf("the daemon with another key does not say why it cannot join; its log:\n%s", b)
	}
	c.WaitOK()
}

// TestBadSnapshotAtRestart: a cluster state snapshot that does not
// validate (a null VDI, as a forged install could leave) in a node's data
// directory is set aside when the node starts, and the node comes back as
// a member.
func TestBadSnapshotAtRestart(t *testing.T) {
	parallel(t)
	c := NewCluster(t, 3, 3)
	c.Sheep("vdi", "create", "v", "1G")
	c.Kill(2)
	store, err := raft.NewFileSnapshotStore(filepath.Join(c.Nodes[2].Dir, "cluster"), 2, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	sink, err := store.Create(raft.SnapshotVersionMax, 1<<40, 1<<20, raft.Configuration{}, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	sink.Write([]byte(`{"vdis":{"x":null},"snaps":{"y@t":null},"dead":{"3":null}}`))
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	c.Restart(2)
	if !waitFor(readyTimeout, func() bool {
		var nodes []NodeInfo
		r := c.SheepAt(c.Nodes[2].Addr(), "--json", "node", "list")
		return r.Code == 0 && json.Unmarshal([]byte(r.Stdout), &nodes) == nil && stateOf(nodes, "node2") == "up"
	}) {
		logTail(t, c.Nodes[2].Log, 30)
		t.Fatal("node2 does not come back up with a bad snapshot in its data directory")
	}
	b, _ := os.ReadFile(c.Nodes[2].Log)
	if !strings.Contains(string(b), "refused a saved cluster state snapshot") {
		t.Errorf("node2 does not say it set the bad snapshot aside")
	}
	if _, err := os.Stat(filepath.Join(c.Nodes[2].Dir, "cluster", "snapshots-rejected", sink.ID())); err != nil {
		t.Errorf("the bad snapshot is not in snapshots-rejected: %v", err)
	}
	var vdis []VDIInfo
	r := c.SheepAt(c.Nodes[2].Addr(), "--json", "vdi", "list")
	if json.Unmarshal([]byte(r.Stdout), &vdis) != nil || len(vdis) != 1 || vdis[0].Name != "v" {
		t.Errorf("node2 lists VDIs %s, want only v", r.Stdout)
	}
}

// TestKeyRotation: a new cluster key rolled through a running cluster
// while fio writes and verifies through a mount loses nothing: every node
// ends up with only the new key (in its own key file), the old key gets
// in nowhere, a node killed and restarted afterwards rejoins with the
// new key, and the mount (given a key file with both keys before the
// roll) never sees an error.
func TestKeyRotation(t *testing.T) {
	parallel(t)
	requireEnv(t, "fio")
	dir := t.TempDir()
	old := testKeys.Current()
	nodeKey := func(i int) string { return filepath.Join(dir, fmt.Sprintf("node%d.key", i)) }
	for i := 0; i < 3; i++ {
		if err := os.WriteFile(nodeKey(i), auth.File(old), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c := newCluster(t, 3, 3, freeBase(t, 3), func(n *Node) { n.Args = []string{"--key-file", nodeKey(n.Index)} })
	nu, err := auth.Generate()
	if err != nil {
		t.Fatal(err)
	}
	newFile := writeKey(t, nu)
	// Clients get both keys before the roll (a client key of each).
	clientFile := writeKey(t, old.Client(), nu.Client())
	c.KeyFile = clientFile
	m := c.Mount(c.Nodes[1].Addr(), c.Nodes[0].Addr()) // node1, killed after the roll, is the gateway
	vdi := m.VDI("w")
	run(t, quickTimeout, "truncate", "-s", "128M", vdi)
	common := []string{"--name=roll", "--filename=" + vdi, "--size=128M", "--ioengine=libaio", "--iodepth=8",
		"--direct=1", "--fallocate=none", "--verify=crc32c", "--verify_interval=4k", "--verify_fatal=1", "--verify_state_save=0"}
	if _, _, err := runFio(append(common, "--rw=write", "--bs=1M", "--do_verify=0", "--end_fsync=1")...); err != nil {
		t.Fatalf("filling the VDI: %v", err)
	}
	stop := make(chan struct{})
	errc := make(chan error, 1)
	rounds := 0
	go func() {
		defer close(errc)
		for seed := 1; ; seed++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, _, err := runFio(append(common, "--rw=randwrite", "--bsrange=4k-64k", "--io_size=8M",
				"--do_verify=1", "--fsync=8", fmt.Sprintf("--randseed=%d", seed))...); err != nil {
				errc <- fmt.Errorf("fio round %d: %w", seed, err)
				return
			}
			rounds++
		}
	}()

	addr := c.Nodes[0].Addr()
	r := sheepWithKey(keyFile, addr, "cluster", "key", "rotate", newFile)
	if r.Code != 0 {
		t.Fatalf("sheep cluster key rotate: %v", r)
	}
	t.Logf("rotate:\n%s", r.Stdout)
	for i := 0; i < 3; i++ {
		ks, err := auth.Load(nodeKey(i))
		if err != nil {
			t.Fatal(err)
		}
		if ids := keyIDsOf(ks); len(ids) != 1 || ids[0] != nu.ID() {
			t.Errorf("node%d's key file holds %v after the roll, want only %s", i, ids, nu.ID())
		}
	}
	if r := sheepWithKey(keyFile, addr, "node", "list"); r.Code == 0 || !strings.Contains(r.Stderr, "not authorized") {
		t.Errorf("the old key after the roll: %v, want not authorized", r)
	}
	// The gateway, killed and started again, comes back with the new key;
	// the mount fails over meanwhile, with the new key.
	c.KeyFile = newFile
	c.Kill(1)
	time.Sleep(2 * time.Second)
	c.Restart(1)
	if !waitFor(readyTimeout, func() bool {
		var nodes []NodeInfo
		r := c.SheepAt(addr, "--json", "node", "list")
		return r.Code == 0 && json.Unmarshal([]byte(r.Stdout), &nodes) == nil && stateOf(nodes, "node1") == "up"
	}) {
		logTail(t, c.Nodes[1].Log, 30)
		t.Fatal("node1 does not come back up after the roll")
	}
	time.Sleep(5 * time.Second) // more fio rounds with every node back
	close(stop)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if rounds == 0 {
		t.Fatal("no fio round completed")
	}
	if _, _, err := runFio(append(common, "--rw=read", "--bs=1M", "--do_verify=1")...); err != nil {
		t.Fatalf("verifying the whole VDI after the roll: %v", err)
	}
	t.Logf("%d fio rounds verified during the roll and the restart", rounds)
}

func keyIDsOf(ks *auth.Keys) []string {
	var out []string
	for _, k := range ks.All() {
		out = append(out, k.ID())
	}
	return out
}

// TestGossipEncrypted: gossip captured on the loopback interface (UDP
// packets and TCP segments to and from the gossip ports) never carries a
// node's name or address in the clear, as memberlist's plaintext messages
// do; and the data and raft ports carry no frame magic in the clear.
func TestGossipEncrypted(t *testing.T) {
	parallel(t)
	requireEnv(t)
	// A raw socket on lo sees every packet of every port.
	fd, err := syscall.Socket(syscall.AF_PACKET, syscall.SOCK_RAW, int(htons(syscall.ETH_P_ALL)))
	if err != nil {
		t.Skipf("no raw socket: %v", err)
	}
	defer syscall.Close(fd)
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrLinklayer{Protocol: htons(syscall.ETH_P_ALL), Ifindex: lo.Index}); err != nil {
		t.Fatal(err)
	}
	tv := syscall.NsecToTimeval(int64(200 * time.Millisecond))
	syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)

	c := NewCluster(t, 3, 3)
	ports := map[uint16]string{}
	for _, n := range c.Nodes {
		ports[uint16(n.Port)] = "data"
		ports[uint16(n.Port+1)] = "gossip"
		ports[uint16(n.Port+2)] = "raft"
	}
	// Traffic of every kind while capturing: gossip runs by itself;
	// an admin command and a VDI write cross the data and raft ports.
	go func() {
		c.Sheep("vdi", "create", "cap", "64M")
	}()
	seen := map[string]int{}
	deadline := time.Now().Add(4 * time.Second)
	buf := make([]byte, 65536)
	for time.Now().Before(deadline) {
		n, _, err := syscall.Recvfrom(fd, buf, 0)
		if err != nil || n < 14+20 {
			continue
		}
		pkt := buf[14:n] // after the Ethernet header
		if pkt[0]>>4 != 4 {
			continue
		}
		ihl := int(pkt[0]&0x0f) * 4
		proto, l4 := pkt[9], pkt[ihl:]
		var payload []byte
		var sport, dport uint16
		switch {
		case proto == syscall.IPPROTO_UDP && len(l4) >= 8:
			sport, dport, payload = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:]), l4[8:]
		case proto == syscall.IPPROTO_TCP && len(l4) >= 20:
			off := int(l4[12]>>4) * 4
			if off > len(l4) {
				continue
			}
			sport, dport, payload = binary.BigEndian.Uint16(l4), binary.BigEndian.Uint16(l4[2:]), l4[off:]
		default:
			continue
		}
		kind := ports[sport]
		if kind == "" {
			kind = ports[dport]
		}
		if kind == "" || len(payload) == 0 {
			continue
		}
		seen[kind]++
		for _, nd := range c.Nodes {
			if bytes.Contains(payload, []byte(nd.ID)) || bytes.Contains(payload, []byte(nd.Addr())) {
				t.Errorf("a %s packet carries %q in the clear: %q", kind, nd.ID, payload[:min(len(payload), 80)])
				return
			}
		}
		if bytes.Contains(payload, []byte("vdi.create")) || bytes.Contains(payload, []byte(`"op"`)) {
			t.Errorf("a %s packet carries a command in the clear: %q", kind, payload[:min(len(payload), 80)])
			return
		}
	}
	t.Logf("packets with payload seen: %v", seen)
	if seen["gossip"] == 0 || seen["data"] == 0 {
		t.Fatalf("captured no gossip or data traffic (%v): the capture proves nothing", seen)
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// TestConnectionFlood: thousands of idle connections to a daemon's data
// port (plain TCP that never speaks, from one address) and hundreds that
// authenticate and then say nothing (from another) neither exhaust its
// descriptors nor keep it from serving: an admin command and a write
// through a mount work meanwhile, and after the flood.
func TestConnectionFlood(t *testing.T) {
	requireEnv(t)
	c := NewCluster(t, 3, 3)
	n0 := c.Nodes[0]
	// 20,000 plain connections from two helper processes (each within
	// the descriptor limit, which root may not raise here), from
	// 127.0.0.2.
	const want, helpers = 20000, 2
	start := time.Now()
	opened, failed := 0, 0
	var stdins []io.Closer
	var procs []*exec.Cmd
	defer func() {
		for i, in := range stdins {
			in.Close()
			procs[i].Wait()
		}
	}()
	for range helpers {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), fmt.Sprintf("SHEEP_E2E_FLOOD=%s %d", n0.Addr(), want/helpers))
		in, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		stdins, procs = append(stdins, in), append(procs, cmd)
		var o, f int
		if _, err := fmt.Fscanf(out, "opened %d failed %d\n", &o, &f); err != nil {
			t.Fatalf("flood helper: %v", err)
		}
		opened, failed = opened+o, failed+f
	}
	var held []net.Conn
	defer func() {
		for _, nc := range held {
			nc.Close()
		}
	}()
	idleTLS := 0
	dial := keyDial(auth.RoleClient)
	for range 300 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		nc, err := dial(ctx, n0.Addr())
		cancel()
		if err == nil {
			held = append(held, nc)
			idleTLS++
		}
	}
	t.Logf("%d idle connections opened (and %d authenticated) in %v, %d dials failed", opened, idleTLS, time.Since(start).Round(time.Millisecond), failed)
	if opened < want {
		t.Fatalf("only %d connections could be opened", opened)
	}
	fds := func() int {
		ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", n0.proc.cmd.Process.Pid))
		return len(ents)
	}
	check := func(when string) {
		t.Helper()
		if r := c.SheepAt(n0.Addr(), "node", "list"); r.Code != 0 {
			t.Fatalf("%s: sheep node list through the flooded node: %v", when, r)
		}
		m := c.MountTLS(n0.Addr()) // through the flooded port
		vdi := m.VDI("f" + strings.ReplaceAll(when, " ", ""))
		run(t, quickTimeout, "truncate", "-s", "16M", vdi)
		shell(t, cmdTimeout, fmt.Sprintf("dd if=/dev/urandom of=%s bs=1M count=8 conv=notrunc,fsync status=none", q(vdi)))
		m.Unmount()
	}
	check("during")
	t.Logf("the flooded daemon holds %d descriptors", fds())
	if n := fds(); n > 3000 {
		t.Errorf("the flooded daemon holds %d descriptors", n)
	}
	for _, nc := range held {
		nc.Close()
	}
	held = nil
	for i, in := range stdins {
		in.Close()
		procs[i].Wait()
	}
	stdins = nil
	check("after")
}

// rssKiB is a process's resident set, from /proc.
func rssKiB(t *testing.T, pid int) int64 { t.Helper(); return procStatusKiB(t, pid, "VmRSS") }

// procStatusKiB returns field (VmRSS, VmLck...) of /proc/PID/status, in
// KiB.
func procStatusKiB(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == field+":" {
			var v int64
			fmt.Sscan(f[1], &v)
			return v
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// TestPeersThatDoNotRead: authenticated connections that ask for 8 MiB
// reads and never read the answers, or announce 8 MiB frames and withhold
// them, pin a bounded amount of the daemon's memory (measured as a bound
// on its resident set, not a time), and it keeps serving.
func TestPeersThatDoNotRead(t *testing.T) {
	parallel(t)
	requireEnv(t)
	c := NewCluster(t, 3, 3)
	n0 := c.Nodes[0]
	m := c.Mount(n0.Addr())
	vdi := m.VDI("big")
	run(t, quickTimeout, "truncate", "-s", "64M", vdi)
	shell(t, cmdTimeout, fmt.Sprintf("dd if=/dev/urandom of=%s bs=1M count=64 conv=notrunc,fsync status=none", q(vdi)))
	v := c.VDI("big")
	pid := n0.proc.cmd.Process.Pid
	before := rssKiB(t, pid)
	dial := keyDial(auth.RoleClient)
	var conns []net.Conn
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	const perKind = 40
	for i := 0; i < 2*perKind; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		nc, err := dial(ctx, n0.Addr())
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, nc)
		nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if i < perKind {
			// Four 8 MiB reads whose answers are never read.
			for j := 0; j < 4; j++ {
				nc.Write(frame(proto.Header{Op: proto.OpVDIRead, ReqID: uint64(j + 1), ID: uint64(v.ID), Offset: uint64(j) << 23, Length: 8 << 20}, 0, nil))
			}
		} else {
			// A write announcing 8 MiB, of which 4 KiB come.
			b := frame(proto.Header{Op: proto.OpVDIWrite, ReqID: 1, ID: uint64(v.ID), DLen: 8 << 20}, 0, nil)
			binary.BigEndian.PutUint32(b[44:], 8<<20)
			nc.Write(append(b, make([]byte, 4096)...))
		}
	}
	time.Sleep(3 * time.Second) // the reads are served into buffers nobody drains
	during := rssKiB(t, pid)
	t.Logf("daemon RSS %d MiB before, %d MiB with %d connections not reading and %d withholding 8 MiB frames",
		before>>10, during>>10, perKind, perKind)
	// Before the bounds: +960 MiB for the reads and +312 MiB for the
	// withheld frames.
	if grew := (during - before) >> 10; grew > 450 { // the shared budget, 128 MiB, twice over for the garbage collector, and buffers
		t.Errorf("the daemon's RSS grew by %d MiB", grew)
	}
	if r := c.SheepAt(n0.Addr(), "node", "list"); r.Code != 0 {
		t.Errorf("sheep node list through the node meanwhile: %v", r)
	}
	if got := sha256Range(t, vdi, 0, 64); got == "" {
		t.Error("reading the VDI meanwhile failed")
	}
}

// floodHelper is a helper process of TestConnectionFlood: it opens n
// plain TCP connections to addr from 127.0.0.2, says how many, and holds
// them until its standard input closes.
func floodHelper(spec string) {
	var addr string
	var n int
	if _, err := fmt.Sscanf(spec, "%s %d", &addr, &n); err != nil {
		fmt.Fprintln(os.Stderr, "flood helper:", err)
		os.Exit(2)
	}
	flood := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 2 * time.Second}
	var mu sync.Mutex
	var held []net.Conn
	failed := 0
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				mu.Lock()
				done := len(held) >= n || failed >= 1000
				mu.Unlock()
				if done {
					return
				}
				nc, err := flood.Dial("tcp", addr)
				mu.Lock()
				if err != nil {
					failed++
				} else {
					held = append(held, nc)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	fmt.Printf("opened %d failed %d\n", len(held), failed)
	io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}
