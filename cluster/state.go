package cluster

import (
	"encoding/json"
	"io"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/hashring"
	"github.com/sheepfs/sheepfs/ids"
)

// Limits on cluster metadata, checked when a command is applied.
const (
	// MaxNameLen is the longest VDI name, in bytes.
	MaxNameLen = 255
	// MaxCopies is the largest replica count a cluster or VDI may ask for.
	MaxCopies = 31
	// MaxVDISize is the largest VDI, in bytes (64 TiB).
	MaxVDISize = 64 << 40
	// maxEpochHistory bounds the past member lists kept in the state.
	maxEpochHistory = 256
)

// Member is one node of an epoch's member list.
type Member struct {
	ID ids.NodeID `json:"id"`
	// Addr is the node's data address, host:port.
	Addr string `json:"addr"`
	// Zone is the node's failure domain ("" for a zone of its own).
	Zone string `json:"zone,omitempty"`
	// Weight is the node's capacity in MiB (0 when unknown, which
	// places like the cluster's weight unit).
	Weight uint64 `json:"weight,omitempty"`
	// Store names the node's data directory (random, made with it): a
	// node that comes back under its ID with an empty directory has a new
	// Store, and nothing counts it as holding what the old one held.
	Store string `json:"store,omitempty"`
	// Boot names the boot of the node's machine its daemon started in
	// (objstore.BootToken in hex; "" if unknown). Writes a node took and
	// had not flushed may be gone after its machine restarts, so its
	// copies are vouched for only up to the last epoch of its old boot.
	Boot string `json:"boot,omitempty"`
	// Down marks a member that is unreachable but not yet gone for the
	// grace period: it keeps its place in the ring (nothing moves), and
	// writes and reads skip it. Its copies of objects written meanwhile
	// are stale when it comes back up, and recovery refreshes them.
	Down bool `json:"down,omitempty"`
}

// Up reports whether the member is not marked down.
func (m Member) Up() bool { return !m.Down }

// Holds reports whether m and o are the same node with the same data
// directory: o's copies are m's copies.
func (m Member) Holds(o Member) bool { return m.ID == o.ID && m.Store == o.Store }

// EpochRecord is a past member list.
type EpochRecord struct {
	Epoch   ids.Epoch `json:"epoch"`
	Members []Member  `json:"members"`
	Time    int64     `json:"time"` // unix seconds
	// WeightUnit is the State's WeightUnit at this epoch.
	WeightUnit uint64 `json:"weight_unit,omitempty"`
}

// Member returns the epoch's member with the given ID.
func (r *EpochRecord) Member(id ids.NodeID) (Member, bool) { return findMember(r.Members, id) }

// Ring returns the placement ring of the epoch. Rings are cached by their
// members, zones, weights and unit, so that asking again is cheap.
func (r *EpochRecord) Ring() *hashring.Ring { return ringFor(r.Members, r.WeightUnit) }

// RecoveryConf is the cluster-wide throttle of background recovery, set by
// `sheep cluster recovery`. Objects that clients ask for are recovered at
// once whatever it says.
type RecoveryConf struct {
	// MaxRate is the most bytes per second one node copies in the
	// background; 0 means no limit.
	MaxRate int64 `json:"max_rate,omitempty"`
	// MaxParallel is how many objects one node copies at once; 0 means
	// DefaultRecoveryParallel.
	MaxParallel int `json:"max_parallel,omitempty"`
	// Paused stops background copies (and the deletion of copies no
	// longer placed) until resumed.
	Paused bool `json:"paused,omitempty"`
}

// DefaultRecoveryParallel is the objects a node copies at once when
// RecoveryConf.MaxParallel is 0.
const DefaultRecoveryParallel = 4

// MaxRecoveryParallel bounds RecoveryConf.MaxParallel.
const MaxRecoveryParallel = 64

// Parallel returns MaxParallel, or its default.
func (c RecoveryConf) Parallel() int {
	if c.MaxParallel <= 0 {
		return DefaultRecoveryParallel
	}
	return c.MaxParallel
}

