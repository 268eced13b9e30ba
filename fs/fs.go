// Package fs is sheepfs: the cluster as a FUSE filesystem.
//
//	/vdi/NAME          each VDI as a raw image file, read/write
//	/snapshot/NAME/TAG snapshot NAME@TAG as a read-only raw image file;
//	                   touch takes a snapshot, rm deletes it (snapshot.go)
//	/cluster/info      cluster status for people; info.json for programs
//	/node/list         one line per node; node/ID/info per node
//
// VDI data goes through the kernel page cache. Write locks are taken when a
// VDI is opened for writing and released when the last writer closes it.
package fs

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/sheepfs/sheepfs/client"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/metrics"
	"github.com/sheepfs/sheepfs/proto"
)

// Inode numbers of the fixed entries; VDI files use vdiInoBase + VDI ID,
// snapshot files snapInoBase + snapshot ID, the directories of /snapshot
// snapDirInoBase + a number per name.
const (
	inoRoot = 1 + iota
	inoVDIDir
	inoSnapDir
	inoClusterDir
	inoNodeDir
	inoClusterInfo
	inoClusterJSON
	inoNodeList
	vdiInoBase     = 1 << 32
	nodeInoBase    = 2 << 32
	snapDirInoBase = 3 << 32
	snapInoBase    = 4 << 32
)

// attrTTL is how long the kernel may cache names and attributes.
const attrTTL = time.Second

// Options configure a mount.
type Options struct {
	// Debug logs every FUSE request.
	Debug bool
	// AllowOther lets users other than the mounter use the mount.
	AllowOther bool
	// NoWritebackCache turns off the kernel's writeback cache, so that
	// every write(2) reaches the cluster before it returns.
	NoWritebackCache bool
	// Dev and Held, from Fetch, make Mount serve a mount that an earlier
	// sheepfs served (takeover.go) instead of mounting: its settings
	// (the writeback cache, the mount's ID) come from Held.
	Dev  *os.File
	Held *Held
	// Metrics, if set, receives the mount's own metrics
	// (sheepfs_fsyncs_total, sheepfs_xattr_gets_total).
	Metrics *metrics.Registry
	// WriteBackHelper, if set, makes the command of the process that
	// waits for the kernel's write-backs of cached writes (wbhelper.go:
	// sheepfs --write-back DIR, which runs RunWriteBackHelper). Without
	// it they are waited for in this process, which a kill during one
	// then keeps from ending.
	WriteBackHelper func(dir string) *exec.Cmd
	// NoLocalReads makes every read go through the daemon, even where
	// the daemon on this machine would lend its file (localread.go).
	NoLocalReads bool
}

// FS is a mounted sheepfs.
type FS struct {
	c    *client.Client
	srv  *fuse.Server
	dir  string // the mount point, absolute
	gen  uint64 // the generation of this process's file handles (raw.go)
	init []byte // the kernel's INIT request (takeover.go)
	held bool   // serving a connection taken over (takeover.go)

	writeback bool                       // the kernel's writeback cache is on
	own       threadSet                  // the threads of this process doing a write-back through the mount (wbhelper.go)
	helperCmd func(dir string) *exec.Cmd // Options.WriteBackHelper
	wbhMu     sync.Mutex
	wbh       atomic.Pointer[wbHelper] // the write-back helper, once started
	stats     threadSet                // the threads serving a GETATTR without a file (cached.go)

	mu          sync.Mutex
	writers     map[string]*writers // per VDI name, while it has writers or a lock change is under way
	snapDirs    map[string]uint64   // inode numbers of the directories of /snapshot
	snapDirInos map[uint64]bool     // the numbers in snapDirs

	readaheadErr error
	fsyncs       *metrics.Counter // answer; nil without Options.Metrics
	xattrGets    *metrics.Counter // of: sheepfs or other; nil without Options.Metrics
	lr           *localReads      // nil with Options.NoLocalReads
}

