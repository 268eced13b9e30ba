// Package md keeps one node's objects on several disks (Sheepdog's
// "multi-disk"): one objstore.Store per disk, new objects spread over the
// disks by consistent hashing weighted by capacity, and a disk that fails
// (I/O errors) or is unplugged taken out of service at once. The objects it
// held are then reported lost, for the node to fetch again from the other
// nodes onto its remaining disks.
//
// Layout: each disk D holds D/disk-id (a random name made with it) and the
// store's object files under D/obj; its index lives with the node's other
// metadata, in DIR/md/<disk id>.db. A node without --disk has one disk, its
// data directory, whose index stays in DIR/obj/index.db (the layout from
// before several disks). DIR/md/disks.json records the disks plugged at run
// time and those taken out of service, so that a restart with the same
// flags keeps both.
package md

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	"crypto/rand"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/hashring"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/objstore"
)

// Options configure a Set.
type Options struct {
	// Dir is the node's data directory (required).
	Dir string
	// Disks are the data disks' directories; empty means one, Dir itself.
	Disks []string
	// Store is the template of every disk's store options (ObjectSize,
	// MaxOpenFiles, split among the disks); its FS and IndexPath are set
	// per disk.
	Store objstore.Options
	// FaultFS wraps every disk's filesystem in an objstore.FaultFS that
	// Fault arms (for fault drills and tests).
	FaultFS bool
	// OnLost is called, outside any lock, with the objects a disk held
	// when it was taken out of service (failed or unplugged): the node no
	// longer has them. It must not call back into the Set synchronously.
	OnLost func(disk string, lost []ids.ObjectID)
}

// Set is a node's objects over its disks. It has the methods of
// objstore.Store that a node uses, and is safe for concurrent use.
type Set struct {
	opts Options

	mu    sync.RWMutex
	disks []*disk // in service, sorted by path
	ring  *hashring.Ring
	out   map[string]string // disk path -> why it is out of service
	extra []string          // disks plugged at run time
	ids   map[string]string // disk path -> its disk ID
}

type disk struct {
	ops   sync.WaitGroup // operations using st; taken under Set.mu
	path  string
	id    string
	st    *objstore.Store
	fault *objstore.FaultFS // nil unless Options.FaultFS
	total int64             // filesystem size, bytes
	dev   uint64
}

// config is DIR/md/disks.json.
type config struct {
	Plugged []string          `json:"plugged,omitempty"`
	Out     map[string]string `json:"out,omitempty"` // path -> reason
	IDs     map[string]string `json:"ids,omitempty"` // path -> disk ID last seen there
}

// Open opens every disk in service. A disk that cannot be opened is an
// error (fix it, or start without it); disks recorded as out of service
// are skipped (md plug brings one back).
func Open(opts Options) (*Set, error) {
	s := &Set{opts: opts, out: map[string]string{}, ids: map[string]string{}}
	cfg, err := s.readConfig()
	if err != nil {
		return nil, err
	}
	s.extra = cfg.Plugged
	for p, id := range cfg.IDs {
		s.ids[p] = id
	}
	for p, why := range cfg.Out {
		s.out[p] = why
	}
	paths := opts.Disks
	if len(paths) == 0 {
		paths = []string{opts.Dir}
	}
	paths = append(slices.Clone(paths), cfg.Plugged...)
	for i := range paths {
		paths[i] = filepath.Clean(paths[i])
	}
	slices.Sort(paths)
	paths = slices.Compact(paths)
	for _, p := range paths {
		if _, isOut := s.out[p]; isOut {
			continue
		}
		d, err := s.openDisk(p, len(paths))
		if err != nil {
			s.Close()
			return nil, err
		}
		s.disks = append(s.disks, d)
	}
	if len(s.disks) == 0 {
		return nil, errs.E(errs.Invalid, "no disk in service (every disk given is recorded as out of service in %s)", s.configPath())
	}
	s.rebuild()
	// What the disks lost while the node was not running: index entries
	// without files, and whole disks replaced (a new disk ID where the
	// last run saw another, whose index lists what the old disk held).
	var lost []ids.ObjectID
	for _, d := range s.disks {
		lost = append(lost, d.st.Missing()...)
		lost = append(lost, d.st.Damaged()...) // dropped at open: fetched again
		if old := s.ids[d.path]; old != "" && old != d.id && !s.legacy(d.path) {
			ip := filepath.Join(opts.Dir, "md", old+".db")
			if gone, err := objstore.ListIndex(ip); err == nil {
				lost = append(lost, gone...)
				_ = os.Remove(ip)
				_ = os.Remove(ip + ".log") // the index's log (objstore)
			}
		}
		s.ids[d.path] = d.id
	}
	if err := s.saveConfig(); err != nil {
		s.Close()
		return nil, err
	}
	if len(lost) > 0 && opts.OnLost != nil {
		opts.OnLost("", lost)
	}
	return s, nil
}

