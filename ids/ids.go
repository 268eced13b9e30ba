// Package ids defines the identifiers that travel through sheepfs: objects,
// VDIs, epochs, nodes and object versions. Each is its own named type so the
// compiler keeps them apart.
package ids

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
)

// ObjectID names one object in the cluster-wide object store.
//
// Layout (most significant bit first):
//
//	bit  63     1 for a VDI index object, 0 for a data object
//	bits 56-62  reserved, zero
//	bits 32-55  the VDI that owns the object (24 bits)
//	bits 0-31   the object's index within the VDI (data objects) or the
//	            chunk number of the VDI's index (index objects)
type ObjectID uint64

const indexFlag = ObjectID(1) << 63

// DataObject returns the ID of object number idx of VDI vid.
func DataObject(vid VDIID, idx uint32) ObjectID {
	return ObjectID(uint64(vid&MaxVDIID)<<32 | uint64(idx))
}

// IndexObject returns the ID of chunk number chunk of VDI vid's index.
func IndexObject(vid VDIID, chunk uint32) ObjectID {
	return indexFlag | ObjectID(uint64(vid&MaxVDIID)<<32|uint64(chunk))
}

// IsIndex reports whether o is a VDI index object.
func (o ObjectID) IsIndex() bool { return o&indexFlag != 0 }

// VDI returns the VDI that owns o.
func (o ObjectID) VDI() VDIID { return VDIID(uint64(o)>>32) & MaxVDIID }

// Index returns the object's number within its VDI (or index chunk number).
func (o ObjectID) Index() uint32 { return uint32(o) }

// Valid reports whether the reserved bits of o are zero.
func (o ObjectID) Valid() bool { return uint64(o)&(0x7f<<56) == 0 }

func (o ObjectID) String() string { return fmt.Sprintf("%016x", uint64(o)) }

// ParseObjectID parses the hexadecimal form printed by String.
func ParseObjectID(s string) (ObjectID, error) {
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return 0, err
	}
	return ObjectID(v), nil
}

// VDIID names a virtual disk image. Zero is never a valid VDI; it marks an
// unallocated entry in a VDI index.
type VDIID uint32

// MaxVDIID is the largest VDI ID (24 bits).
const MaxVDIID VDIID = 1<<24 - 1

func (v VDIID) String() string { return fmt.Sprintf("%06x", uint32(v)) }

// Epoch numbers the agreed member lists of the cluster. It only grows. Zero
// means "not formatted / unknown".
type Epoch uint64

func (e Epoch) String() string { return strconv.FormatUint(uint64(e), 10) }

// NodeID is a node's persistent name, chosen at its first start and kept in
// its data directory.
type NodeID string

func (n NodeID) String() string { return string(n) }

// Version orders the states of one object: a replica with a higher version
// is fresher. Gateways assign versions from a hybrid logical clock.
type Version uint64

// MountID names one sheepfs mount (or admin client) that holds VDI write
// locks. It is chosen at random when the client starts.
type MountID string

// Shown is what answers show of a lock holder's mount ID: a short
// fingerprint. The ID itself names the holder to the gateways (a mount
// takes its locks again under it after a failover), so whoever knew it
// could take the lock over and release it.
func (m MountID) Shown() MountID {
	h := sha256.Sum256([]byte(m))
	return MountID("m~" + hex.EncodeToString(h[:4]))
}
