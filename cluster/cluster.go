// Package cluster keeps the agreed cluster metadata: who is a member (the
// numbered epochs), whether and how the cluster is formatted, the VDI
// namespace and write locks. memberlist decides who is alive; a raft log,
// replicated to every node, records the decisions in one order. Voters (3 or
// 5) are chosen automatically among the members; every other node follows
// the log as a non-voter.
package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/rs/zerolog"

	"github.com/sheepfs/sheepfs/auth"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
)

// Port offsets from a node's data port.
const (
	// GossipPortOffset: memberlist listens on data port + 1 (TCP and UDP).
	GossipPortOffset = 1
	// RaftPortOffset: the raft transport listens on data port + 2.
	RaftPortOffset = 2
)

// Config configures a node's membership.
type Config struct {
	// ID is the node's persistent name (required).
	ID ids.NodeID
	// Dir holds the raft log and snapshots (required).
	Dir string
	// Host is the IP address to bind and advertise (required).
	Host string
	// Port is the data port; gossip and raft use the next two ports.
	Port int
	// Join lists data addresses (host:port) of running nodes to join. A
	// node with no Join and no raft state of its own starts a new cluster.
	Join []string
	// DeadGrace is how long a member must be gone before a new epoch
	// without it is agreed. Default 5 s.
	DeadGrace time.Duration
	// Lease is how long a node keeps acknowledging writes after its last
	// contact with the raft leader (see HasQuorum). Default 3 s.
	Lease time.Duration
	// OnGone, if set, is called with the data address of every node that
	// gossip declares dead (or gone). It must not block.
	OnGone func(addr string)
	// AroundState, if set, is called before and after each new State is
	// published, on the goroutine that publishes it. It must not block or
	// call back into the Cluster.
	AroundState func()
	// Zone is the node's failure domain ("" for a zone of its own).
	Zone string
	// Weight is the node's capacity in MiB (0: unknown); SetWeight
	// changes it at run time.
	Weight uint64
	// Store names the node's data directory (see Member.Store).
	Store string
	// Boot names the boot of this machine (see Member.Boot).
	Boot string
	// Keys are the cluster's keys: raft and gossip admit only nodes
	// holding them. Required.
	Keys *auth.Keys
	// Dial connects to other nodes' data ports (nil: plain TCP, for
	// tests that run without keys).
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Log receives the node's logs.
	Log zerolog.Logger
}

// Cluster is one node's view of, and voice in, the cluster.
type Cluster struct {
	cfg  Config
	log  zerolog.Logger
	fsm  *fsm
	raft *raft.Raft
	ml   *memberlist.Memberlist
	logs *raftboltdb.BoltStore
	tr   *raft.NetworkTransport
	pool proto.Pool
	// keyring is memberlist's: it follows cfg.Keys through a key roll.
	keyring *memberlist.Keyring

	events chan struct{}
	gone   sync.Map // node name -> true while gossip holds it dead or gone
	meta   *delegate
	// refused: node ID -> time.Time when the leader found its data port
	// closed (a killed process), which marks it down at once.
	refused   sync.Map
	reporting sync.Map // node ID -> time.Time of this node's last report
	stop      chan struct{}
	stopCtx   context.Context // ends with stop
	stopped   context.CancelFunc
	wg        sync.WaitGroup
	closed    sync.Once

	// Freshness (fresh.go): t0 starts the monotonic clock of confirmed,
	// the time in ns since t0 as of which the state was last confirmed
	// (0: never).
	t0         time.Time
	freshFor   time.Duration
	confirmed  atomic.Int64
	confirmMu  sync.Mutex
	confirming chan struct{} // closed when the confirmation under way ends
	confirmErr error         // how the last one failed
	// barrierTerm is the last term in which this node, as leader, has
	// applied every entry of the terms before (fresh.go).
	barrierTerm atomic.Uint64
}

// nodeMeta is gossiped in memberlist (well under its 512-byte limit: the
// fields are bounded by checkMeta).
type nodeMeta struct {
	Data   string `json:"d"`
	Raft   string `json:"r"`
	Zone   string `json:"z,omitempty"`
	Weight uint64 `json:"w,omitempty"`
	Store  string `json:"s,omitempty"`
	Boot   string `json:"b,omitempty"`
}

