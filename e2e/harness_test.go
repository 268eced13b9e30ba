// Package e2e holds the end-to-end tests of sheepfs: separate sheep
// processes on loopback (or each in a network namespace of its own, for
// partitions), a real FUSE mount served by a separate sheepfs
// process, and every byte of file I/O on the mount done by subprocesses (dd,
// qemu-img, qemu-io, fio, python3) that run under a timeout, so that a
// sheepfs that hangs fails a test instead of hanging the test binary.
//
// The tests need root, /dev/fuse and fusermount3 (plus qemu-utils, fio and
// python3 for some of them). Without them they are skipped, unless CI=true,
// where they fail.
//
//	go test -count=1 -v ./e2e/
//	go test -count=1 -v -run TestQemuImg ./e2e/
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/auth"
	"github.com/sheepfs/sheepfs/fs"
	"github.com/sheepfs/sheepfs/proto"
)

// Timeouts of subprocesses. They bound how long a broken product can hang a
// test; they are not assertions about speed.
const (
	cmdTimeout   = 2 * time.Minute // one ordinary command (dd of a few hundred MiB, qemu-io ...)
	quickTimeout = 30 * time.Second
	readyTimeout = 90 * time.Second // a cluster or a mount becoming ready
)

// Paths of the binaries built once by TestMain.
var (
	repoRoot   string // the module's root directory
	binDir     string
	sheepBin   string
	sheepfsBin string
	// builtCommit is the commit checked out when they were built (empty
	// outside a git checkout).
	builtCommit string
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if spec := os.Getenv("SHEEP_E2E_FLOOD"); spec != "" {
		floodHelper(spec)
	}
	if spec := os.Getenv(syncWriterEnv); spec != "" {
		syncWriter(spec)
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" || strings.TrimSpace(string(out)) == os.DevNull {
		fmt.Fprintf(os.Stderr, "e2e: cannot find the module root (go env GOMOD): %v\n", err)
		return 1
	}
	repoRoot = filepath.Dir(strings.TrimSpace(string(out)))
	binDir, err = os.MkdirTemp("", "sheepfs-e2e-bin-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	defer os.RemoveAll(binDir)
	if out, err := exec.Command("git", "-C", repoRoot, "rev-parse", "HEAD").Output(); err == nil {
		builtCommit = strings.TrimSpace(string(out))
	}
	build := exec.Command("go", "build", "-buildvcs=auto", "-o", binDir+"/", "./cmd/sheep", "./cmd/sheepfs")
	build.Dir = repoRoot
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // as scripts/up builds them (cli/memlock.go)
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: building sheep and sheepfs failed: %v\n%s", err, out)
		return 1
	}
	sheepBin = filepath.Join(binDir, "sheep")
	sheepfsBin = filepath.Join(binDir, "sheepfs")
	// One cluster key for every daemon, mount and command the tests run
	// (they inherit the environment).
	keyFile = filepath.Join(binDir, "cluster.key")
	if out, err := exec.Command("bash", "-c", q(sheepBin)+" keygen > "+q(keyFile)).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: sheep keygen: %v\n%s", err, out)
		return 1
	}
	os.Setenv(auth.EnvFile, keyFile)
	if testKeys, err = auth.Load(keyFile); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	return m.Run()
}

// keyFile is the cluster key of every test cluster; testKeys its keys.
var (
	keyFile  string
	testKeys *auth.Keys
)

// parallel lets t run alongside the other tests that call it (go test
// -parallel, GOMAXPROCS of them at once by default), once every test that
// does not has run. Each cluster has its own ports, directories and mount,
// so most tests can. A test stays serial if it sets the environment
// (t.Setenv), uses something the whole machine shares (network namespaces,
// nftables, systemd, libvirtd, thousands of connections), or checks what
// the page cache holds or which path a read took (another test's
// dropCaches would change both). E2E_SERIAL=1 runs every test alone.
func parallel(t *testing.T) {
	if os.Getenv("E2E_SERIAL") == "" {
		t.Parallel()
	}
}

// keyDial connects to a daemon with the test key, as role as.
func keyDial(as auth.Role) proto.DialFunc {
	d, err := testKeys.NewDialer(as, proto.DialTimeout)
	if err != nil {
		panic(err) // the test key is a cluster key: every role works
	}
	return d.DialContext
}

// requireEnv skips (or, with CI=true, fails) a test that cannot run here:
// it needs root, /dev/fuse, fusermount3 and the given tools.
func requireEnv(t testing.TB, tools ...string) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		missing = append(missing, "/dev/fuse")
	}
	for _, tool := range append([]string{"fusermount3", "mountpoint", "dd", "sha256sum"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("end-to-end test cannot run: missing %s", strings.Join(missing, ", "))
	}
	t.Skipf("skipping end-to-end test: missing %s (set CI=true to make this a failure)", strings.Join(missing, ", "))
}

// ---------------------------------------------------------------------------
// Running commands.

// Result is what a finished subprocess left behind.
type Result struct {
	Cmd    string
	Stdout string
	Stderr string
	Code   int // exit status; -1 if it did not exit normally
	Err    error
}