// countFsync counts an fsync by how it was answered: "flushed" (the
// cluster was asked), "synced" (every change since the last flush was a
// synced write) or "failed".
func (f *FS) countFsync(answer string) {
	if f.fsyncs != nil {
		f.fsyncs.Add(1, answer)
	}
}

// Mount mounts sheepfs at dir, served through c. Call Wait or Unmount.
// With opts.Held it serves that mount instead; c must then use the
// mount's ID (Held.Mount).
func Mount(dir string, c *client.Client, opts Options) (*FS, error) {
	gen := uint64(1)
	if opts.Held != nil {
		gen = opts.Held.Gen
		opts.NoWritebackCache = !opts.Held.Writeback
		dir = opts.Held.Dir
	}
	f := &FS{c: c, writers: map[string]*writers{}, snapDirs: map[string]uint64{}, snapDirInos: map[uint64]bool{},
		writeback: !opts.NoWritebackCache, gen: gen, held: opts.Held != nil, helperCmd: opts.WriteBackHelper}
	if opts.Metrics != nil {
		c := opts.Metrics.Counter("sheepfs_fsyncs_total", "fsyncs by how they were answered: flushed (the cluster synced the writes since the last flush), synced (every write since was a synced write: nothing to flush) or failed.", "answer")
		f.fsyncs = &c
		x := opts.Metrics.Counter("sheepfs_xattr_gets_total", "extended attributes asked for: of sheepfs (user.sheepfs.*) or other (security.capability, which the kernel asks for before a write unless the mount handles killing privileges itself, and any other).", "of")
		f.xattrGets = &x
	}
	if !opts.NoLocalReads {
		f.lr = newLocalReads(c, opts.Metrics)
	}
	if abs, err := filepath.Abs(dir); err == nil {
		f.dir = abs
	}
	ttl := attrTTL
	neg := time.Duration(0)
	o := &gofs.Options{
		EntryTimeout:    &ttl,
		AttrTimeout:     &ttl,
		NegativeTimeout: &neg,
		MountOptions: fuse.MountOptions{
			FsName:        "sheepfs",
			Name:          "sheepfs",
			MaxWrite:      1 << 20,
			MaxReadAhead:  1 << 20,
			MaxBackground: 64,
			AllowOther:    opts.AllowOther,
			Debug:         opts.Debug,
			DirectMount:   true,
			// Reads of MaxWrite bytes exceed the default pipe size.
			DisableSplice: true,
		},
		// Node IDs are inode numbers, which mean the same in every
		// sheepfs process (raw.go); the numbers go-fuse makes up
		// (for /node's directories) differ between processes.
		ExternalNodeID:    true,
		FirstAutomaticIno: 1<<63 | gen<<32,
	}
	// Async direct I/O: the kernel sends a queue of O_DIRECT requests
	// (qemu cache=none, aio=native) at once instead of one at a time.
	o.MountOptions.ExtraCapabilities |= fuse.CAP_ASYNC_DIO
	// Without this the kernel asks for security.capability (a GETXATTR
	// round trip) before every write(2), to learn whether the write
	// must drop privileges: a FUSE mount is not SB_NOSEC unless the
	// server says it drops them itself. A VDI file has nothing to drop
	// (its mode is fixed, without set-ID bits, and it keeps no
	// attributes: fixedAttrs, xattr.go), so the server's part is
	// nothing, and the kernel asks once per inode and attribute refresh
	// instead.
	o.MountOptions.ExtraCapabilities |= fuse.CAP_HANDLE_KILLPRIV_V2
	if !opts.NoWritebackCache {
		o.MountOptions.ExtraCapabilities |= fuse.CAP_WRITEBACK_CACHE
	}
	o.MountOptions.DisabledCapabilities |= fuse.CAP_READDIRPLUS | fuse.CAP_READDIRPLUS_AUTO
	root := &rootNode{fs: f}
	raw := newRawFS(gofs.NewNodeFS(root, o), f, gen)
	var srv *fuse.Server
	var err error
	if opts.Held != nil {
		srv, err = serveHeld(opts.Dev, opts.Held, raw, &o.MountOptions)
		f.init = opts.Held.Init
	} else {
		srv, err = fuse.NewServer(raw, dir, &o.MountOptions)
	}
	if err != nil {
		return nil, err
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		return nil, err
	}
	f.srv = srv
	if f.init == nil {
		f.init = initRequest(srv)
	}
	f.readaheadErr = setReadahead(f.dir, readaheadKB)
	if f.lr != nil {
		done := make(chan struct{})
		go func() { srv.Wait(); close(done) }()
		go f.lr.sweepLoop(done)
	}
	return f, nil
}

