package proto

import (
	"encoding/binary"

	"github.com/sheepfs/sheepfs/errs"
)

// Lease is the answer to OpVDILease: a mount on the daemon's machine may
// read one object of the VDI from the daemon's file while the stamp holds
// (package localread).
type Lease struct {
	Inst, Global, Slot uint64 // the stamp (localread.Stamp)
	OID                uint64 // the object read
	Path               string // the object's file
	Page               string // the daemon's page
}

// MaxLeasePath bounds each path of a Lease.
const MaxLeasePath = 1024

// AppendLease encodes l.
func AppendLease(b []byte, l Lease) []byte {
	for _, v := range []uint64{l.Inst, l.Global, l.Slot, l.OID} {
		b = binary.BigEndian.AppendUint64(b, v)
	}
	for _, s := range []string{l.Path, l.Page} {
		b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
		b = append(b, s...)
	}
	return b
}

// DecodeLease decodes a Lease; errs.Invalid if b is not exactly one, or a
// path is empty or longer than MaxLeasePath.
func DecodeLease(b []byte) (Lease, error) {
	var l Lease
	if len(b) < 32 {
		return l, errs.E(errs.Invalid, "lease: %d bytes", len(b))
	}
	l.Inst, l.Global, l.Slot, l.OID = binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:]),
		binary.BigEndian.Uint64(b[16:]), binary.BigEndian.Uint64(b[24:])
	b = b[32:]
	var ps [2]string
	for i := range ps {
		if len(b) < 2 {
			return Lease{}, errs.E(errs.Invalid, "lease: cut short")
		}
		n := int(binary.BigEndian.Uint16(b))
		if n == 0 || n > MaxLeasePath || len(b) < 2+n {
			return Lease{}, errs.E(errs.Invalid, "lease: path of %d bytes (%d left)", n, len(b)-2)
		}
		ps[i], b = string(b[2:2+n]), b[2+n:]
	}
	if len(b) != 0 {
		return Lease{}, errs.E(errs.Invalid, "lease: %d bytes past the end", len(b))
	}
	l.Path, l.Page = ps[0], ps[1]
	return l, nil
}
