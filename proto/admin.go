package proto

import (
	"github.com/sheepfs/sheepfs/ids"
)

// Admin commands, carried as AdminRequest.Cmd in an OpAdmin frame.
const (
	AdminClusterFormat = "cluster.format" // Copies
	AdminClusterInfo   = "cluster.info"   // -> ClusterInfo
	AdminNodeList      = "node.list"      // -> []NodeInfo
	AdminNodeStat      = "node.stat"      // this node only -> NodeInfo
	AdminVDICreate     = "vdi.create"     // Name, Size, Copies -> VDIInfo
	AdminVDIDelete     = "vdi.delete"     // Name
	AdminVDIResize     = "vdi.resize"     // Name, Size, Grow -> VDIInfo
	AdminVDIList       = "vdi.list"       // -> []VDIInfo
	AdminVDILookup     = "vdi.lookup"     // Name -> VDIInfo
	AdminVDILock       = "vdi.lock"       // Name, Mount: open for writing
	AdminVDIUnlock     = "vdi.unlock"     // Name, Mount: only the holder, through the connection that locked it; Force: anyone's
	AdminVDIObjects    = "vdi.objects"    // Name -> []string (object IDs it owns)
	// AdminVDIReads lists every object a read of VDI or snapshot Name may
	// use: its allocated data objects, its ancestors' it shares, and the
	// index objects of its image and its ancestors', in pages of at most
	// MaxReadsPage object numbers from Offset on.
	AdminVDIReads = "vdi.reads" // Name, Offset -> ReadsPage
	// AdminCheck checks Objects (at most MaxCheckObjects) on every node
	// placing them, repairs what it can, and answers for each.
	AdminCheck = "objects.check" // Objects, Copies -> []ObjectCheck

	// Snapshots and clones. Name is NAME for a writable VDI and NAME@TAG
	// for a snapshot wherever a command takes either.
	AdminVDISnapshot = "vdi.snapshot" // Name, Tag -> VDIInfo of the snapshot
	AdminVDIClone    = "vdi.clone"    // Source NAME@TAG, Name, Copies -> VDIInfo
	AdminVDIRollback = "vdi.rollback" // Name, Tag -> VDIInfo
	AdminSnapList    = "snap.list"    // Name ("" for all) -> []VDIInfo
	AdminSnapDelete  = "snap.delete"  // Name, Tag
	AdminVDITree     = "vdi.tree"     // -> []ImageInfo, every image of every family
	// AdminVDIOwners answers, for Count objects of VDI or snapshot Name
	// from object Offset on, the image owning each (0: unallocated).
	AdminVDIOwners = "vdi.owners" // Name, Offset, Count -> []ids.VDIID
	// AdminGC frees the objects of deleted images that nothing references
	// any more (run after every delete; this runs it again).
	AdminGC = "gc" // -> GCResult
	// AdminLocalReads answers {} if the gateway lends its object files
	// to this connection (OpVDILease), and an error if not: an older
	// daemon says it does not know the command. A client asks before its
	// first OpVDILease on a connection, since an older daemon drops a
	// connection that sends an op it does not know.
	AdminLocalReads = "local.reads"
	// AdminRecoverySet changes the cluster-wide recovery throttle: Recovery
	// holds the new settings, each applied if set -> ClusterInfo.
	AdminRecoverySet = "recovery.set"
	// AdminScrubSet changes the cluster-wide scrub setting: Scrub holds
	// the change -> ClusterInfo.
	AdminScrubSet = "scrub.set"

	// Disks of the node that receives the request (sheep node md).
	AdminMDInfo   = "md.info"   // -> []DiskInfo
	AdminMDPlug   = "md.plug"   // Name: the disk's directory -> []DiskInfo
	AdminMDUnplug = "md.unplug" // Name -> []DiskInfo
	AdminMDFault  = "md.fault"  // Name, Tag: read, write, sync, corrupt, tear, track, powerloss, dropwrites or heal (daemons started with SHEEP_FAULTS=1)

	// A key roll (sheep cluster key rotate), on one node at a time; all but
	// key.info need the cluster key. The node rewrites its key file.
	AdminKeyInfo    = "key.info"    // -> KeyInfo
	AdminKeyInstall = "key.install" // Name: a key line (auth.Key.Line); accepted from now on -> KeyInfo
	AdminKeyUse     = "key.use"     // Name: a key ID; presented from now on -> KeyInfo
	AdminKeyDrop    = "key.drop"    // Name: a key ID, not the one in use; no longer accepted -> KeyInfo
)

