package objstore

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"strings"

	bolt "go.etcd.io/bbolt"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

// The index log. A Sync used to commit its batch of index changes to bbolt,
// which costs two fdatasyncs (its pages, then its meta page) after the
// object files' own: three syncs per flush on every node. Now a Sync
// appends the batch to a log next to the index, INDEX.log, as one record,
// and fdatasyncs the log. The record also carries the blocks that small
// writes changed (a data journal): an object changed only by such writes
// is not fdatasynced by the Sync, so a flush of small writes costs one
// sync on each node. The batches are applied to bbolt in one transaction
// (a checkpoint), after the journaled objects' files are fdatasynced, once
// the log holds logMax bytes, at Close, and at Open, which first reads the
// log back and writes its journaled blocks into their objects. See
// docs/ARCHITECTURE.md, "The index and its log".
//
// A record is a header, then n entries, each followed by its journaled
// blocks:
//
//	header  magic "SIXM" | gen u64 | seq u64 | n u32 | size u32 | boot [16] | crc u32  (48 bytes)
//	entry   oid u64 | version u64 | epoch u64 | flags u8 | blocks u16      (27 bytes)
//	block   index u32 | sum u32 | data (SumBlock bytes)
//
// little-endian; size is the record's length in bytes, boot the Linux boot
// ID (/proc/sys/kernel/random/boot_id) of the system that wrote it, crc
// the CRC-32C of the header's first 44 bytes and everything after it.
// Open writes the journaled blocks back into their objects only if the
// record was written before the last reboot: in the same boot the page
// cache kept them (a killed process loses nothing there), and the files
// may hold newer bytes that the journal must not undo. flags: 1 the entry
// is a removal, 2 the object's file was fdatasynced for this record (its
// blocks journaled by earlier records are void: the file holds them or
// newer). sum is the block's checksum (see blockSum). gen is the checkpoint
// generation the record belongs to (kept in bbolt's config bucket,
// "logGen"): a checkpoint commits the batches and the next generation in
// one transaction, then writes the log again from its start, so records
// of an older generation (a crash between the two, or the tail of a longer
// earlier generation) are ignored. seq counts the records of a generation
// from 0. Reading stops at the first record that is short, fails its CRC,
// or is not the next of its generation: a record cut by a crash was never
// acknowledged. Records of the format before the journal (magic "SIXL",
// 28-byte header, entries of 25 bytes without blocks) are still read.

const (
	logMagic       = 0x4d584953 // "SIXM"
	logMagicV1     = 0x4c584953 // "SIXL": the format before the journal
	logHeaderSize  = 48
	logCRCAt       = 44
	logEntrySize   = 27
	logBlockHeader = 8
	v1HeaderSize   = 28
	v1EntrySize    = 25

	flagRemoved = 1
	flagSynced  = 2

	// maxLogBlock bounds a journaled block's index in a record (objects
	// of up to 4 GiB); Open checks it against the store's object size.
	maxLogBlock = 1 << 20
)

// logMax is the size at which Sync checkpoints the log into bbolt. A
// variable so tests can make it small.
var logMax int64 = 32 << 20

// keyLogGen is the config key of the log's generation.
var keyLogGen = []byte("logGen")

// indexLog is the open log of a store's index. Its fields are guarded by
// Store.syncMu (Open and Close have the store to themselves).
type indexLog struct {
	f       File
	path    string
	gen     uint64
	seq     uint64
	off     int64                       // end of the last good record
	size    int64                       // the file's size
	pending map[ids.ObjectID]dirtyEntry // logged since the last checkpoint
	// unsynced holds, from Open until it takes them over (as
	// Store.journaled), the objects whose blocks records of this boot
	// journaled: their files hold them, perhaps not on the disk yet.
	unsynced map[ids.ObjectID]struct{}
	// replayed holds, from Open until it applies them, the journaled
	// blocks of each object that the log's records leave standing.
	replayed map[ids.ObjectID][]logBlock
	buf      []byte // the record being written, reused
}

// logBlock is one journaled block.
type logBlock struct {
	block int64
	sum   uint32
	data  []byte // SumBlock bytes
}

func newLog(f File, path string, gen uint64) *indexLog {
	return &indexLog{f: f, path: path, gen: gen,
		pending:  make(map[ids.ObjectID]dirtyEntry),
		unsynced: make(map[ids.ObjectID]struct{}),
		replayed: make(map[ids.ObjectID][]logBlock)}
}