// parseMeta decodes and checks a member's gossiped metadata.
func parseMeta(b []byte) (nodeMeta, bool) {
	var m nodeMeta
	if json.Unmarshal(b, &m) != nil || m.Data == "" || len(m.Data) > 256 || len(m.Raft) > 256 ||
		len(m.Store) > 64 || len(m.Boot) > 64 || m.Weight > 1<<40 || CheckZone(m.Zone) != nil {
		return nodeMeta{}, false
	}
	return m, true
}

type delegate struct {
	mu   sync.Mutex
	meta []byte
}

func (d *delegate) NodeMeta(limit int) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.meta
}
func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

type events struct {
	ch     chan struct{}
	gone   *sync.Map
	onGone func(addr string) // may be nil
}

func (e *events) poke() {
	select {
	case e.ch <- struct{}{}:
	default:
	}
}
func (e *events) NotifyJoin(n *memberlist.Node) { e.gone.Delete(n.Name); e.poke() }
func (e *events) NotifyLeave(n *memberlist.Node) {
	e.gone.Store(n.Name, true)
	if m, ok := parseMeta(n.Meta); ok && e.onGone != nil {
		e.onGone(m.Data)
	}
	e.poke()
}
func (e *events) NotifyUpdate(n *memberlist.Node) { e.poke() }

// Start joins or starts a cluster and returns once the node's own services
// listen. The node becomes useful when State shows it as a member.
func Start(cfg Config) (*Cluster, error) {
	if cfg.DeadGrace == 0 {
		cfg.DeadGrace = 5 * time.Second
	}
	if cfg.Lease == 0 {
		cfg.Lease = 3 * time.Second
	}
	c := &Cluster{cfg: cfg, log: cfg.Log.With().Str("node", string(cfg.ID)).Logger(),
		fsm: newFSM(), events: make(chan struct{}, 1), stop: make(chan struct{}),
		t0: time.Now(), freshFor: freshFor(cfg.DeadGrace)}
	c.stopCtx, c.stopped = context.WithCancel(context.Background())
	c.fsm.around = cfg.AroundState
	c.pool.Dial = cfg.Dial
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, errs.E(errs.IO, "cluster dir: %w", err)
	}
	hlog := hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: logWriter{c.log}})

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.Logger = hlog
	rc.HeartbeatTimeout = 500 * time.Millisecond
	rc.ElectionTimeout = 500 * time.Millisecond
	rc.LeaderLeaseTimeout = 250 * time.Millisecond
	rc.SnapshotThreshold = 1024
	rc.TrailingLogs = 1024

	var err error
	c.logs, err = raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.Dir, "raft.db")})
	if err != nil {
		return nil, errs.E(errs.IO, "open raft log: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStore(cfg.Dir, 2, logWriter{c.log})
	if err != nil {
		c.logs.Close()
		return nil, errs.E(errs.IO, "open raft snapshots: %w", err)
	}
	c.setAsideBadSnapshots(snaps)
	raftAddr := net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port+RaftPortOffset))
	adv, err := net.ResolveTCPAddr("tcp", raftAddr)
	if err != nil {
		c.logs.Close()
		return nil, errs.E(errs.Invalid, "raft address %s: %w", raftAddr, err)
	}
	if cfg.Keys == nil || !cfg.Keys.IsCluster() {
		c.logs.Close()
		return nil, errs.E(errs.Invalid, "a node needs the cluster key (not a client key)")
	}
	stream, err := newTLSStream(raftAddr, adv, cfg.Keys, c.refusedPeer)
	if err == nil {
		c.tr = raft.NewNetworkTransportWithLogger(stream, 4, 10*time.Second, hlog)
	}
	if err != nil {
		c.logs.Close()
		return nil, errs.E(errs.IO, "raft transport on %s: %w", raftAddr, err)
	}
	existing, err := raft.HasExistingState(c.logs, c.logs, snaps)
	if err != nil {
		c.shutdownPartial()
		return nil, errs.E(errs.IO, "read raft state: %w", err)
	}
	if !existing && len(cfg.Join) == 0 {
		c.log.Info().Msg("starting a new cluster")
		boot := raft.Configuration{Servers: []raft.Server{{ID: rc.LocalID, Address: raft.ServerAddress(raftAddr)}}}
		if err := raft.BootstrapCluster(rc, c.logs, c.logs, snaps, c.tr, boot); err != nil {
			c.shutdownPartial()
			return nil, errs.E(errs.IO, "bootstrap: %w", err)
		}
	}
	c.raft, err = raft.NewRaft(rc, c.fsm, c.logs, c.logs, snaps, c.tr)
	if err != nil {
		c.shutdownPartial()
		return nil, errs.E(errs.IO, "start raft: %w", err)
	}

	if err := CheckZone(cfg.Zone); err != nil {
		c.raft.Shutdown()
		c.shutdownPartial()
		return nil, err
	}
	c.meta = &delegate{}
	c.setMeta()
	mc := memberlist.DefaultLANConfig()
	mc.Name = string(cfg.ID)
	mc.BindAddr = cfg.Host
	mc.BindPort = cfg.Port + GossipPortOffset
	mc.AdvertiseAddr = cfg.Host
	mc.AdvertisePort = mc.BindPort
	mc.Delegate = c.meta
	mc.Events = &events{ch: c.events, gone: &c.gone, onGone: cfg.OnGone}
	mc.LogOutput = io.Discard
	mc.ProbeInterval = probeInterval // freshFor depends on these two
	mc.ProbeTimeout = 300 * time.Millisecond
	mc.GossipInterval = 100 * time.Millisecond
	mc.SuspicionMult = suspicionMult
	// Gossip is encrypted and authenticated with keys derived from the
	// cluster key: a node without it is not heard, and cannot hear.
	gk := cfg.Keys.Gossip()
	mc.SecretKey = gk[0]
	mc.Keyring, err = memberlist.NewKeyring(gk, gk[0])
	if err != nil {
		c.raft.Shutdown()
		c.shutdownPartial()
		return nil, errs.E(errs.Invalid, "gossip keys: %w", err)
	}
	mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	c.keyring = mc.Keyring
	cfg.Keys.OnChange(c.syncGossipKeys)
	c.ml, err = memberlist.Create(mc)
	if err != nil {
		c.raft.Shutdown()
		c.shutdownPartial()
		return nil, errs.E(errs.IO, "start gossip on port %d: %w", mc.BindPort, err)
	}
	c.wg.Add(3)
	go c.joinLoop()
	go c.leaderLoop()
	go c.confirmLoop()
	return c, nil
}

