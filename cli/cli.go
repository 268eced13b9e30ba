// Package cli implements the sheep and sheepfs command lines: kong parses
// the flags into these structs, whose Run methods do the work.
package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/alecthomas/kong"
	"github.com/rs/zerolog"

	"github.com/sheepfs/sheepfs/auth"
	"github.com/sheepfs/sheepfs/client"
	"github.com/sheepfs/sheepfs/discovery"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/fs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/metrics"
	"github.com/sheepfs/sheepfs/objstore"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/server"
	"github.com/sheepfs/sheepfs/status"
)

// Globals are the flags every admin command takes.
type Globals struct {
	Addr    string           `help:"Address of a sheep daemon (host:port)." default:"127.0.0.1:7000" env:"SHEEP_ADDR"`
	Timeout time.Duration    `help:"How long to wait for the cluster." default:"60s"`
	JSON    bool             `help:"Print JSON instead of tables." name:"json"`
	KeyFile string           `help:"The cluster key (or a client key), from sheep keygen. Default: $SHEEP_KEY_FILE, else /etc/sheepfs/cluster.key." placeholder:"FILE" type:"path"`
	Version kong.VersionFlag `help:"Print the version and exit."`
	out     io.Writer
	keys    *auth.Keys
}

func (g *Globals) client() *client.Client { return g.clientAs(auth.RoleClient) }

// clientAs is a client presenting the identity of role as: RolePeer for
// what only the cluster key allows.
func (g *Globals) clientAs(as auth.Role) *client.Client {
	return client.New([]string{g.Addr}, client.Options{RetryFor: g.Timeout, Dial: dialer(g.keys, as)})
}

// dialer connects with keys as role as; a connection fails with the
// reason when keys cannot (a client key asked for the peer role).
func dialer(keys *auth.Keys, as auth.Role) proto.DialFunc {
	d, err := keys.NewDialer(as, proto.DialTimeout)
	if err != nil {
		return func(context.Context, string) (net.Conn, error) { return nil, err }
	}
	return d.DialContext
}

func (g *Globals) admin(req proto.AdminRequest, out any) error {
	return g.adminAs(auth.RoleClient, req, out)
}

func (g *Globals) adminAs(as auth.Role, req proto.AdminRequest, out any) error {
	return g.adminAt(g.Addr, as, req, out)
}

// adminAt sends an admin request to the node at addr.
func (g *Globals) adminAt(addr string, as auth.Role, req proto.AdminRequest, out any) error {
	c := client.New([]string{addr}, client.Options{RetryFor: g.Timeout, Dial: dialer(g.keys, as)})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), g.Timeout)
	defer cancel()
	return c.Admin(ctx, req, out)
}

func (g *Globals) printJSON(v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(g.out, "%s\n", b)
	return err
}

// Sheep is the sheep command line.
type Sheep struct {
	Globals
	Daemon     DaemonCmd     `cmd:"" help:"Run a sheep daemon (one per node)."`
	Keygen     KeygenCmd     `cmd:"" help:"Print a new cluster key (or, with --client, the client key of one)."`
	Cluster    ClusterCmd    `cmd:"" help:"Format the cluster or show its state."`
	Node       NodeCmd       `cmd:"" help:"Show nodes."`
	VDI        VDICmd        `cmd:"" name:"vdi" help:"Create, list, resize and delete VDIs."`
	Version    VersionCmd    `cmd:"" help:"Print the version: the release, the commit built, the Go toolchain."`
	Completion CompletionCmd `cmd:"" help:"Print a shell completion script: source <(sheep completion bash)."`
}

