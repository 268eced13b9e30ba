// Package server is the sheep daemon: it keeps this node's replicas in an
// object store, answers other nodes' replica requests, and acts as the
// gateway for clients (sheepfs, the admin CLI), turning VDI requests into
// replicated object requests placed by the cluster's consistent-hash ring.
package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/sheepfs/sheepfs/auth"
	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/localread"
	"github.com/sheepfs/sheepfs/md"
	"github.com/sheepfs/sheepfs/metrics"
	"github.com/sheepfs/sheepfs/objstore"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/vdi"
)

// Config configures a sheep daemon.
type Config struct {
	// Dir is the node's data directory: objects under Dir/obj, the cluster
	// log under Dir/cluster, the node ID in Dir/node-id. Created if absent.
	Dir string
	// Host is the IP address to listen on and advertise (default 127.0.0.1).
	Host string
	// Port is the data port (default 7000); gossip uses Port+1, raft Port+2.
	Port int
	// Join lists data addresses of running nodes to join; empty starts a
	// new cluster (or restarts this node's own).
	Join []string
	// ID overrides the node ID on first start (default: random). An
	// existing Dir/node-id always wins.
	ID ids.NodeID
	// DeadGrace is how long a node must be gone before the cluster moves
	// on without it (default 5 s).
	DeadGrace time.Duration
	// RetryFor bounds how long a gateway keeps retrying a request across
	// node failures and epoch changes before failing it (default 30 s).
	RetryFor time.Duration
	// FS is the filesystem seam of the object store (nil: the real one).
	FS objstore.FS
	// Zone is the node's failure domain: an object's copies go to
	// distinct zones whenever there are as many zones as copies. Empty:
	// a zone of its own.
	Zone string
	// Weight overrides the node's weight (its capacity in MiB, which by
	// default is the size of the filesystems holding its objects).
	Weight uint64
	// Disks are the directories of the node's data disks; empty keeps
	// the objects in Dir. Metadata (cluster log, disk indexes) stays in
	// Dir either way. See package md.
	Disks []string
	// Faults lets `sheep node md fault` make a disk fail, for drills and
	// tests (SHEEP_FAULTS=1 in the daemon's environment).
	Faults bool
	// Keys are the cluster's keys (see package auth): every port speaks
	// TLS with identities derived from them, and gossip is encrypted with
	// them. Required; a client key will not do.
	Keys *auth.Keys
	// Log receives the daemon's logs.
	Log zerolog.Logger
	// Metrics receives the node's metrics (nil: kept, never shown).
	Metrics *metrics.Registry
}

// Node is a running sheep daemon.
type Node struct {
	cfg   Config
	log   zerolog.Logger
	id    ids.NodeID
	cl    *cluster.Cluster
	store *md.Set
	scrub scrubState
	peers proto.Pool
	srv   proto.Server
	ln    net.Listener
	objs  *replicated
	rec   *healer
	// boot names this boot of the node's machine (objstore.BootToken)
	// in its answers to writes and syncs (proto.NodeBoot).
	boot   uint64
	bootOK atomic.Bool // the cluster knows boot (bootKnown)
	hlc    atomic.Uint64
	stop   <-chan struct{}    // closed when the node stops (life.Done())
	life   context.Context    // ends when the node stops
	end    context.CancelFunc // ends life

	keyMu     sync.Mutex         // one key roll step at a time
	run       string             // random, new at every start: names this run's lock sessions
	gcMu      sync.Mutex         // one collect at a time
	gcQueueMu sync.Mutex         // guards gcPending
	gcPending map[ids.VDIID]bool // images whose families collectLoop collects next
	gcKick    chan struct{}      // wakes collectLoop for gcPending
	mu        sync.RWMutex       // guards volumes and conns
	volumes   map[ids.VDIID]*volume
	conns     map[*proto.Conn]*connState
	met       *nodeMetrics
	page      *localread.Page // local reads' stamps (nil: none)
	recheck   rechecks        // objects whose copies a change that gave up may have left apart (recheck.go)
	// dropWrites makes the node break the connection of every replica
	// write it receives, without applying it (a fault for tests:
	// `sheep node md fault DIR dropwrites`, SHEEP_FAULTS=1).
	dropWrites atomic.Bool
}

