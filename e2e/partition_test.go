package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/auth"
	"github.com/sheepfs/sheepfs/client"
	"github.com/sheepfs/sheepfs/proto"
)

// Network partitions (guarantee 3). Every sheep runs in a network namespace
// of its own, with one end of a veth pair; the other ends hang on a bridge in
// the test's namespace, which carries the nodes' addresses (PREFIX.1 ..) and
// PREFIX.254 itself, so that sheepfs and the CLI (run here, where the test
// sees the mounts) reach every node. Bridged traffic never leaves layer 2,
// so net.ipv4.ip_forward does not matter; with bridge-nf-call-iptables on,
// it does pass the forward hook of this namespace's firewall, which must
// let it through (newNetCluster checks). A partition is an nftables table in
// each cut-off node's namespace that drops every packet to or from the
// other side's addresses, both ways; healing deletes the tables.

// partTable is the nftables table (family inet) that cuts a namespace off.
const partTable = "sheepfs_partition"

// netLab is a bridge and one network namespace per node.
type netLab struct {
	t      testing.TB
	base   int    // port base of the cluster (also names the lab)
	bridge string // in the test's namespace
	prefix string // "10.A.B.": the /24 of the lab
	ns     []string
	veths  []string // the test's ends of the veth pairs
	mu     sync.Mutex
	cut    map[int]bool // namespaces holding a partition table
}

// ip is node i's address.
func (l *netLab) ip(i int) string { return l.prefix + strconv.Itoa(i+1) }

// cmd runs a command that sets up or tears down the lab and reports its
// failure.
func (l *netLab) cmd(args ...string) error {
	r := runCmd(quickTimeout, nil, nil, args[0], args[1:]...)
	if r.Code != 0 {
		return fmt.Errorf("%v", r)
	}
	return nil
}

// newNetLab makes a bridge and n namespaces wired to it, with names and a
// subnet of their own taken from a free port base, so that parallel runs
// and leftovers of killed runs do not collide. Everything goes when the
// test ends (after the processes, which the cluster's cleanup kills).
func newNetLab(t testing.TB, n int) *netLab {
	t.Helper()
	for try := 0; try < 20; try++ {
		base := freeBase(t, n)
		k := (base - 21000) / 10 // 0..999
		l := &netLab{t: t, base: base, bridge: fmt.Sprintf("shpbr%d", k),
			prefix: fmt.Sprintf("10.%d.%d.", 200+k/256, k%256), cut: map[int]bool{}}
		// The bridge is the claim: a name taken by another run (or
		// left over) fails here, and we try another base.
		if l.cmd("ip", "link", "add", l.bridge, "type", "bridge") != nil {
			continue
		}
		addrs := runCmd(quickTimeout, nil, nil, "ip", "-4", "-o", "addr").Stdout
		nss := runCmd(quickTimeout, nil, nil, "ip", "netns", "list").Stdout
		if strings.Contains(addrs, " "+l.prefix) || strings.Contains(nss, fmt.Sprintf("sheepfs-%d-", k)) {
			l.cmd("ip", "link", "del", l.bridge) // the subnet or a namespace is taken (left over?)
			continue
		}
		t.Cleanup(l.cleanup)
		steps := [][]string{
			{"ip", "addr", "add", l.prefix + "254/24", "dev", l.bridge},
			{"ip", "link", "set", l.bridge, "up"},
		}
		for i := 0; i < n; i++ {
			ns := fmt.Sprintf("sheepfs-%d-n%d", k, i)
			veth, peer := fmt.Sprintf("shp%dv%d", k, i), fmt.Sprintf("shp%dp%d", k, i)
			l.ns = append(l.ns, ns)
			l.veths = append(l.veths, veth)
			steps = append(steps,
				[]string{"ip", "netns", "add", ns},
				[]string{"ip", "link", "add", veth, "type", "veth", "peer", "name", peer},
				[]string{"ip", "link", "set", peer, "netns", ns},
				[]string{"ip", "link", "set", veth, "master", l.bridge},
				[]string{"ip", "link", "set", veth, "up"},
				[]string{"ip", "-n", ns, "link", "set", peer, "name", "eth0"},
				[]string{"ip", "-n", ns, "addr", "add", l.ip(i) + "/24", "dev", "eth0"},
				[]string{"ip", "-n", ns, "link", "set", "eth0", "up"},
				[]string{"ip", "-n", ns, "link", "set", "lo", "up"})
		}
		for _, s := range steps {
			if err := l.cmd(s...); err != nil {
				t.Fatalf("network namespaces: %v", err)
			}
		}
		return l
	}
	t.Fatal("no free name for the network namespaces")
	return nil
}