// DaemonCmd runs a node.
type DaemonCmd struct {
	Dir         string        `help:"Data directory (objects, cluster log, node ID)." default:"/var/lib/sheep" type:"path"`
	Listen      string        `help:"IP address to listen on and advertise to the other nodes, or IP:PORT (then the data port). Use an address the other nodes reach; every port speaks TLS with the cluster key." default:"127.0.0.1" placeholder:"ADDR"`
	Host        string        `hidden:"" help:"Old name of --listen."`
	Port        int           `help:"Data port; gossip uses port+1, raft port+2, metrics port+3." default:"7000"`
	Join        []string      `help:"Data address (host:port) of a running node to join; repeatable." placeholder:"ADDR"`
	ID          string        `help:"Node ID on first start (default: random); kept in the data directory."`
	DeadGrace   time.Duration `help:"How long a node may be gone before the cluster moves on without it." default:"5s"`
	Zone        string        `help:"Failure domain (a rack, a room): an object's copies go to distinct zones whenever there are as many zones as copies. Default: a zone of its own." placeholder:"NAME"`
	Weight      string        `help:"Capacity to advertise for placement, e.g. 4T (default: the size of the filesystems holding the objects). A node's share of the data follows it." placeholder:"SIZE"`
	Disk        []string      `help:"A data disk's directory; repeatable. Objects are spread over the disks by size, metadata stays in --dir. Default: the objects stay in --dir." placeholder:"DIR" type:"path"`
	LogLevel    string        `help:"Log level: debug, info, warn, error." default:"info" enum:"debug,info,warn,error"`
	LogFormat   string        `help:"Log format: text (a readable line per event, for journald and terminals) or json (an object per line, for log collectors)." default:"text" enum:"text,json"`
	Pprof       string        `help:"Serve Go profiles (net/http/pprof) on this address, e.g. 127.0.0.1:6060. Off by default." placeholder:"ADDR"`
	Bootstrap   bool          `help:"Start a new cluster without looking for one on the local network (with no --join and no cluster state of its own, a node first looks for a running cluster of its key by multicast, for 3 seconds)."`
	NoDiscovery bool          `help:"Neither look for a cluster on the local network nor answer the nodes that look (multicast group 239.255.83.72, UDP port 7099)."`
	Metrics     string        `help:"Serve Prometheus metrics at http://ADDR/metrics (plain HTTP, no key: counters and states, no data). Default: the listen address, port+3; off turns them off." placeholder:"ADDR"`
}

// Run starts the daemon and serves until SIGINT or SIGTERM.
func (d *DaemonCmd) Run(g *Globals) error {
	keepSysmonAwake()
	lvl, _ := zerolog.ParseLevel(d.LogLevel)
	var out io.Writer = os.Stderr
	if d.LogFormat == "text" {
		// One readable line per event (journald, a terminal), the
		// fields as key=value after the message.
		out = zerolog.ConsoleWriter{Out: os.Stderr, NoColor: !isTerminal(os.Stderr), TimeFormat: time.RFC3339}
	}
	log := zerolog.New(out).Level(lvl).With().Timestamp().Logger()
	if err := servePprof(d.Pprof); err != nil {
		return err
	}
	var weight uint64
	if d.Weight != "" {
		w, err := ParseSize(d.Weight)
		if err != nil {
			return err
		}
		weight = max(w>>20, 1)
	}
	keys, err := auth.Load(g.KeyFile)
	if err != nil {
		return err
	}
	host, port, err := listenAddr(d.Listen, d.Host, d.Port)
	if err != nil {
		return err
	}
	log.Info().Str("key", keys.Current().ID()).Str("file", keys.Source()).Msg("cluster key")
	if id := os.Getenv("SHEEP_BOOT_ID"); id != "" && os.Getenv("SHEEP_FAULTS") == "1" {
		// A fault drill plays a reboot (see md fault powerloss).
		if err := objstore.SetBootID(id); err != nil {
			return err
		}
		log.Warn().Str("boot_id", id).Msg("fault drill: playing a reboot")
	}
	dkey := discovery.Key{}
	dkey.ID, dkey.MAC = keys.Discovery()
	join := d.Join
	if _, err := os.Stat(filepath.Join(d.Dir, "cluster", "raft.db")); len(join) == 0 && !d.Bootstrap && !d.NoDiscovery && errors.Is(err, os.ErrNotExist) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		found, err := discovery.Find(ctx, dkey, 3*time.Second)
		cancel()
		switch {
		case err != nil:
			log.Warn().Err(err).Msg("could not look for a cluster on the local network; starting a new one")
		case len(found) == 0:
			log.Info().Str("cluster_id", discovery.IDOf(dkey.ID)).Msg("no cluster of this key answered on the local network; starting a new one (--bootstrap skips the search)")
		default:
			log.Info().Strs("nodes", found).Str("cluster_id", discovery.IDOf(dkey.ID)).Msg("found the cluster on the local network; joining it")
			join = found
		}
	}
	reg := metrics.New()
	if err := metrics.NewSink(reg, "sheep").Install(); err != nil {
		return err
	}
	metrics.CollectRuntime(reg)
	n, err := server.Start(server.Config{Dir: d.Dir, Host: host, Port: port, Join: join,
		ID: ids.NodeID(d.ID), DeadGrace: d.DeadGrace, Log: log, Zone: d.Zone, Weight: weight,
		Disks: d.Disk, Faults: os.Getenv("SHEEP_FAULTS") == "1", Keys: keys, Metrics: reg})
	if err != nil {
		return err
	}
	if d.Metrics != "off" {
		addr := d.Metrics
		if addr == "" {
			addr = net.JoinHostPort(host, strconv.Itoa(port+3))
		}
		at, err := reg.Serve(addr)
		if err != nil {
			n.Close()
			return err
		}
		log.Info().Str("addr", "http://"+at.String()+"/metrics").Msg("serving metrics")
	}
	if !d.NoDiscovery {
		ctx, stopAnswer := context.WithCancel(context.Background())
		defer stopAnswer()
		go func() {
			if err := discovery.Answer(ctx, dkey, net.JoinHostPort(host, strconv.Itoa(port))); err != nil {
				log.Warn().Err(err).Msg("not answering nodes that look for the cluster on the local network")
			}
		}()
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	s := <-sig
	log.Info().Str("signal", s.String()).Msg("stopping")
	return n.Close()
}