// openLog opens (creating) the log at path through fsys and reads back the
// batches of generation gen, applying them to metas; the journaled blocks
// wait in l.replayed.
func openLog(fsys FS, path string, gen uint64, metas map[ids.ObjectID]Meta) (*indexLog, error) {
	f, err := fsys.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, diskErr(err, "objstore: open index log %s", path)
	}
	l := newLog(f, path, gen)
	if err := l.replay(metas); err != nil {
		_ = f.Close() // the replay error is the one to report
		return nil, err
	}
	return l, nil
}

// replay reads the log's good records into metas, l.pending and
// l.replayed.
func (l *indexLog) replay(metas map[ids.ObjectID]Meta) error {
	data, err := io.ReadAll(io.NewSectionReader(l.f, 0, 1<<62))
	if err != nil {
		return diskErr(err, "objstore: read index log %s", l.path)
	}
	l.size = int64(len(data))
	for {
		n, batch, blocks := decodeRecord(data[l.off:], l.gen, l.seq)
		if n == 0 {
			return nil
		}
		for oid, e := range batch {
			l.pending[oid] = e
			if e.removed {
				delete(metas, oid)
			} else {
				metas[oid] = e.meta
			}
			if e.removed || e.data {
				delete(l.replayed, oid)
				delete(l.unsynced, oid)
			}
		}
		// Written before a reboot, the blocks may be missing from their
		// files: Open writes them back. Written in this boot, they are
		// in the files (the page cache), perhaps not on the disk yet:
		// Open fdatasyncs those files before it checkpoints.
		same := sameBoot(data[l.off:])
		for oid, bs := range blocks {
			if same {
				l.unsynced[oid] = struct{}{}
			} else {
				l.replayed[oid] = append(l.replayed[oid], bs...)
			}
		}
		l.off += int64(n)
		l.seq++
	}
}

// decodeRecord decodes the record at the start of b if it is good and is
// record seq of generation gen: its length, entries and journaled blocks
// (slices of b); 0 otherwise. An entry's data reports flagSynced.
// sameBoot tells whether the blocks are to be written back.
func decodeRecord(b []byte, gen, seq uint64) (int, map[ids.ObjectID]dirtyEntry, map[ids.ObjectID][]logBlock) {
	if len(b) >= 4 && binary.LittleEndian.Uint32(b) == logMagicV1 {
		n, batch := decodeRecordV1(b, gen, seq)
		return n, batch, nil
	}
	if len(b) < logHeaderSize || binary.LittleEndian.Uint32(b) != logMagic ||
		binary.LittleEndian.Uint64(b[4:]) != gen || binary.LittleEndian.Uint64(b[12:]) != seq {
		return 0, nil, nil
	}
	n := int64(binary.LittleEndian.Uint32(b[20:]))
	size := int64(binary.LittleEndian.Uint32(b[24:]))
	if size < logHeaderSize || size > int64(len(b)) || n > (size-logHeaderSize)/logEntrySize {
		return 0, nil, nil
	}
	crc := crc32.Update(crc32.Checksum(b[:logCRCAt], castagnoli), castagnoli, b[logHeaderSize:size])
	if crc != binary.LittleEndian.Uint32(b[logCRCAt:]) {
		return 0, nil, nil
	}

	batch := make(map[ids.ObjectID]dirtyEntry, n)
	var blocks map[ids.ObjectID][]logBlock
	pos := int64(logHeaderSize)
	for range n {
		if size-pos < logEntrySize {
			return 0, nil, nil
		}
		e := b[pos:]
		oid := ids.ObjectID(binary.LittleEndian.Uint64(e))
		flags := e[24]
		nb := int64(binary.LittleEndian.Uint16(e[25:]))
		pos += logEntrySize
		if _, dup := batch[oid]; dup || flags > flagRemoved|flagSynced ||
			flags&flagRemoved != 0 && (flags != flagRemoved || nb > 0) ||
			flags&flagSynced != 0 && nb > 0 || nb > (size-pos)/(logBlockHeader+SumBlock) {
			return 0, nil, nil
		}
		d := dirtyEntry{
			meta:    Meta{Version: ids.Version(binary.LittleEndian.Uint64(e[8:])), Epoch: ids.Epoch(binary.LittleEndian.Uint64(e[16:]))},
			removed: flags&flagRemoved != 0,
			data:    flags&flagSynced != 0,
		}
		if d.removed {
			d.meta = Meta{}
		}
		for range nb {
			bh := b[pos:]
			blk := logBlock{
				block: int64(binary.LittleEndian.Uint32(bh)),
				sum:   binary.LittleEndian.Uint32(bh[4:]),
				data:  bh[logBlockHeader : logBlockHeader+SumBlock : logBlockHeader+SumBlock],
			}
			if blk.block >= maxLogBlock {
				return 0, nil, nil
			}
			if blocks == nil {
				blocks = make(map[ids.ObjectID][]logBlock)
			}
			blocks[oid] = append(blocks[oid], blk)
			d.blocks = append(d.blocks, int32(blk.block))
			pos += logBlockHeader + SumBlock
		}
		batch[oid] = d
	}
	if pos != size {
		return 0, nil, nil
	}
	return int(size), batch, blocks
}