func (s *Set) configPath() string { return filepath.Join(s.opts.Dir, "md", "disks.json") }

func (s *Set) readConfig() (config, error) {
	var c config
	b, err := os.ReadFile(s.configPath())
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err == nil {
		err = json.Unmarshal(b, &c)
	}
	if err != nil {
		return c, errs.E(errs.IO, "md: read %s: %w", s.configPath(), err)
	}
	return c, nil
}

// saveConfig records plugged and out-of-service disks. s.mu is held.
func (s *Set) saveConfig() error {
	c := config{Plugged: s.extra, Out: s.out, IDs: s.ids}
	b, _ := json.MarshalIndent(c, "", "  ")
	p := s.configPath()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return errs.E(errs.IO, "md: %w", err)
	}
	if err := os.WriteFile(p+".tmp", b, 0o644); err != nil {
		return errs.E(errs.IO, "md: %w", err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		return errs.E(errs.IO, "md: %w", err)
	}
	return nil
}

// legacy reports whether path is the node's data directory, whose store
// keeps the layout of a node with one disk.
func (s *Set) legacy(path string) bool { return path == filepath.Clean(s.opts.Dir) }

// openDisk opens the store of the disk at path. n is the number of disks
// the open files are shared among.
func (s *Set) openDisk(path string, n int) (*disk, error) {
	d := &disk{path: path}
	o := s.opts.Store
	if o.MaxOpenFiles > 0 {
		o.MaxOpenFiles = max(o.MaxOpenFiles/max(n, 1), 16)
	}
	var fsys objstore.FS
	if s.opts.FaultFS {
		d.fault = objstore.NewFaultFS(o.FS)
		fsys = d.fault
	} else {
		fsys = o.FS
	}
	o.FS = fsys
	dir := path // objects in D/obj/XX
	if s.legacy(path) {
		dir = filepath.Join(path, "obj") // DIR/obj/obj/XX, index DIR/obj/index.db
		d.id = "data-dir"
	} else {
		if err := os.MkdirAll(path, 0o755); err != nil {
			return nil, errs.E(errs.IO, "md: disk %s: %w", path, err)
		}
		id, err := diskID(path)
		if err != nil {
			return nil, err
		}
		d.id = id
		o.IndexPath = filepath.Join(s.opts.Dir, "md", id+".db")
	}
	st, err := objstore.Open(dir, o)
	if err != nil {
		return nil, errs.E(errs.KindOf(err), "md: disk %s: %w", path, err)
	}
	d.st = st
	var sfs syscall.Statfs_t
	if syscall.Statfs(path, &sfs) == nil {
		d.total = int64(sfs.Blocks) * sfs.Bsize
	}
	var fi syscall.Stat_t
	if syscall.Stat(path, &fi) == nil {
		d.dev = fi.Dev
	}
	return d, nil
}