// setAsideBadSnapshots moves saved raft snapshots whose state does not
// validate out of raft's way, into DIR/snapshots-rejected: raft saves a
// snapshot a peer installs before it restores it, and would otherwise try
// the refused one again at every start (and not start without another).
// raft then starts from the newest good snapshot and the log after it,
// which the refused install left in place; the leader sends what is
// missing.
func (c *Cluster) setAsideBadSnapshots(snaps *raft.FileSnapshotStore) {
	list, err := snaps.List()
	if err != nil {
		return
	}
	for _, m := range list {
		_, rc, err := snaps.Open(m.ID)
		if err != nil {
			continue
		}
		_, err = decodeSnapshot(rc)
		rc.Close()
		if err == nil {
			continue
		}
		dst := filepath.Join(c.cfg.Dir, "snapshots-rejected")
		if merr := os.MkdirAll(dst, 0o755); merr == nil {
			merr = os.Rename(filepath.Join(c.cfg.Dir, "snapshots", m.ID), filepath.Join(dst, m.ID))
			if merr != nil {
				err = fmt.Errorf("%w (and moving it aside: %v)", err, merr)
			}
		}
		c.log.Warn().Err(err).Str("snapshot", m.ID).Msg("refused a saved cluster state snapshot; set aside in snapshots-rejected")
	}
}