// DiskInfo describes one data disk of a node.
type DiskInfo struct {
	Path    string `json:"path"`
	ID      string `json:"id,omitempty"`
	State   string `json:"state"` // "in service", or why it is out of service
	Objects int    `json:"objects"`
	Used    int64  `json:"used"`
	Free    int64  `json:"free"`
	Size    int64  `json:"size"` // of its filesystem
}

// RecoverySettings is the cluster-wide throttle of background recovery.
type RecoverySettings struct {
	// MaxRate is the most bytes per second each node copies in the
	// background; 0 means no limit.
	MaxRate int64 `json:"max_rate"`
	// MaxParallel is how many objects each node copies at once.
	MaxParallel int  `json:"max_parallel"`
	Paused      bool `json:"paused"`
}

// RecoveryChange is AdminRecoverySet's request: nil fields stay as they are.
type RecoveryChange struct {
	MaxRate     *int64 `json:"max_rate,omitempty"`
	MaxParallel *int   `json:"max_parallel,omitempty"`
	Paused      *bool  `json:"paused,omitempty"`
}

// ScrubSettings is the cluster-wide setting of the background scrub.
type ScrubSettings struct {
	MaxRate int64 `json:"max_rate"` // bytes per second each node reads
	Paused  bool  `json:"paused"`
	Every   int64 `json:"every"` // seconds from one pass's start to the next's
	Grace   int64 `json:"grace"` // seconds before an unreferenced object is freed
}

// ScrubChange is AdminScrubSet's request: nil fields stay as they are;
// Start begins a pass on every node now.
type ScrubChange struct {
	MaxRate *int64 `json:"max_rate,omitempty"`
	Paused  *bool  `json:"paused,omitempty"`
	Every   *int64 `json:"every,omitempty"`
	Grace   *int64 `json:"grace,omitempty"`
	Start   bool   `json:"start,omitempty"`
}

// ScrubInfo is one node's scrub: the pass under way, and the last one
// finished. A node scrubs the objects it is first in the placement of,
// checking every copy of each (as vdi check does).
type ScrubInfo struct {
	// State is "idle" (between passes), "scrubbing" or "paused".
	State string `json:"state"`
	// Objects and Done count the pass under way.
	Objects int `json:"objects,omitempty"`
	Done    int `json:"done,omitempty"`
	// Finished is when the last pass ended (unix seconds, 0: never);
	// Checked, Repaired, Lost and Orphans what it found: objects checked,
	// objects with a copy repaired, objects with no good copy, and
	// objects freed that nothing references (copies of deleted images,
	// and objects a crash left out of their image's index).
	Finished int64 `json:"finished,omitempty"`
	Checked  int   `json:"checked"`
	Repaired int   `json:"repaired"`
	Lost     int   `json:"lost"`
	Orphans  int   `json:"orphans"`
}

// RecoveryInfo is one node's recovery progress at its current epoch, or
// the cluster's (the sum over nodes; the longest ETA).
type RecoveryInfo struct {
	// Epoch is the epoch being recovered to; Recovered the last one
	// fully recovered (a node's only).
	Epoch     ids.Epoch `json:"epoch"`
	Recovered ids.Epoch `json:"recovered,omitempty"`
	// State is "idle" (nothing to do), "recovering", "waiting" (for a
	// down member, or for inventories) or "paused".
	State string `json:"state"`
	// Objects is how many objects this epoch asks to check or fetch,
	// Done how many are settled (Fetched of them copied, Bytes moved).
	Objects int   `json:"objects"`
	Done    int   `json:"done"`
	Fetched int   `json:"fetched"`
	Bytes   int64 `json:"bytes"`
	// Rate is the recent copy rate in bytes per second; ETA the
	// seconds left at that rate (0 when unknown or done).
	Rate float64 `json:"rate"`
	ETA  float64 `json:"eta"`
	// Degraded counts the objects below their copies (each counted by
	// one node): being recovered, or with a member of their placement
	// down.
	Degraded int `json:"degraded"`
	// Misplaced counts the copies no longer placed on the node, deleted
	// once their new holders have them.
	Misplaced int `json:"misplaced"`
}

// AdminRequest is the JSON payload of an OpAdmin request.
type AdminRequest struct {
	Cmd    string      `json:"cmd"`
	Name   string      `json:"name,omitempty"`
	Size   uint64      `json:"size,omitempty"`
	Copies int         `json:"copies,omitempty"`
	Mount  ids.MountID `json:"mount,omitempty"`
	// Grow makes vdi.resize grow-only: a smaller size changes nothing.
	Grow   bool   `json:"grow,omitempty"`
	Tag    string `json:"tag,omitempty"`
	Source string `json:"source,omitempty"`
	Offset uint64 `json:"offset,omitempty"`
	Count  uint32 `json:"count,omitempty"`
	// Forwarded marks a snapshot request one node sent to the node of
	// the VDI's writer: that node does not forward it again.
	Forwarded bool `json:"forwarded,omitempty"`
	// Scrub changes the scrub setting (AdminScrubSet).
	Scrub *ScrubChange `json:"scrub,omitempty"`
	// Recovery changes the recovery throttle (AdminRecoverySet).
	Recovery *RecoveryChange `json:"recovery,omitempty"`
	// Force makes vdi.unlock release the lock whoever holds it (an
	// admin clearing a lock its holder cannot; needs the cluster key).
	Force bool `json:"force,omitempty"`
	// Objects for objects.check.
	Objects []ids.ObjectID `json:"objects,omitempty"`
	// Token names one vdi.create or vdi.clone (at most 128 bytes): a
	// client that sends it again after losing the answer with its gateway
	// gets the first one's result, not "exists". client.Admin sets a
	// random one.
	Token string `json:"token,omitempty"`
}

// ReadsPage is a page of AdminVDIReads: Next is the Offset of the next
// page, 0 after the last.
type ReadsPage struct {
	Objects []ids.ObjectID `json:"objects"`
	Next    uint64         `json:"next,omitempty"`
}

// MaxReadsPage is the object numbers one AdminVDIReads page looks at (its
// answer stays well under MaxPayload).
const MaxReadsPage = 1 << 16

// MaxCheckObjects bounds the objects of one objects.check request.
const MaxCheckObjects = 64

// ObjectCheck is the outcome of checking one object on every node placing
// it. Status is "ok" (every copy present, current and whole), "repaired"
// (some were not, and are now), "absent" (no node has it: an index object
// never written, or a data object of a hole), "lost" (no good copy is
// left, or one could not be made good: Detail says which) or "unknown"
// (a node did not answer).
type ObjectCheck struct {
	OID    ids.ObjectID `json:"oid"`
	Status string       `json:"status"`
	Detail string       `json:"detail,omitempty"`
}

// ObjCheck is one node's answer to OpCheckObj about its copy.
type ObjCheck struct {
	Present bool        `json:"present"`
	Version ids.Version `json:"version,omitempty"`
	// Digest sums the copy's block checksums: equal copies have equal
	// digests.
	Digest  uint32 `json:"digest,omitempty"`
	Damaged bool   `json:"damaged,omitempty"` // it failed its checksums
	// Fixed: with CheckFix, the copy was replaced by a good one; Error
	// says why it could not be.
	Fixed bool   `json:"fixed,omitempty"`
	Error string `json:"error,omitempty"`
}

// CheckFix in the Aux of OpCheckObj: make the copy good.
const CheckFix = 1

// Health is a cluster's state in a word (ClusterInfo.Status).
type Health string

const (
	HealthOK          Health = "ok"
	HealthDegraded    Health = "degraded"    // members down, fewer nodes than copies, or objects below their copies
	HealthUnformatted Health = "unformatted" // never formatted
	HealthNoQuorum    Health = "no quorum"   // the answering node sees no majority: nothing changes
)

// ClusterInfo is the answer to AdminClusterInfo.
type ClusterInfo struct {
	Status     Health     `json:"status"`
	Epoch      ids.Epoch  `json:"epoch"`
	Copies     int        `json:"copies"`
	FormatTime int64      `json:"format_time,omitempty"`
	Leader     ids.NodeID `json:"leader,omitempty"`
	Nodes      []NodeInfo `json:"nodes"`
	VDIs       int        `json:"vdis"`
	Used       int64      `json:"used"` // bytes on disk, all nodes
	Free       int64      `json:"free"` // bytes free, all nodes
	// Recovery sums the nodes' recovery; Throttle is its setting.
	Recovery RecoveryInfo     `json:"recovery"`
	Throttle RecoverySettings `json:"throttle"`
	// ScrubSettings is the scrub's setting.
	ScrubSettings ScrubSettings `json:"scrub"`
}

// NodeInfo describes one node.
type NodeInfo struct {
	ID   ids.NodeID `json:"id"`
	Addr string     `json:"addr"`
	// State is "up", or "down" (a member not answering, or marked down
	// by the cluster).
	State   string    `json:"state"`
	Role    string    `json:"role,omitempty"`
	Epoch   ids.Epoch `json:"epoch,omitempty"`
	Objects int       `json:"objects"`
	Used    int64     `json:"used"`
	Free    int64     `json:"free"`
	// Zone is the node's failure domain ("" for its own); Weight its
	// capacity for placement, in MiB; Share the fraction of the ring it
	// is primary for (its expected share of the data).
	Zone      string        `json:"zone,omitempty"`
	Weight    uint64        `json:"weight,omitempty"`
	Share     float64       `json:"share"`
	Recovery  RecoveryInfo  `json:"recovery"`
	Integrity IntegrityInfo `json:"integrity"`
	Scrub     ScrubInfo     `json:"scrub"`
}

// IntegrityInfo counts a node's damaged copies since it started: found
// (a block failed its checksum on a read, a write or a recovery's read,
// or a file was damaged at start), repaired from another node, and those
// no other node had a good copy of.
type IntegrityInfo struct {
	Damaged    uint64 `json:"damaged"`
	Repaired   uint64 `json:"repaired"`
	Unrepaired uint64 `json:"unrepaired"`
}

// VDIInfo describes one VDI.
type VDIInfo struct {
	Name    string      `json:"name"`
	ID      ids.VDIID   `json:"id"`
	Size    uint64      `json:"size"`
	Copies  int         `json:"copies"`
	Created int64       `json:"created"`
	Locked  bool        `json:"locked"`
	Mount   ids.MountID `json:"mount,omitempty"` // a fingerprint of the holder's mount ID, not the ID
	Node    ids.NodeID  `json:"node,omitempty"`
	// WriteGen counts the write locks granted on the VDI so far (and
	// its rollbacks).
	WriteGen uint64 `json:"write_gen"`
	// Image holds the data; Parent is the image it inherits from.
	Image  ids.VDIID `json:"image"`
	Parent ids.VDIID `json:"parent,omitempty"`
	// ParentName is the snapshot (NAME@TAG) holding the parent image; empty
	// if there is none or it was deleted.
	ParentName string `json:"parent_name,omitempty"`
	// Tag and SnapTime (unix seconds) are set for a snapshot.
	Tag      string `json:"tag,omitempty"`
	SnapTime int64  `json:"snap_time,omitempty"`
	// Source is the snapshot a clone or the last rollback started from.
	Source string `json:"source,omitempty"`
}

// FullName is NAME, or NAME@TAG for a snapshot.
func (v VDIInfo) FullName() string {
	if v.Tag == "" {
		return v.Name
	}
	return v.Name + "@" + v.Tag
}

// ImageInfo is one image of a snapshot family, for AdminVDITree: the
// current image of a writable VDI, a snapshot, or a deleted image that a
// descendant still needs (VDI nil).
type ImageInfo struct {
	ID     ids.VDIID `json:"id"`
	Parent ids.VDIID `json:"parent,omitempty"`
	VDI    *VDIInfo  `json:"vdi,omitempty"`
	// Was names a deleted image's former VDI or snapshot.
	Was string `json:"was,omitempty"`
}

// GCResult is the answer to AdminGC.
type GCResult struct {
	Freed  int `json:"freed"`  // objects removed
	Purged int `json:"purged"` // deleted images forgotten
	Left   int `json:"left"`   // deleted images still needed by descendants
}

// KeyInfo is a node's keys during a key roll: their IDs (auth.Key.ID),
// the one in use first.
type KeyInfo struct {
	Node ids.NodeID `json:"node"`
	Keys []string   `json:"keys"`
}