func (r Result) String() string {
	return fmt.Sprintf("%s: exit %d (%v)\nstdout: %s\nstderr: %s", r.Cmd, r.Code, r.Err, trimOut(r.Stdout), trimOut(r.Stderr))
}

func trimOut(s string) string {
	const max = 4000
	s = strings.TrimSpace(s)
	if len(s) > max {
		return s[:max/2] + "\n...\n" + s[len(s)-max/2:]
	}
	return s
}

// runCmd runs name with args under timeout, with stdin from in (may be nil)
// and extra environment variables env.
func runCmd(timeout time.Duration, env []string, in io.Reader, name string, args ...string) Result {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = os.TempDir() // tools that drop files in their working directory
	cmd.Stdin = in
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	r := Result{Cmd: name + " " + strings.Join(quoteArgs(args), " "), Stdout: stdout.String(), Stderr: stderr.String(), Err: err, Code: -1}
	if cmd.ProcessState != nil {
		r.Code = cmd.ProcessState.ExitCode()
	}
	if ctx.Err() == context.DeadlineExceeded {
		r.Err = fmt.Errorf("timed out after %v: %w", timeout, err)
	}
	return r
}

func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t'\"$;|&") {
			a = strconv.Quote(a)
		}
		out[i] = a
	}
	return out
}

// run runs a command and fails the test unless it exits 0.
func run(t testing.TB, timeout time.Duration, name string, args ...string) Result {
	t.Helper()
	r := runCmd(timeout, nil, nil, name, args...)
	if r.Code != 0 {
		t.Fatalf("command failed: %v", r)
	}
	return r
}

// shell runs a bash script (with pipefail) and fails the test unless it
// exits 0.
func shell(t testing.TB, timeout time.Duration, script string) Result {
	t.Helper()
	return run(t, timeout, "bash", "-euo", "pipefail", "-c", script)
}

// shellResult runs a bash script (with pipefail) and returns its result.
func shellResult(timeout time.Duration, script string) Result {
	return runCmd(timeout, nil, nil, "bash", "-uo", "pipefail", "-c", script)
}

// q quotes s for bash.
func q(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// dropCaches drops the kernel's clean page cache, dentries and inodes, so
// that the next read of a mounted VDI goes to sheepfs.
func dropCaches(t testing.TB) {
	t.Helper()
	shell(t, quickTimeout, "echo 3 > /proc/sys/vm/drop_caches")
}

// ---------------------------------------------------------------------------
// Checksums and data.

// writeRandomFile writes n random bytes to a new local file and returns
// its SHA-256.
func writeRandomFile(t testing.TB, path string, n int64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, n); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// sha256Range returns the SHA-256 of count MiB of path starting at skip
// MiB, read by dd in a subprocess.
func sha256Range(t testing.TB, path string, skipMiB, countMiB int64) string {
	t.Helper()
	sum, err := sha256RangeErr(path, skipMiB, countMiB)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// sha256RangeErr is sha256Range for a goroutine other than the test's.
func sha256RangeErr(path string, skipMiB, countMiB int64) (string, error) {
	r := shellResult(cmdTimeout, fmt.Sprintf("dd if=%s bs=1M skip=%d count=%d status=none | sha256sum", q(path), skipMiB, countMiB))
	sum, _, _ := strings.Cut(strings.TrimSpace(r.Stdout), " ")
	if r.Code != 0 || len(sum) != 64 {
		return "", fmt.Errorf("sha256 of %s: %v", path, r)
	}
	return sum, nil
}

// sha256File returns the SHA-256 of a whole file, read by sha256sum.
func sha256File(t testing.TB, path string) string {
	t.Helper()
	r := run(t, cmdTimeout, "sha256sum", path)
	sum, _, _ := strings.Cut(strings.TrimSpace(r.Stdout), " ")
	if len(sum) != 64 {
		t.Fatalf("sha256sum printed %q", r.Stdout)
	}
	return sum
}

func sha256Bytes(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// fileStat is what stat(1) says about a file.
type fileStat struct {
	Size   int64
	Blocks int64 // 512-byte blocks
}

// statFile stats path in a subprocess.
func statFile(t testing.TB, path string) fileStat {
	t.Helper()
	r := run(t, quickTimeout, "stat", "-c", "%s %b %B", path)
	var st fileStat
	var unit int64
	if _, err := fmt.Sscan(r.Stdout, &st.Size, &st.Blocks, &unit); err != nil {
		t.Fatalf("parse stat output %q: %v", r.Stdout, err)
	}
	st.Blocks = st.Blocks * unit / 512
	return st
}

// duKiB returns du -k's allocated size of path, in KiB.
func duKiB(t testing.TB, path string) int64 {
	t.Helper()
	r := run(t, quickTimeout, "du", "-k", path)
	f := strings.Fields(r.Stdout)
	if len(f) < 1 {
		t.Fatalf("du printed %q", r.Stdout)
	}
	n, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		t.Fatalf("du printed %q", r.Stdout)
	}
	return n
}

// ---------------------------------------------------------------------------
// Ports.

var (
	portMu   sync.Mutex
	portUsed = map[int]bool{}
)

// portFree reports whether a TCP and a UDP listener can be had on port.
func portFree(port int) bool {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	u, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	u.Close()
	return true
}

// freeBase returns a base port P such that P+10*i .. P+10*i+3 are free for
// every node i < nodes. It stays below the kernel's ephemeral range.
func freeBase(t testing.TB, nodes int) int {
	t.Helper()
	portMu.Lock()
	defer portMu.Unlock()
	for try := 0; try < 200; try++ {
		n, err := rand.Int(rand.Reader, big.NewInt(1000))
		if err != nil {
			t.Fatal(err)
		}
		base := 21000 + int(n.Int64())*10
		ok := true
		for i := 0; i < nodes && ok; i++ {
			for p := base + 10*i; p <= base+10*i+3; p++ {
				if portUsed[p] || !portFree(p) {
					ok = false
					break
				}
			}
		}
		if ok {
			for i := 0; i < nodes; i++ {
				for p := base + 10*i; p <= base+10*i+3; p++ {
					portUsed[p] = true
				}
			}
			return base
		}
	}
	t.Fatal("no free port range found")
	return 0
}

// ---------------------------------------------------------------------------
// Processes.

// proc is a long-running child process (a sheep daemon or sheepfs).
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// startProc starts name with args, stdout and stderr appended to logPath,
// with env on top of the test's environment. The child gets SIGKILL if the
// test binary dies.
func startProc(logPath string, env []string, name string, args ...string) (*proc, error) {
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "==== %s %s %s\n", time.Now().Format(time.RFC3339Nano), name, strings.Join(args, " "))
	cmd := exec.Command(name, args...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...) // the last of a name wins
	}
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, err
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		log.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	// A sheepfs may not end until a new one takes its mount over (its
	// exit closes files of its own mount: fs.Exiting). A process whose
	// every thread is still exiting after a while is as good as gone (not
	// at once: a daemon's ports are free only once it has ended).
	deadline := time.Now().Add(2 * time.Second)
	for {
		select {
		case <-p.done:
			return
		case <-time.After(20 * time.Millisecond):
			if time.Now().After(deadline) && fs.Exiting(p.cmd.Process.Pid) {
				return
			}
		}
	}
}