// syncGossipKeys makes gossip use the keys in use now: every one of them
// decrypts, the first encrypts. During a key roll every node accepts the
// old key and the new one before any node sends with the new one.
func (c *Cluster) syncGossipKeys() {
	want := c.cfg.Keys.Gossip()
	if len(want) == 0 {
		return
	}
	for _, k := range want {
		if err := c.keyring.AddKey(k); err != nil {
			c.log.Warn().Err(err).Msg("gossip key")
		}
	}
	if err := c.keyring.UseKey(want[0]); err != nil {
		c.log.Warn().Err(err).Msg("gossip key")
	}
	for _, k := range c.keyring.GetKeys() {
		if !slices.ContainsFunc(want, func(w []byte) bool { return bytes.Equal(w, k) }) {
			_ = c.keyring.RemoveKey(k)
		}
	}
}

// refusedPeer logs connections to the raft port refused (see
// auth.Listener.OnRefused).
func (c *Cluster) refusedPeer(remote string, err error, n int) {
	c.log.Warn().Str("port", "raft").Str("remote", remote).Int("count", n).Err(err).Msg("refused connections: not peers of this cluster")
}

// self is this node's metadata.
func (c *Cluster) self() nodeMeta {
	c.meta.mu.Lock()
	w := c.cfg.Weight
	c.meta.mu.Unlock()
	return nodeMeta{Data: net.JoinHostPort(c.cfg.Host, strconv.Itoa(c.cfg.Port)),
		Raft: net.JoinHostPort(c.cfg.Host, strconv.Itoa(c.cfg.Port+RaftPortOffset)),
		Zone: c.cfg.Zone, Weight: w, Store: c.cfg.Store, Boot: c.cfg.Boot}
}

// setMeta encodes this node's metadata for gossip.
func (c *Cluster) setMeta() {
	b, _ := json.Marshal(c.self())
	c.meta.mu.Lock()
	c.meta.meta = b
	c.meta.mu.Unlock()
}

// SetWeight changes the node's weight (capacity in MiB) and gossips it;
// the leader then agrees a new epoch in which the node's share of the
// data follows it.
func (c *Cluster) SetWeight(w uint64) {
	c.meta.mu.Lock()
	same := c.cfg.Weight == w
	c.cfg.Weight = w
	c.meta.mu.Unlock()
	if same {
		return
	}
	c.setMeta()
	if err := c.ml.UpdateNode(time.Second); err != nil {
		c.log.Warn().Err(err).Msg("gossip the new weight")
	}
	select {
	case c.events <- struct{}{}:
	default:
	}
}

// Weight returns the weight the node gossips.
func (c *Cluster) Weight() uint64 {
	c.meta.mu.Lock()
	defer c.meta.mu.Unlock()
	return c.cfg.Weight
}

func (c *Cluster) shutdownPartial() {
	if c.tr != nil {
		c.tr.Close()
	}
	if c.logs != nil {
		c.logs.Close()
	}
}

// Close leaves the cluster (without waiting for a new epoch) and stops.
func (c *Cluster) Close() error {
	c.closed.Do(func() {
		close(c.stop)
		c.stopped()
		c.wg.Wait()
		c.ml.Leave(time.Second)
		c.ml.Shutdown()
		c.raft.Shutdown().Error()
		c.tr.Close()
		c.logs.Close()
		c.pool.Close()
	})
	return nil
}

// ID returns the node's ID.
func (c *Cluster) ID() ids.NodeID { return c.cfg.ID }

// State returns the latest agreed state this node knows. Never nil.
func (c *Cluster) State() *State { return c.fsm.state.Load() }

// Changed returns a channel that is closed at the next state change.
func (c *Cluster) Changed() <-chan struct{} { return c.fsm.watch() }

// WaitFor waits until ok(State()) holds or ctx ends.
func (c *Cluster) WaitFor(ctx context.Context, ok func(*State) bool) (*State, error) {
	for {
		ch := c.Changed()
		s := c.State()
		if ok(s) {
			return s, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return s, errs.E(errs.NotReady, "waiting for cluster state: %w", ctx.Err())
		case <-c.stop:
			return s, errs.E(errs.Closed, "node is shutting down")
		}
	}
}