// ScrubConf is the cluster-wide setting of the background scrub, set by
// `sheep cluster scrub`.
type ScrubConf struct {
	// MaxRate is the most bytes per second one node's scrub reads; 0
	// means DefaultScrubRate.
	MaxRate int64 `json:"max_rate,omitempty"`
	// Paused stops the scrub until resumed.
	Paused bool `json:"paused,omitempty"`
	// Every is the seconds from the start of one pass to the start of
	// the next; 0 means DefaultScrubEvery.
	Every int64 `json:"every,omitempty"`
	// Start is bumped to start a pass now on every node.
	Start uint64 `json:"start,omitempty"`
	// Grace is the seconds since its last write before an object that
	// no index references is freed; 0 means DefaultScrubGrace.
	Grace int64 `json:"grace,omitempty"`
}

// Defaults of ScrubConf.
const (
	DefaultScrubRate  = 16 << 20
	DefaultScrubEvery = 7 * 24 * 3600
	DefaultScrubGrace = 3600
)

// GraceSeconds returns Grace, or its default.
func (c ScrubConf) GraceSeconds() int64 {
	if c.Grace <= 0 {
		return DefaultScrubGrace
	}
	return c.Grace
}

// Rate returns MaxRate, or its default.
func (c ScrubConf) Rate() int64 {
	if c.MaxRate <= 0 {
		return DefaultScrubRate
	}
	return c.MaxRate
}

// Interval returns Every, or its default, in seconds.
func (c ScrubConf) Interval() int64 {
	if c.Every <= 0 {
		return DefaultScrubEvery
	}
	return c.Every
}

func (c ScrubConf) valid() bool {
	return c.MaxRate >= 0 && c.Every >= 0 && (c.Grace == 0 || c.Grace >= MinScrubGrace)
}

// MinScrubGrace bounds ScrubConf.Grace from below: far longer than a write
// takes from an object's creation to its index entry.
const MinScrubGrace = 600

// Lock is a VDI's write lock: who holds it and through which node.
type Lock struct {
	Mount ids.MountID `json:"mount"`
	Node  ids.NodeID  `json:"node"`
	Since int64       `json:"since"` // unix seconds
	// Session names the gateway connection the lock was (last) taken
	// through, so that releasing an old connection's locks leaves one
	// the mount took again through a new connection to the same node.
	Session string `json:"session,omitempty"`
}

// VDI is the cluster metadata of one virtual disk image: a writable VDI
// (Tag empty) or a snapshot of one (Name@Tag).
//
// Data lives in images: an image is a VDI ID that names objects (its data
// objects and its index). A writable VDI keeps its handle ID for life, and
// moves to a new image at each snapshot, so that the objects of the old
// image, which the snapshot keeps, never change again. A snapshot's ID is
// its image. An image's index inherits every entry it has not set from its
// Parent image, which is how a snapshot or a clone takes constant time.
type VDI struct {
	Name string    `json:"name"`
	ID   ids.VDIID `json:"id"`
	// Image is the image holding the data. IDs name handles (what
	// clients address) and images (what objects are named after); both
	// come from one counter, and a handle equals an image only when both
	// were made together for the same VDI.
	Image ids.VDIID `json:"image,omitempty"`
	// Parent is the image that Image's index inherits from (0: none).
	Parent ids.VDIID `json:"parent,omitempty"`
	// Tag names a snapshot; empty for a writable VDI.
	Tag      string `json:"tag,omitempty"`
	SnapTime int64  `json:"snap_time,omitempty"` // unix seconds, snapshots only
	// Source is the snapshot a clone or the last rollback started from.
	Source  string `json:"source,omitempty"`
	Size    uint64 `json:"size"`   // bytes
	Copies  int    `json:"copies"` // replicas per object
	Created int64  `json:"created"`
	Lock    *Lock  `json:"lock,omitempty"`
	// WriteGen counts the write locks granted so far: a client that saw
	// the same WriteGen at two opens knows nobody else wrote in between.
	// A rollback counts as a write.
	WriteGen uint64 `json:"write_gen,omitempty"`
}

// IsSnapshot reports whether v is a snapshot (read-only).
func (v *VDI) IsSnapshot() bool { return v.Tag != "" }