type connState struct {
	mu      sync.Mutex
	locks   map[string]ids.MountID // VDI name -> mount holding it via this conn
	session string                 // names this connection in the locks it takes
}

// Start opens the data directory, listens, and joins the cluster.
func Start(cfg Config) (*Node, error) {
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.Port == 0 {
		cfg.Port = 7000
	}
	if cfg.Metrics == nil {
		cfg.Metrics = metrics.New()
	}
	if cfg.RetryFor == 0 {
		cfg.RetryFor = 30 * time.Second
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, errs.E(errs.IO, "data dir %s: %w", cfg.Dir, err)
	}
	id, err := nodeID(cfg.Dir, cfg.ID)
	if err != nil {
		return nil, err
	}
	var run [4]byte
	_, _ = rand.Read(run[:])
	n := &Node{cfg: cfg, id: id, log: cfg.Log.With().Str("node", string(id)).Logger(), run: hex.EncodeToString(run[:]),
		volumes: map[ids.VDIID]*volume{}, conns: map[*proto.Conn]*connState{},
		gcPending: map[ids.VDIID]bool{}, gcKick: make(chan struct{}, 1), met: newNodeMetrics(cfg.Metrics)}
	n.objs = &replicated{n: n}
	n.boot = objstore.BootToken()
	n.rec = newHealer(n)
	n.life, n.end = context.WithCancel(context.Background())
	n.stop = n.life.Done()
	n.recheck = rechecks{due: map[ids.ObjectID]recheck{}, wake: make(chan struct{}, 1)}
	// The page of local reads comes first: it retires the page of the
	// daemon that ran here before, whose leases must not outlive it into
	// the changes this one makes.
	if n.page, err = localread.Create(filepath.Join(cfg.Dir, "local-reads")); err != nil {
		n.log.Warn().Err(err).Msg("no local reads: mounts on this machine read through the daemon")
		n.page = nil
	}
	n.store, err = md.Open(md.Options{Dir: cfg.Dir, Disks: cfg.Disks, FaultFS: cfg.Faults,
		Store: objstore.Options{ObjectSize: vdi.ObjectSize, FS: cfg.FS, MaxOpenFiles: maxOpenObjects(),
			Replacing: n.page.Bump},
		OnLost: n.diskLost})
	if err != nil {
		return nil, err
	}
	if r := n.store.Replayed(); r > 0 {
		n.log.Warn().Int("blocks", r).Msg("wrote back journaled blocks: the system restarted since they were synced")
	}
	if cfg.Keys == nil || !cfg.Keys.IsCluster() {
		n.store.Close()
		return nil, errs.E(errs.Invalid, "a daemon needs the cluster key (not a client key)")
	}
	tlsCfg, err := cfg.Keys.ServerConfig(auth.RoleClient)
	if err != nil {
		n.store.Close()
		return nil, err
	}
	dialer, err := cfg.Keys.NewDialer(auth.RolePeer, proto.DialTimeout)
	if err != nil {
		n.store.Close()
		return nil, err
	}
	n.peers.Dial = dialer.DialContext
	addr := net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port))
	raw, err := net.Listen("tcp", addr)
	if err != nil {
		n.store.Close()
		return nil, errs.E(errs.IO, "listen on %s: %w", addr, err)
	}
	ln := auth.Listen(raw, tlsCfg, cfg.Keys)
	ln.OnRefused = func(remote string, err error, count int) {
		msg := "refused connections: not authorized by this cluster's key"
		if errors.Is(err, io.EOF) {
			// The other side closed it without a word: the leader's
			// check that a node reported unreachable still listens
			// does that, as do health checks and scans.
			msg = "connections closed during the TLS handshake (a port probe, or a peer that gave up)"
		}
		n.log.Warn().Str("remote", remote).Int("count", count).Err(err).Msg(msg)
	}
	n.ln = ln
	store, err := storeID(cfg.Dir)
	if err != nil {
		n.ln.Close()
		n.store.Close()
		return nil, err
	}
	weight := n.capacity()
	n.cl, err = cluster.Start(cluster.Config{ID: id, Dir: filepath.Join(cfg.Dir, "cluster"),
		Host: cfg.Host, Port: cfg.Port, Join: cfg.Join, DeadGrace: cfg.DeadGrace, Log: cfg.Log,
		Zone: cfg.Zone, Weight: weight, Store: store, Boot: bootName(n.boot), Keys: cfg.Keys, Dial: dialer.DialContext,
		// Requests waiting on a node gossip holds dead fail (and are
		// retried elsewhere or later) instead of waiting on a connection
		// whose packets a partition drops, which does not break for
		// minutes: a write in flight when the partition came would hang
		// on the majority side until the heal.
		OnGone: func(addr string) { n.peers.Get(addr).Close() },
		// A new state may change placements and doubt copies: no lease
		// stamped before it is published holds.
		AroundState: n.page.BumpAll})
	if err != nil {
		n.ln.Close()
		n.store.Close()
		return nil, err
	}
	n.srv.Handler = proto.HandlerFunc(n.handle)
	n.srv.OnBadFrame = func(remote string, err error) {
		n.log.Warn().Str("remote", remote).Err(err).Msg("dropped connection after a malformed frame")
	}
	n.srv.MaxConns = maxConns()
	// Clients share one budget of requests in flight; nodes do not (see
	// proto.Server.Shared).
	n.srv.Shared = func(nc net.Conn) bool { return auth.RoleOf(nc) != auth.RolePeer }
	n.srv.OnRefuse = func(remote string, err error, count int) {
		n.log.Warn().Str("remote", remote).Int("count", count).Err(err).Msg("turned connections away")
	}
	// The local channel for mounts and commands on this machine; without
	// it (its name taken) they use the data port.
	local, err := auth.ListenLocal(addr, tlsCfg, cfg.Keys)
	if err != nil {
		n.log.Warn().Err(err).Msg("no local channel; clients on this machine use TLS over the data port")
	} else {
		local.OnRefused = func(_ string, err error, count int) {
			n.log.Warn().Int("count", count).Err(err).Msg("refused connections on the local channel")
		}
	}
	go func() {
		// Serve goes on after accept errors; it ends when Close closes
		// the listener.
		if err := n.srv.Serve(n.ln); err != nil && !errors.Is(err, net.ErrClosed) && !errs.Is(err, errs.Closed) {
			n.log.Error().Err(err).Msg("data port no longer accepts connections")
		}
	}()
	if local != nil {
		go func() {
			if err := n.srv.Serve(local); err != nil && !errors.Is(err, net.ErrClosed) && !errs.Is(err, errs.Closed) {
				n.log.Error().Err(err).Msg("local channel no longer accepts connections")
			}
		}()
	}
	if n.page != nil {
		// The page shows the node alive, and its state fresh, until it
		// stops. A mount takes a beat for good for MaxQuiet: a beat at t
		// needs the state fresh until t+MaxQuiet, when the others still
		// cannot have moved on without this node (cluster/fresh.go). The
		// time is taken first: a process stopped after the check beats
		// the time from before it stopped, which is already old.
		go n.every(localread.BeatEvery, func() {
			now := time.Now()
			if n.cl.FreshWithin(localread.MaxQuiet) {
				n.page.Beat(now)
			}
		})
	}
	go n.rec.run(n.stop)
	go n.rec.repairLoop(n.stop)
	go n.scrubLoop(n.stop)
	go n.recheckLoop()
	go n.collectLoop()
	go n.releaseStaleLocks()
	go n.every(time.Minute, n.evictIdleNow)
	cfg.Metrics.Collect(n.writeMetrics)
	n.log.Info().Str("addr", addr).Msg("sheep started")
	return n, nil
}