// listenAddr works out the daemon's address from --listen (IP or IP:PORT),
// the old --host, and --port.
func listenAddr(listen, host string, port int) (string, int, error) {
	if host != "" {
		listen = host
	}
	if h, p, err := net.SplitHostPort(listen); err == nil {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65533 {
			return "", 0, errs.E(errs.Invalid, "--listen %s: bad port", listen)
		}
		listen, port = h, n
	}
	if net.ParseIP(listen) == nil {
		return "", 0, errs.E(errs.Invalid, "--listen %s: give an IP address (the other nodes reach this node there)", listen)
	}
	return listen, port, nil
}

// KeygenCmd prints a key.
type KeygenCmd struct {
	Client bool `help:"Print the client key of the cluster key read from --key-file (or $SHEEP_KEY_FILE, /etc/sheepfs/cluster.key): it mounts VDIs and runs admin commands, but cannot act as a node."`
}

// Run prints the key. Printed to a file (sheep keygen > FILE), the file
// is made readable by its owner only.
func (k *KeygenCmd) Run(g *Globals) error {
	var key *auth.Key
	if k.Client {
		keys, err := auth.Load(g.KeyFile)
		if err != nil {
			return err
		}
		if !keys.IsCluster() {
			return errs.E(errs.Invalid, "%s holds a client key already", keys.Source())
		}
		key = keys.Current().Client()
	} else {
		var err error
		if key, err = auth.Generate(); err != nil {
			return err
		}
	}
	if f, ok := g.out.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
			if err := f.Chmod(0o600); err != nil {
				return errs.E(errs.IO, "make the key file private: %w", err)
			}
		}
	}
	_, err := g.out.Write(auth.File(key))
	return err
}

// ClusterCmd groups cluster commands.
type ClusterCmd struct {
	Format   ClusterFormatCmd   `cmd:"" help:"Format a new cluster (once)."`
	Info     ClusterInfoCmd     `cmd:"" help:"Show the cluster's state."`
	Health   ClusterHealthCmd   `cmd:"" help:"Print the cluster's health in one line; exit 0 when healthy, 1 when degraded (a node down, objects below their copies, recovery under way), 2 when unavailable (no quorum, not formatted, no answer)."`
	Recovery ClusterRecoveryCmd `cmd:"" help:"Show recovery per node; set its throttle."`
	Key      ClusterKeyCmd      `cmd:"" help:"Show the nodes' keys; roll a new cluster key through the running cluster."`
	Check    ClusterCheckCmd    `cmd:"" help:"Check every object of every VDI and snapshot on all its copies, and repair what differs."`
	Scrub    ClusterScrubCmd    `cmd:"" help:"Show the background scrub per node; set its rate, interval, pause; start a pass."`
}