// FullName is NAME for a writable VDI and NAME@TAG for a snapshot.
func (v *VDI) FullName() string {
	if v.Tag == "" {
		return v.Name
	}
	return v.Name + "@" + v.Tag
}

// State is the agreed cluster metadata at one point of the log. A State is
// immutable once published: readers may keep it as long as they like.
type State struct {
	Epoch   ids.Epoch     `json:"epoch"`
	Members []Member      `json:"members"` // sorted by ID
	History []EpochRecord `json:"history"`
	Copies  int           `json:"copies"` // 0 until formatted
	// WeightUnit is the member weight that gets hashring.DefaultVNodes
	// points. It is set to the members' mean weight by the first epoch
	// with weights, and again only when that mean has moved by more than
	// 4x, so that one node's change of weight moves only that node's
	// share of the data.
	WeightUnit uint64 `json:"weight_unit,omitempty"`
	// Recovery is the throttle of background recovery.
	Recovery RecoveryConf `json:"recovery,omitempty"`
	// Scrub is the setting of the background scrub.
	Scrub  ScrubConf       `json:"scrub,omitempty"`
	Format int64           `json:"format_time"`
	VDIs   map[string]*VDI `json:"vdis"`
	// Snaps are the snapshots, by NAME@TAG.
	Snaps map[string]*VDI `json:"snaps,omitempty"`
	// Dead are images no VDI uses any more whose index or objects a
	// descendant may still need; they go once they have no children.
	Dead    map[ids.VDIID]*DeadImage `json:"dead,omitempty"`
	NextVDI ids.VDIID                `json:"next_vdi"`
	// Index is the log index of the command that made this state: later
	// states have larger ones.
	Index uint64 `json:"index"`
	// Recent are the tokens of the last commands that changed the state.
	Recent []Done `json:"recent,omitempty"`
	// Applied is set only in a raft snapshot: the log index of the last
	// command applied when it was taken (commands that changed nothing
	// count too, and may come after Index).
	Applied uint64 `json:"applied,omitempty"`

	ring     *hashring.Ring
	ringKey  string
	byID     map[ids.VDIID]*VDI
	images   map[ids.VDIID]Image
	children map[ids.VDIID][]ids.VDIID
}

// Formatted reports whether the cluster has been formatted.
func (s *State) Formatted() bool { return s.Copies > 0 }

// Ring returns the consistent-hash ring of the epoch's members.
func (s *State) Ring() *hashring.Ring { return s.ring }

// Member returns the member with the given ID.
func (s *State) Member(id ids.NodeID) (Member, bool) { return findMember(s.Members, id) }

// findMember finds id in ms, sorted by ID.
func findMember(ms []Member, id ids.NodeID) (Member, bool) {
	i, ok := slices.BinarySearchFunc(ms, id, func(m Member, id ids.NodeID) int {
		switch {
		case m.ID < id:
			return -1
		case m.ID > id:
			return 1
		}
		return 0
	})
	if !ok {
		return Member{}, false
	}
	return ms[i], true
}

// Placement appends to dst the members that hold object oid at copies
// copies in this epoch, in ring order, down ones included.
func (s *State) Placement(oid ids.ObjectID, copies int, dst []Member) []Member {
	var buf [8]ids.NodeID
	for _, id := range s.ring.Replicas(oid, copies, buf[:0]) {
		if m, ok := s.Member(id); ok {
			dst = append(dst, m)
		}
	}
	return dst
}

// VDIByID returns the VDI with the given ID.
func (s *State) VDIByID(id ids.VDIID) (*VDI, bool) {
	v, ok := s.byID[id]
	return v, ok
}