// ---------------------------------------------------------------------------
// Clusters.

// Cluster is a set of sheep daemons on loopback, each a separate process
// with its own data directory, plus the sheepfs mounts made on it.
type Cluster struct {
	t      testing.TB
	Dir    string
	Base   int
	Nodes  []*Node
	mounts []*Mount
	// KeyFile, if set, is the key file of the CLI and the mounts the
	// harness runs (default: the tests' shared key, $SHEEP_KEY_FILE).
	KeyFile string
}

// Node is one sheep daemon.
type Node struct {
	Index int
	ID    string
	Port  int
	Dir   string   // data directory
	Log   string   // stderr of every run of the daemon
	Host  string   // IP address to listen on (empty: 127.0.0.1)
	NetNS string   // network namespace to run in (empty: the test's own)
	Args  []string // more daemon flags (--disk, --zone ...)
	// Env is more environment for the daemon (SHEEP_FAULTS=1 ...), on
	// top of the test's: parallel tests cannot use t.Setenv.
	Env []string
	// Discover lets the node, started with nothing to join, look for a
	// cluster on the network; otherwise it starts one (--bootstrap):
	// every test's cluster has the same key.
	Discover bool
	proc     *proc
	c        *Cluster
}

// Addr is the node's data address.
func (n *Node) Addr() string {
	host := n.Host
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, strconv.Itoa(n.Port))
}

// Running reports whether the daemon process is alive.
func (n *Node) Running() bool { return n.proc != nil && n.proc.running() }

// NewCluster starts n sheep daemons, formats the cluster with copies
// replicas, and waits until it is ok. Everything is stopped when the test
// ends.
func NewCluster(t testing.TB, n, copies int) *Cluster {
	t.Helper()
	requireEnv(t)
	return newCluster(t, n, copies, freeBase(t, n), nil)
}

// NewClusterEnv is NewCluster with env in the environment of every daemon
// (Node.Env).
func NewClusterEnv(t testing.TB, n, copies int, env ...string) *Cluster {
	t.Helper()
	requireEnv(t)
	return newCluster(t, n, copies, freeBase(t, n), func(nd *Node) { nd.Env = slices.Clone(env) })
}

// SetEnv adds env to the environment of every node's next start.
func (c *Cluster) SetEnv(env ...string) {
	for _, n := range c.Nodes {
		n.Env = append(n.Env, env...)
	}
}

// newCluster is NewCluster with data ports from base; place, if set, says
// where node i runs (its Host and NetNS) before it starts, nodes 0 to i-1
// already started.
func newCluster(t testing.TB, n, copies, base int, place func(*Node)) *Cluster {
	t.Helper()
	c := &Cluster{t: t, Dir: t.TempDir(), Base: base}
	t.Cleanup(c.Stop)
	for i := 0; i < n; i++ {
		node := &Node{Index: i, ID: fmt.Sprintf("node%d", i), Port: c.Base + 10*i, c: c}
		node.Dir = filepath.Join(c.Dir, node.ID)
		node.Log = filepath.Join(c.Dir, node.ID+".log")
		if place != nil {
			place(node)
		}
		c.Nodes = append(c.Nodes, node)
		var join []string
		if i > 0 {
			join = []string{c.Nodes[0].Addr()}
		}
		c.startNode(node, join)
	}
	c.waitMembers(n)
	r := c.Sheep("cluster", "format", "--copies", strconv.Itoa(copies))
	if r.Code != 0 {
		t.Fatalf("format: %v", r)
	}
	c.WaitOK()
	return c
}