// ClusterFormatCmd formats the cluster.
type ClusterFormatCmd struct {
	Copies int `help:"Replicas of every object (default for new VDIs)." default:"3"`
}

// Run formats the cluster.
func (c *ClusterFormatCmd) Run(g *Globals) error {
	var ci proto.ClusterInfo
	if err := g.admin(proto.AdminRequest{Cmd: proto.AdminClusterFormat, Copies: c.Copies}, &ci); err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(ci)
	}
	fmt.Fprintf(g.out, "formatted with %d copies\n", ci.Copies)
	return nil
}

// ClusterInfoCmd shows the cluster state.
type ClusterInfoCmd struct {
	Wait bool `help:"Wait until the cluster is formatted and every member is up."`
}

// Run prints the cluster state.
func (c *ClusterInfoCmd) Run(g *Globals) error {
	var ci proto.ClusterInfo
	deadline := time.Now().Add(g.Timeout)
	for {
		err := g.admin(proto.AdminRequest{Cmd: proto.AdminClusterInfo}, &ci)
		if err == nil && (!c.Wait || ci.Status == proto.HealthOK) {
			break
		}
		if !c.Wait || time.Now().After(deadline) {
			if err != nil {
				return err
			}
			return errs.E(errs.NotReady, "cluster status is %q after %v", ci.Status, g.Timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if g.JSON {
		return g.printJSON(ci)
	}
	_, err := g.out.Write(status.FormatClusterInfo(ci))
	return err
}

// NodeCmd groups node commands.
type NodeCmd struct {
	List NodeListCmd `cmd:"" help:"List the nodes of the current epoch."`
	MD   MDCmd       `cmd:"" name:"md" help:"Show and change the data disks of the node at --addr."`
}

// MDCmd groups the disk commands of one node.
type MDCmd struct {
	Info   MDInfoCmd   `cmd:"" help:"List the node's disks, objects and space."`
	Plug   MDPlugCmd   `cmd:"" help:"Put a disk in service (new objects spread onto it)."`
	Unplug MDUnplugCmd `cmd:"" help:"Take a disk out of service (its objects are recovered)."`
	Fault  MDFaultCmd  `cmd:"" hidden:"" help:"Make a disk fail (daemons started with SHEEP_FAULTS=1; for drills and tests)."`
}

// MDInfoCmd lists a node's disks.
type MDInfoCmd struct{}

// Run prints the disks.
func (MDInfoCmd) Run(g *Globals) error { return mdRun(g, proto.AdminRequest{Cmd: proto.AdminMDInfo}) }

// MDPlugCmd plugs a disk.
type MDPlugCmd struct {
	Dir string `arg:"" help:"The disk's directory (absolute, as the daemon sees it)."`
}

// Run plugs the disk.
func (c *MDPlugCmd) Run(g *Globals) error {
	return mdRun(g, proto.AdminRequest{Cmd: proto.AdminMDPlug, Name: c.Dir})
}

// MDUnplugCmd unplugs a disk.
type MDUnplugCmd struct {
	Dir string `arg:"" help:"The disk's directory."`
}

// Run unplugs the disk.
func (c *MDUnplugCmd) Run(g *Globals) error {
	return mdRun(g, proto.AdminRequest{Cmd: proto.AdminMDUnplug, Name: c.Dir})
}

// MDFaultCmd injects a disk fault.
type MDFaultCmd struct {
	Dir string `arg:"" help:"The disk's directory."`
	Op  string `arg:"" help:"What fails from now on: read, write or sync (EIO); corrupt: every read returns damaged data; tear: the next large write is torn and the daemon killed; track: remember what each write replaces until its file is synced; powerloss: undo what was not synced on every disk of the node and kill the daemon (restart it with SHEEP_BOOT_ID set to play the reboot); dropwrites: the node breaks the connection of every replica write it is sent, without applying it (whatever the disk); heal stops the failures." enum:"read,write,sync,corrupt,tear,track,powerloss,dropwrites,heal"`
}

// Run arms the fault.
func (c *MDFaultCmd) Run(g *Globals) error {
	req := proto.AdminRequest{Cmd: proto.AdminMDFault, Name: c.Dir, Tag: c.Op}
	if c.Op != "powerloss" {
		return mdRun(g, req)
	}
	// The node dies without an answer. It must be up to begin with
	// (that is retried as usual); then the request goes out once, never
	// again (a retry could reach the node restarted), and the connection
	// breaking is the drill working.
	if err := g.adminAs(auth.RolePeer, proto.AdminRequest{Cmd: proto.AdminMDInfo}, nil); err != nil {
		return err
	}
	cl := client.New([]string{g.Addr}, client.Options{RetryFor: time.Nanosecond, Dial: dialer(g.keys, auth.RolePeer)})
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), g.Timeout)
	defer cancel()
	err := cl.Admin(ctx, req, nil)
	switch {
	case err == nil:
		return errs.E(errs.IO, "the node at %s answered instead of losing power", g.Addr)
	case proto.IsTransport(err) && ctx.Err() == nil:
		fmt.Fprintf(g.out, "the node at %s lost power (start it with SHEEP_BOOT_ID set to play a reboot)\n", g.Addr)
		return nil
	}
	return err
}

func mdRun(g *Globals, req proto.AdminRequest) error {
	var disks []proto.DiskInfo
	as := auth.RolePeer // a node's disks: the cluster key only
	if req.Cmd == proto.AdminMDInfo {
		as = auth.RoleClient
	}
	if err := g.adminAs(as, req, &disks); err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(disks)
	}
	tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PATH\tSTATE\tOBJECTS\tUSED\tFREE\tSIZE")
	for _, d := range disks {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", d.Path, d.State, d.Objects, status.HumanBytes(d.Used), status.HumanBytes(d.Free), status.HumanBytes(d.Size))
	}
	return tw.Flush()
}