// derive fills the fields computed from the serialised ones. The ring is
// rebuilt only when the members changed (it is costly at scale).
func (s *State) derive() {
	if key := ringKey(s.Members, s.WeightUnit); s.ring == nil || key != s.ringKey {
		s.ring, s.ringKey = ringFor(s.Members, s.WeightUnit), key
	}
	s.byID = make(map[ids.VDIID]*VDI, len(s.VDIs)+len(s.Snaps))
	s.images = make(map[ids.VDIID]Image, len(s.VDIs)+len(s.Snaps)+len(s.Dead))
	s.children = map[ids.VDIID][]ids.VDIID{}
	add := func(img Image) {
		s.images[img.ID] = img
		if img.Parent != 0 {
			s.children[img.Parent] = append(s.children[img.Parent], img.ID)
		}
	}
	for _, m := range []map[string]*VDI{s.VDIs, s.Snaps} {
		for _, v := range m {
			s.byID[v.ID] = v
			add(Image{ID: v.Image, Parent: v.Parent, Copies: v.Copies, Size: v.Size, VDI: v})
		}
	}
	for id, d := range s.Dead {
		add(Image{ID: id, Parent: d.Parent, Copies: d.Copies, Size: d.Size})
	}
	for _, c := range s.children {
		slices.Sort(c)
	}
}

// ringKey names what a ring depends on: IDs, zones, weights and the unit
// (not addresses, stores or down marks).
func ringKey(ms []Member, unit uint64) string {
	var b strings.Builder
	b.WriteString(strconv.FormatUint(unit, 10))
	for _, m := range ms {
		b.WriteByte(0)
		b.WriteString(string(m.ID))
		b.WriteByte(1)
		b.WriteString(m.Zone)
		b.WriteByte(1)
		b.WriteString(strconv.FormatUint(m.Weight, 10))
	}
	return b.String()
}

// ringCache keeps the last rings built, by ringKey: a State, its epoch
// history and the recovery planner ask for the same few. It holds at most
// ringCacheSize rings and ringCachePoints points (a 1000-node ring has
// 6 M points, about 80 MB), and always the last ring built.
var ringCache struct {
	sync.Mutex
	keys  []string
	rings []*hashring.Ring
}

const (
	ringCacheSize   = 16
	ringCachePoints = 16 << 20
)

// ringFor returns the ring of members ms with weight unit unit.
func ringFor(ms []Member, unit uint64) *hashring.Ring {
	key := ringKey(ms, unit)
	ringCache.Lock()
	for i, k := range ringCache.keys {
		if k == key {
			r := ringCache.rings[i]
			ringCache.Unlock()
			return r
		}
	}
	ringCache.Unlock()
	nodes := make([]hashring.Node, len(ms))
	for i, m := range ms {
		nodes[i] = hashring.Node{ID: m.ID, Zone: m.Zone, Weight: m.Weight}
	}
	r := hashring.NewNodes(nodes, 0, unit)
	ringCache.Lock()
	ringCache.keys = append(ringCache.keys, key)
	ringCache.rings = append(ringCache.rings, r)
	points := 0
	for _, c := range ringCache.rings {
		points += c.Points()
	}
	for len(ringCache.keys) > 1 && (len(ringCache.keys) > ringCacheSize || points > ringCachePoints) {
		points -= ringCache.rings[0].Points()
		ringCache.keys = ringCache.keys[1:]
		ringCache.rings = ringCache.rings[1:]
	}
	ringCache.Unlock()
	return r
}

// weightUnit returns the weight unit for members ms, given the current
// one: kept while the members' mean weight is within 4x of it.
func weightUnit(ms []Member, cur uint64) uint64 {
	var sum, n uint64
	for _, m := range ms {
		if m.Weight > 0 {
			sum += m.Weight
			n++
		}
	}
	if n == 0 {
		return cur
	}
	mean := max(sum/n, 1)
	if cur == 0 || mean > 4*cur || 4*mean < cur {
		return mean
	}
	return cur
}

// clone returns a copy that may be changed without touching s. VDIs are
// copied on write by the commands that change them.
func (s *State) clone() *State {
	n := *s
	n.Members = slices.Clone(s.Members)
	n.History = slices.Clone(s.History)
	n.VDIs = maps.Clone(s.VDIs)
	if n.VDIs == nil {
		n.VDIs = map[string]*VDI{}
	}
	n.Snaps = maps.Clone(s.Snaps)
	if n.Snaps == nil {
		n.Snaps = map[string]*VDI{}
	}
	n.Dead = maps.Clone(s.Dead)
	if n.Dead == nil {
		n.Dead = map[ids.VDIID]*DeadImage{}
	}
	return &n
}