func (c *Cluster) startNode(n *Node, join []string) {
	c.t.Helper()
	args := []string{"daemon", "--dir", n.Dir, "--port", strconv.Itoa(n.Port), "--id", n.ID}
	for _, j := range join {
		args = append(args, "--join", j)
	}
	if len(join) == 0 && !n.Discover {
		args = append(args, "--bootstrap")
	}
	if n.Host != "" {
		args = append(args, "--host", n.Host)
	}
	args = append(args, n.Args...)
	name := sheepBin
	if n.NetNS != "" {
		// ip netns exec execs the daemon: the process is sheep itself.
		name, args = "ip", append([]string{"netns", "exec", n.NetNS, sheepBin}, args...)
	}
	p, err := startProc(n.Log, n.Env, name, args...)
	if err != nil {
		c.t.Fatalf("start %s: %v", n.ID, err)
	}
	n.proc = p
}

// anyAddr returns the address of a running node.
func (c *Cluster) anyAddr() string {
	for _, n := range c.Nodes {
		if n.Running() {
			return n.Addr()
		}
	}
	return c.Nodes[0].Addr()
}

// Addrs returns every node's data address, in node order.
func (c *Cluster) Addrs() []string {
	var out []string
	for _, n := range c.Nodes {
		out = append(out, n.Addr())
	}
	return out
}

// Sheep runs the sheep admin CLI against a running node.
func (c *Cluster) Sheep(args ...string) Result {
	return c.SheepAt(c.anyAddr(), args...)
}

// SheepAt runs the sheep admin CLI against addr.
func (c *Cluster) SheepAt(addr string, args ...string) Result {
	var env []string
	if c.KeyFile != "" {
		env = []string{auth.EnvFile + "=" + c.KeyFile}
	}
	return runCmd(cmdTimeout, env, nil, sheepBin, append([]string{"--addr", addr, "--timeout", "60s"}, args...)...)
}

// SheepJSON runs a sheep admin command with --json and decodes its output.
func (c *Cluster) SheepJSON(out any, args ...string) {
	c.t.Helper()
	r := c.Sheep(append([]string{"--json"}, args...)...)
	if r.Code != 0 {
		c.t.Fatalf("sheep %v: %v", args, r)
	}
	if err := json.Unmarshal([]byte(r.Stdout), out); err != nil {
		c.t.Fatalf("sheep %v printed undecodable JSON: %v\n%s", args, err, r.Stdout)
	}
}

// ClusterInfo is the JSON of `sheep --json cluster info` and
// cluster/info.json, as documented for programs.
type ClusterInfo struct {
	Status     string     `json:"status"`
	Epoch      uint64     `json:"epoch"`
	Copies     int        `json:"copies"`
	FormatTime int64      `json:"format_time"`
	Leader     string     `json:"leader"`
	Nodes      []NodeInfo `json:"nodes"`
	VDIs       int        `json:"vdis"`
	Used       int64      `json:"used"`
	Free       int64      `json:"free"`
}

// NodeInfo is one node in ClusterInfo, node list and node/ID/info.
type NodeInfo struct {
	ID      string `json:"id"`
	Addr    string `json:"addr"`
	State   string `json:"state"`
	Role    string `json:"role"`
	Epoch   uint64 `json:"epoch"`
	Objects int    `json:"objects"`
	Used    int64  `json:"used"`
	Free    int64  `json:"free"`
	// Integrity counts damaged copies found and repaired.
	Integrity struct {
		Damaged    uint64 `json:"damaged"`
		Repaired   uint64 `json:"repaired"`
		Unrepaired uint64 `json:"unrepaired"`
	} `json:"integrity"`
}

// VDIInfo is one VDI in `sheep --json vdi list`.
type VDIInfo struct {
	Name    string `json:"name"`
	ID      uint32 `json:"id"`
	Size    uint64 `json:"size"`
	Copies  int    `json:"copies"`
	Created int64  `json:"created"`
	Locked  bool   `json:"locked"`
}

// Info returns the cluster state as `sheep --json cluster info` reports it.
func (c *Cluster) Info() ClusterInfo {
	c.t.Helper()
	var ci ClusterInfo
	c.SheepJSON(&ci, "cluster", "info")
	return ci
}

// VDIs returns `sheep --json vdi list`.
func (c *Cluster) VDIs() []VDIInfo {
	c.t.Helper()
	var list []VDIInfo
	c.SheepJSON(&list, "vdi", "list")
	return list
}

