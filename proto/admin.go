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
	AdminVDIUnlock     = "vdi.unlock"     // Name, Mount
	AdminVDIObjects    = "vdi.objects"    // Name -> []string (object IDs it owns)
)

// AdminRequest is the JSON payload of an OpAdmin request.
type AdminRequest struct {
	Cmd    string      `json:"cmd"`
	Name   string      `json:"name,omitempty"`
	Size   uint64      `json:"size,omitempty"`
	Copies int         `json:"copies,omitempty"`
	Mount  ids.MountID `json:"mount,omitempty"`
	// Grow makes vdi.resize grow-only: a smaller size changes nothing.
	Grow bool `json:"grow,omitempty"`
}

// ClusterInfo is the answer to AdminClusterInfo.
type ClusterInfo struct {
	// Status is "ok", "unformatted", "degraded" (members down or fewer
	// nodes than copies) or "no quorum".
	Status     string     `json:"status"`
	Epoch      ids.Epoch  `json:"epoch"`
	Copies     int        `json:"copies"`
	FormatTime int64      `json:"format_time,omitempty"`
	Leader     ids.NodeID `json:"leader,omitempty"`
	Nodes      []NodeInfo `json:"nodes"`
	VDIs       int        `json:"vdis"`
	Used       int64      `json:"used"` // bytes on disk, all nodes
	Free       int64      `json:"free"` // bytes free, all nodes
}

// NodeInfo describes one node.
type NodeInfo struct {
	ID      ids.NodeID `json:"id"`
	Addr    string     `json:"addr"`
	State   string     `json:"state"` // "up", or "down" (member not answering)
	Role    string     `json:"role,omitempty"`
	Epoch   ids.Epoch  `json:"epoch,omitempty"`
	Objects int        `json:"objects"`
	Used    int64      `json:"used"`
	Free    int64      `json:"free"`
}

// VDIInfo describes one VDI.
type VDIInfo struct {
	Name    string      `json:"name"`
	ID      ids.VDIID   `json:"id"`
	Size    uint64      `json:"size"`
	Copies  int         `json:"copies"`
	Created int64       `json:"created"`
	Locked  bool        `json:"locked"`
	Mount   ids.MountID `json:"mount,omitempty"`
	Node    ids.NodeID  `json:"node,omitempty"`
	// WriteGen counts the write locks granted on the VDI so far.
	WriteGen uint64 `json:"write_gen"`
}