func (l *netLab) cleanup() {
	for _, v := range l.veths {
		l.cmd("ip", "link", "del", v) // takes the peer in the namespace with it
	}
	for _, ns := range l.ns {
		if err := l.cmd("ip", "netns", "del", ns); err != nil {
			l.t.Logf("cleanup: %v", err)
		}
	}
	if err := l.cmd("ip", "link", "del", l.bridge); err != nil {
		l.t.Logf("cleanup: %v", err)
	}
}

// checkPath makes sure that a TCP connection from namespace i reaches addr
// (host:port, something listening), within a few seconds.
func (l *netLab) checkPath(i int, addr string) {
	l.t.Helper()
	host, port, _ := strings.Cut(addr, ":")
	var last Result
	if waitFor(10*time.Second, func() bool {
		last = runCmd(quickTimeout, nil, nil, "ip", "netns", "exec", l.ns[i], "timeout", "2",
			"bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%s", host, port))
		return last.Code == 0
	}) {
		return
	}
	l.t.Fatalf("namespace %s cannot reach %s over the bridge %s: %v\n"+
		"(with net.bridge.bridge-nf-call-iptables=1, bridged packets pass this namespace's forward hook: a firewall "+
		"that drops forwarded packets, such as Docker's, must accept those of %s)", l.ns[i], addr, l.bridge, last, l.bridge)
}

// partition cuts the nodes of side a off from those of side b (both ways,
// every packet), until heal.
func (l *netLab) partition(a, b []int) {
	l.t.Helper()
	cutOff := func(from, to []int) {
		var addrs []string
		for _, j := range to {
			addrs = append(addrs, l.ip(j))
		}
		set := strings.Join(addrs, ", ")
		rules := fmt.Sprintf(`table inet %s {
	chain input {
		type filter hook input priority -10; policy accept;
		ip saddr { %s } drop
	}
	chain output {
		type filter hook output priority -10; policy accept;
		ip daddr { %s } drop
	}
}
`, partTable, set, set)
		for _, i := range from {
			r := runCmd(quickTimeout, nil, strings.NewReader(rules), "ip", "netns", "exec", l.ns[i], "nft", "-f", "-")
			if r.Code != 0 {
				l.t.Fatalf("partition %s: %v", l.ns[i], r)
			}
			l.mu.Lock()
			l.cut[i] = true
			l.mu.Unlock()
		}
	}
	cutOff(a, b)
	cutOff(b, a)
}

// heal removes every partition.
func (l *netLab) heal() {
	l.t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range l.cut {
		if err := l.cmd("ip", "netns", "exec", l.ns[i], "nft", "delete", "table", "inet", partTable); err != nil {
			l.t.Fatalf("heal: %v", err)
		}
		delete(l.cut, i)
	}
}

// newNetCluster is NewCluster with every node in a namespace of lab's.
func newNetCluster(t *testing.T, n, copies int) (*Cluster, *netLab) {
	t.Helper()
	requireEnv(t, "ip", "nft", "timeout", "python3")
	lab := newNetLab(t, n)
	c := newCluster(t, n, copies, lab.base, func(node *Node) {
		node.Host, node.NetNS = lab.ip(node.Index), lab.ns[node.Index]
		if node.Index == 1 {
			lab.checkPath(1, node.c.Nodes[0].Addr())
		}
	})
	return c, lab
}

// ---------------------------------------------------------------------------
// Helpers of the partition test.

// bgCmd is a command running in the background; end and res are set when
// done is closed.
type bgCmd struct {
	what string
	done chan struct{}
	end  time.Time
	res  Result
}

func startBg(what string, timeout time.Duration, name string, args ...string) *bgCmd {
	b := &bgCmd{what: what, done: make(chan struct{})}
	go func() {
		b.res = runCmd(timeout, nil, nil, name, args...)
		b.end = time.Now()
		close(b.done)
	}()
	return b
}