// VDI returns the VDI called name, or fails the test.
func (c *Cluster) VDI(name string) VDIInfo {
	c.t.Helper()
	for _, v := range c.VDIs() {
		if v.Name == name {
			return v
		}
	}
	c.t.Fatalf("VDI %q not in vdi list", name)
	return VDIInfo{}
}

// waitMembers waits until the cluster answers with quorum and n members
// are up (before formatting, so that the first epoch is whole).
func (c *Cluster) waitMembers(n int) {
	c.t.Helper()
	deadline := time.Now().Add(readyTimeout)
	var last Result
	for time.Now().Before(deadline) {
		for _, node := range c.Nodes {
			if !node.Running() {
				c.t.Fatalf("%s exited: %v", node.ID, node.proc.err)
			}
		}
		last = runCmd(quickTimeout, nil, nil, sheepBin, "--addr", c.Nodes[0].Addr(), "--timeout", "2s", "--json", "cluster", "info")
		var ci ClusterInfo
		if last.Code == 0 && json.Unmarshal([]byte(last.Stdout), &ci) == nil && ci.Status != "no quorum" {
			up := 0
			for _, ni := range ci.Nodes {
				if ni.State == "up" {
					up++
				}
			}
			if up >= n {
				return
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.t.Fatalf("cluster did not get %d members up: last %v", n, last)
}

// WaitOK waits until the cluster reports status ok (every member up).
func (c *Cluster) WaitOK() {
	c.t.Helper()
	r := runCmd(readyTimeout+10*time.Second, nil, nil, sheepBin, "--addr", c.anyAddr(), "--timeout", readyTimeout.String(), "cluster", "info", "--wait")
	if r.Code != 0 {
		c.t.Fatalf("cluster did not become ok: %v", r)
	}
}

// Kill kills node i with SIGKILL.
func (c *Cluster) Kill(i int) {
	c.t.Helper()
	c.Nodes[i].proc.kill()
}

// Restart starts node i again (after Kill), joining the other nodes.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	n := c.Nodes[i]
	if n.Running() {
		c.t.Fatalf("restart %s: still running", n.ID)
	}
	var join []string
	for _, o := range c.Nodes {
		if o != n {
			join = append(join, o.Addr())
		}
	}
	c.startNode(n, join)
}

// Stop unmounts every mount and kills every process; on failure it logs
// the tail of every log. Registered with t.Cleanup by NewCluster.
func (c *Cluster) Stop() {
	for _, m := range c.mounts {
		m.Unmount()
	}
	for _, n := range c.Nodes {
		if n.proc != nil {
			n.proc.kill()
		}
	}
	if c.t.Failed() {
		for _, n := range c.Nodes {
			logTail(c.t, n.Log, 40)
		}
		for _, m := range c.mounts {
			logTail(c.t, m.Log, 40)
		}
	}
}

// logTail logs the last n lines of a log file.
func logTail(t testing.TB, path string, n int) {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Logf("---- %s: %v", path, err)
		return
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	t.Logf("---- last %d lines of %s:\n%s", len(lines), path, strings.Join(lines, "\n"))
}

// ObjectFiles maps each object ID (16 hex digits) to its replica files:
// node ID -> path (under the node's data directory, .../XX/<oid>).
func (c *Cluster) ObjectFiles() map[string]map[string]string {
	c.t.Helper()
	out := map[string]map[string]string{}
	for _, n := range c.Nodes {
		for oid, p := range objectFilesIn(c.t, n.Dir) {
			if out[oid] == nil {
				out[oid] = map[string]string{}
			}
			out[oid][n.ID] = p
		}
	}
	return out
}

// objectFilesIn finds the object files under a node's data directory:
// files named by 16 hex digits in a directory named by their last two.
func objectFilesIn(t testing.TB, dir string) map[string]string {
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		name := d.Name()
		if d.Type().IsRegular() && isObjectName(name) && filepath.Base(filepath.Dir(p)) == name[14:] {
			out[name] = p
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	return out
}

// readObjectData reads the data part of an object file: its first 4 MiB
// (the block checksums follow them).
func readObjectData(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if len(b) > 4<<20 {
		b = b[:4<<20]
	}
	return b, err
}

func isObjectName(s string) bool {
	if len(s) != 16 {
		return false
	}
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdef", r) {
			return false
		}
	}
	return true
}

// dataOID and indexOID spell object IDs as the store names their files.
func dataOID(vdi uint32, idx uint32) string { return fmt.Sprintf("%016x", uint64(vdi)<<32|uint64(idx)) }
func indexOID(vdi uint32, chunk uint32) string {
	return fmt.Sprintf("%016x", uint64(1)<<63|uint64(vdi)<<32|uint64(chunk))
}

// ---------------------------------------------------------------------------
// Mounts.

// Mount is a sheepfs process serving a mount point.
type Mount struct {
	Dir   string
	Log   string
	Addrs []string
	args  []string // sheepfs's arguments
	env   []string // and environment, on top of the test's
	proc  *proc
	t     testing.TB
	once  sync.Once
}

// Path joins elem onto the mount point.
func (m *Mount) Path(elem ...string) string {
	return filepath.Join(append([]string{m.Dir}, elem...)...)
}

// VDI is the path of a VDI file.
func (m *Mount) VDI(name string) string { return m.Path("vdi", name) }

// Mount starts sheepfs on a fresh mount point, using addrs (default: every
// node, in order), and waits until cluster/info is readable.
func (c *Cluster) Mount(addrs ...string) *Mount {
	c.t.Helper()
	return c.mount(nil, addrs...)
}

// MountEnv is Mount with env on top of the test's environment for
// sheepfs (and for the sheepfs that KillAndRestart starts).
func (c *Cluster) MountEnv(env []string, addrs ...string) *Mount {
	c.t.Helper()
	return c.mountEnv(env, nil, addrs...)
}

// MountTLS is Mount with sheepfs talking TLS over the data port also to
// daemons on this machine (--no-local), as it does to remote ones.
func (c *Cluster) MountTLS(addrs ...string) *Mount {
	c.t.Helper()
	return c.mount([]string{"--no-local"}, addrs...)
}

func (c *Cluster) mount(extra []string, addrs ...string) *Mount {
	c.t.Helper()
	return c.mountEnv(nil, extra, addrs...)
}

func (c *Cluster) mountEnv(env, extra []string, addrs ...string) *Mount {
	c.t.Helper()
	if len(addrs) == 0 {
		addrs = c.Addrs()
	}
	k := len(c.mounts)
	m := &Mount{Dir: filepath.Join(c.Dir, fmt.Sprintf("mnt%d", k)), Log: filepath.Join(c.Dir, fmt.Sprintf("sheepfs%d.log", k)), Addrs: addrs, env: env, t: c.t}
	if err := os.MkdirAll(m.Dir, 0o755); err != nil {
		c.t.Fatal(err)
	}
	margs := []string{m.Dir, "--addr", strings.Join(addrs, ",")}
	if c.KeyFile != "" {
		margs = append(margs, "--key-file", c.KeyFile)
	}
	margs = append(margs, extra...)
	p, err := startProc(m.Log, env, sheepfsBin, margs...)
	if err != nil {
		c.t.Fatalf("start sheepfs: %v", err)
	}
	m.proc, m.args = p, margs
	c.mounts = append(c.mounts, m)
	m.waitServed()
	return m
}

// waitServed waits until m.proc serves the mount at m.Dir, and fails the
// test if it exits or does not within readyTimeout.
func (m *Mount) waitServed() {
	m.t.Helper()
	deadline := time.Now().Add(readyTimeout)
	var last Result
	for time.Now().Before(deadline) {
		if !m.proc.running() {
			logTail(m.t, m.Log, 40)
			m.t.Fatalf("sheepfs exited: %v", m.proc.err)
		}
		last = runCmd(quickTimeout, nil, nil, "bash", "-c", "mountpoint -q "+q(m.Dir)+" && cat "+q(m.Path("cluster", "info")))
		if last.Code == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	m.t.Fatalf("sheepfs did not mount %s: %v", m.Dir, last)
}

// KillAndRestart kills sheepfs with SIGKILL and, after down, starts a new
// one for the mount point, which takes the mount over from its holder. It
// returns when the new one answers (a read of cluster/info, which waits
// until then) and fails the test unless it took the mount over.
//
// The test process must hold no file of the mount: the new sheepfs is
// forked from it, and its exec closes the inherited files, each close a
// FLUSH that waits for a server, which is the process being started. The
// exec would never end (and ps, reading the stuck process, hangs too).
// Drive the mount's files from a subprocess.
func (m *Mount) KillAndRestart(down time.Duration) {
	m.t.Helper()
	if held := filesUnder(m.Dir); len(held) > 0 {
		m.t.Fatalf("KillAndRestart of %s while the test process holds %v: the new sheepfs's exec would wait forever", m.Dir, held)
	}
	var before int64
	if st, err := os.Stat(m.Log); err == nil {
		before = st.Size()
	}
	m.proc.kill()
	time.Sleep(down)
	p, err := startProc(m.Log, m.env, sheepfsBin, m.args...)
	if err != nil {
		m.t.Fatalf("start sheepfs: %v", err)
	}
	m.proc = p
	if r := runCmd(readyTimeout, nil, nil, "cat", m.Path("cluster", "info")); r.Code != 0 {
		logTail(m.t, m.Log, 20)
		m.t.Fatalf("the restarted sheepfs does not serve %s: %v", m.Dir, r)
	}
	if b, _ := os.ReadFile(m.Log); !strings.Contains(string(b[min(before, int64(len(b))):]), "taking over the mount") {
		logTail(m.t, m.Log, 20)
		m.t.Fatalf("the restarted sheepfs did not take the mount over")
	}
}

// filesUnder lists the files under dir this process has open. readlink
// of /proc/self/fd asks no FUSE server.
func filesUnder(dir string) []string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var held []string
	for _, e := range ents {
		if p, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(p, dir+"/") {
			held = append(held, p)
		}
	}
	return held
}

// Unmount unmounts (fusermount3 -u, falling back to a lazy unmount) and
// makes sure the sheepfs process is gone.
func (m *Mount) Unmount() { m.unmount(10 * time.Second) }

// unmount unmounts once and reports whether sheepfs ended within wait
// (false also when an earlier call unmounted).
func (m *Mount) unmount(wait time.Duration) bool {
	ended := false
	m.once.Do(func() {
		if r := runCmd(quickTimeout, nil, nil, "fusermount3", "-u", m.Dir); r.Code != 0 {
			m.t.Logf("fusermount3 -u %s: %v; unmounting lazily", m.Dir, strings.TrimSpace(r.Stderr))
			runCmd(quickTimeout, nil, nil, "fusermount3", "-u", "-z", m.Dir)
		}
		select {
		case <-m.proc.done:
			ended = true
		case <-time.After(wait):
			m.t.Logf("sheepfs for %s did not exit after unmount; killing it", m.Dir)
			m.proc.kill()
		}
	})
	return ended
}

// ---------------------------------------------------------------------------
// Helpers on the mount, all through subprocesses.

// holder is a python3 process that keeps a file open; it closes the file
// and exits when Release is called.
type holder struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	cancel context.CancelFunc
	done   chan struct{}
	stderr bytes.Buffer
}