// every runs fn every d until the node stops.
func (n *Node) every(d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
			fn()
		}
	}
}

// maxOpenObjects is how many object files a node keeps open: enough that
// random I/O over a few hundred GiB of hot objects does not open a file per
// request (8192 objects = 32 GiB per node), within half the fd limit.
func maxOpenObjects() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 256
	}
	return int(max(64, min(8192, lim.Cur/2)))
}

// maxConns is how many connections the data port keeps open: proto's
// default, within a quarter of the fd limit (object files may take half).
func maxConns() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 256
	}
	return int(max(64, min(proto.DefaultMaxConns, lim.Cur/4)))
}

// keepIfLocked exempts a connection through which a client holds write
// locks from the idle timeout: closing it would release them, and another
// mount could take them before the client is back.
func (n *Node) keepIfLocked(c *proto.Conn) {
	n.mu.RLock()
	cs := n.conns[c]
	n.mu.RUnlock()
	if cs == nil {
		return
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	c.KeepWhenIdle(len(cs.locks) > 0)
}

// storeID reads the random name of the data directory's contents,
// creating it with them: a node started again under its ID with an empty
// directory (a replaced disk) gets a new one, and the cluster counts
// nothing it held before as held.
func storeID(dir string) (string, error) {
	p := filepath.Join(dir, "store-id")
	if b, err := os.ReadFile(p); err == nil {
		if s := strings.TrimSpace(string(b)); s != "" && len(s) <= 64 {
			return s, nil
		}
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o644); err != nil {
		return "", errs.E(errs.IO, "write store ID: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return "", errs.E(errs.IO, "write store ID: %w", err)
	}
	return id, nil
}

// capacity is the node's weight: the size in MiB of the filesystems
// holding its objects (at least 1), unless configured.
func (n *Node) capacity() uint64 {
	if n.cfg.Weight > 0 {
		return n.cfg.Weight
	}
	return max(uint64(n.store.Capacity())>>20, 1)
}

// diskLost is told by the disk set that a disk left service with the
// objects it held: the node no longer has them and fetches them again
// from the other nodes, and its weight follows its remaining capacity.
func (n *Node) diskLost(disk string, lost []ids.ObjectID) {
	if disk == "" {
		n.log.Warn().Int("objects", len(lost)).Msg("objects gone from the disks since the last run (a disk wiped or replaced): recovering them from other nodes")
	} else {
		n.log.Warn().Str("disk", disk).Int("objects", len(lost)).Msg("disk out of service: its objects are recovered from other nodes")
	}
	n.rec.markLost(lost)
	n.page.BumpAll()
	if n.cl != nil {
		go n.cl.SetWeight(n.capacity())
	}
}

// nodeID reads the persistent node ID, creating it on first start.
func nodeID(dir string, want ids.NodeID) (ids.NodeID, error) {
	p := filepath.Join(dir, "node-id")
	if b, err := os.ReadFile(p); err == nil {
		if s := strings.TrimSpace(string(b)); s != "" {
			return ids.NodeID(s), nil
		}
	}
	id := want
	if id == "" {
		var b [4]byte
		rand.Read(b[:])
		id = ids.NodeID("n" + hex.EncodeToString(b[:]))
	}
	if strings.ContainsAny(string(id), "/ \t\n") || len(id) > 64 {
		return "", errs.E(errs.Invalid, "node ID %q: no spaces or '/', at most 64 bytes", id)
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(string(id)+"\n"), 0o644); err != nil {
		return "", errs.E(errs.IO, "write node ID: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return "", errs.E(errs.IO, "write node ID: %w", err)
	}
	return id, nil
}

// ID returns the node's ID.
func (n *Node) ID() ids.NodeID { return n.id }

// Cluster returns the node's cluster membership.
func (n *Node) Cluster() *cluster.Cluster { return n.cl }

// Close stops serving, leaves the cluster and closes the store.
func (n *Node) Close() error {
	n.page.Retire()
	n.end()
	n.srv.Close()
	n.cl.Close()
	n.peers.Close()
	return n.store.Close()
}

// nextVersion returns a new object version from a hybrid logical clock:
// wall-clock nanoseconds, but always larger than the last one handed out.
func (n *Node) nextVersion() ids.Version {
	for {
		last := n.hlc.Load()
		v := uint64(time.Now().UnixNano())
		if v <= last {
			v = last + 1
		}
		if n.hlc.CompareAndSwap(last, v) {
			return ids.Version(v)
		}
	}
}

// peerOnly reports whether op is for other daemons of the cluster only:
// replica operations, recovery, and the cluster log's plumbing. A client
// connection (sheepfs, the CLI) may not send them.
func peerOnly(op proto.Op) bool {
	switch op {
	case proto.OpReadObj, proto.OpWriteObj, proto.OpPunchObj, proto.OpStatObj,
		proto.OpRemoveObj, proto.OpSyncObjs, proto.OpListObjs, proto.OpStatObjs, proto.OpInventory,
		proto.OpApply, proto.OpReportDown, proto.OpLeaderIndex, proto.OpCheckObj:
		return true
	}
	return false
}

func (n *Node) handle(ctx context.Context, conn *proto.Conn, req *proto.Msg) *proto.Msg {
	start := time.Now()
	role := auth.RoleOf(conn.NetConn())
	resp := n.serve(ctx, conn, role, req)
	n.met.observe(role, req, resp, start)
	return resp
}

// serve answers req, from a connection of role.
func (n *Node) serve(ctx context.Context, conn *proto.Conn, role auth.Role, req *proto.Msg) *proto.Msg {
	var resp *proto.Msg
	var err error
	if peerOnly(req.Op) && role != auth.RolePeer {
		return proto.ErrorResponse(req, errs.E(errs.Denied, "%v is for the cluster's nodes only, not for a client connection", req.Op))
	}
	if req.Op == proto.OpWriteObj && n.dropWrites.Load() {
		_ = conn.NetConn().Close() // as if the connection broke before the write arrived
		return proto.ErrorResponse(req, errs.E(errs.IO, "fault: the connection of a replica write was dropped"))
	}
	switch req.Op {
	case proto.OpReadObj, proto.OpWriteObj, proto.OpPunchObj, proto.OpStatObj,
		proto.OpRemoveObj, proto.OpSyncObjs, proto.OpListObjs, proto.OpStatObjs, proto.OpInventory:
		if req.Op == proto.OpReadObj && req.Flags&proto.FlagSparse != 0 && req.Length < vdi.ObjectSize {
			// The answer is a whole object, and the connection has
			// room for an answer of Length bytes only.
			err = errs.E(errs.Invalid, "sparse read of %d bytes, want the object size %d", req.Length, vdi.ObjectSize)
			break
		}
		resp, err = n.handleReplica(ctx, req)
	case proto.OpCheckObj:
		if err = n.checkEpoch(ctx, req.Epoch); err != nil {
			break
		}
		if len(req.Data) > 64 {
			err = errs.E(errs.Invalid, "check with a node ID of %d bytes", len(req.Data))
			break
		}
		oid := ids.ObjectID(req.ID)
		if !oid.Valid() {
			err = errs.E(errs.Invalid, "bad object ID %v", oid)
			break
		}
		out := n.checkLocal(ctx, oid, req.Aux&proto.CheckFix != 0, ids.Version(req.Offset), ids.NodeID(req.Data))
		resp = &proto.Msg{}
		resp.Data, err = jsonMarshal(out)
	case proto.OpVDIRead, proto.OpVDIWrite, proto.OpVDIFlush, proto.OpVDIDiscard, proto.OpVDIAllocMap:
		resp, err = n.handleVDI(ctx, conn, req)
	case proto.OpVDILease:
		resp, err = n.lease(ctx, conn, req)
	case proto.OpAdmin:
		resp, err = n.handleAdmin(ctx, conn, req)
		n.keepIfLocked(conn)
	case proto.OpApply:
		var r cluster.Result
		var index uint64
		r, index, err = n.cl.ApplyForwarded(req.Data)
		if err == nil {
			resp = &proto.Msg{Aux: index}
			resp.Data, err = jsonMarshal(r)
		}
	case proto.OpReportDown:
		if len(req.Data) == 0 || len(req.Data) > 64 {
			err = errs.E(errs.Invalid, "report of a node ID of %d bytes", len(req.Data))
			break
		}
		n.cl.CheckUnreachable(ids.NodeID(req.Data))
		resp = &proto.Msg{}
	case proto.OpLeaderIndex:
		// Aux: the index; Offset: how old the leader's confirmation
		// of its leadership is, in ns (cluster.LeaderIndex).
		var index uint64
		var age time.Duration
		if index, age, err = n.cl.LeaderIndex(ctx); err == nil {
			resp = &proto.Msg{Header: proto.Header{Offset: uint64(age)}, Aux: index}
		}
	default:
		err = errs.E(errs.Invalid, "unknown op %v", req.Op)
	}
	if err != nil {
		return proto.ErrorResponse(req, err)
	}
	return resp
}

// bootName is a boot token as Member.Boot carries it.
func bootName(boot uint64) string {
	if boot == 0 {
		return ""
	}
	return strconv.FormatUint(boot, 16)
}