// finished reports whether b has ended (without waiting).
func (b *bgCmd) finished() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

// infoAt is `sheep --json cluster info` as node addr sees it.
func infoAt(addr string) (ClusterInfo, error) {
	r := runCmd(quickTimeout, nil, nil, sheepBin, "--addr", addr, "--timeout", "3s", "--json", "cluster", "info")
	var ci ClusterInfo
	if r.Code != 0 {
		return ci, fmt.Errorf("%v", r)
	}
	if err := jsonUnmarshal(r.Stdout, &ci); err != nil {
		return ci, fmt.Errorf("cluster info printed %q: %v", r.Stdout, err)
	}
	return ci, nil
}

// upCount counts the members ci reports up.
func upCount(ci ClusterInfo) int {
	n := 0
	for _, ni := range ci.Nodes {
		if ni.State == "up" {
			n++
		}
	}
	return n
}

// readVia reads VDI or snapshot full through the gateway at addr, all its
// objects at once, each read bounded by timeout. It returns the bytes
// read and the indexes of the objects it could not read.
func readVia(addr, full string, timeout time.Duration) ([]byte, []int, error) {
	cl := client.New([]string{addr}, client.Options{Dial: keyDial(auth.RoleClient), RetryFor: timeout})
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	var v proto.VDIInfo
	err := cl.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDILookup, Name: full}, &v)
	cancel()
	if err != nil {
		return nil, nil, fmt.Errorf("lookup %s through %s: %w", full, addr, err)
	}
	buf := make([]byte, v.Size)
	nobj := int((int64(v.Size) + objSize - 1) / objSize)
	failed := make([]bool, nobj)
	var wg sync.WaitGroup
	for i := 0; i < nobj; i++ {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			part := buf[int64(i)*objSize : min(int64(i+1)*objSize, int64(len(buf)))]
			if err := cl.ReadAt(ctx, v.ID, part, int64(i)*objSize); err != nil {
				failed[i] = true
			}
		})
	}
	wg.Wait()
	var bad []int
	for i, f := range failed {
		if f {
			bad = append(bad, i)
		}
	}
	return buf, bad, nil
}

func randBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// writeFileAt writes data into path at off with dd (conv=notrunc), through
// the page cache and with an fsync, or with O_DIRECT if direct.
func writeFileAt(t testing.TB, path string, off int64, data []byte, direct bool) Result {
	t.Helper()
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	flags := "conv=notrunc,fsync"
	if direct {
		flags = "oflag=direct conv=notrunc"
	}
	return shellResult(cmdTimeout, fmt.Sprintf("dd if=%s of=%s bs=4k seek=%d %s status=none", q(src), q(path), off/4096, flags))
}

// ---------------------------------------------------------------------------
// The test.

// minWrite is a write attempted through the minority's mount.
type minWrite struct {
	off  int64
	data []byte
	bg   *bgCmd
}

// partitionRun holds what the rounds of TestPartitionNoSplitBrain share.
type partitionRun struct {
	t         *testing.T
	c         *Cluster
	lab       *netLab
	m0, m2    *Mount // mounts through node0 (minority) and node2 (majority)
	writes    []*minWrite
	t0, tHeal time.Time
}

const (
	partLease = 3 * time.Second // cluster.Config.Lease
	partObjs  = 16              // objects of the VDI "base"
	partSize  = partObjs * objSize
)

// startMinorityWrite starts an O_DIRECT write of 4 KiB of random bytes at
// off in base through node0's mount, in the background.
func (p *partitionRun) startMinorityWrite(off int64) {
	t := p.t
	w := &minWrite{off: off, data: randBytes(t, 4096)}
	src := filepath.Join(t.TempDir(), "block")
	if err := os.WriteFile(src, w.data, 0o644); err != nil {
		t.Fatal(err)
	}
	w.bg = startBg(fmt.Sprintf("O_DIRECT write of 4 KiB at %d through node0 (started %v after the partition)", off, time.Since(p.t0).Round(time.Millisecond)),
		3*time.Minute, "dd", "if="+src, "of="+p.m0.VDI("base"), "bs=4k", fmt.Sprintf("seek=%d", off/4096),
		"oflag=direct", "conv=notrunc", "status=none")
	p.writes = append(p.writes, w)
}