// NodeListCmd lists nodes.
type NodeListCmd struct{}

// Run prints the node table.
func (NodeListCmd) Run(g *Globals) error {
	var nodes []proto.NodeInfo
	if err := g.admin(proto.AdminRequest{Cmd: proto.AdminNodeList}, &nodes); err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(nodes)
	}
	_, err := g.out.Write(status.FormatNodes(nodes))
	return err
}

// VDICmd groups VDI commands.
type VDICmd struct {
	Create VDICreateCmd `cmd:"" help:"Create a thin VDI."`
	List   VDIListCmd   `cmd:"" help:"List VDIs."`
	Delete VDIDeleteCmd `cmd:"" help:"Delete a VDI and free its objects."`
	Resize VDIResizeCmd `cmd:"" help:"Grow (or shrink) a VDI."`
	Unlock VDIUnlockCmd `cmd:"" help:"Release a VDI's write lock whoever holds it (when its holder cannot; needs the cluster key)."`
	Check  VDICheckCmd  `cmd:"" help:"Check every object of a VDI or snapshot on all its copies, and repair what differs."`

	Snapshot  VDISnapshotCmd  `cmd:"" help:"Snapshot a VDI as NAME@TAG, also while written."`
	Snapshots VDISnapshotsCmd `cmd:"" help:"List snapshots (of one VDI, or all)."`
	Clone     VDICloneCmd     `cmd:"" help:"Make a writable VDI from a snapshot, sharing its data."`
	Rollback  VDIRollbackCmd  `cmd:"" help:"Return a VDI to a snapshot (when not open to write)."`
	Tree      VDITreeCmd      `cmd:"" help:"Draw the snapshot and clone family of each VDI."`
	GC        VDIGCCmd        `cmd:"gc" help:"Free what deleted VDIs left (after a failed delete)."`
	Backup    VDIBackupCmd    `cmd:"" help:"Stream a snapshot (or changes since FROM) to stdout."`
	Restore   VDIRestoreCmd   `cmd:"" help:"Restore a full backup and increments into a new VDI."`
}

// VDIUnlockCmd releases a lock by force.
type VDIUnlockCmd struct {
	Name  string `arg:"" help:"VDI name."`
	Force bool   `help:"Required: the lock is taken from whoever holds it, whose next write then fails." required:""`
}

// Run releases the lock.
func (c *VDIUnlockCmd) Run(g *Globals) error {
	if err := g.adminAs(auth.RolePeer, proto.AdminRequest{Cmd: proto.AdminVDIUnlock, Name: c.Name, Force: c.Force}, nil); err != nil {
		return err
	}
	if !g.JSON {
		fmt.Fprintf(g.out, "released the write lock of %s\n", c.Name)
	}
	return nil
}

// VDICreateCmd creates a VDI.
type VDICreateCmd struct {
	Name   string `arg:"" help:"VDI name."`
	Size   string `arg:"" help:"Size, e.g. 10G."`
	Copies int    `help:"Replicas of its objects (default: the cluster's)."`
}

// Run creates the VDI.
func (c *VDICreateCmd) Run(g *Globals) error {
	size, err := ParseSize(c.Size)
	if err != nil {
		return err
	}
	var v proto.VDIInfo
	if err := g.admin(proto.AdminRequest{Cmd: proto.AdminVDICreate, Name: c.Name, Size: size, Copies: c.Copies}, &v); err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(v)
	}
	fmt.Fprintf(g.out, "created %s (%s, %d copies)\n", v.Name, status.HumanBytes(int64(v.Size)), v.Copies)
	return nil
}

// VDIListCmd lists VDIs.
type VDIListCmd struct{}

// Run prints the VDI table.
func (VDIListCmd) Run(g *Globals) error {
	var list []proto.VDIInfo
	if err := g.admin(proto.AdminRequest{Cmd: proto.AdminVDIList}, &list); err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(list)
	}
	tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tID\tSIZE\tCOPIES\tCREATED\tWRITER")
	for _, v := range list {
		w := "-"
		if v.Locked {
			w = fmt.Sprintf("%s@%s", v.Mount, v.Node)
		}
		fmt.Fprintf(tw, "%s\t%v\t%s\t%d\t%s\t%s\n", v.Name, v.ID, status.HumanBytes(int64(v.Size)), v.Copies,
			time.Unix(v.Created, 0).UTC().Format("2006-01-02 15:04"), w)
	}
	return tw.Flush()
}

// VDIDeleteCmd deletes a VDI or a snapshot.
type VDIDeleteCmd struct {
	Name string `arg:"" help:"VDI name, or NAME@TAG for a snapshot."`
}

// Run deletes the VDI.
func (c *VDIDeleteCmd) Run(g *Globals) error {
	return g.admin(proto.AdminRequest{Cmd: proto.AdminVDIDelete, Name: c.Name}, nil)
}

// VDIResizeCmd resizes a VDI.
type VDIResizeCmd struct {
	Name string `arg:"" help:"VDI name."`
	Size string `arg:"" help:"New size, e.g. 20G."`
}

// Run resizes the VDI.
func (c *VDIResizeCmd) Run(g *Globals) error {
	size, err := ParseSize(c.Size)
	if err != nil {
		return err
	}
	var v proto.VDIInfo
	if err := g.admin(proto.AdminRequest{Cmd: proto.AdminVDIResize, Name: c.Name, Size: size}, &v); err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(v)
	}
	fmt.Fprintf(g.out, "%s is now %s\n", v.Name, status.HumanBytes(int64(v.Size)))
	return nil
}

