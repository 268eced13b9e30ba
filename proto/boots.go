package proto

import (
	"encoding/binary"
	"hash/fnv"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

// NodeBoot says that a node held writes in a given boot of its machine.
// A write a replica has taken may be in its page cache only until the next
// flush; if its machine restarts before that (a power loss, a crash of the
// kernel), the write may be gone although the replica acknowledged it. A
// replica's answers to writes and syncs carry its boot (Aux; 0 when
// unknown), a gateway's answers to client writes the nodes and boots they
// reached (Data), and a client's flush the nodes and boots its unflushed
// writes reached: a flush answered by a node in another boot fails with
// errs.IO instead of vouching for writes that node may have lost.
type NodeBoot struct {
	Node uint64 // NodeHash of the node's ID
	Boot uint64 // the node's boot; 0 in a flush: sync the node, compare no boot
}

// MaxNodeBoots bounds the entries of one list (a cluster of that many
// nodes at most).
const MaxNodeBoots = 4096

// nodeBootSize is the wire size of one NodeBoot.
const nodeBootSize = 16

// NodeHash is the 64-bit name of a node in NodeBoot lists.
func NodeHash(id ids.NodeID) uint64 {
	h := fnv.New64a()
	h.Write([]byte(id))
	return h.Sum64()
}

// AppendNodeBoots appends the wire form of bs to b.
func AppendNodeBoots(b []byte, bs []NodeBoot) []byte {
	for _, nb := range bs {
		b = binary.BigEndian.AppendUint64(b, nb.Node)
		b = binary.BigEndian.AppendUint64(b, nb.Boot)
	}
	return b
}

// DecodeNodeBoots decodes a NodeBoot list; errs.Invalid if it is not whole
// entries or has more than MaxNodeBoots.
func DecodeNodeBoots(b []byte) ([]NodeBoot, error) {
	if len(b)%nodeBootSize != 0 {
		return nil, errs.E(errs.Invalid, "node boots: %d bytes is not a whole number of entries", len(b))
	}
	n := len(b) / nodeBootSize
	if n > MaxNodeBoots {
		return nil, errs.E(errs.Invalid, "node boots: %d entries, at most %d", n, MaxNodeBoots)
	}
	out := make([]NodeBoot, n)
	for i := range out {
		out[i] = NodeBoot{Node: binary.BigEndian.Uint64(b[i*nodeBootSize:]), Boot: binary.BigEndian.Uint64(b[i*nodeBootSize+8:])}
	}
	return out, nil
}