// holdOpen opens path with the given os.open flags expression (for example
// "os.O_RDWR") in a python3 subprocess and waits until the open returned.
// It returns the holder, or the error message the open failed with.
func holdOpen(t testing.TB, path, flags string) (*holder, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	script := `
import os, sys
try:
    fd = os.open(sys.argv[1], ` + flags + `)
except OSError as e:
    print("error:", e.strerror, flush=True)
    sys.exit(3)
print("ready", flush=True)
sys.stdin.read()
os.close(fd)
`
	cmd := exec.CommandContext(ctx, "python3", "-c", script, path)
	h := &holder{cmd: cmd, cancel: cancel, done: make(chan struct{})}
	cmd.Stderr = &h.stderr
	cmd.WaitDelay = 5 * time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	h.stdin = stdin
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	line = strings.TrimSpace(line)
	go func() {
		io.Copy(io.Discard, stdout)
		cmd.Wait()
		close(h.done)
	}()
	if line == "ready" {
		t.Cleanup(h.Release)
		return h, ""
	}
	<-h.done
	cancel()
	if line == "" {
		t.Fatalf("python3 holding %s printed nothing: %s", path, h.stderr.String())
	}
	return nil, line
}

// Release closes the file and waits for the holder to exit.
func (h *holder) Release() {
	if h == nil {
		return
	}
	h.stdin.Close()
	<-h.done
	h.cancel()
}