// Sheepfs is the sheepfs command line.
type Sheepfs struct {
	Mountpoint   string           `arg:"" help:"Where to mount (a directory)."`
	Addr         []string         `help:"Sheep daemon address(es) to use, tried in order." default:"127.0.0.1:7000" env:"SHEEP_ADDR"`
	AllowOther   bool             `help:"Let other users use the mount."`
	Debug        bool             `help:"Log every FUSE request."`
	NoWriteback  bool             `help:"Turn off the kernel writeback cache: every write(2) reaches the cluster before it returns (slower)."`
	Pprof        string           `help:"Serve Go profiles (net/http/pprof) on this address. Off by default." placeholder:"ADDR"`
	KeyFile      string           `help:"The cluster key or a client key (sheep keygen). Default: $SHEEP_KEY_FILE, else /etc/sheepfs/cluster.key." placeholder:"FILE" type:"path"`
	NoLocal      bool             `help:"Use TLS over the data port also to a daemon on this machine, instead of its local channel (a unix socket)." env:"SHEEPFS_NO_LOCAL"`
	NoLocalRead  bool             `help:"Read every block through the daemon, even where the daemon on this machine lends its object files for reading." env:"SHEEPFS_NO_LOCAL_READS"`
	Version      kong.VersionFlag `help:"Print the version and exit."`
	Metrics      string           `help:"Serve Prometheus metrics at http://ADDR/metrics (plain HTTP: counters, no data). Off by default." placeholder:"ADDR" env:"SHEEPFS_METRICS"`
	LogLevel     string           `help:"Log level: debug (also the causes of ENOENT, EEXIST, EINVAL, EBUSY), info (also EROFS, EOPNOTSUPP), warn (the causes of every other error returned to a program, such as EIO), error." default:"info" enum:"debug,info,warn,error"`
	NoLockMemory bool             `help:"Do not lock sheepfs's memory (mlockall). Unlocked, a kill -9 of sheepfs can fail with EIO a write the kernel was handing to it; locked, sheepfs keeps its peak memory." env:"SHEEPFS_NO_LOCK_MEMORY"`
	NoHold       bool             `help:"Do not keep the mount when sheepfs exits: without a holder process, a crash or restart of sheepfs fails every open file with ENOTCONN, and SIGTERM unmounts." env:"SHEEPFS_NO_HOLD"`
	Hold         bool             `hidden:"" help:"Run as the holder of the mount (started by sheepfs; the /dev/fuse file is fd 3, the state on stdin)."`
	WriteBack    bool             `hidden:"" help:"Run as the write-back helper of the mount (started by sheepfs; requests on stdin, answers on stdout)."`
}

// Run mounts and serves until unmounted or signalled. If a holder keeps
// the mount at Mountpoint (an earlier sheepfs died), it serves that mount
// instead; on SIGINT or SIGTERM it then exits and leaves the mount to the
// holder for the next sheepfs (fusermount3 -u unmounts).
func (s *Sheepfs) Run() error {
	if s.Hold {
		return s.runHolder()
	}
	if s.WriteBack {
		// Its parent's signals are not its own: it ends when its
		// stdin does.
		signal.Ignore(syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
		return fs.RunWriteBackHelper(s.Mountpoint, os.Stdin, os.Stdout)
	}
	fs.SetLogLevel(map[string]int{"debug": fs.LogDebug, "info": fs.LogInfo, "warn": fs.LogWarn, "error": fs.LogError}[s.LogLevel])
	if !s.NoLockMemory {
		if err := lockMemory(); err != nil {
			fmt.Fprintf(os.Stderr, "sheepfs: memory not locked (a kill -9 of sheepfs may fail a write in flight with EIO): %v\n", err)
		}
	}
	if err := servePprof(s.Pprof); err != nil {
		return err
	}
	keys, err := auth.Load(s.KeyFile)
	if err != nil {
		return err
	}
	d, err := keys.NewDialer(auth.RoleClient, proto.DialTimeout)
	if err != nil {
		return err
	}
	d.Local = !s.NoLocal
	opts := fs.Options{Debug: s.Debug, AllowOther: s.AllowOther, NoWritebackCache: s.NoWriteback, WriteBackHelper: writeBackHelper,
		NoLocalReads: s.NoLocalRead}
	var mountID ids.MountID
	if !s.NoHold {
		dev, held, err := fs.Fetch(s.Mountpoint)
		if err != nil {
			return err
		}
		if held == nil {
			fs.ClearDead(s.Mountpoint)
			// Nothing held there: looking at the directory cannot wait.
			if err := os.MkdirAll(s.Mountpoint, 0o755); err != nil {
				return errs.E(errs.IO, "mount point: %w", err)
			}
		} else {
			defer dev.Close()
			opts.Dev, opts.Held, mountID = dev, held, held.Mount
			fmt.Fprintf(os.Stderr, "sheepfs: taking over the mount at %s (generation %d)\n", held.Dir, held.Gen)
		}
	}
	var reg *metrics.Registry
	if s.Metrics != "" {
		reg = metrics.New()
		metrics.CollectRuntime(reg)
		at, err := reg.Serve(s.Metrics)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "sheepfs: serving metrics at http://%s/metrics\n", at)
	}
	c := client.New(s.Addr, client.Options{Dial: d.DialContext, Mount: mountID, Metrics: reg})
	opts.Metrics = reg
	if opts.Held != nil {
		c.DoubtAll() // the writes of the dead process: their nodes are unknown
	}
	f, err := fs.Mount(s.Mountpoint, c, opts)
	if err != nil {
		return errs.E(errs.IO, "mount %s: %w", s.Mountpoint, err)
	}
	if err := f.ReadaheadErr(); err != nil {
		fmt.Fprintf(os.Stderr, "sheepfs: could not raise the mount's readahead (sequential reads will be slower): %v\n", err)
	}
	held := opts.Held != nil
	if !s.NoHold && !held {
		if err := startHolder(f); err != nil {
			fmt.Fprintf(os.Stderr, "sheepfs: no holder for the mount (a restart of sheepfs will fail its open files): %v\n", err)
		} else {
			held = true
		}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		if held {
			fmt.Fprintf(os.Stderr, "sheepfs: exiting; the mount stays with its holder for the next sheepfs (fusermount3 -u %s unmounts)\n", s.Mountpoint)
			os.Exit(0)
		}
		f.Unmount()
	}()
	f.Wait()
	c.Close()
	return nil
}