// bootID identifies this boot of the system (zero if unknown); a variable
// so tests can play a reboot.
var bootID = readBootID()

// SetBootID makes the stores of this process take id (a UUID, as Linux
// writes its boot ID) as the system's boot ID: a fault drill restarts a
// daemon with a new one to play a reboot after a power loss. Call it
// before opening any store.
func SetBootID(id string) error {
	h, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(id), "-", ""))
	if err != nil || len(h) != len(bootID) {
		return errs.E(errs.Invalid, "objstore: boot ID %q is not a UUID", id)
	}
	bootID = [16]byte(h)
	return nil
}

// BootToken names this boot of the system (as SetBootID may have set it)
// in 64 bits, never 0; 0 if the boot ID is unknown. Writes a store took in
// one boot and had not synced may be gone in the next.
func BootToken() uint64 {
	if bootID == [16]byte{} {
		return 0
	}
	return binary.LittleEndian.Uint64(bootID[:8]) ^ binary.LittleEndian.Uint64(bootID[8:]) | 1
}

// readBootID reads the boot ID Linux makes at every boot.
func readBootID() (id [16]byte) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return id
	}
	h, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(string(b)), "-", ""))
	if err != nil || len(h) != len(id) {
		return id
	}
	return [16]byte(h)
}

// sameBoot reports whether rec, a good record, was written in this boot
// of the system: its journaled blocks are then in the page cache, or were
// written back from it.
func sameBoot(rec []byte) bool {
	return binary.LittleEndian.Uint32(rec) == logMagic && bootID != [16]byte{} && [16]byte(rec[28:44]) == bootID
}

// decodeRecordV1 decodes a record of the format before the journal.
func decodeRecordV1(b []byte, gen, seq uint64) (int, map[ids.ObjectID]dirtyEntry) {
	if len(b) < v1HeaderSize || binary.LittleEndian.Uint32(b) != logMagicV1 ||
		binary.LittleEndian.Uint64(b[4:]) != gen || binary.LittleEndian.Uint64(b[12:]) != seq {
		return 0, nil
	}
	n := int64(binary.LittleEndian.Uint32(b[20:]))
	if n > int64(len(b)) {
		return 0, nil
	}
	size := v1HeaderSize + n*v1EntrySize
	if int64(len(b)) < size {
		return 0, nil
	}
	crc := crc32.Update(crc32.Checksum(b[:24], castagnoli), castagnoli, b[v1HeaderSize:size])
	if crc != binary.LittleEndian.Uint32(b[24:]) {
		return 0, nil
	}
	batch := make(map[ids.ObjectID]dirtyEntry, n)
	for i := range n {
		e := b[v1HeaderSize+i*v1EntrySize:]
		oid := ids.ObjectID(binary.LittleEndian.Uint64(e))
		switch e[24] {
		case 0:
			batch[oid] = dirtyEntry{meta: Meta{
				Version: ids.Version(binary.LittleEndian.Uint64(e[8:])),
				Epoch:   ids.Epoch(binary.LittleEndian.Uint64(e[16:])),
			}}
		case 1:
			batch[oid] = dirtyEntry{removed: true}
		default:
			return 0, nil
		}
	}
	return int(size), batch
}

// encodeRecord appends batch, with the journaled blocks of its objects, to
// buf[:0] as record seq of generation gen. An entry whose data is set
// (its file is fdatasynced for this record) is flagged flagSynced.
func encodeRecord(buf []byte, batch map[ids.ObjectID]dirtyEntry, blocks map[ids.ObjectID][]logBlock, gen, seq uint64) []byte {
	b := append(buf[:0], make([]byte, logHeaderSize)...)
	binary.LittleEndian.PutUint32(b, logMagic)
	binary.LittleEndian.PutUint64(b[4:], gen)
	binary.LittleEndian.PutUint64(b[12:], seq)
	binary.LittleEndian.PutUint32(b[20:], uint32(len(batch)))
	var e [logEntrySize]byte
	var bh [logBlockHeader]byte
	for oid, d := range batch {
		bs := blocks[oid]
		binary.LittleEndian.PutUint64(e[0:], uint64(oid))
		binary.LittleEndian.PutUint64(e[8:], uint64(d.meta.Version))
		binary.LittleEndian.PutUint64(e[16:], uint64(d.meta.Epoch))
		switch {
		case d.removed:
			e[24], bs = flagRemoved, nil
		case d.data:
			e[24], bs = flagSynced, nil
		default:
			e[24] = 0
		}
		binary.LittleEndian.PutUint16(e[25:], uint16(len(bs)))
		b = append(b, e[:]...)
		for _, blk := range bs {
			binary.LittleEndian.PutUint32(bh[0:], uint32(blk.block))
			binary.LittleEndian.PutUint32(bh[4:], blk.sum)
			b = append(b, bh[:]...)
			b = append(b, blk.data...)
		}
	}
	binary.LittleEndian.PutUint32(b[24:], uint32(len(b)))
	copy(b[28:44], bootID[:])
	crc := crc32.Update(crc32.Checksum(b[:logCRCAt], castagnoli), castagnoli, b[logHeaderSize:])
	binary.LittleEndian.PutUint32(b[logCRCAt:], crc)
	return b
}