// waitFor polls cond until it returns true or timeout passes; it reports
// whether cond became true. For conditions that settle asynchronously
// (the kernel sends FUSE RELEASE after close returns).
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// seekScript lists the data regions of a file with SEEK_DATA/SEEK_HOLE as
// JSON [[start, end], ...].
const seekScript = `
import errno, json, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
off, out = 0, []
while off < size:
    try:
        d = os.lseek(fd, off, os.SEEK_DATA)
    except OSError as e:
        if e.errno == errno.ENXIO:
            break
        raise
    h = os.lseek(fd, d, os.SEEK_HOLE)
    if h <= d:
        sys.exit("SEEK_HOLE from %d returned %d" % (d, h))
    out.append([d, h])
    off = h
print(json.dumps(out))
`

// dataRegions lists path's data regions with SEEK_DATA/SEEK_HOLE.
func dataRegions(t testing.TB, path string) [][2]int64 {
	t.Helper()
	r := run(t, quickTimeout, "python3", "-c", seekScript, path)
	var out [][2]int64
	if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil {
		t.Fatalf("seek script printed %q: %v", r.Stdout, err)
	}
	return out
}

// readZeros checks, in a subprocess, that count MiB of path at skip MiB
// read as zeros.
func readZeros(t testing.TB, path string, skipMiB, countMiB int64) {
	t.Helper()
	r := shellResult(cmdTimeout, fmt.Sprintf("cmp -n %d <(dd if=%s bs=1M skip=%d count=%d status=none) /dev/zero",
		countMiB<<20, q(path), skipMiB, countMiB))
	if r.Code != 0 {
		t.Errorf("%s [%d MiB, +%d MiB) does not read as zeros: %v", path, skipMiB, countMiB, r)
	}
}

// ---------------------------------------------------------------------------
// Clusters run by scripts/up and scripts/down.

// ScriptCluster is a local cluster managed by the project's scripts/up and
// scripts/down, with SHEEP_NODES, SHEEP_PORT, SHEEP_DATA and SHEEP_MNT
// pointing into the test's temporary directory. The scripts run from a
// copy of the source tree made of symlinks, so that the binaries they
// build land in a temporary bin/ and not in the repository.
type ScriptCluster struct {
	t     testing.TB
	root  string // the symlinked source tree
	Data  string
	Mnt   string
	Port  int
	Nodes int
	// OwnKey runs the scripts without $SHEEP_KEY_FILE, so that scripts/up
	// makes the cluster's key in SHEEP_DATA as for a new user; Sheep uses
	// it.
	OwnKey bool
}