// Command is one entry of the cluster log.
type Command struct {
	Op      string      `json:"op"`
	Members []Member    `json:"members,omitempty"`
	Copies  int         `json:"copies,omitempty"`
	Name    string      `json:"name,omitempty"`
	Size    uint64      `json:"size,omitempty"`
	Mount   ids.MountID `json:"mount,omitempty"`
	Node    ids.NodeID  `json:"node,omitempty"`
	Time    int64       `json:"time,omitempty"`
	// Tag is a snapshot's tag; Source a snapshot NAME@TAG to clone.
	Tag    string `json:"tag,omitempty"`
	Source string `json:"source,omitempty"`
	// Token names one request: a retry of a command already applied
	// (same token) changes nothing and answers the first one's result.
	Token string `json:"token,omitempty"`
	// Session: see Lock. An unlock with Session set releases only a lock
	// taken through that session.
	Session string    `json:"session,omitempty"`
	Image   ids.VDIID `json:"image,omitempty"` // purge
	// Recovery is the new throttle (CmdRecovery).
	Recovery *RecoveryConf `json:"recovery,omitempty"`
	// Scrub is the new scrub setting (CmdScrub).
	Scrub *ScrubConf `json:"scrub,omitempty"`
	// Grow makes a resize grow-only: a size at or below the current one
	// changes nothing (for writes past the end, which may arrive out of
	// order).
	Grow bool `json:"grow,omitempty"`
}

// The commands.
const (
	CmdMembers   = "members"    // Members: a new epoch
	CmdFormat    = "format"     // Copies
	CmdVDICreate = "vdi.create" // Name, Size, Copies (0: the cluster's)
	CmdVDIDelete = "vdi.delete" // Name; Busy while locked
	CmdVDIResize = "vdi.resize" // Name, Size, Mount (to shrink a locked VDI)
	CmdVDILock   = "vdi.lock"   // Name, Mount, Node
	CmdVDIUnlock = "vdi.unlock" // Name, Mount (any holder if Mount is empty), Node (only through that node if set)
	// Snapshots and clones (snap.go).
	CmdSnapshot   = "vdi.snapshot" // Name, Tag, Mount+Node of the write lock ("" if unlocked)
	CmdClone      = "vdi.clone"    // Source NAME@TAG, Name, Copies (0 or the source's)
	CmdRollback   = "vdi.rollback" // Name, Tag; Busy while locked
	CmdSnapDelete = "snap.delete"  // Name, Tag
	CmdPurge      = "image.purge"  // Image: forget a dead image without children
	CmdRecovery   = "recovery"     // Recovery: the background recovery throttle
	CmdScrub      = "scrub"        // Scrub: the background scrub's setting
)

// Result is what applying a command returns.
type Result struct {
	VDI *VDI  `json:"vdi,omitempty"`
	Err error `json:"-"`
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._+-]*$`)

// CheckName returns an errs.Invalid error if name is not a usable VDI name:
// 1 to MaxNameLen bytes of letters, digits, '.', '_', '+', '-', not starting
// with '.' or '-'.
func CheckName(name string) error {
	switch {
	case name == "":
		return errs.E(errs.Invalid, "empty VDI name")
	case len(name) > MaxNameLen:
		return errs.E(errs.Invalid, "VDI name of %d bytes is longer than %d", len(name), MaxNameLen)
	case !nameRE.MatchString(name):
		return errs.E(errs.Invalid, "VDI name %q: use letters, digits, '.', '_', '+', '-', not starting with '.' or '-'", name)
	}
	return nil
}

var zoneRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$`)

// CheckZone returns an errs.Invalid error unless zone is empty or 1 to 64
// letters, digits, '.', '_', '-' (not starting with '.' or '-').
func CheckZone(zone string) error {
	if zone != "" && !zoneRE.MatchString(zone) {
		return errs.E(errs.Invalid, "zone %q: use 1 to 64 letters, digits, '.', '_', '-', not starting with '.' or '-'", zone)
	}
	return nil
}

// maxMembers bounds an epoch's member list.
const maxMembers = 4096