// append makes batch and the journaled blocks of its objects durable in
// the log. fatal reports that the fdatasync itself failed (see Sync). On
// failure the record may be partly written; the next append writes over
// it.
func (l *indexLog) append(batch map[ids.ObjectID]dirtyEntry, blocks map[ids.ObjectID][]logBlock) (fatal bool, err error) {
	if len(batch) == 0 {
		return false, nil
	}
	l.buf = encodeRecord(l.buf, batch, blocks, l.gen, l.seq)
	rec := l.buf
	if err := l.grow(l.off + int64(len(rec))); err != nil {
		return false, err
	}
	if _, err := l.f.WriteAt(rec, l.off); err != nil {
		return false, diskErr(err, "objstore: write index log %s", l.path)
	}
	if err := l.f.Sync(); err != nil {
		return true, diskErr(err, "objstore: sync index log %s", l.path)
	}
	l.off += int64(len(rec))
	l.seq++
	for oid, e := range batch {
		e.blocks = nil
		l.pending[oid] = e
	}
	if cap(l.buf) > 2*maxJournalBytes {
		l.buf = nil // one large record's buffer is not kept
	}
	return false, nil
}

// logChunk is how much the log grows by at a time.
const logChunk = 1 << 20

var zeroChunk [logChunk]byte

// grow makes the log at least end bytes long, in whole chunks of zeros
// written out (not a hole, nor fallocate's unwritten extents): a record
// then overwrites blocks that are allocated and written, so its fdatasync
// changes no metadata and needs no journal commit of the filesystem,
// except once per chunk. Reading stops at the zeros.
func (l *indexLog) grow(end int64) error {
	for l.size < end {
		n := logChunk - l.size%logChunk
		if _, err := l.f.WriteAt(zeroChunk[:n], l.size); err != nil {
			return diskErr(err, "objstore: grow index log %s", l.path)
		}
		l.size += n
	}
	return nil
}

// checkpoint commits the logged batches to db with the next generation;
// the log is then written again from its start. Until the commit, the log
// holds them; after it, its records are of an old generation. The caller
// (Store.checkpoint) has fdatasynced the journaled objects.
func (l *indexLog) checkpoint(db *bolt.DB, badKeys [][]byte) error {
	if err := commitIndex(db, l.pending, badKeys, l.gen+1); err != nil {
		return err
	}
	l.gen++
	l.seq, l.off = 0, 0
	clear(l.pending)
	// The log keeps its size: records are written over the old ones, so
	// its fdatasyncs do not change its size (no journal commit of the
	// filesystem for its metadata). One much longer than logMax (from a
	// store that had a bigger one) is cut back.
	if l.size > max(2*logMax, logChunk) {
		if err := l.f.Truncate(0); err != nil {
			return diskErr(err, "objstore: empty index log %s", l.path)
		}
		l.size = 0
	}
	return nil
}

// logGenOf reads the log generation from db (0 for a store from before
// the log).
func logGenOf(db *bolt.DB) (uint64, error) {
	var gen uint64
	err := db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(configBucket).Get(keyLogGen); len(v) == 8 {
			gen = binary.BigEndian.Uint64(v)
		} else if v != nil {
			return errs.E(errs.Invalid, "objstore: index: bad log generation %x", v)
		}
		return nil
	})
	if err != nil && errs.KindOf(err) == errs.Other {
		err = diskErr(err, "objstore: read index log generation")
	}
	return gen, err
}

// readLog applies the batches of the log at path, as a store with index db
// would at Open, to metas, without changing anything. A missing log is
// empty.
func readLog(path string, db *bolt.DB, metas map[ids.ObjectID]Meta) error {
	gen, err := logGenOf(db)
	if err != nil {
		return err
	}
	f, err := OSFS().OpenFile(path, os.O_RDONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return diskErr(err, "objstore: open index log %s", path)
	}
	defer f.Close()
	return newLog(f, path, gen).replay(metas)
}
