// Package backup is the stream format of `sheep vdi backup` and `sheep vdi
// restore`: the objects of one snapshot (a full backup), or the objects that
// changed between two snapshots of a VDI (an increment), with enough
// identity in the header to apply a chain of them in order.
//
// # Format, version 1
//
// All integers are big-endian. CRC means CRC-32C (Castagnoli).
//
//	header
//	  magic     8  "SHEEPBAK"
//	  version   2  1
//	  flags     2  0 (reserved: a reader refuses anything else)
//	  objsize   4  bytes per object: a power of two, 512 B to 64 MiB
//	  size      8  the VDI's size in bytes at TO, at most objsize * 2^32
//	  from      ident: all zero in a full backup
//	  to        ident
//	  crc       4  CRC of the header bytes before it
//	ident
//	  cluster   8  the cluster's format time (unix seconds)
//	  image     4  the image ID that holds the snapshot's data (never 0)
//	  snaptime  8  when the snapshot was taken (unix seconds)
//	  namelen   2  then the snapshot's NAME@TAG, at most 1024 bytes; it is
//	               only for messages, identity is the three fields above
//	record, any number
//	  kind      1  'D' (data) or 'H' (hole)
//	  index     4  object number, below ceil(size / objsize); strictly
//	               increasing from one record to the next
//	  length    4  payload bytes: 0 for a hole; for data 1 to the object's
//	               extent, min(objsize, size - index*objsize)
//	  payload   length bytes
//	  crc       4  CRC of kind, index, length and payload
//	trailer
//	  kind      1  'E'
//	  records   8  how many records came before
//	  bytes     8  the sum of their payload lengths
//	  magic     8  "SHEEPEND"
//	  crc       4  CRC of the trailer bytes before it
//
// Nothing may follow the trailer. A data record holds the start of an
// object; the rest of the object, up to its extent, is zeros. Writers trim
// trailing zeros (a payload's last byte is never zero) and write an object
// that is all zeros as a hole: restoring a hole makes the object read as
// zeros. Records name objects in increasing order and the trailer counts
// them, so a reordered, repeated, missing or cut-off record is detected, as
// is a changed byte (by the CRCs).
//
// A full backup holds every allocated object of TO. An increment holds,
// for every object whose owning image differs between FROM and TO, its
// data at TO, or a hole where TO no longer has it. Applying an increment to
// a VDI that holds FROM's data (and was resized to the increment's size)
// gives TO's data.
//
// The reader holds at most one object in memory.
package backup

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"time"

	"github.com/sheepfs/sheepfs/ids"
)

// Version is the format version this package writes and reads.
const Version = 1

// Limits of the format.
const (
	MinObjectSize = 512
	MaxObjectSize = 64 << 20
	MaxNameLen    = 1024
)

// The errors a Reader fails with wrap one of these (errors.Is), after a
// description of where the stream went wrong.
var (
	// ErrFormat: the input is not a backup stream (bad magic).
	ErrFormat = errors.New("not a sheepfs backup stream")
	// ErrVersion: a backup stream of a version or flags this reader does
	// not know.
	ErrVersion = errors.New("unsupported backup format")
	// ErrTruncated: the stream ends before its trailer.
	ErrTruncated = errors.New("backup stream truncated")
	// ErrCorrupt: a checksum mismatch or an impossible value.
	ErrCorrupt = errors.New("backup stream corrupt")
)

var (
	magic    = [8]byte{'S', 'H', 'E', 'E', 'P', 'B', 'A', 'K'}
	endMagic = [8]byte{'S', 'H', 'E', 'E', 'P', 'E', 'N', 'D'}
	castagno = crc32.MakeTable(crc32.Castagnoli)
)

// Record kinds, as written.
const (
	KindData = 'D'
	KindHole = 'H'
	kindEnd  = 'E'
)

const (
	fixedHeader  = 8 + 2 + 2 + 4 + 8 // magic .. size
	identFixed   = 8 + 4 + 8 + 2     // cluster .. namelen
	recordHeader = 1 + 4 + 4
	trailerSize  = 1 + 8 + 8 + 8 + 4
)