// NewScriptCluster prepares (but does not start) a script-managed cluster
// of n nodes; scripts/down runs when the test ends.
func NewScriptCluster(t testing.TB, n int) *ScriptCluster {
	t.Helper()
	requireEnv(t, "go")
	dir := t.TempDir()
	sc := &ScriptCluster{t: t, root: filepath.Join(dir, "src"), Data: filepath.Join(dir, "data"),
		Mnt: filepath.Join(dir, "mnt"), Port: freeBase(t, n), Nodes: n}
	if err := os.MkdirAll(sc.root, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() == "bin" || e.Name() == ".git" || e.Name() == "e2e" {
			continue
		}
		if err := os.Symlink(filepath.Join(repoRoot, e.Name()), filepath.Join(sc.root, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(sc.cleanup)
	return sc
}

func (sc *ScriptCluster) env() []string {
	env := []string{
		"SHEEP_NODES=" + strconv.Itoa(sc.Nodes),
		"SHEEP_PORT=" + strconv.Itoa(sc.Port),
		"SHEEP_DATA=" + sc.Data,
		"SHEEP_MNT=" + sc.Mnt,
	}
	if sc.OwnKey {
		env = append(env, auth.EnvFile+"=") // scripts/up makes $SHEEP_DATA/cluster.key
	}
	return env
}

func (sc *ScriptCluster) script(name string) Result {
	return runCmd(5*time.Minute, sc.env(), nil, filepath.Join(sc.root, "scripts", name))
}

// Up runs scripts/up and fails the test unless it succeeds.
func (sc *ScriptCluster) Up() {
	sc.t.Helper()
	if r := sc.script("up"); r.Code != 0 {
		sc.t.Fatalf("scripts/up: %v", r)
	}
}

// Down runs scripts/down and fails the test unless it succeeds and every
// process it started is gone.
func (sc *ScriptCluster) Down() {
	sc.t.Helper()
	if r := sc.script("down"); r.Code != 0 {
		sc.t.Fatalf("scripts/down: %v", r)
	}
	if r := runCmd(quickTimeout, nil, nil, "mountpoint", "-q", sc.Mnt); r.Code == 0 {
		sc.t.Fatalf("scripts/down left %s mounted", sc.Mnt)
	}
}

// Addr is node i's data address.
func (sc *ScriptCluster) Addr(i int) string { return "127.0.0.1:" + strconv.Itoa(sc.Port+10*i) }

// VDI is the path of a VDI file on the mount.
func (sc *ScriptCluster) VDI(name string) string { return filepath.Join(sc.Mnt, "vdi", name) }

// pid returns the pid scripts/up recorded for a process ("node0", "sheepfs").
func (sc *ScriptCluster) pid(name string) int {
	b, err := os.ReadFile(filepath.Join(sc.Data, name+".pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// Kill kills node i with SIGKILL and waits until it is dead.
func (sc *ScriptCluster) Kill(i int) {
	sc.t.Helper()
	pid := sc.pid(fmt.Sprintf("node%d", i))
	if pid <= 0 {
		sc.t.Fatalf("no pid file for node%d", i)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		sc.t.Fatalf("kill node%d (pid %d): %v", i, pid, err)
	}
	if !waitFor(30*time.Second, func() bool { return !pidAlive(pid) }) {
		sc.t.Fatalf("node%d (pid %d) survived SIGKILL", i, pid)
	}
}

// pidAlive reports whether pid runs (zombies count as dead).
func pidAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) S ...: the state follows the last ')'.
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}

// Sheep runs the admin CLI against node i.
func (sc *ScriptCluster) Sheep(i int, args ...string) Result {
	var env []string
	if sc.OwnKey {
		env = []string{auth.EnvFile + "=" + filepath.Join(sc.Data, "cluster.key")}
	}
	return runCmd(cmdTimeout, env, nil, sheepBin, append([]string{"--addr", sc.Addr(i), "--timeout", "60s"}, args...)...)
}

func (sc *ScriptCluster) cleanup() {
	r := sc.script("down")
	if r.Code != 0 {
		sc.t.Logf("scripts/down at cleanup: %v", r)
	}
	// Whatever scripts/down left behind, a holder too (it keeps a mount
	// whose sheepfs died while a file is open, which no unmount ends).
	runCmd(quickTimeout, nil, nil, "fusermount3", "-u", "-z", sc.Mnt)
	runCmd(quickTimeout, nil, nil, "pkill", "-KILL", "-f", "--", " "+sc.Mnt+" --hold$")
	for _, name := range sc.procNames() {
		if pid := sc.pid(name); pid > 0 && pidAlive(pid) {
			if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && (bytes.Contains(cmdline, []byte(sc.Data)) || bytes.Contains(cmdline, []byte(sc.Mnt))) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if sc.t.Failed() {
		for _, name := range sc.procNames() {
			logTail(sc.t, filepath.Join(sc.Data, name+".log"), 40)
		}
	}
}

func (sc *ScriptCluster) procNames() []string {
	names := []string{"sheepfs"}
	for i := 0; i < sc.Nodes; i++ {
		names = append(names, fmt.Sprintf("node%d", i))
	}
	return names
}

// jsonUnmarshal decodes JSON printed by a subprocess.
func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }
