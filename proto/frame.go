// Package proto is the wire format between sheep daemons and their clients
// (sheepfs, the admin CLI, other sheep): length-prefixed binary frames with
// request IDs, so that many requests share one connection and are answered
// out of order. Data travels as raw bytes with offset and length, so a 4 KiB
// write costs a 4 KiB frame. Rare administrative requests carry JSON.
package proto

import (
	"encoding/binary"
	"io"
	"strconv"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

// Magic starts every frame ("SH").
const Magic uint16 = 0x5348

// HeaderSize is the size of a frame header in bytes.
const HeaderSize = 48

// MaxPayload is the largest payload a frame may carry, in bytes (8 MiB: one
// 4 MiB object plus room). Larger frames are rejected before anything is
// allocated.
const MaxPayload = 8 << 20

// Op is a request type. A response carries the request's op with RespBit set.
type Op uint8

// RespBit marks a response frame.
const RespBit Op = 0x80

// Requests between replicas (ID is an ObjectID, Epoch is checked).
const (
	OpReadObj   Op = 1 + iota // read Length bytes at Offset; response Data, Aux = version
	OpWriteObj                // write Data at Offset; Aux = version
	OpPunchObj                // zero [Offset, Offset+Length); Aux = version
	OpStatObj                 // response Aux = version, Offset = epoch, FlagCurrent
	OpRemoveObj               // delete the object
	OpSyncObjs                // make every write so far durable
	OpListObjs                // response Data = repeated (oid u64, version u64)
	OpStatObjs                // Data = oids (u64 each); response Data = ObjStates
	OpInventory               // Data = ObjStates the receiver should hold; FlagLast ends the sender's list
	OpCheckObj                // verify the copy; Aux = CheckFix repairs it, fetches it if absent or older than version Offset, from node Data if set; response Data = JSON ObjCheck
)

// Requests from clients to a gateway (ID is a VDIID).
const (
	OpVDIRead     Op = 0x20 + iota // read Length bytes at Offset
	OpVDIWrite                     // write Data at Offset
	OpVDIFlush                     // make every acknowledged write durable on all replicas
	OpVDIDiscard                   // make [Offset, Offset+Length) read as zeros, free space
	OpVDIAllocMap                  // response Data = bitmap, one bit per object, Aux = object count
	OpAdmin                        // Data = JSON AdminRequest; response Data = JSON
	OpApply                        // forward a cluster command to the leader; Data = command
	OpLeaderIndex                  // to the leader: response Aux = its last applied log index
	OpReportDown                   // to the leader: Data = the ID of a member a request could not reach
	OpVDILease                     // on the local channel: a lease on object number Offset (response Data = Lease)
	opMax
)

// Valid reports whether op is a known request op (without RespBit).
func (op Op) Valid() bool {
	return (op >= OpReadObj && op <= OpCheckObj) || (op >= OpVDIRead && op < opMax)
}

var opNames = map[Op]string{
	OpReadObj: "read_obj", OpWriteObj: "write_obj", OpPunchObj: "punch_obj",
	OpStatObj: "stat_obj", OpRemoveObj: "remove_obj", OpSyncObjs: "sync_objs",
	OpListObjs: "list_objs", OpVDIRead: "vdi_read", OpVDIWrite: "vdi_write",
	OpVDIFlush: "vdi_flush", OpVDIDiscard: "vdi_discard", OpVDIAllocMap: "vdi_allocmap",
	OpAdmin: "admin", OpApply: "apply", OpLeaderIndex: "leader_index",
	OpStatObjs: "stat_objs", OpInventory: "inventory", OpReportDown: "report_down",
	OpCheckObj: "check_obj", OpVDILease: "vdi_lease",
}

func (op Op) String() string {
	if s, ok := opNames[op&^RespBit]; ok {
		if op&RespBit != 0 {
			return s + "_resp"
		}
		return s
	}
	return "op(" + strconv.Itoa(int(op)) + ")"
}

// Flags modify a request or mark a response.
type Flags uint16

const (
	// FlagError marks a response that failed: Kind says how, Data holds
	// the message.
	FlagError Flags = 1 << iota
	// FlagCreate on OpWriteObj makes the object new: the replica replaces
	// whatever copy it has with zeros plus the data. Without it the object
	// must exist, and a replica that lacks it fetches it first.
	FlagCreate
	// FlagSync on a write asks for it to be durable before the answer.
	FlagSync
	// FlagZeroKeep on OpVDIDiscard keeps the objects allocated
	// (FALLOC_FL_ZERO_RANGE) instead of freeing them.
	FlagZeroKeep
	// FlagCurrent on an OpStatObj answer: the replica is current (its node
	// is in the object's placement and has not had to doubt its copy since
	// it last made sure), so it holds every acknowledged write.
	FlagCurrent
	// FlagLast on OpInventory: the sender's last chunk for this epoch.
	FlagLast
	// FlagSparse on OpReadObj asks for the whole object as a SparseObject
	// (only its allocated ranges); the answer carries it too. Length is
	// the object size: the server has room for an answer of Length bytes
	// plus a SparseObject header (see Handler).
	FlagSparse
	flagsAll = FlagError | FlagCreate | FlagSync | FlagZeroKeep | FlagCurrent | FlagLast | FlagSparse
)

// Header is the fixed part of a frame. On the wire (big-endian):
//
//	0  magic  u16     2  op  u8       3  kind u8 (errs.Kind, responses)
//	4  flags  u16     6  reserved u16
//	8  reqid  u64     16 epoch u64    24 id u64
//	32 offset u64     40 length u32   44 dlen u32
//	48 aux    u64     56 payload (dlen bytes)
type Header struct {
	Op     Op
	Kind   errs.Kind
	Flags  Flags
	ReqID  uint64
	Epoch  ids.Epoch
	ID     uint64 // ObjectID, VDIID, or unused
	Offset uint64
	Length uint32 // bytes asked for (reads, punches)
	DLen   uint32 // payload bytes that follow the header
}

// Msg is one frame: header, auxiliary word and payload.
type Msg struct {
	Header
	// Aux is a per-op word: an object version, an object count.
	Aux  uint64
	Data []byte

	pooled bool   // Data is from GetBuf and goes back once sent
	pool   []byte // if set, the GetBuf buffer Data lies in, which goes back instead
}

// SetPooled marks m.Data as a GetBuf buffer that the server returns to the
// pool after sending m.
func (m *Msg) SetPooled() { m.pooled = true }

// SetPooledIn marks m.Data as lying inside buf, a GetBuf buffer that the
// server returns to the pool after sending m.
func (m *Msg) SetPooledIn(buf []byte) { m.pooled, m.pool = true, buf }

// auxSize is the size of the Aux word that follows the header on the wire.
const auxSize = 8

// FrameSize is the number of bytes a frame with this header occupies.
func (h *Header) FrameSize() int { return HeaderSize + auxSize + int(h.DLen) }

// PutHeader encodes h into b, which must hold HeaderSize bytes.
func PutHeader(b []byte, h *Header) {
	_ = b[HeaderSize-1]
	binary.BigEndian.PutUint16(b[0:], Magic)
	b[2] = byte(h.Op)
	b[3] = byte(h.Kind)
	binary.BigEndian.PutUint16(b[4:], uint16(h.Flags))
	binary.BigEndian.PutUint16(b[6:], 0)
	binary.BigEndian.PutUint64(b[8:], h.ReqID)
	binary.BigEndian.PutUint64(b[16:], uint64(h.Epoch))
	binary.BigEndian.PutUint64(b[24:], h.ID)
	binary.BigEndian.PutUint64(b[32:], h.Offset)
	binary.BigEndian.PutUint32(b[40:], h.Length)
	binary.BigEndian.PutUint32(b[44:], h.DLen)
}

// DecodeHeader parses and checks a frame header. It rejects a bad magic,
// an unknown op, unknown flags or kind, nonzero reserved bits and payloads
// over MaxPayload, with errs.Invalid / errs.TooLarge.
func DecodeHeader(b []byte) (Header, error) {
	var h Header
	if len(b) < HeaderSize {
		return h, errs.E(errs.Invalid, "short frame header: %d bytes", len(b))
	}
	if m := binary.BigEndian.Uint16(b[0:]); m != Magic {
		return h, errs.E(errs.Invalid, "bad frame magic %#04x", m)
	}
	h.Op = Op(b[2])
	if !(h.Op &^ RespBit).Valid() {
		return h, errs.E(errs.Invalid, "unknown op %d", uint8(h.Op))
	}
	h.Kind = errs.Kind(b[3])
	if !h.Kind.Valid() {
		return h, errs.E(errs.Invalid, "unknown error kind %d", b[3])
	}
	h.Flags = Flags(binary.BigEndian.Uint16(b[4:]))
	if h.Flags&^flagsAll != 0 {
		return h, errs.E(errs.Invalid, "unknown flags %#x", uint16(h.Flags))
	}
	if r := binary.BigEndian.Uint16(b[6:]); r != 0 {
		return h, errs.E(errs.Invalid, "reserved header bits set: %#x", r)
	}
	h.ReqID = binary.BigEndian.Uint64(b[8:])
	h.Epoch = ids.Epoch(binary.BigEndian.Uint64(b[16:]))
	h.ID = binary.BigEndian.Uint64(b[24:])
	h.Offset = binary.BigEndian.Uint64(b[32:])
	h.Length = binary.BigEndian.Uint32(b[40:])
	h.DLen = binary.BigEndian.Uint32(b[44:])
	if h.DLen > MaxPayload {
		return h, errs.E(errs.TooLarge, "frame payload of %d bytes exceeds %d", h.DLen, MaxPayload)
	}
	if h.Length > MaxPayload {
		return h, errs.E(errs.TooLarge, "request length %d exceeds %d", h.Length, MaxPayload)
	}
	return h, nil
}

// AppendMsg appends m's encoding to b. DLen is taken from len(m.Data).
func AppendMsg(b []byte, m *Msg) []byte {
	m.DLen = uint32(len(m.Data))
	n := len(b)
	b = append(b, make([]byte, HeaderSize+auxSize)...)
	PutHeader(b[n:], &m.Header)
	binary.BigEndian.PutUint64(b[n+HeaderSize:], m.Aux)
	return append(b, m.Data...)
}

// ReadMsg reads one frame from r into m. The payload goes into a buffer from
// alloc (which must return a slice of length n), so that callers can pool
// payload buffers; alloc nil means make. alloc is called once, when a share
// of the payload has arrived (see readPayload), not on the strength of the
// header alone. On error m is unusable; the connection should be dropped,
// since framing is lost.
func ReadMsg(r io.Reader, m *Msg, hdr []byte, alloc func(n int) []byte) error {
	if len(hdr) < HeaderSize+auxSize {
		hdr = make([]byte, HeaderSize+auxSize)
	}
	hdr = hdr[:HeaderSize+auxSize]
	if _, err := io.ReadFull(r, hdr); err != nil {
		return err
	}
	h, err := DecodeHeader(hdr)
	if err != nil {
		return err
	}
	m.Header = h
	m.Aux = binary.BigEndian.Uint64(hdr[HeaderSize:])
	m.Data = nil
	if h.DLen > 0 {
		if alloc == nil {
			alloc = func(n int) []byte { return make([]byte, n) }
		}
		m.Data, err = readPayload(r, int(h.DLen), alloc)
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	return nil
}

// How a payload is staged before its buffer is taken. A header is cheap to
// send and can announce MaxPayload bytes that never come: were the whole
// buffer taken at the header, a peer could pin 8 MiB per connection for 56
// bytes. So the payload's first bytes are read into small pooled staging
// buffers, and its buffer is taken only once 1/payloadShare of it has
// arrived: what a peer pins is at most payloadShare times what it has sent
// (stageSize before it sends anything). A real payload pays for this with
// one more copy of its first 1/payloadShare (256 KiB of a 4 MiB write).
const (
	stageSize    = 64 << 10
	payloadShare = 16
)

// readPayload reads an n-byte payload from r into a buffer from alloc,
// staged as described above. On error the buffer from alloc, if it was
// taken, is returned with what was read.
func readPayload(r io.Reader, n int, alloc func(n int) []byte) ([]byte, error) {
	if n <= stageSize {
		buf := alloc(n)
		_, err := io.ReadFull(r, buf)
		return buf, err
	}
	stage := GetBuf(stageSize)
	defer func() { PutBuf(stage) }()
	if _, err := io.ReadFull(r, stage); err != nil {
		return nil, err
	}
	// The share is of the buffer alloc will likely give (a pool class),
	// which may be larger than n.
	if want := min(n, bufSize(n)/payloadShare); want > len(stage) {
		more := GetBuf(want)
		copy(more, stage)
		PutBuf(stage)
		stage = more
		if _, err := io.ReadFull(r, stage[stageSize:]); err != nil {
			return nil, err
		}
	}
	buf := alloc(n)
	got := copy(buf, stage)
	_, err := io.ReadFull(r, buf[got:])
	return buf, err
}

// ErrorResponse turns err into a response to req: FlagError, the error's
// kind, and its message as payload.
func ErrorResponse(req *Msg, err error) *Msg {
	r := &Msg{Header: Header{Op: req.Op | RespBit, ReqID: req.ReqID, Epoch: req.Epoch,
		ID: req.ID, Flags: FlagError, Kind: errs.KindOf(err)}}
	r.Data = []byte(err.Error())
	return r
}

// Err returns the error a response carries, or nil.
func (m *Msg) Err() error {
	if m.Flags&FlagError == 0 {
		return nil
	}
	// The message already names the kind (it is the sender's Error()).
	return &errs.Error{Kind: m.Kind, Err: remoteError(m.Data)}
}

// remoteError is the text of an error that came over the wire.
type remoteError string

func (e remoteError) Error() string { return string(e) }