// HasQuorum reports whether this node has heard from a raft leader within
// the lease (or is the leader). A node without quorum must not acknowledge
// writes: it may be on the minority side of a partition.
func (c *Cluster) HasQuorum() bool {
	switch c.raft.State() {
	case raft.Leader:
		return true
	case raft.Follower:
		addr, _ := c.raft.LeaderWithID()
		return addr != "" && time.Since(c.raft.LastContact()) < c.cfg.Lease
	}
	return false
}

// Gone reports whether gossip has declared node id dead (or gone) and has
// not seen it since. Cheap: for ordering requests on the I/O path.
func (c *Cluster) Gone(id ids.NodeID) bool {
	_, ok := c.gone.Load(string(id))
	return ok
}

// Leader returns the raft leader's node ID, or "" if none is known.
func (c *Cluster) Leader() ids.NodeID {
	_, id := c.raft.LeaderWithID()
	return ids.NodeID(id)
}

// Alive returns the members memberlist currently believes alive, with their
// data addresses.
func (c *Cluster) Alive() []Member {
	var out []Member
	for _, n := range c.ml.Members() {
		if n.State != memberlist.StateAlive {
			continue
		}
		m, ok := parseMeta(n.Meta)
		if !ok {
			continue
		}
		out = append(out, Member{ID: ids.NodeID(n.Name), Addr: m.Data, Zone: m.Zone, Weight: m.Weight, Store: m.Store, Boot: m.Boot})
	}
	slices.SortFunc(out, func(a, b Member) int { return cmpID(a.ID, b.ID) })
	return out
}

func cmpID(a, b ids.NodeID) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Apply appends cmd to the cluster log and returns its result, forwarding
// to the leader when this node is not it. It fails with errs.NotReady when
// there is no leader (no quorum).
func (c *Cluster) Apply(ctx context.Context, cmd Command) (Result, error) {
	if cmd.Time == 0 {
		cmd.Time = now()
	}
	if cmd.Token == "" {
		// The same bytes go out at every retry below: if an earlier
		// attempt was applied (its answer lost with the leader), the
		// retry answers its result instead of applying it again.
		var b [12]byte
		_, _ = rand.Read(b[:])
		cmd.Token = hex.EncodeToString(b[:])
	}
	// Out of bounds (a client's token, say) never reaches the log.
	if err := checkCommand(&cmd); err != nil {
		return Result{}, err
	}
	data, err := json.Marshal(cmd)
	if err != nil {
		return Result{}, errs.E(errs.Invalid, "encode command: %w", err)
	}
	var lastErr error
	for {
		if c.raft.State() == raft.Leader {
			r, _, err := c.ApplyLocal(data)
			if !errs.Is(err, errs.NotReady) {
				return r, err
			}
			lastErr = err
		} else if leader := c.Leader(); leader != "" {
			addr := c.addrOf(leader)
			if addr != "" {
				resp, err := c.pool.Get(addr).Call(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpApply}, Data: data})
				if err == nil {
					var r Result
					if err := json.Unmarshal(resp.Data, &r); err != nil {
						return Result{}, errs.E(errs.IO, "decode leader answer: %w", err)
					}
					c.waitApplied(ctx, resp.Aux)
					return r, nil
				}
				if k := errs.KindOf(err); k != errs.NotReady && k != errs.IO {
					return Result{}, err
				}
				lastErr = err
			}
		}
		select {
		case <-ctx.Done():
			if lastErr == nil {
				lastErr = errs.E(errs.NotReady, "no cluster leader (no quorum?)")
			}
			return Result{}, errs.E(errs.NotReady, "cluster %s: %w", cmd.Op, lastErr)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// CatchUp waits until this node has applied every command the leader had
// applied when it asked: a read of the state afterwards sees every change
// acknowledged before the call, whichever node it was made through.
func (c *Cluster) CatchUp(ctx context.Context) error {
	if c.raft.State() == raft.Leader {
		return nil
	}
	return c.syncWithLeader(ctx)
}

// waitApplied waits (briefly) until this node has applied the log up to
// index, so that a client sees its own change through any node.
func (c *Cluster) waitApplied(ctx context.Context, index uint64) {
	deadline := time.Now().Add(5 * time.Second)
	for c.fsm.applied.Load() < index && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(2 * time.Millisecond)
	}
}