// Ident names a snapshot across clusters and time.
type Ident struct {
	Cluster  int64     // the cluster's format time, unix seconds
	Image    ids.VDIID // the image holding the snapshot's data
	SnapTime int64     // the snapshot's time, unix seconds
	Name     string    // NAME@TAG, for messages only
}

// IsZero reports whether i names nothing (the FROM of a full backup).
func (i Ident) IsZero() bool { return i == Ident{} }

// Same reports whether i and o name the same snapshot. Names do not count:
// the cluster's format time, the image and the snapshot time do.
func (i Ident) Same(o Ident) bool {
	return i.Cluster == o.Cluster && i.Image == o.Image && i.SnapTime == o.SnapTime
}

func (i Ident) String() string {
	if i.IsZero() {
		return "nothing (a full backup)"
	}
	name := i.Name
	if name == "" {
		name = "a snapshot"
	}
	return fmt.Sprintf("%s (image %v taken %s, cluster formatted %s)", name, i.Image,
		time.Unix(i.SnapTime, 0).UTC().Format(time.DateTime), time.Unix(i.Cluster, 0).UTC().Format(time.DateTime))
}

// Header describes a stream.
type Header struct {
	ObjectSize uint32
	Size       uint64 // the VDI's size at To
	From, To   Ident  // From is zero in a full backup
}

// Full reports whether the stream is a full backup.
func (h *Header) Full() bool { return h.From.IsZero() }

// Objects is the number of objects that cover Size.
func (h *Header) Objects() uint64 {
	return (h.Size + uint64(h.ObjectSize) - 1) / uint64(h.ObjectSize)
}

// Extent is the number of bytes of object index below Size (0 past it).
func (h *Header) Extent(index uint32) int {
	start := uint64(index) * uint64(h.ObjectSize)
	if start >= h.Size {
		return 0
	}
	return int(min(uint64(h.ObjectSize), h.Size-start))
}

// check returns what is wrong with h, or "".
func (h *Header) check() string {
	switch {
	case h.ObjectSize < MinObjectSize || h.ObjectSize > MaxObjectSize || h.ObjectSize&(h.ObjectSize-1) != 0:
		return fmt.Sprintf("object size %d is not a power of two from %d to %d", h.ObjectSize, MinObjectSize, MaxObjectSize)
	case h.Size > uint64(h.ObjectSize)<<32:
		return fmt.Sprintf("size %d needs more than 2^32 objects of %d bytes", h.Size, h.ObjectSize)
	case h.To.Image == 0:
		return "TO has no image"
	case !h.From.IsZero() && h.From.Image == 0:
		return "FROM has no image"
	case len(h.From.Name) > MaxNameLen || len(h.To.Name) > MaxNameLen:
		return fmt.Sprintf("a snapshot name is longer than %d bytes", MaxNameLen)
	case h.To.Image > ids.MaxVDIID || h.From.Image > ids.MaxVDIID:
		return "an image ID is out of range"
	}
	return ""
}

func appendIdent(b []byte, i Ident) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(i.Cluster))
	b = binary.BigEndian.AppendUint32(b, uint32(i.Image))
	b = binary.BigEndian.AppendUint64(b, uint64(i.SnapTime))
	b = binary.BigEndian.AppendUint16(b, uint16(len(i.Name)))
	return append(b, i.Name...)
}

// Writer writes a backup stream. Objects must be given in increasing order.
type Writer struct {
	w       *bufio.Writer
	h       Header
	next    uint64 // lowest index the next record may have
	records uint64
	bytes   uint64
	err     error
}

// NewWriter writes the header of a stream described by h to w.
func NewWriter(w io.Writer, h Header) (*Writer, error) {
	if msg := h.check(); msg != "" {
		return nil, fmt.Errorf("backup header: %s", msg)
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	b := make([]byte, 0, fixedHeader+2*identFixed+len(h.From.Name)+len(h.To.Name)+4)
	b = append(b, magic[:]...)
	b = binary.BigEndian.AppendUint16(b, Version)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint32(b, h.ObjectSize)
	b = binary.BigEndian.AppendUint64(b, h.Size)
	b = appendIdent(b, h.From)
	b = appendIdent(b, h.To)
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagno))
	if _, err := bw.Write(b); err != nil {
		return nil, err
	}
	return &Writer{w: bw, h: h}, nil
}

// Header returns the stream's header.
func (w *Writer) Header() Header { return w.h }

// Counts returns the records written so far and their payload bytes.
func (w *Writer) Counts() (records, bytes uint64) { return w.records, w.bytes }

// Data writes object index, whose first len(obj) bytes are obj and whose
// rest (up to the object's extent) is zeros. Trailing zeros are not
// written; an object of zeros is written as a hole.
func (w *Writer) Data(index uint32, obj []byte) error {
	if len(obj) > w.h.Extent(index) {
		return w.fail(fmt.Errorf("backup: %d bytes for object %d, whose extent is %d", len(obj), index, w.h.Extent(index)))
	}
	n := len(obj)
	for n > 0 && obj[n-1] == 0 {
		n--
	}
	if n == 0 {
		return w.Hole(index)
	}
	return w.record(KindData, index, obj[:n])
}

// Hole writes that object index reads as zeros.
func (w *Writer) Hole(index uint32) error { return w.record(KindHole, index, nil) }

func (w *Writer) fail(err error) error {
	if w.err == nil {
		w.err = err
	}
	return err
}

func (w *Writer) record(kind byte, index uint32, payload []byte) error {
	if w.err != nil {
		return w.err
	}
	if uint64(index) < w.next || uint64(index) >= w.h.Objects() {
		return w.fail(fmt.Errorf("backup: object %d out of order or past the end (next %d, %d objects)", index, w.next, w.h.Objects()))
	}
	var hdr [recordHeader]byte
	hdr[0] = kind
	binary.BigEndian.PutUint32(hdr[1:], index)
	binary.BigEndian.PutUint32(hdr[5:], uint32(len(payload)))
	crc := crc32.Update(crc32.Checksum(hdr[:], castagno), castagno, payload)
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], crc)
	for _, b := range [][]byte{hdr[:], payload, sum[:]} {
		if _, err := w.w.Write(b); err != nil {
			return w.fail(err)
		}
	}
	w.next = uint64(index) + 1
	w.records++
	w.bytes += uint64(len(payload))
	return nil
}

// Close writes the trailer and flushes. It does not close the underlying
// writer. A stream without its trailer reads as truncated.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	b := make([]byte, 0, trailerSize)
	b = append(b, kindEnd)
	b = binary.BigEndian.AppendUint64(b, w.records)
	b = binary.BigEndian.AppendUint64(b, w.bytes)
	b = append(b, endMagic[:]...)
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagno))
	if _, err := w.w.Write(b); err != nil {
		return w.fail(err)
	}
	if err := w.w.Flush(); err != nil {
		return w.fail(err)
	}
	w.err = errors.New("backup: writer closed")
	return nil
}

// Record is one object of a stream.
type Record struct {
	Kind  byte // KindData or KindHole
	Index uint32
	// Data is the object's first bytes (the rest is zeros); nil for a
	// hole. It is valid until the next call to Next.
	Data []byte
}

// Reader reads a backup stream.
type Reader struct {
	r       *bufio.Reader
	h       Header
	next    uint64
	records uint64
	bytes   uint64
	buf     []byte
	err     error
}