// noMinorityAck fails the test if a minority write has succeeded so far.
func (p *partitionRun) noMinorityAck(when string) {
	p.t.Helper()
	for _, w := range p.writes {
		if w.bg.finished() && w.bg.res.Code == 0 {
			p.t.Errorf("%s: the minority acknowledged a write: %s succeeded %v after the partition",
				when, w.bg.what, w.bg.end.Sub(p.t0).Round(time.Millisecond))
		}
	}
}

// partition cuts {node0, node1} off from {node2, node3, node4}.
func (p *partitionRun) partition() {
	p.t0 = time.Now()
	p.lab.partition([]int{0, 1}, []int{2, 3, 4})
}

// waitMajority waits until the majority has an epoch of its own three
// nodes, in which the locks taken through node0 are gone.
func (p *partitionRun) waitMajority() ClusterInfo {
	p.t.Helper()
	var ci ClusterInfo
	if !waitFor(30*time.Second, func() bool {
		var err error
		ci, err = infoAt(p.c.Nodes[2].Addr())
		return err == nil && ci.Status == "ok" && len(ci.Nodes) == 3
	}) {
		p.t.Fatalf("the majority did not move on without node0 and node1: %+v", ci)
	}
	p.t.Logf("the majority is at epoch %d (leader %s) %v after the partition", ci.Epoch, ci.Leader, time.Since(p.t0).Round(time.Millisecond))
	return ci
}

// openForWriting opens base for writing on the majority's mount, which
// can take a moment after the new epoch.
func (p *partitionRun) openForWriting() *holder {
	p.t.Helper()
	var h *holder
	var msg string
	if !waitFor(15*time.Second, func() bool {
		h, msg = holdOpen(p.t, p.m2.VDI("base"), "os.O_RDWR")
		return h != nil
	}) {
		p.t.Fatalf("the majority's mount cannot open base for writing: %s", msg)
	}
	return h
}