// ApplyLocal applies an encoded command on this node, which must be the
// leader (errs.NotReady otherwise). It waits until the entry is committed
// and applied here, and returns the result and the entry's log index. The
// result's error, if any, is returned as the error.
func (c *Cluster) ApplyLocal(data []byte) (Result, uint64, error) {
	var cmd Command
	if err := json.Unmarshal(data, &cmd); err != nil {
		return Result{}, 0, errs.E(errs.Invalid, "undecodable cluster command: %w", err)
	}
	if c.raft.State() != raft.Leader {
		return Result{}, 0, errs.E(errs.NotReady, "node %s is not the cluster leader", c.cfg.ID)
	}
	f := c.raft.Apply(data, 10*time.Second)
	if err := f.Error(); err != nil {
		return Result{}, 0, errs.E(errs.NotReady, "cluster log: %w", err)
	}
	r, _ := f.Response().(Result)
	return r, f.Index(), r.Err
}

// ApplyForwarded applies a command another node forwarded to this one, the
// leader. Membership is not among them: only the leader changes it, from
// its own view of gossip. The command goes into the log as decoded, so
// nothing it carried beyond the known fields is kept.
func (c *Cluster) ApplyForwarded(data []byte) (Result, uint64, error) {
	var cmd Command
	if err := json.Unmarshal(data, &cmd); err != nil {
		return Result{}, 0, errs.E(errs.Invalid, "undecodable cluster command: %w", err)
	}
	if cmd.Op == CmdMembers {
		return Result{}, 0, errs.E(errs.Invalid, "membership changes only by the leader's view of gossip, not by a forwarded command")
	}
	if err := checkCommand(&cmd); err != nil {
		return Result{}, 0, err
	}
	data, err := json.Marshal(cmd)
	if err != nil {
		return Result{}, 0, errs.E(errs.Invalid, "encode command: %w", err)
	}
	return c.ApplyLocal(data)
}

// addrOf returns a node's data address from gossip or the agreed members.
func (c *Cluster) addrOf(id ids.NodeID) string {
	if m, ok := c.State().Member(id); ok {
		return m.Addr
	}
	for _, m := range c.Alive() {
		if m.ID == id {
			return m.Addr
		}
	}
	return ""
}

// gossipAddr turns a data address into the gossip address next to it.
func gossipAddr(data string) (string, error) {
	host, port, err := net.SplitHostPort(data)
	if err != nil {
		return "", err
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return "", err
	}
	return net.JoinHostPort(host, strconv.Itoa(p+GossipPortOffset)), nil
}

// joinLoop joins the seeds at start, and keeps rejoining the members of
// the agreed state that gossip does not see (memberlist does not heal
// partitions by itself).
func (c *Cluster) joinLoop() {
	defer c.wg.Done()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	var warned time.Time
	for {
		alive := map[ids.NodeID]bool{}
		for _, m := range c.Alive() {
			alive[m.ID] = true
		}
		var targets []string
		for _, a := range c.cfg.Join {
			if g, err := gossipAddr(a); err == nil {
				targets = append(targets, g)
			}
		}
		for _, m := range c.State().Members {
			if !alive[m.ID] {
				if g, err := gossipAddr(m.Addr); err == nil {
					targets = append(targets, g)
				}
			}
		}
		// Until it is a member, a node keeps joining its seeds: started
		// together, the others may have found each other and not yet the
		// node that runs the cluster.
		_, member := c.State().Member(c.cfg.ID)
		if len(targets) > 0 && (!member || len(alive) <= 1 || len(alive) < len(c.State().Members)) {
			if _, err := c.ml.Join(targets); err != nil {
				if !member && time.Since(warned) > 30*time.Second {
					// Gossip is encrypted with the cluster key: a node
					// with another key reaches nobody.
					c.log.Warn().Err(err).Strs("targets", targets).Msg("cannot join the cluster yet (its nodes down or unreachable, or they hold another cluster key)")
					warned = time.Now()
				} else {
					c.log.Debug().Err(err).Strs("targets", targets).Msg("join")
				}
			}
		}
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
	}
}

// leaderLoop, on the leader, turns what gossip sees into agreed decisions:
// raft voters and non-voters, and epochs.
func (c *Cluster) leaderLoop() {
	defer c.wg.Done()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	goneSince := map[ids.NodeID]time.Time{}
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		case <-c.events:
		}
		if c.raft.State() != raft.Leader {
			clear(goneSince)
			continue
		}
		if err := c.reconcile(goneSince); err != nil {
			c.log.Warn().Err(err).Msg("reconcile membership")
		}
	}
}

func (c *Cluster) reconcile(goneSince map[ids.NodeID]time.Time) error {
	nowT := time.Now()
	alive := map[ids.NodeID]nodeMeta{}
	reachable := map[ids.NodeID]bool{} // alive and its data port not found closed
	suspect := map[ids.NodeID]bool{}   // gossip suspects it, not yet dead
	for _, n := range c.ml.Members() {
		if n.State == memberlist.StateSuspect {
			if _, ok := parseMeta(n.Meta); ok && validID(n.Name) {
				suspect[ids.NodeID(n.Name)] = true
			}
		}
		if n.State != memberlist.StateAlive {
			continue
		}
		// A member with a bad name or metadata is left out (one bad
		// member must not make every member list unacceptable).
		if m, ok := parseMeta(n.Meta); ok && m.Raft != "" && validID(n.Name) {
			id := ids.NodeID(n.Name)
			alive[id] = m
			reachable[id] = !c.refusedRecently(id, nowT)
		}
	}
	alive[c.cfg.ID] = c.self()
	reachable[c.cfg.ID] = true
	for id := range goneSince {
		if _, ok := alive[id]; ok {
			delete(goneSince, id)
		}
	}
	gone := func(id ids.NodeID) bool {
		if _, ok := alive[id]; ok {
			return false
		}
		if _, ok := goneSince[id]; !ok {
			goneSince[id] = nowT
		}
		return nowT.Sub(goneSince[id]) >= c.cfg.DeadGrace
	}

	// Raft configuration.
	cf := c.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return err
	}
	servers := cf.Configuration().Servers
	inConf := map[ids.NodeID]raft.Server{}
	voters := 0
	for _, s := range servers {
		id := ids.NodeID(s.ID)
		if s.Suffrage == raft.Voter && gone(id) {
			c.log.Info().Str("peer", string(id)).Msg("removing dead voter")
			if err := c.raft.RemoveServer(s.ID, 0, 5*time.Second).Error(); err != nil {
				return err
			}
			continue
		}
		if s.Suffrage != raft.Voter && gone(id) {
			if err := c.raft.RemoveServer(s.ID, 0, 5*time.Second).Error(); err != nil {
				return err
			}
			continue
		}
		inConf[id] = s
		if s.Suffrage == raft.Voter {
			voters++
		}
	}
	target := 3
	if len(alive) >= 5 {
		target = 5
	}
	ordered := make([]ids.NodeID, 0, len(alive))
	for id := range alive {
		ordered = append(ordered, id)
	}
	slices.Sort(ordered)
	for _, id := range ordered {
		m := alive[id]
		s, ok := inConf[id]
		switch {
		case ok && s.Suffrage == raft.Voter:
			if string(s.Address) != m.Raft {
				if err := c.raft.AddVoter(s.ID, raft.ServerAddress(m.Raft), 0, 5*time.Second).Error(); err != nil {
					return err
				}
			}
		case voters < target:
			c.log.Info().Str("peer", string(id)).Msg("adding voter")
			if err := c.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(m.Raft), 0, 5*time.Second).Error(); err != nil {
				return err
			}
			voters++
		case !ok || string(s.Address) != m.Raft:
			c.log.Info().Str("peer", string(id)).Msg("adding non-voter")
			if err := c.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(m.Raft), 0, 5*time.Second).Error(); err != nil {
				return err
			}
		}
	}

	// Epoch: alive nodes plus members not yet gone for the grace period,
	// which are down meanwhile (as are alive ones whose data port was
	// found closed a moment ago: a killed process that gossip has not
	// noticed yet).
	st := c.State()
	want := make([]Member, 0, len(alive))
	for id, m := range alive {
		want = append(want, Member{ID: id, Addr: m.Data, Zone: m.Zone, Weight: m.Weight, Store: m.Store, Boot: m.Boot, Down: !reachable[id]})
	}
	for _, m := range st.Members {
		if _, ok := alive[m.ID]; !ok && !gone(m.ID) {
			// Marked down once gossip holds it dead, not while it only
			// suspects it: a slow node (a pause, a lost probe) would
			// cost a down/up pair of epochs and a check of everything it
			// holds. A closed data port marks it down at once anyway.
			if !suspect[m.ID] || c.refusedRecently(m.ID, nowT) {
				m.Down = true
			}
			want = append(want, m)
		}
	}
	slices.SortFunc(want, func(a, b Member) int { return cmpID(a.ID, b.ID) })
	if !slices.Equal(want, st.Members) {
		c.log.Info().Int("members", len(want)).Uint64("epoch", uint64(st.Epoch)+1).Msg("new epoch")
		data, _ := json.Marshal(Command{Op: CmdMembers, Members: want, Time: now()})
		if _, _, err := c.ApplyLocal(data); err != nil {
			return err
		}
	}
	return nil
}