// diskID reads, or makes, the random name of the disk at path.
func diskID(path string) (string, error) {
	p := filepath.Join(path, "disk-id")
	if b, err := os.ReadFile(p); err == nil {
		if id := strings.TrimSpace(string(b)); len(id) == 16 {
			return id, nil
		}
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	if err := os.WriteFile(p+".tmp", []byte(id+"\n"), 0o644); err != nil {
		return "", errs.E(errs.IO, "md: disk %s: %w", path, err)
	}
	if err := os.Rename(p+".tmp", p); err != nil {
		return "", errs.E(errs.IO, "md: disk %s: %w", path, err)
	}
	return id, nil
}

// rebuild makes the ring of the disks in service, weighted by size. s.mu
// is held.
func (s *Set) rebuild() {
	nodes := make([]hashring.Node, len(s.disks))
	for i, d := range s.disks {
		nodes[i] = hashring.Node{ID: ids.NodeID(d.path), Weight: uint64(max(d.total>>20, 1))}
	}
	s.ring = hashring.NewNodes(nodes, 256, 0)
}

// find returns the disk holding oid, the one placing it first. s.mu is
// held shared.
func (s *Set) find(oid ids.ObjectID) *disk {
	t := s.target(oid)
	if _, err := t.st.Stat(oid); err == nil {
		return t
	}
	for _, d := range s.disks {
		if d == t {
			continue
		}
		if _, err := d.st.Stat(oid); err == nil {
			return d
		}
	}
	return nil
}

// target returns the disk a new object goes to. s.mu is held shared.
func (s *Set) target(oid ids.ObjectID) *disk {
	if len(s.disks) == 1 {
		return s.disks[0]
	}
	var buf [1]ids.NodeID
	r := s.ring.Replicas(oid, 1, buf[:0])
	for _, d := range s.disks {
		if ids.NodeID(d.path) == r[0] {
			return d
		}
	}
	return s.disks[0]
}

// failed reports whether err means the disk itself failed: the kernel
// reported an I/O error or the device went away, not a full disk or a
// missing object.
func failed(err error) bool {
	for _, e := range []syscall.Errno{syscall.EIO, syscall.EROFS, syscall.ENODEV, syscall.ENXIO, syscall.EUCLEAN, syscall.EBADMSG} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// check takes d out of service if err says it failed, and returns err.
func (s *Set) check(d *disk, err error) error {
	if err != nil && failed(err) {
		s.takeOut(d, "failed: "+err.Error(), false)
	}
	return err
}

// with runs fn on the disk holding oid; errs.NotFound if none does.
func (s *Set) with(oid ids.ObjectID, op string, fn func(*objstore.Store) error) error {
	s.mu.RLock()
	d := s.find(oid)
	if d != nil {
		d.ops.Add(1)
	}
	s.mu.RUnlock()
	if d == nil {
		return errs.E(errs.NotFound, "objstore: %s: object %v", op, oid)
	}
	err := fn(d.st)
	d.ops.Done()
	return s.check(d, err)
}

// Path is objstore.Store.Path on the disk holding oid. A disk whose
// faults can be injected never hands out its files: its faults must reach
// the node through the store.
func (s *Set) Path(oid ids.ObjectID) (string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	d := s.find(oid)
	switch {
	case d == nil:
		return "", errs.E(errs.NotFound, "objstore: path: object %v", oid)
	case d.fault != nil:
		return "", errs.E(errs.Unsupported, "objstore: path: object %v is on a disk with fault injection", oid)
	}
	return d.st.Path(oid)
}

// Read is objstore.Store.Read on the disk holding oid.
func (s *Set) Read(oid ids.ObjectID, off int64, buf []byte) (objstore.Meta, error) {
	var m objstore.Meta
	err := s.with(oid, "read", func(st *objstore.Store) (err error) {
		m, err = st.Read(oid, off, buf)
		return err
	})
	return m, err
}

// ReadSparse is objstore.Store.ReadSparse on the disk holding oid.
func (s *Set) ReadSparse(oid ids.ObjectID, buf []byte, maxExtents int) ([]objstore.Extent, objstore.Meta, error) {
	var m objstore.Meta
	var exts []objstore.Extent
	err := s.with(oid, "read", func(st *objstore.Store) (err error) {
		exts, m, err = st.ReadSparse(oid, buf, maxExtents)
		return err
	})
	return exts, m, err
}

// Patch is objstore.Store.Patch on the disk holding oid.
func (s *Set) Patch(oid ids.ObjectID, exts []objstore.Extent, data []byte) (int, error) {
	var n int
	err := s.with(oid, "patch", func(st *objstore.Store) (err error) {
		n, err = st.Patch(oid, exts, data)
		return err
	})
	return n, err
}

// Check is objstore.Store.Check on the disk holding oid.
func (s *Set) Check(oid ids.ObjectID, buf []byte) (objstore.Meta, uint32, error) {
	var m objstore.Meta
	var digest uint32
	err := s.with(oid, "check", func(st *objstore.Store) (err error) {
		m, digest, err = st.Check(oid, buf)
		return err
	})
	return m, digest, err
}

// Stat is objstore.Store.Stat on the disk holding oid.
func (s *Set) Stat(oid ids.ObjectID) (objstore.Meta, error) {
	var m objstore.Meta
	err := s.with(oid, "stat", func(st *objstore.Store) (err error) {
		m, err = st.Stat(oid)
		return err
	})
	return m, err
}

// Update is objstore.Store.Update on the disk holding oid.
func (s *Set) Update(oid ids.ObjectID, off int64, data []byte, ver ids.Version, epoch ids.Epoch) error {
	return s.with(oid, "write", func(st *objstore.Store) error { return st.Update(oid, off, data, ver, epoch) })
}

// Punch is objstore.Store.Punch on the disk holding oid.
func (s *Set) Punch(oid ids.ObjectID, off, length int64, ver ids.Version, epoch ids.Epoch) error {
	return s.with(oid, "punch", func(st *objstore.Store) error { return st.Punch(oid, off, length, ver, epoch) })
}

// Remove is objstore.Store.Remove on the disk holding oid (nothing if no
// disk does).
func (s *Set) Remove(oid ids.ObjectID) error {
	err := s.with(oid, "remove", func(st *objstore.Store) error { return st.Remove(oid) })
	if errs.Is(err, errs.NotFound) {
		return nil
	}
	return err
}

// onDisk runs fn on the disk holding oid, or on the one placing new
// objects if none does.
func (s *Set) onDisk(oid ids.ObjectID, fn func(*objstore.Store) error) error {
	s.mu.RLock()
	d := s.find(oid)
	if d == nil {
		d = s.target(oid)
	}
	d.ops.Add(1)
	s.mu.RUnlock()
	err := fn(d.st)
	d.ops.Done()
	return s.check(d, err)
}

// Write is objstore.Store.Write: a new object goes to the disk that
// places it.
func (s *Set) Write(oid ids.ObjectID, off int64, data []byte, ver ids.Version, epoch ids.Epoch) error {
	return s.onDisk(oid, func(st *objstore.Store) error { return st.Write(oid, off, data, ver, epoch) })
}

// Replace is objstore.Store.Replace.
func (s *Set) Replace(oid ids.ObjectID, off int64, data []byte, ver ids.Version, epoch ids.Epoch) error {
	return s.onDisk(oid, func(st *objstore.Store) error { return st.Replace(oid, off, data, ver, epoch) })
}

// ReplaceSparse is objstore.Store.ReplaceSparse.
func (s *Set) ReplaceSparse(oid ids.ObjectID, exts []objstore.Extent, data []byte, ver ids.Version, epoch ids.Epoch) error {
	return s.onDisk(oid, func(st *objstore.Store) error { return st.ReplaceSparse(oid, exts, data, ver, epoch) })
}

// ForEach calls fn for every object on every disk in service.
func (s *Set) ForEach(fn func(oid ids.ObjectID, m objstore.Meta) error) error {
	s.mu.RLock()
	disks := slices.Clone(s.disks)
	s.mu.RUnlock()
	for _, d := range disks {
		if err := d.st.ForEach(fn); err != nil && !errs.Is(err, errs.Closed) {
			return err
		}
	}
	return nil
}

// syncDisk syncs one disk, counted as an operation on it.
func (s *Set) syncDisk(d *disk) error {
	s.mu.RLock()
	in := slices.Contains(s.disks, d)
	if in {
		d.ops.Add(1)
	}
	s.mu.RUnlock()
	if !in {
		return nil // left service meanwhile: its objects are being fetched again
	}
	err := d.st.Sync()
	d.ops.Done()
	return s.check(d, err)
}

// Sync syncs every disk in parallel. A disk whose sync fails is taken out
// of service (its unsynced writes may be lost), and Sync fails: the
// caller retries, and the objects it held are fetched again.
func (s *Set) Sync() error {
	s.mu.RLock()
	disks := slices.Clone(s.disks)
	s.mu.RUnlock()
	if len(disks) == 1 {
		return s.syncDisk(disks[0])
	}
	errc := make(chan error, len(disks))
	for _, d := range disks {
		go func() { errc <- s.syncDisk(d) }()
	}
	var first error
	for range disks {
		if err := <-errc; err != nil && first == nil && !errs.Is(err, errs.Closed) {
			first = err
		}
	}
	return first
}

// Usage sums the bytes the objects use on every disk, and the bytes free
// on their filesystems (each counted once).
func (s *Set) Usage() (used, free int64, err error) {
	s.mu.RLock()
	disks := slices.Clone(s.disks)
	s.mu.RUnlock()
	seen := map[uint64]bool{}
	for _, d := range disks {
		u, f, err := d.st.Usage()
		if err != nil {
			return 0, 0, err
		}
		used += u
		if !seen[d.dev] {
			seen[d.dev] = true
			free += f
		}
	}
	return used, free, nil
}

// Corruptions returns how many damaged copies the disks in service found
// since they were opened (objstore.Store.Corruptions).
func (s *Set) Corruptions() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var n uint64
	for _, d := range s.disks {
		n += d.st.Corruptions()
	}
	return n
}

// Replayed returns how many journaled blocks the disks' stores wrote back
// when they were opened after a reboot (objstore.Store.Replayed).
func (s *Set) Replayed() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := 0
	for _, d := range s.disks {
		n += d.st.Replayed()
	}
	return n
}