// startHolder starts the holder of f's mount (sheepfs --hold) and waits
// until it answers.
func startHolder(f *fs.FS) error {
	dev, held, err := f.Device()
	if err != nil {
		return err
	}
	defer dev.Close()
	state, err := json.Marshal(held)
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(exe, held.Dir, "--hold")
	cmd.Stdin = bytes.NewReader(state)
	cmd.ExtraFiles = []*os.File{dev}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // not in sheepfs's process group
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	go func() { _ = cmd.Wait() }()
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("holder said %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		return err
	case <-time.After(10 * time.Second):
		return errors.New("the holder did not start")
	}
}

// writeBackHelper is the command of the mount's write-back helper
// (fs.Options.WriteBackHelper).
func writeBackHelper(dir string) *exec.Cmd {
	// This very binary, even if an upgrade replaced its file: the two
	// speak the same protocol.
	cmd := exec.Command("/proc/self/exe", dir, "--write-back")
	cmd.Args[0] = os.Args[0]
	cmd.Dir = "/"
	cmd.Stderr = os.Stderr
	return cmd
}

// runHolder keeps the mount's /dev/fuse file (fd 3) until the mount ends.
func (s *Sheepfs) runHolder() error {
	var held fs.Held
	if err := json.NewDecoder(io.LimitReader(os.Stdin, 1<<20)).Decode(&held); err != nil {
		return errs.E(errs.Invalid, "holder state: %w", err)
	}
	dev := os.NewFile(3, "/dev/fuse")
	signal.Ignore(syscall.SIGHUP, syscall.SIGINT)
	return fs.Hold(dev, held, func() {
		fmt.Println("ready")
		os.Stdout.Close()
	})
}

// keyless reports whether command (kong's path, "cluster info") runs
// without the cluster key.
func keyless(command string) bool {
	for _, c := range []string{"keygen", "daemon", "version", "completion"} {
		if command == c || strings.HasPrefix(command, c+" ") {
			return true
		}
	}
	return false
}

// Main parses args for one of the command lines and runs it, printing errors
// as "name: message" and returning the exit status.
func Main(name string, cmd any, args []string, stdout io.Writer) int {
	parser, err := kong.New(cmd, kong.Name(name), kong.UsageOnError(), kong.Vars{"version": Version(name)},
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}))
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		return 2
	}
	ctx, err := parser.Parse(args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		return 2
	}
	if s, ok := cmd.(*Sheep); ok {
		s.Globals.out = stdout
		if c := ctx.Command(); !keyless(c) {
			if s.Globals.keys, err = auth.Load(s.KeyFile); err != nil {
				if strings.HasPrefix(c, "cluster health") {
					fmt.Fprintf(stdout, "unavailable: %s\n", err)
					return 2
				}
				fmt.Fprintf(os.Stderr, "%s: %s\n", name, err)
				return 1
			}
		}
		err = ctx.Run(&s.Globals)
	} else {
		err = ctx.Run()
	}
	var st exitStatus
	if errors.As(err, &st) {
		return int(st)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %s\n", name, strings.TrimSpace(err.Error()))
		if errs.Is(err, errs.Invalid) {
			return 2
		}
		return 1
	}
	return 0
}
