package proto

import (
	"encoding/binary"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

// ObjFlags describe one object on one node, in ObjState records.
type ObjFlags uint64

const (
	// ObjPresent: the node has a copy.
	ObjPresent ObjFlags = 1 << iota
	// ObjDegraded, in an inventory: fewer good copies of the object exist
	// than it should have, so it goes before objects that only move.
	ObjDegraded
	// ObjCounted, in an inventory: of the nodes that must fetch the
	// object, the receiver is the one that counts it as below its copies
	// (so that the cluster's sum counts each object once).
	ObjCounted
	objFlagsAll = ObjPresent | ObjDegraded | ObjCounted
)

// ObjState is one object's state on a node: an OpStatObjs answer, or an
// OpInventory entry (an object the receiver should hold, as the sender has
// it).
type ObjState struct {
	OID     ids.ObjectID
	Version ids.Version
	// Valid is the last epoch through which the copy is known to hold
	// every acknowledged write: the request's epoch for a current copy,
	// an earlier one for a copy that has since missed writes (or may
	// have), 0 for a copy nothing vouches for.
	Valid ids.Epoch
	Flags ObjFlags
}

// ObjStateSize is the size of an encoded ObjState: oid, version, valid,
// flags, big-endian u64 each.
const ObjStateSize = 32

// MaxObjStates is the most ObjStates (and object IDs) one frame carries.
const MaxObjStates = 65536

// AppendObjStates appends the encoding of states to b.
func AppendObjStates(b []byte, states []ObjState) []byte {
	for _, s := range states {
		b = binary.BigEndian.AppendUint64(b, uint64(s.OID))
		b = binary.BigEndian.AppendUint64(b, uint64(s.Version))
		b = binary.BigEndian.AppendUint64(b, uint64(s.Valid))
		b = binary.BigEndian.AppendUint64(b, uint64(s.Flags))
	}
	return b
}

// DecodeObjStates decodes a payload of ObjStates: errs.Invalid unless it is
// whole records, at most MaxObjStates, of valid object IDs and known
// flags.
func DecodeObjStates(b []byte) ([]ObjState, error) {
	if len(b)%ObjStateSize != 0 {
		return nil, errs.E(errs.Invalid, "object states: %d bytes is not a whole number of records", len(b))
	}
	n := len(b) / ObjStateSize
	if n > MaxObjStates {
		return nil, errs.E(errs.Invalid, "object states: %d records, at most %d", n, MaxObjStates)
	}
	out := make([]ObjState, n)
	for i := range out {
		r := b[i*ObjStateSize:]
		s := ObjState{OID: ids.ObjectID(binary.BigEndian.Uint64(r)), Version: ids.Version(binary.BigEndian.Uint64(r[8:])),
			Valid: ids.Epoch(binary.BigEndian.Uint64(r[16:])), Flags: ObjFlags(binary.BigEndian.Uint64(r[24:]))}
		if !s.OID.Valid() {
			return nil, errs.E(errs.Invalid, "object states: bad object ID %v", s.OID)
		}
		if s.Flags&^objFlagsAll != 0 {
			return nil, errs.E(errs.Invalid, "object states: unknown flags %#x", uint64(s.Flags))
		}
		out[i] = s
	}
	return out, nil
}

// AppendOIDs appends object IDs to b (OpStatObjs requests).
func AppendOIDs(b []byte, oids []ids.ObjectID) []byte {
	for _, o := range oids {
		b = binary.BigEndian.AppendUint64(b, uint64(o))
	}
	return b
}

// DecodeOIDs decodes a payload of object IDs: errs.Invalid unless whole,
// at most MaxObjStates, and valid.
func DecodeOIDs(b []byte) ([]ids.ObjectID, error) {
	if len(b)%8 != 0 {
		return nil, errs.E(errs.Invalid, "object IDs: %d bytes is not a whole number of IDs", len(b))
	}
	n := len(b) / 8
	if n > MaxObjStates {
		return nil, errs.E(errs.Invalid, "object IDs: %d, at most %d", n, MaxObjStates)
	}
	out := make([]ids.ObjectID, n)
	for i := range out {
		out[i] = ids.ObjectID(binary.BigEndian.Uint64(b[i*8:]))
		if !out[i].Valid() {
			return nil, errs.E(errs.Invalid, "object IDs: bad object ID %v", out[i])
		}
	}
	return out, nil
}

// DecodeOIDsAny is DecodeOIDs without the count limit (for lists kept on
// disk).
func DecodeOIDsAny(b []byte) ([]ids.ObjectID, error) {
	if len(b)%8 != 0 {
		return nil, errs.E(errs.Invalid, "object IDs: %d bytes is not a whole number of IDs", len(b))
	}
	out := make([]ids.ObjectID, len(b)/8)
	for i := range out {
		out[i] = ids.ObjectID(binary.BigEndian.Uint64(b[i*8:]))
		if !out[i].Valid() {
			return nil, errs.E(errs.Invalid, "object IDs: bad object ID %v", out[i])
		}
	}
	return out, nil
}

// Extent is a byte range of an object.
type Extent struct {
	Off, Len int64
}

// MaxExtents bounds the extents of a SparseObject.
const MaxExtents = 1024

// A SparseObject is a whole object as its allocated ranges only: a count
// n (u32) and a reserved u32, n extents (offset u32, length u32; sorted,
// disjoint, non-empty, inside the object), zeros up to the next multiple
// of SparseAlign bytes, then the extents' bytes one after the other.
// Everything outside the extents reads as zeros. The padding puts the data
// on a block boundary of a block-aligned buffer, where both ends read and
// write it with O_DIRECT.

// SparseAlign is the alignment of a SparseObject's data.
const SparseAlign = 4096

// SparseHeaderSize returns the size of a SparseObject's header with n
// extents, padding included.
func SparseHeaderSize(n int) int { return (8 + 8*n + SparseAlign - 1) / SparseAlign * SparseAlign }

// PutSparseHeader encodes the header of exts into b, which must hold
// SparseHeaderSize(len(exts)) bytes.
func PutSparseHeader(b []byte, exts []Extent) {
	binary.BigEndian.PutUint32(b, uint32(len(exts)))
	binary.BigEndian.PutUint32(b[4:], 0)
	for i, e := range exts {
		binary.BigEndian.PutUint32(b[8+8*i:], uint32(e.Off))
		binary.BigEndian.PutUint32(b[12+8*i:], uint32(e.Len))
	}
	clear(b[8+8*len(exts) : SparseHeaderSize(len(exts))])
}

// DecodeSparse splits a SparseObject of an object of objSize bytes into
// its extents and their data. errs.Invalid if the extents are too many,
// unsorted, overlapping, empty or outside the object, or if the data is
// not exactly their total length.
func DecodeSparse(b []byte, objSize int64) ([]Extent, []byte, error) {
	if len(b) < 8 {
		return nil, nil, errs.E(errs.Invalid, "sparse object: %d bytes, short header", len(b))
	}
	n := int(binary.BigEndian.Uint32(b))
	if n > MaxExtents || binary.BigEndian.Uint32(b[4:]) != 0 {
		return nil, nil, errs.E(errs.Invalid, "sparse object: bad header (%d extents)", n)
	}
	if len(b) < SparseHeaderSize(n) {
		return nil, nil, errs.E(errs.Invalid, "sparse object: %d bytes for %d extents", len(b), n)
	}
	for _, c := range b[8+8*n : SparseHeaderSize(n)] {
		if c != 0 {
			return nil, nil, errs.E(errs.Invalid, "sparse object: padding is not zeros")
		}
	}
	exts := make([]Extent, n)
	var end, total int64
	for i := range exts {
		e := Extent{Off: int64(binary.BigEndian.Uint32(b[8+8*i:])), Len: int64(binary.BigEndian.Uint32(b[12+8*i:]))}
		if e.Len <= 0 || e.Off < end || e.Off+e.Len > objSize {
			return nil, nil, errs.E(errs.Invalid, "sparse object: extent %d [%d, +%d) is empty, unsorted or outside %d bytes", i, e.Off, e.Len, objSize)
		}
		end = e.Off + e.Len
		total += e.Len
		exts[i] = e
	}
	data := b[SparseHeaderSize(n):]
	if int64(len(data)) != total {
		return nil, nil, errs.E(errs.Invalid, "sparse object: %d data bytes, extents say %d", len(data), total)
	}
	return exts, data, nil
}