// Capacity returns the size in bytes of the filesystems of the disks in
// service, each counted once: the node's weight.
func (s *Set) Capacity() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	seen := map[uint64]bool{}
	var total int64
	for _, d := range s.disks {
		if !seen[d.dev] {
			seen[d.dev] = true
			total += d.total
		}
	}
	return total
}

// Close closes every disk's store.
func (s *Set) Close() error {
	s.mu.Lock()
	disks := s.disks
	s.disks = nil
	s.mu.Unlock()
	var first error
	for _, d := range disks {
		if err := d.st.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// takeOut removes d from service: its objects are reported lost. clean
// says whether its store may still be synced and closed normally (an
// unplug) rather than abandoned (a failure). New operations no longer
// find the disk; those in flight finish before its objects are listed,
// so that none lands on it unreported. The lost objects are reported
// (and recorded by the node) before the disk is recorded as out of
// service.
func (s *Set) takeOut(d *disk, why string, clean bool) {
	s.mu.Lock()
	i := slices.Index(s.disks, d)
	if i < 0 || len(s.disks) == 1 && !clean {
		// Already out, or the last disk: a node with no disk left fails
		// requests (the errors say why) instead of holding nothing.
		s.mu.Unlock()
		return
	}
	s.disks = slices.Delete(s.disks, i, i+1)
	s.rebuild()
	s.mu.Unlock()
	d.ops.Wait()
	var lost []ids.ObjectID
	_ = d.st.ForEach(func(oid ids.ObjectID, _ objstore.Meta) error {
		lost = append(lost, oid)
		return nil
	})
	if s.opts.OnLost != nil {
		s.opts.OnLost(d.path, lost)
	}
	s.mu.Lock()
	s.out[d.path] = why
	s.extra = slices.DeleteFunc(s.extra, func(p string) bool { return p == d.path })
	_ = s.saveConfig()
	s.mu.Unlock()
	if clean {
		_ = d.st.Close()
	} else {
		go func() { _ = d.st.Close() }() // a failed disk may hang its syncs
	}
}

// DiskInfo describes a disk, for `sheep node md info`.
type DiskInfo struct {
	Path    string `json:"path"`
	ID      string `json:"id,omitempty"`
	State   string `json:"state"` // "in service", or why it is out
	Objects int    `json:"objects"`
	Used    int64  `json:"used"`
	Free    int64  `json:"free"`
	Size    int64  `json:"size"`
}

// Info describes every disk, in service or not.
func (s *Set) Info() []DiskInfo {
	s.mu.RLock()
	disks := slices.Clone(s.disks)
	out := make(map[string]string, len(s.out))
	for p, w := range s.out {
		out[p] = w
	}
	s.mu.RUnlock()
	var list []DiskInfo
	for _, d := range disks {
		n := 0
		_ = d.st.ForEach(func(ids.ObjectID, objstore.Meta) error { n++; return nil })
		used, free, _ := d.st.Usage()
		list = append(list, DiskInfo{Path: d.path, ID: d.id, State: "in service", Objects: n, Used: used, Free: free, Size: d.total})
	}
	for p, why := range out {
		list = append(list, DiskInfo{Path: p, State: "out of service: " + why})
	}
	slices.SortFunc(list, func(a, b DiskInfo) int { return strings.Compare(a.Path, b.Path) })
	return list
}

// diskAt returns the disk in service at path (nil if none) and how many
// disks are in service.
func (s *Set) diskAt(path string) (*disk, int) {
	path = filepath.Clean(path)
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, d := range s.disks {
		if d.path == path {
			return d, len(s.disks)
		}
	}
	return nil, len(s.disks)
}

// Unplug takes the disk at path out of service, as if it had failed: the
// objects it held are reported lost and fetched again from other nodes.
// errs.NotFound if no disk in service is at path; errs.Invalid for the
// last one.
func (s *Set) Unplug(path string) error {
	d, n := s.diskAt(path)
	switch {
	case d == nil:
		return errs.E(errs.NotFound, "no disk in service at %s", path)
	case n == 1:
		return errs.E(errs.Invalid, "%s is the node's last disk: plug another first", path)
	}
	s.takeOut(d, "unplugged", true)
	return nil
}

// Plug puts the disk at path in service (a new one, or one taken out
// before). Copies on it that another disk also holds are removed; the
// others are given to suspect before the disk enters service, for the
// node to check before they are used (they may be stale). errs.Exists if
// it is in service already.
func (s *Set) Plug(path string, suspect func([]ids.ObjectID)) error {
	path = filepath.Clean(path)
	if !filepath.IsAbs(path) {
		return errs.E(errs.Invalid, "disk %q: give an absolute path", path)
	}
	s.mu.RLock()
	for _, d := range s.disks {
		if d.path == path {
			s.mu.RUnlock()
			return errs.E(errs.Exists, "disk %s is in service", path)
		}
	}
	n := len(s.disks)
	s.mu.RUnlock()
	d, err := s.openDisk(path, n+1)
	if err != nil {
		return err
	}
	var stale []ids.ObjectID
	var dups []ids.ObjectID
	_ = d.st.ForEach(func(oid ids.ObjectID, _ objstore.Meta) error {
		s.mu.RLock()
		other := s.find(oid)
		s.mu.RUnlock()
		if other != nil {
			dups = append(dups, oid)
		} else {
			stale = append(stale, oid)
		}
		return nil
	})
	for _, oid := range dups {
		_ = d.st.Remove(oid)
	}
	if len(stale) > 0 && suspect != nil {
		suspect(stale)
	}
	s.mu.Lock()
	s.disks = append(s.disks, d)
	slices.SortFunc(s.disks, func(a, b *disk) int { return strings.Compare(a.path, b.path) })
	delete(s.out, path)
	s.ids[path] = d.id
	if !slices.Contains(s.opts.Disks, path) && !s.legacy(path) && !slices.Contains(s.extra, path) {
		s.extra = append(s.extra, path)
	}
	s.rebuild()
	err = s.saveConfig()
	s.mu.Unlock()
	return err
}

// Fault arms an injected fault on the disk at path (Options.FaultFS must
// be set): every read, write or sync (as op says) from now on fails with
// EIO; or every read returns damaged data ("corrupt"); or the next large
// write is torn and the process killed ("tear"); or, for op "heal",
// nothing fails any more. "track" starts remembering what every write
// replaces until its file is synced, and "powerloss" then undoes what was
// not synced, as a power loss might, and kills the process (a drill for
// the journal: restart the daemon as after a reboot, see
// objstore.SetBootID).
func (s *Set) Fault(path, op string) error {
	d, _ := s.diskAt(path)
	switch {
	case d == nil:
		return errs.E(errs.NotFound, "no disk in service at %s", path)
	case d.fault == nil:
		return errs.E(errs.Invalid, "fault injection is off (start the daemon with SHEEP_FAULTS=1)")
	}
	eio := syscall.EIO
	switch op {
	case "read":
		d.fault.FailRead(0, eio, true)
	case "write":
		d.fault.FailWrite(0, eio, true)
	case "sync":
		d.fault.FailSync(0, eio, true)
	case "corrupt":
		d.fault.CorruptReads()
	case "tear":
		// The next write of 16 KiB or more is torn, and the daemon
		// killed at once, as by a crash in the middle of it.
		d.fault.TearWrite(16<<10, func() { _ = syscall.Kill(os.Getpid(), syscall.SIGKILL) })
	case "heal":
		d.fault.Heal()
	case "track":
		d.fault.TrackDurability()
	case "powerloss":
		die := func() { _ = syscall.Kill(os.Getpid(), syscall.SIGKILL) }
		// Every disk of the node loses power at once.
		s.mu.Lock()
		disks := slices.Clone(s.disks)
		s.mu.Unlock()
		var faults []*objstore.FaultFS
		for _, d := range disks {
			if d.fault != nil {
				faults = append(faults, d.fault)
			}
		}
		return powerLoss(faults, die)
	default:
		return errs.E(errs.Invalid, "fault %q: want read, write, sync, corrupt, tear, track, powerloss or heal", op)
	}
	return nil
}

// powerLoss undoes the unsynced changes of every disk in faults, holding
// each one's writes and syncs back until die kills the process.
func powerLoss(faults []*objstore.FaultFS, die func()) error {
	if len(faults) == 0 {
		die()
		return nil
	}
	return faults[0].PowerLossAndDie(func() {
		if err := powerLoss(faults[1:], die); err != nil {
			die()
		}
	})
}