// NewReader reads and checks the header of the stream in r.
func NewReader(r io.Reader) (*Reader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	rd := &Reader{r: br}
	b := make([]byte, fixedHeader, fixedHeader+2*identFixed+4)
	if n, err := io.ReadFull(br, b); err != nil {
		if n == 0 && err == io.EOF {
			return nil, fmt.Errorf("empty input: %w", ErrFormat)
		}
		if !bytes.HasPrefix(magic[:], b[:min(n, len(magic))]) {
			return nil, ErrFormat
		}
		return nil, rd.readErr(err, "in the header")
	}
	if [8]byte(b[:8]) != magic {
		return nil, ErrFormat
	}
	if v, fl := binary.BigEndian.Uint16(b[8:]), binary.BigEndian.Uint16(b[10:]); v != Version || fl != 0 {
		return nil, fmt.Errorf("%w: version %d, flags %#x (this sheep reads version %d)", ErrVersion, v, fl, Version)
	}
	h := Header{ObjectSize: binary.BigEndian.Uint32(b[12:]), Size: binary.BigEndian.Uint64(b[16:])}
	var err error
	for _, id := range []*Ident{&h.From, &h.To} {
		if b, err = rd.readIdent(b, id); err != nil {
			return nil, err
		}
	}
	want := crc32.Checksum(b, castagno)
	if _, err := io.ReadFull(br, rd.scratch(4)); err != nil {
		return nil, rd.readErr(err, "in the header")
	}
	if got := binary.BigEndian.Uint32(rd.buf); got != want {
		return nil, fmt.Errorf("%w: header checksum mismatch", ErrCorrupt)
	}
	if msg := h.check(); msg != "" {
		return nil, fmt.Errorf("%w: header: %s", ErrCorrupt, msg)
	}
	rd.h = h
	return rd, nil
}

// readIdent reads an ident into id, appending its bytes to b.
func (rd *Reader) readIdent(b []byte, id *Ident) ([]byte, error) {
	at := len(b)
	b = append(b, make([]byte, identFixed)...)
	if _, err := io.ReadFull(rd.r, b[at:]); err != nil {
		return nil, rd.readErr(err, "in the header")
	}
	f := b[at:]
	id.Cluster = int64(binary.BigEndian.Uint64(f))
	id.Image = ids.VDIID(binary.BigEndian.Uint32(f[8:]))
	id.SnapTime = int64(binary.BigEndian.Uint64(f[12:]))
	n := int(binary.BigEndian.Uint16(f[20:]))
	if n > MaxNameLen {
		return nil, fmt.Errorf("%w: header: a snapshot name of %d bytes", ErrCorrupt, n)
	}
	at = len(b)
	b = append(b, make([]byte, n)...)
	if _, err := io.ReadFull(rd.r, b[at:]); err != nil {
		return nil, rd.readErr(err, "in the header")
	}
	id.Name = string(b[at:])
	return b, nil
}

// Header returns the stream's header.
func (rd *Reader) Header() Header { return rd.h }

// Counts returns the records read so far and their payload bytes.
func (rd *Reader) Counts() (records, bytes uint64) { return rd.records, rd.bytes }

// scratch returns rd.buf resized to n bytes.
func (rd *Reader) scratch(n int) []byte {
	if cap(rd.buf) < n {
		rd.buf = make([]byte, n)
	}
	rd.buf = rd.buf[:n]
	return rd.buf
}

// readErr describes a failed read at where.
func (rd *Reader) readErr(err error, where string) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return fmt.Errorf("%w: the input ends %s", ErrTruncated, where)
	}
	return fmt.Errorf("reading backup stream %s: %w", where, err)
}

// readPayload reads n bytes into rd.buf, growing it as the bytes arrive so
// that a corrupt length cannot make it allocate more than the input holds
// (plus one step).
func (rd *Reader) readPayload(n int, where string) ([]byte, error) {
	const step = 256 << 10
	if cap(rd.buf) >= n {
		if _, err := io.ReadFull(rd.r, rd.scratch(n)); err != nil {
			return nil, rd.readErr(err, where)
		}
		return rd.buf, nil
	}
	b := rd.buf[:0]
	for len(b) < n {
		chunk := min(n-len(b), max(len(b), step))
		if cap(b)-len(b) < chunk {
			nb := make([]byte, len(b), len(b)+chunk)
			copy(nb, b)
			b = nb
		}
		m, err := io.ReadFull(rd.r, b[len(b):len(b)+chunk])
		b = b[:len(b)+m]
		if err != nil {
			rd.buf = b
			return nil, rd.readErr(err, where)
		}
	}
	rd.buf = b
	return b, nil
}

// Next returns the next record, or io.EOF after a complete, intact
// trailer. Any other error is final.
func (rd *Reader) Next() (Record, error) {
	if rd.err != nil {
		return Record{}, rd.err
	}
	r, err := rd.next1()
	if err != nil {
		rd.err = err
	}
	return r, err
}