// readaheadKB is the kernel readahead of the mount, in KiB. The kernel
// starts a FUSE mount at 128 KiB whatever max_readahead says, which makes
// a sequential reader wait for one round trip per read; 8 MiB keeps several
// 1 MiB reads in flight.
const readaheadKB = 8192

// ReadaheadErr says why the mount's readahead could not be raised (nil if
// it was): reads work, sequential ones are slower.
func (f *FS) ReadaheadErr() error { return f.readaheadErr }

// setReadahead sets the readahead of the backing device of dir's
// filesystem (its bdi, /sys/class/bdi/MAJOR:MINOR/read_ahead_kb).
func setReadahead(dir string, kb int) error {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return err
	}
	major, minor := unix.Major(st.Dev), unix.Minor(st.Dev)
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", major, minor)
	return os.WriteFile(p, []byte(strconv.Itoa(kb)), 0o644)
}

// Wait blocks until the filesystem is unmounted.
func (f *FS) Wait() { f.srv.Wait() }

// Unmount unmounts the filesystem.
func (f *FS) Unmount() error {
	if f.held {
		// go-fuse knows the mount only by its /dev/fd/N name.
		return unix.Unmount(f.dir, 0)
	}
	return f.srv.Unmount()
}

// ctx returns the context for the cluster requests of one FUSE request.
// It is not cancelled when the kernel interrupts the request (FUSE_INTERRUPT,
// which io_uring users such as qemu trigger often): a request with side
// effects runs to completion, and its true result is returned.
func (f *FS) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
}

// hold runs fn, a cluster request of the I/O of a VDI (a read, a
// write, a flush), and runs it again while it fails only because the
// cluster is not ready (no quorum, too few replicas up, a flush waiting
// for the one node that holds a write: errs.NotReady; an epoch moving on:
// errs.StaleEpoch), until ctx ends (FS.ctx: 5 minutes). The gateway has
// retried each such request for 30 s already, and an error is what a VM
// can least use (a guest's file system goes read-only at the first
// failed write), where I/O that waits is what a disk does whose path
// went away for a while.
// name names the VDI in the log, or if empty, id its image.
func (f *FS) hold(ctx context.Context, name string, id ids.VDIID, fn func() error) error {
	backoff := 100 * time.Millisecond
	for {
		err := fn()
		if k := errs.KindOf(err); err == nil || k != errs.NotReady && k != errs.StaleEpoch {
			return err
		}
		what := "VDI " + name
		if name == "" {
			what = "VDI image " + id.String()
		}
		logLimited(LogWarn, "hold "+what, "%s: %s; its I/O waits for the cluster", what, strings.TrimSpace(err.Error()))
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// writers counts a VDI's open-for-write handles. Its mutex is held across
// the lock and unlock requests, so that a late unlock (the kernel sends
// RELEASE after close returns) can never overtake the next open's lock.
type writers struct {
	mu   sync.Mutex
	n    int
	id   ids.VDIID // the VDI the lock was taken for (while n > 0)
	refs int       // goroutines using this entry; it is dropped at zero
}

// writersOf returns the entry of VDI name, locked; done unlocks it.
func (f *FS) writersOf(name string) (w *writers, done func()) {
	f.mu.Lock()
	w = f.writers[name]
	if w == nil {
		w = &writers{}
		f.writers[name] = w
	}
	w.refs++
	f.mu.Unlock()
	w.mu.Lock()
	return w, func() {
		w.mu.Unlock()
		f.mu.Lock()
		w.refs--
		if w.refs == 0 && w.n == 0 {
			delete(f.writers, name)
		}
		f.mu.Unlock()
	}
}

// lookupVDI asks the cluster for a VDI by name.
func (f *FS) lookupVDI(ctx context.Context, name string) (proto.VDIInfo, error) {
	var info proto.VDIInfo
	err := f.c.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDILookup, Name: name}, &info)
	return info, err
}