// heal ends the partition and waits until every node reports five
// members up, status ok, and the same epoch and leader.
func (p *partitionRun) heal() {
	t := p.t
	t.Helper()
	p.noMinorityAck("during the partition")
	p.tHeal = time.Now()
	p.lab.heal()
	var infos []ClusterInfo
	if !waitFor(60*time.Second, func() bool {
		infos = infos[:0]
		for _, node := range p.c.Nodes {
			ci, err := infoAt(node.Addr())
			if err != nil || ci.Status != "ok" || len(ci.Nodes) != 5 || upCount(ci) != 5 {
				return false
			}
			infos = append(infos, ci)
		}
		for _, ci := range infos {
			if ci.Epoch != infos[0].Epoch || ci.Leader != infos[0].Leader {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("the cluster did not converge within 60 s of the heal: %+v", infos)
	}
	t.Logf("healed %v after the partition; every node reports 5 members up, status ok, epoch %d, leader %s %v later",
		p.tHeal.Sub(p.t0).Round(time.Millisecond), infos[0].Epoch, infos[0].Leader, time.Since(p.tHeal).Round(time.Millisecond))
}

// minorityWritesEnd waits for the writes attempted on the minority side.
// The majority's mount held base's write lock from before the heal until
// now, so none of them may have succeeded: not before the heal (no
// majority), and not after it (another mount holds the lock).
func (p *partitionRun) minorityWritesEnd() {
	t := p.t
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	failed := 0
	for _, w := range p.writes {
		select {
		case <-w.bg.done:
		case <-time.After(time.Until(deadline)):
		}
		switch {
		case !w.bg.finished():
			t.Errorf("%s: still blocked 60 s after the heal", w.bg.what)
		case w.bg.res.Code == 0 && w.bg.end.Before(p.tHeal):
			t.Errorf("the minority acknowledged a write: %s succeeded %v after the partition", w.bg.what, w.bg.end.Sub(p.t0).Round(time.Millisecond))
		case w.bg.res.Code == 0:
			t.Errorf("%s succeeded %v after the heal, while node2's mount held the write lock",
				w.bg.what, w.bg.end.Sub(p.tHeal).Round(time.Millisecond))
		default:
			failed++
		}
	}
	t.Logf("%d writes attempted through the minority failed, the last %v after the heal", failed, p.lastWriteEnd().Sub(p.tHeal).Round(time.Millisecond))
}

func (p *partitionRun) lastWriteEnd() time.Time {
	var last time.Time
	for _, w := range p.writes {
		if w.bg.finished() && w.bg.end.After(last) {
			last = w.bg.end
		}
	}
	return last
}

// checkEverywhere reads VDI or snapshot full through every node and
// compares it with want; where it differs, it says whether a minority
// write is what it holds.
func (p *partitionRun) checkEverywhere(when, full string, want []byte, nodes ...int) {
	t := p.t
	t.Helper()
	if len(nodes) == 0 {
		nodes = []int{0, 1, 2, 3, 4}
	}
	for _, i := range nodes {
		node := p.c.Nodes[i]
		got, bad, err := readVia(node.Addr(), full, 30*time.Second)
		if err != nil || len(bad) > 0 {
			t.Errorf("%s, read %s through %s: objects %v unreadable (%v)", when, full, node.ID, bad, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s, %s read through %s: %s", when, full, node.ID, firstDiff(got, want))
			for _, w := range p.writes {
				if w.off+4096 <= int64(len(got)) && bytes.Equal(got[w.off:w.off+4096], w.data) {
					t.Errorf("  it holds the %s, which was never acknowledged", w.bg.what)
				}
			}
		}
	}
}

// TestPartitionNoSplitBrain: guarantee 3. Five nodes, three copies;
// {node0, node1} are cut off from {node2, node3, node4} twice: first while
// node0 is the raft leader (it bootstrapped the cluster), then, after the
// heal, while the leader is on the majority side (node0 is then a follower
// whose lease outlives the cut by up to 3 s). Each time a mount through
// node0 holds the VDI base open for writing.
//
//   - The minority acknowledges no write: O_DIRECT writes through node0's
//     mount, started at once (within node0's lease) and after the lease, do
//     not complete while the partition lasts. vdi create, snapshot, resize
//     and delete through node0 and node1 fail, and node0 reports "no
//     quorum". Through node0 and node1, every object of a snapshot taken
//     before that has a replica on their side reads back.
//   - The majority moves on: node0's write lock died with node0 as far as
//     it knows, so a mount through node2 opens base for writing and
//     writes; a new VDI is created, written and snapshotted. A writer
//     through node2's mount that writes on through the first partition
//     (so some writes are in flight to node0 and node1 when it comes)
//     never waits longer than the majority takes to move on, and every
//     node reads what it wrote after the heal.
//   - After each heal every node reports five members up and status ok,
//     and every node reads exactly what the majority wrote, and the
//     snapshots as they were taken. The majority's mount held base's write
//     lock from before the heal until the minority's writes ended, so none
//     of them may land at all: not during the partition (no majority), not
//     after it (guarantee 4). They must end soon after the heal.
//   - In the second partition, a node of the majority that held an object
//     during the first one, but not in between, reads the object as it was
//     written in between, not its own old copy.
func TestPartitionNoSplitBrain(t *testing.T) {
	parallel(t)
	start := time.Now()
	c, lab := newNetCluster(t, 5, 3)
	n := c.Nodes
	p := &partitionRun{t: t, c: c, lab: lab, m0: c.Mount(n[0].Addr()), m2: c.Mount(n[2].Addr())}
	m0, m2 := p.m0, p.m2

	// base: D1, the snapshot base@before, then D2 over all of it (every
	// object now belongs to base's own image, so that later writes go in
	// place), written through node0's mount, which keeps it open.
	d1, d2 := randBytes(t, int(partSize)), randBytes(t, int(partSize))
	run(t, quickTimeout, "truncate", "-s", strconv.FormatInt(partSize, 10), m2.VDI("base"))
	if r := writeFileAt(t, m2.VDI("base"), 0, d1, false); r.Code != 0 {
		t.Fatalf("write D1: %v", r)
	}
	if r := c.SheepAt(n[3].Addr(), "vdi", "snapshot", "base@before"); r.Code != 0 {
		t.Fatalf("snapshot base@before: %v", r)
	}
	if r := writeFileAt(t, m0.VDI("base"), 0, d2, false); r.Code != 0 {
		t.Fatalf("write D2: %v", r)
	}
	h0, msg := holdOpen(t, m0.VDI("base"), "os.O_RDWR")
	if h0 == nil {
		t.Fatalf("open base for writing through node0's mount: %s", msg)
	}
	if r := c.SheepAt(n[4].Addr(), "vdi", "create", "other", "8M"); r.Code != 0 {
		t.Fatalf("vdi create other: %v", r)
	}
	// Which objects of base@before have a replica on the minority side.
	snap := lookupVDI(t, newClient(t, n[2].Addr()), "base@before")
	img := snap.Image
	if img == 0 {
		img = snap.ID
	}
	files := c.ObjectFiles()
	onMinority := func(oid string) bool { return files[oid]["node0"] != "" || files[oid]["node1"] != "" }
	var snapAvail []int
	if onMinority(indexOID(uint32(img), 0)) {
		for o := 0; o < partObjs; o++ {
			if onMinority(dataOID(uint32(img), uint32(o))) {
				snapAvail = append(snapAvail, o)
			}
		}
	}
	ci := c.Info()
	t.Logf("setup took %v; epoch %d, leader %s; objects of base@before with a replica on node0 or node1: %v",
		time.Since(start).Round(time.Millisecond), ci.Epoch, ci.Leader, snapAvail)
	if ci.Leader != n[0].ID && ci.Leader != n[1].ID {
		t.Logf("the leader is not on the minority side in the first partition either")
	}

	// A writer on the majority side that writes on through the first
	// partition: O_DIRECT writes of 4 KiB, round robin over the 16
	// objects of the VDI flow, through node2's mount, from just before
	// the partition for 20 s. Write i fills its block with i%255+1.
	run(t, quickTimeout, "truncate", "-s", "64M", m2.VDI("flow"))
	const flowFor = 20 * time.Second
	flow := startBg("the majority's writer", flowFor+2*time.Minute, "python3", "-c", `
import os, sys, time, mmap
fd = os.open(sys.argv[1], os.O_RDWR | os.O_DIRECT)
buf = mmap.mmap(-1, 4096)
end = time.time() + float(sys.argv[2])
i, worst = 0, 0.0
while time.time() < end:
    buf.seek(0)
    buf.write(bytes([i % 255 + 1]) * 4096)
    t0 = time.time()
    os.pwrite(fd, buf, (i % 16) * 4194304)
    worst = max(worst, time.time() - t0)
    i += 1
os.fsync(fd)
os.close(fd)
print(i, worst)
`, m2.VDI("flow"), strconv.Itoa(int(flowFor/time.Second)))
	time.Sleep(time.Second)

	// ---- The first partition.
	p.partition()
	for o := int64(0); o < partObjs; o++ {
		p.startMinorityWrite(o*objSize + 2*miB)
	}
	time.Sleep(time.Until(p.t0.Add(partLease + time.Second)))
	p.noMinorityAck("once the lease has run out")
	for o := int64(0); o < 4; o++ {
		p.startMinorityWrite(o*objSize + 3*miB)
	}
	var wg sync.WaitGroup
	for _, cmd := range []struct {
		node int
		args []string
	}{
		{0, []string{"vdi", "create", "minvdi", "8M"}},
		{1, []string{"vdi", "snapshot", "other@min"}},
		{0, []string{"vdi", "resize", "other", "16M"}},
		{1, []string{"vdi", "delete", "other"}},
		{0, []string{"vdi", "snapshot", "base@min"}},
	} {
		wg.Go(func() {
			r := runCmd(quickTimeout, nil, nil, sheepBin, append([]string{"--addr", n[cmd.node].Addr(), "--timeout", "5s"}, cmd.args...)...)
			if r.Code == 0 {
				t.Errorf("the minority side changed cluster metadata: %v", r)
			}
		})
	}
	if ci, err := infoAt(n[0].Addr()); err != nil || ci.Status != "no quorum" {
		t.Errorf("cluster info through node0 during the partition: status %q (%v), want \"no quorum\"", ci.Status, err)
	}
	// Snapshot reads through the minority: what has a replica there reads
	// back (after a moment: until gossip holds the other side dead, a read
	// may wait on a replica there); nothing reads wrong.
	for _, i := range []int{0, 1} {
		deadline := time.Now().Add(10 * time.Second)
		for {
			got, bad, err := readVia(n[i].Addr(), "base@before", 3*time.Second)
			missing := slices.DeleteFunc(slices.Clone(snapAvail), func(o int) bool { return !slices.Contains(bad, o) })
			if err == nil && (len(missing) == 0 || time.Now().After(deadline)) {
				for o := 0; o < partObjs; o++ {
					if !slices.Contains(bad, o) && !bytes.Equal(got[int64(o)*objSize:int64(o+1)*objSize], d1[int64(o)*objSize:int64(o+1)*objSize]) {
						t.Errorf("during the partition, object %d of base@before read through %s is not what was snapshotted", o, n[i].ID)
					}
				}
				if len(missing) > 0 {
					t.Errorf("during the partition, objects %v of base@before have a replica on the minority side but do not read through %s", missing, n[i].ID)
				}
				t.Logf("during the partition, %d of %d objects of base@before read through %s", partObjs-len(bad), partObjs, n[i].ID)
				break
			}
			if err != nil && time.Now().After(deadline) {
				t.Errorf("during the partition, base@before through %s: %v", n[i].ID, err)
				break
			}
		}
	}
	// And through node0's mount, with O_DIRECT (no readahead into the
	// objects that have no replica there).
	for _, o := range snapAvail {
		r := shellResult(quickTimeout, fmt.Sprintf("dd if=%s bs=1M skip=%d count=4 iflag=direct status=none | sha256sum",
			q(m0.Path("snapshot", "base", "before")), o*4))
		if sum, _, _ := strings.Cut(r.Stdout, " "); r.Code != 0 || sum != sha256Bytes(d1[int64(o)*objSize:int64(o+1)*objSize]) {
			t.Errorf("during the partition, object %d of snapshot/base/before on node0's mount: %v", o, r)
		}
	}
	wg.Wait()

	// The majority moves on.
	p.waitMajority()
	h2 := p.openForWriting()
	want := bytes.Clone(d2)
	for o := int64(8); o < partObjs; o++ {
		data := randBytes(t, int(miB))
		if r := writeFileAt(t, m2.VDI("base"), o*objSize+miB, data, true); r.Code != 0 {
			t.Fatalf("majority write to base: %v", r)
		}
		copy(want[o*objSize+miB:], data)
	}
	// maj: made on the majority side, snapshotted at once (so that its
	// data lands in an image of its own), then written.
	if r := c.SheepAt(n[3].Addr(), "vdi", "create", "maj", "32M"); r.Code != 0 {
		t.Fatalf("majority vdi create: %v", r)
	}
	if r := c.SheepAt(n[4].Addr(), "vdi", "snapshot", "maj@empty"); r.Code != 0 {
		t.Fatalf("majority snapshot maj@empty: %v", r)
	}
	maj1 := randBytes(t, int(32*miB))
	if r := writeFileAt(t, m2.VDI("maj"), 0, maj1, false); r.Code != 0 {
		t.Fatalf("majority write to maj: %v", r)
	}
	if r := c.SheepAt(n[3].Addr(), "vdi", "snapshot", "base@during"); r.Code != 0 {
		t.Fatalf("majority snapshot base@during: %v", r)
	}

	// No write of the majority's writer hung for longer than it took the
	// majority to move on (DeadGrace, 5 s, plus failure detection and an
	// election), with slack.
	select {
	case <-flow.done:
	case <-time.After(time.Until(p.t0.Add(flowFor + 30*time.Second))):
		t.Fatalf("%s is still blocked %v after the partition", flow.what, time.Since(p.t0).Round(time.Millisecond))
	}
	var flowN int
	var flowWorst float64
	if _, err := fmt.Sscan(flow.res.Stdout, &flowN, &flowWorst); flow.res.Code != 0 || err != nil {
		t.Fatalf("%s: %v", flow.what, flow.res)
	}
	t.Logf("%s made %d writes, the slowest took %.1f s", flow.what, flowN, flowWorst)
	if flowWorst > 25 {
		t.Errorf("a write of %s took %.1f s", flow.what, flowWorst)
	}
	wantFlow := make([]byte, 64*miB)
	for i := max(0, flowN-16); i < flowN; i++ {
		fill(wantFlow[int64(i%16)*objSize:int64(i%16)*objSize+4096], byte(i%255+1))
	}

	// Heal.
	p.heal()
	p.minorityWritesEnd()
	h2.Release()
	h0.Release()
	after := "after the first heal"
	p.checkEverywhere(after, "flow", wantFlow)
	p.checkEverywhere(after, "base", want)
	p.checkEverywhere(after, "base@during", want)
	p.checkEverywhere(after, "base@before", d1)
	p.checkEverywhere(after, "maj", maj1)
	p.checkEverywhere(after, "maj@empty", make([]byte, 32*miB))
	dropCaches(t)
	if got := sha256Range(t, m0.VDI("base"), 0, partSize/miB); got != sha256Bytes(want) {
		t.Errorf("%s, base read through node0's mount is not what the majority wrote", after)
	}
	var other *VDIInfo
	for _, v := range c.VDIs() {
		switch v.Name {
		case "minvdi":
			t.Errorf("%s, minvdi, created through the minority, exists", after)
		case "other":
			other = &v
		}
	}
	if other == nil {
		t.Errorf("%s, other, deleted through the minority, is gone", after)
	} else if other.Size != 8*uint64(miB) {
		t.Errorf("%s, other, resized through the minority, is %d bytes, want 8 MiB", after, other.Size)
	}
	for _, s := range []string{"other@min", "base@min"} {
		if exists(c, s) {
			t.Errorf("%s, snapshot %s, taken through the minority, exists", after, s)
		}
	}
	if t.Failed() {
		return
	}

	// ---- Between the partitions: maj is written again, in the whole
	// cluster's placement (node3 and node4 still have the copies of the
	// objects they held during the partition, now old), and node0's
	// mount opens base for writing again.
	maj2 := randBytes(t, int(32*miB))
	if r := writeFileAt(t, m2.VDI("maj"), 0, maj2, false); r.Code != 0 {
		t.Fatalf("write maj between the partitions: %v", r)
	}
	h0, msg = holdOpen(t, m0.VDI("base"), "os.O_RDWR")
	if h0 == nil {
		t.Fatalf("open base for writing through node0's mount after the heal: %s", msg)
	}
	ci = c.Info()
	t.Logf("before the second partition: epoch %d, leader %s", ci.Epoch, ci.Leader)
	if ci.Leader == n[0].ID || ci.Leader == n[1].ID {
		t.Logf("the leader is on the minority side in the second partition too")
	}

	// ---- The second partition.
	p.writes = nil
	p.partition()
	for o := int64(0); o < partObjs; o++ {
		p.startMinorityWrite(o*objSize + 2*miB + 8192)
	}
	time.Sleep(time.Until(p.t0.Add(partLease + time.Second)))
	p.noMinorityAck("once the lease has run out")
	if r := runCmd(quickTimeout, nil, nil, sheepBin, "--addr", n[1].Addr(), "--timeout", "5s", "vdi", "create", "minvdi2", "8M"); r.Code == 0 {
		t.Errorf("the minority side changed cluster metadata: %v", r)
	}
	p.waitMajority()
	p.checkEverywhere("during the second partition", "maj", maj2, 2, 3, 4)
	h2 = p.openForWriting()
	for o := int64(0); o < 8; o++ {
		data := randBytes(t, int(miB))
		if r := writeFileAt(t, m2.VDI("base"), o*objSize+miB, data, true); r.Code != 0 {
			t.Fatalf("majority write to base: %v", r)
		}
		copy(want[o*objSize+miB:], data)
	}
	p.heal()
	p.minorityWritesEnd()
	h2.Release()
	h0.Release()
	after = "after the second heal"
	p.checkEverywhere(after, "base", want)
	p.checkEverywhere(after, "maj", maj2)
	if exists(c, "minvdi2") {
		t.Errorf("%s, minvdi2, created through the minority, exists", after)
	}
	t.Logf("total %v", time.Since(start).Round(time.Millisecond))
}

// exists reports whether VDI or snapshot full exists.
func exists(c *Cluster, full string) bool {
	cl := client.New(c.Addrs(), client.Options{Dial: keyDial(auth.RoleClient), RetryFor: 10 * time.Second})
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var v proto.VDIInfo
	return cl.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDILookup, Name: full}, &v) == nil
}