// checkMembers validates a member list (sorted by ID): distinct IDs, sane
// fields, at most maxMembers.
func checkMembers(ms []Member) error {
	if len(ms) > maxMembers {
		return errs.E(errs.Invalid, "%d members: at most %d", len(ms), maxMembers)
	}
	for i, m := range ms {
		if m.ID == "" || len(m.ID) > 64 || len(m.Addr) > 256 || len(m.Store) > 64 || len(m.Boot) > 64 || m.Weight > 1<<40 {
			return errs.E(errs.Invalid, "member %q: bad fields", m.ID)
		}
		if err := CheckZone(m.Zone); err != nil {
			return err
		}
		if i > 0 && ms[i-1].ID == m.ID {
			return errs.E(errs.Invalid, "member %q listed twice", m.ID)
		}
	}
	return nil
}

// CheckSize returns an errs.TooLarge error if size is not a usable VDI size
// (0 to MaxVDISize bytes; an empty VDI is grown by a resize or a write).
func CheckSize(size uint64) error {
	if size > MaxVDISize {
		return errs.E(errs.TooLarge, "VDI size %d exceeds the maximum of %d bytes (64 TiB)", size, uint64(MaxVDISize))
	}
	return nil
}

// maxRecent bounds the tokens of applied commands a State remembers.
const maxRecent = 256

// Done is a command that changed the state, remembered by its token.
type Done struct {
	Token string `json:"token"`
	VDI   *VDI   `json:"vdi,omitempty"`
}

// apply computes the state after c. It never panics on a bad command: it
// returns an error result and leaves the state unchanged. A command whose
// token is among the last maxRecent that changed the state is a retry of
// one already applied: it changes nothing and answers what that one did.
func apply(s *State, c *Command) (*State, Result) {
	if err := checkCommand(c); err != nil {
		return s, Result{Err: err}
	}
	if c.Token != "" {
		for _, d := range s.Recent {
			if d.Token == c.Token {
				return s, Result{VDI: d.VDI}
			}
		}
	}
	n, r := applyCmd(s, c)
	if c.Token != "" && r.Err == nil && n != s {
		keep := n.Recent[max(0, len(n.Recent)-maxRecent+1):]
		n.Recent = append(slices.Clone(keep), Done{Token: c.Token, VDI: r.VDI})
	}
	return n, r
}