// rootNode is the mount's root directory.
type rootNode struct {
	gofs.Inode
	noRemove
	fs *FS
}

var _ gofs.NodeOnAdder = (*rootNode)(nil)
var _ gofs.NodeStatfser = (*rootNode)(nil)

// noRemove is embedded by the fixed directories, which cannot lose
// entries. go-fuse's default for unlink and rmdir is success, which would
// drop the entry from the tree until the next mount.
type noRemove struct{}

var (
	_ gofs.NodeUnlinker = (*noRemove)(nil)
	_ gofs.NodeRmdirer  = (*noRemove)(nil)
)

func (noRemove) Unlink(ctx context.Context, name string) syscall.Errno { return syscall.EPERM }
func (noRemove) Rmdir(ctx context.Context, name string) syscall.Errno  { return syscall.EPERM }

// noChange is embedded by the directories whose entries only the cluster
// makes (the snapshot tree): every change of the tree fails with EPERM. A
// directory that allows one of them overrides it.
type noChange struct{ noRemove }

func (noChange) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EPERM
}

func (noChange) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (noChange) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (noChange) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return syscall.EPERM
}

func (noChange) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (noChange) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

// fixedDir is a directory whose entries are made with it: /cluster, /node/ID.
type fixedDir struct {
	gofs.Inode
	noRemove
}

// OnAdd builds the fixed tree.
func (r *rootNode) OnAdd(ctx context.Context) {
	dir := func(parent *gofs.Inode, name string, ino uint64, node gofs.InodeEmbedder) *gofs.Inode {
		ch := parent.NewPersistentInode(ctx, node, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: ino})
		parent.AddChild(name, ch, true)
		return ch
	}
	dir(&r.Inode, "vdi", inoVDIDir, &vdiDir{fs: r.fs})
	dir(&r.Inode, "snapshot", inoSnapDir, &snapRoot{fs: r.fs})
	cl := dir(&r.Inode, "cluster", inoClusterDir, &fixedDir{})
	file := func(parent *gofs.Inode, name string, ino uint64, gen func(ctx context.Context) ([]byte, error)) {
		ch := parent.NewPersistentInode(ctx, &statusFile{gen: gen}, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: ino})
		parent.AddChild(name, ch, true)
	}
	file(cl, "info", inoClusterInfo, r.fs.clusterInfoText)
	file(cl, "info.json", inoClusterJSON, r.fs.clusterInfoJSON)
	dir(&r.Inode, "node", inoNodeDir, &nodeDir{fs: r.fs})
}

// Statfs reports the cluster's space.
func (r *rootNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var ci proto.ClusterInfo
	if err := r.fs.c.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminClusterInfo}, &ci); err != nil {
		return toErrno(err)
	}
	const bs = 4096
	copies := uint64(max(ci.Copies, 1))
	out.Bsize = bs
	out.Frsize = bs
	out.Blocks = uint64(ci.Used+ci.Free) / bs / copies
	out.Bfree = uint64(ci.Free) / bs / copies
	out.Bavail = out.Bfree
	out.NameLen = 255
	return 0
}