// validID reports whether a gossiped member name can be a node ID.
func validID(name string) bool {
	return name != "" && len(name) <= 64 && !strings.ContainsAny(name, "/ \t\n")
}

// refusedWindow is how long a closed data port, found by the leader, marks
// a node down although gossip still holds it alive.
const refusedWindow = 5 * time.Second

func (c *Cluster) refusedRecently(id ids.NodeID, now time.Time) bool {
	v, ok := c.refused.Load(id)
	return ok && now.Sub(v.(time.Time)) < refusedWindow
}

// ReportUnreachable tells the leader that a request to member id failed
// because its connection broke or was refused. The leader checks for
// itself: if the member's data port refuses connections (its process is
// gone), the member is marked down at once, and writes go on without it
// instead of waiting for gossip to notice. Reports of one member are sent
// at most every 500 ms; the call never blocks.
func (c *Cluster) ReportUnreachable(id ids.NodeID) {
	now := time.Now()
	if v, ok := c.reporting.Load(id); ok && now.Sub(v.(time.Time)) < 500*time.Millisecond {
		return
	}
	c.reporting.Store(id, now)
	m, ok := c.State().Member(id)
	if !ok || m.Down || id == c.cfg.ID {
		return
	}
	go func() {
		if c.raft.State() == raft.Leader {
			c.CheckUnreachable(id)
			return
		}
		leader := c.Leader()
		addr := c.addrOf(leader)
		if leader == "" || addr == "" {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, _ = c.pool.Get(addr).Call(ctx, &proto.Msg{Header: proto.Header{Op: proto.OpReportDown}, Data: []byte(id)})
	}()
}

// CheckUnreachable, on the leader, dials member id's data port and marks
// it down if the port is closed. Anything but a refused connection (a
// timeout, say: a slow node or a partition) is left to gossip.
func (c *Cluster) CheckUnreachable(id ids.NodeID) {
	if c.raft.State() != raft.Leader {
		return
	}
	m, ok := c.State().Member(id)
	if !ok || m.Down || id == c.cfg.ID {
		return
	}
	conn, err := net.DialTimeout("tcp", m.Addr, 500*time.Millisecond)
	if err == nil {
		conn.Close()
		return
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return
	}
	c.log.Info().Str("peer", string(id)).Msg("data port closed: marking the node down")
	c.refused.Store(id, time.Now())
	select {
	case c.events <- struct{}{}:
	default:
	}
}

// logWriter sends library log lines to zerolog.
type logWriter struct{ log zerolog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	msg := string(p)
	for len(msg) > 0 && msg[len(msg)-1] == '\n' {
		msg = msg[:len(msg)-1]
	}
	w.log.Warn().Str("lib", "raft").Msg(msg)
	return len(p), nil
}

// String describes the node for logs.
func (c *Cluster) String() string { return fmt.Sprintf("node %s", c.cfg.ID) }