// applyCmd is apply without the retry check.
func applyCmd(s *State, c *Command) (*State, Result) {
	n := s.clone()
	switch c.Op {
	case CmdMembers:
		ms := slices.Clone(c.Members)
		slices.SortFunc(ms, func(a, b Member) int {
			switch {
			case a.ID < b.ID:
				return -1
			case a.ID > b.ID:
				return 1
			}
			return 0
		})
		if err := checkMembers(ms); err != nil {
			return s, Result{Err: err}
		}
		if slices.Equal(ms, s.Members) {
			return s, Result{}
		}
		n.Epoch++
		n.Members = ms
		n.WeightUnit = weightUnit(ms, s.WeightUnit)
		n.History = append(n.History, EpochRecord{Epoch: n.Epoch, Members: ms, Time: c.Time, WeightUnit: n.WeightUnit})
		if len(n.History) > maxEpochHistory {
			n.History = n.History[len(n.History)-maxEpochHistory:]
		}
		// Locks die with their holder's node.
		for name, v := range n.VDIs {
			if v.Lock != nil {
				if _, ok := n.Member(v.Lock.Node); !ok {
					nv := *v
					nv.Lock = nil
					n.VDIs[name] = &nv
				}
			}
		}
	case CmdFormat:
		if s.Formatted() {
			return s, Result{Err: errs.E(errs.Exists, "cluster is already formatted with %d copies", s.Copies)}
		}
		if c.Copies < 1 || c.Copies > MaxCopies {
			return s, Result{Err: errs.E(errs.Invalid, "copies must be 1 to %d, not %d", MaxCopies, c.Copies)}
		}
		n.Copies = c.Copies
		n.Format = c.Time
		if n.NextVDI == 0 {
			n.NextVDI = 1
		}
	case CmdVDICreate:
		if !s.Formatted() {
			return s, Result{Err: errs.E(errs.NotReady, "cluster is not formatted")}
		}
		if err := CheckName(c.Name); err != nil {
			return s, Result{Err: err}
		}
		if err := CheckSize(c.Size); err != nil {
			return s, Result{Err: err}
		}
		if _, ok := s.VDIs[c.Name]; ok {
			return s, Result{Err: errs.E(errs.Exists, "VDI %q", c.Name)}
		}
		copies := c.Copies
		if copies == 0 {
			copies = s.Copies
		}
		if copies < 1 || copies > MaxCopies {
			return s, Result{Err: errs.E(errs.Invalid, "copies must be 1 to %d, not %d", MaxCopies, copies)}
		}
		id, err := n.newID()
		if err != nil {
			return s, Result{Err: err}
		}
		v := &VDI{Name: c.Name, ID: id, Image: id, Size: c.Size, Copies: copies, Created: c.Time}
		n.VDIs[c.Name] = v
		n.derive()
		return n, Result{VDI: v}
	case CmdVDIDelete, CmdVDIResize, CmdVDILock, CmdVDIUnlock:
		v, ok := s.VDIs[c.Name]
		if !ok {
			return s, Result{Err: errs.E(errs.NotFound, "VDI %q", c.Name)}
		}
		nv := *v
		switch c.Op {
		case CmdVDIDelete:
			if v.Lock != nil {
				return s, Result{Err: errs.E(errs.Busy, "VDI %q is open for writing by mount %s on node %s", c.Name, v.Lock.Mount.Shown(), v.Lock.Node)}
			}
			delete(n.VDIs, c.Name)
			n.bury(v)
			n.derive()
			return n, Result{VDI: v}
		case CmdVDIResize:
			if err := CheckSize(c.Size); err != nil {
				return s, Result{Err: err}
			}
			if c.Grow && c.Size <= v.Size {
				return s, Result{VDI: v}
			}
			if c.Size < v.Size && v.Lock != nil && v.Lock.Mount != c.Mount {
				return s, Result{Err: errs.E(errs.Busy, "VDI %q is open for writing by mount %s: cannot shrink it", c.Name, v.Lock.Mount.Shown())}
			}
			nv.Size = c.Size
		case CmdVDILock:
			if v.Lock != nil && v.Lock.Mount != c.Mount {
				return s, Result{Err: errs.E(errs.Busy, "VDI %q is open for writing by mount %s on node %s", c.Name, v.Lock.Mount.Shown(), v.Lock.Node)}
			}
			if _, ok := s.Member(c.Node); !ok {
				return s, Result{Err: errs.E(errs.NotReady, "node %s is not a member of epoch %v", c.Node, s.Epoch)}
			}
			if v.Lock == nil {
				nv.WriteGen++
			}
			nv.Lock = &Lock{Mount: c.Mount, Node: c.Node, Since: c.Time, Session: c.Session}
		case CmdVDIUnlock:
			// With Node set (a gateway releasing what a closed
			// connection held), a lock the mount has taken again
			// through another node stays.
			if v.Lock == nil || (c.Mount != "" && v.Lock.Mount != c.Mount) || (c.Node != "" && v.Lock.Node != c.Node) ||
				(c.Session != "" && v.Lock.Session != c.Session) {
				return s, Result{VDI: v}
			}
			nv.Lock = nil
		}
		n.VDIs[c.Name] = &nv
		n.derive()
		return n, Result{VDI: &nv}
	case CmdSnapshot, CmdClone, CmdRollback, CmdSnapDelete, CmdPurge:
		return applySnap(s, n, c)
	case CmdRecovery:
		if c.Recovery == nil {
			return s, Result{Err: errs.E(errs.Invalid, "recovery command without settings")}
		}
		r := *c.Recovery
		if r.MaxRate < 0 || r.MaxParallel < 0 || r.MaxParallel > MaxRecoveryParallel {
			return s, Result{Err: errs.E(errs.Invalid, "recovery: max rate must be >= 0 and max parallel 0 to %d", MaxRecoveryParallel)}
		}
		if r == s.Recovery {
			return s, Result{}
		}
		n.Recovery = r
	case CmdScrub:
		if c.Scrub == nil || !c.Scrub.valid() {
			return s, Result{Err: errs.E(errs.Invalid, "scrub: settings missing, a negative rate or interval, or a grace period under %d s", MinScrubGrace)}
		}
		if *c.Scrub == s.Scrub {
			return s, Result{}
		}
		n.Scrub = *c.Scrub
	default:
		return s, Result{Err: errs.E(errs.Invalid, "unknown cluster command %q", c.Op)}
	}
	n.derive()
	return n, Result{}
}