func (rd *Reader) next1() (Record, error) {
	where := fmt.Sprintf("in record %d", rd.records+1)
	kind, err := rd.r.ReadByte()
	if err != nil {
		return Record{}, rd.readErr(err, "before the trailer (after record "+fmt.Sprint(rd.records)+")")
	}
	if kind == kindEnd {
		return Record{}, rd.trailer()
	}
	if kind != KindData && kind != KindHole {
		return Record{}, fmt.Errorf("%w: record %d: unknown kind %#x", ErrCorrupt, rd.records+1, kind)
	}
	var hdr [recordHeader]byte
	hdr[0] = kind
	if _, err := io.ReadFull(rd.r, hdr[1:]); err != nil {
		return Record{}, rd.readErr(err, where)
	}
	index := binary.BigEndian.Uint32(hdr[1:])
	length := binary.BigEndian.Uint32(hdr[5:])
	where = fmt.Sprintf("in record %d (object %d)", rd.records+1, index)
	ext := rd.h.Extent(index)
	switch {
	case uint64(index) >= rd.h.Objects():
		return Record{}, fmt.Errorf("%w: record %d: object %d is past the end (%d objects)", ErrCorrupt, rd.records+1, index, rd.h.Objects())
	case uint64(index) < rd.next:
		return Record{}, fmt.Errorf("%w: record %d: object %d comes after object %d", ErrCorrupt, rd.records+1, index, rd.next-1)
	case kind == KindHole && length != 0:
		return Record{}, fmt.Errorf("%w: record %d: a hole with %d bytes", ErrCorrupt, rd.records+1, length)
	case kind == KindData && (length == 0 || uint64(length) > uint64(ext)):
		return Record{}, fmt.Errorf("%w: record %d: %d bytes for object %d, whose extent is %d", ErrCorrupt, rd.records+1, length, index, ext)
	}
	var data []byte
	if length > 0 {
		if data, err = rd.readPayload(int(length), where); err != nil {
			return Record{}, err
		}
	}
	crc := crc32.Update(crc32.Checksum(hdr[:], castagno), castagno, data)
	var sum [4]byte
	if _, err := io.ReadFull(rd.r, sum[:]); err != nil {
		return Record{}, rd.readErr(err, where)
	}
	if binary.BigEndian.Uint32(sum[:]) != crc {
		return Record{}, fmt.Errorf("%w: record %d (object %d): checksum mismatch", ErrCorrupt, rd.records+1, index)
	}
	if kind == KindData && data[len(data)-1] == 0 {
		return Record{}, fmt.Errorf("%w: record %d (object %d): data ends in a zero byte", ErrCorrupt, rd.records+1, index)
	}
	rd.next = uint64(index) + 1
	rd.records++
	rd.bytes += uint64(length)
	return Record{Kind: kind, Index: index, Data: data}, nil
}

// trailer checks the trailer (its kind byte read) and that nothing follows.
func (rd *Reader) trailer() error {
	b := make([]byte, trailerSize)
	b[0] = kindEnd
	if _, err := io.ReadFull(rd.r, b[1:]); err != nil {
		return rd.readErr(err, "in the trailer")
	}
	switch {
	case binary.BigEndian.Uint32(b[25:]) != crc32.Checksum(b[:25], castagno):
		return fmt.Errorf("%w: trailer checksum mismatch", ErrCorrupt)
	case [8]byte(b[17:25]) != endMagic:
		return fmt.Errorf("%w: no end marker in the trailer", ErrCorrupt)
	}
	if n, m := binary.BigEndian.Uint64(b[1:]), binary.BigEndian.Uint64(b[9:]); n != rd.records || m != rd.bytes {
		return fmt.Errorf("%w: the trailer counts %d records (%d bytes), the stream has %d (%d bytes)", ErrCorrupt, n, m, rd.records, rd.bytes)
	}
	if _, err := rd.r.ReadByte(); err != io.EOF {
		if err != nil {
			return fmt.Errorf("reading backup stream after the trailer: %w", err)
		}
		return fmt.Errorf("%w: data after the trailer", ErrCorrupt)
	}
	return io.EOF
}