// fsm is the raft state machine: it applies commands to the State and
// publishes each new State.
type fsm struct {
	state   atomic.Pointer[State]
	applied atomic.Uint64 // log index of the last command applied
	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every change
	around  func()        // Config.AroundState, or nil
}

func newFSM() *fsm {
	f := &fsm{changed: make(chan struct{})}
	s := &State{VDIs: map[string]*VDI{}}
	s.derive()
	f.state.Store(s)
	return f
}

func (f *fsm) publish(s *State) {
	f.mu.Lock()
	if f.around != nil {
		f.around()
		defer f.around()
	}
	f.state.Store(s)
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

func (f *fsm) watch() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

// Apply implements raft.FSM.
func (f *fsm) Apply(l *raft.Log) any {
	var c Command
	if err := json.Unmarshal(l.Data, &c); err != nil {
		f.applied.Store(l.Index)
		return Result{Err: errs.E(errs.Invalid, "undecodable cluster command: %w", err)}
	}
	old := f.state.Load()
	n, r := apply(old, &c)
	if n != old {
		n.Index = l.Index
		f.publish(n)
	}
	f.applied.Store(l.Index)
	return r
}

// Snapshot implements raft.FSM.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	// raft does not call Snapshot and Apply at once: applied is the
	// snapshot's last command.
	s := *f.state.Load()
	s.Applied = f.applied.Load()
	return &fsmSnapshot{s: &s}, nil
}

// Restore implements raft.FSM. A snapshot whose state does not validate
// is refused: nothing of it is applied.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	s, err := decodeSnapshot(rc)
	if err != nil {
		return err
	}
	// The snapshot's own index is not given to Restore: it records the
	// last command applied (older snapshots only the last change, which
	// is at most that).
	applied := max(s.Index, s.Applied)
	s.Applied = 0
	s.derive()
	f.publish(s)
	f.applied.Store(applied)
	return nil
}

// decodeSnapshot reads and validates the state in a raft snapshot.
func decodeSnapshot(r io.Reader) (*State, error) {
	var s State
	lr := &io.LimitedReader{R: r, N: maxSnapshotBytes + 1}
	if err := json.NewDecoder(lr).Decode(&s); err != nil {
		if lr.N <= 0 {
			return nil, errs.E(errs.TooLarge, "cluster state snapshot exceeds %d bytes", maxSnapshotBytes)
		}
		return nil, errs.E(errs.Invalid, "undecodable cluster state snapshot: %w", err)
	}
	if s.VDIs == nil {
		s.VDIs = map[string]*VDI{}
	}
	for _, v := range s.VDIs {
		if v != nil && v.Image == 0 { // written before images existed
			v.Image = v.ID
		}
	}
	if err := s.validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

type fsmSnapshot struct{ s *State }

func (f *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(f.s); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (f *fsmSnapshot) Release() {}

var _ raft.FSM = (*fsm)(nil)

// now is the clock for command timestamps.
var now = func() int64 { return time.Now().Unix() }

// StateAfter applies cmds in order to an empty state, as the cluster log
// would, and returns the result: for tests and tools that need a State
// without a running cluster. A command that fails is returned as the error.
func StateAfter(cmds ...Command) (*State, error) {
	s := &State{VDIs: map[string]*VDI{}}
	s.derive()
	for i := range cmds {
		n, r := apply(s, &cmds[i])
		if r.Err != nil {
			return nil, r.Err
		}
		n.Index = uint64(i + 1)
		s = n
	}
	return s, nil
}
