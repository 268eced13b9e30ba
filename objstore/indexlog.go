package objstore

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"io/fs"
	"os"

	bolt "go.etcd.io/bbolt"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

// The index log. A Sync used to commit its batch of index changes to bbolt,
// which costs two fdatasyncs (its pages, then its meta page) after the
// object files' own: three syncs per flush on every node. Now a Sync
// appends the batch to a log next to the index, INDEX.log, as one record,
// and fdatasyncs the log: two syncs. The batches are applied to bbolt in one
// transaction (a checkpoint) once the log holds logMax bytes, at Close, and
// at Open, which first reads the log back. See docs/ARCHITECTURE.md, "The
// index and its log".
//
// A record is a header, then n entries:
//
//	header  magic "SIXL" | gen u64 | seq u64 | n u32 | crc u32   (28 bytes)
//	entry   oid u64 | version u64 | epoch u64 | removed u8     (25 bytes)
//
// little-endian; crc is the CRC-32C of the header's first 24 bytes and the
// entries. gen is the checkpoint generation the record belongs to (kept in
// bbolt's config bucket, "logGen"): a checkpoint commits the batches and
// the next generation in one transaction, then empties the log, so records
// of an older generation (a crash between the two) are ignored. seq counts
// the records of a generation from 0. Reading stops at the first record
// that is short, fails its CRC, or is not the next of its generation: a
// record cut by a crash was never acknowledged.

const (
	logMagic      = 0x4c584953 // "SIXL"
	logHeaderSize = 28
	logEntrySize  = 25
)

// logMax is the size at which Sync checkpoints the log into bbolt. A
// variable so tests can make it small.
var logMax int64 = 4 << 20

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
	pending map[ids.ObjectID]dirtyEntry // logged since the last checkpoint
}

// openLog opens (creating) the log at path through fsys and reads back the
// batches of generation gen, applying them to metas.
func openLog(fsys FS, path string, gen uint64, metas map[ids.ObjectID]Meta) (*indexLog, error) {
	f, err := fsys.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, diskErr(err, "objstore: open index log %s", path)
	}
	l := &indexLog{f: f, path: path, gen: gen, pending: make(map[ids.ObjectID]dirtyEntry)}
	if err := l.replay(metas); err != nil {
		_ = f.Close() // the replay error is the one to report
		return nil, err
	}
	return l, nil
}

// replay reads the log's good records into metas and l.pending.
func (l *indexLog) replay(metas map[ids.ObjectID]Meta) error {
	data, err := io.ReadAll(io.NewSectionReader(l.f, 0, 1<<62))
	if err != nil {
		return diskErr(err, "objstore: read index log %s", l.path)
	}
	for {
		n, batch := decodeRecord(data[l.off:], l.gen, l.seq)
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
		}
		l.off += int64(n)
		l.seq++
	}
}

// decodeRecord decodes the record at the start of b if it is good and is
// record seq of generation gen: its length and entries; 0 otherwise.
func decodeRecord(b []byte, gen, seq uint64) (int, map[ids.ObjectID]dirtyEntry) {
	if len(b) < logHeaderSize || binary.LittleEndian.Uint32(b) != logMagic ||
		binary.LittleEndian.Uint64(b[4:]) != gen || binary.LittleEndian.Uint64(b[12:]) != seq {
		return 0, nil
	}
	n := int64(binary.LittleEndian.Uint32(b[20:]))
	size := logHeaderSize + n*logEntrySize
	if int64(len(b)) < size {
		return 0, nil
	}
	crc := crc32.Update(crc32.Checksum(b[:24], castagnoli), castagnoli, b[logHeaderSize:size])
	if crc != binary.LittleEndian.Uint32(b[24:]) {
		return 0, nil
	}
	batch := make(map[ids.ObjectID]dirtyEntry, n)
	for i := range n {
		e := b[logHeaderSize+i*logEntrySize:]
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

// encodeRecord returns batch as record seq of generation gen.
func encodeRecord(batch map[ids.ObjectID]dirtyEntry, gen, seq uint64) []byte {
	b := make([]byte, logHeaderSize, logHeaderSize+len(batch)*logEntrySize)
	binary.LittleEndian.PutUint32(b, logMagic)
	binary.LittleEndian.PutUint64(b[4:], gen)
	binary.LittleEndian.PutUint64(b[12:], seq)
	binary.LittleEndian.PutUint32(b[20:], uint32(len(batch)))
	var e [logEntrySize]byte
	for oid, d := range batch {
		binary.LittleEndian.PutUint64(e[0:], uint64(oid))
		binary.LittleEndian.PutUint64(e[8:], uint64(d.meta.Version))
		binary.LittleEndian.PutUint64(e[16:], uint64(d.meta.Epoch))
		e[24] = 0
		if d.removed {
			e[24] = 1
		}
		b = append(b, e[:]...)
	}
	crc := crc32.Update(crc32.Checksum(b[:24], castagnoli), castagnoli, b[logHeaderSize:])
	binary.LittleEndian.PutUint32(b[24:], crc)
	return b
}

// append makes batch durable in the log. fatal reports that the fdatasync
// itself failed (see Sync). On failure the record may be partly written;
// the next append writes over it.
func (l *indexLog) append(batch map[ids.ObjectID]dirtyEntry) (fatal bool, err error) {
	if len(batch) == 0 {
		return false, nil
	}
	rec := encodeRecord(batch, l.gen, l.seq)
	if _, err := l.f.WriteAt(rec, l.off); err != nil {
		return false, diskErr(err, "objstore: write index log %s", l.path)
	}
	if err := l.f.Sync(); err != nil {
		return true, diskErr(err, "objstore: sync index log %s", l.path)
	}
	l.off += int64(len(rec))
	l.seq++
	for oid, e := range batch {
		l.pending[oid] = e
	}
	return false, nil
}

// checkpoint commits the logged batches to db with the next generation,
// then empties the log. Until the commit, the log holds them; after it,
// its records are of an old generation.
func (l *indexLog) checkpoint(db *bolt.DB, badKeys [][]byte) error {
	if err := commitIndex(db, l.pending, badKeys, l.gen+1); err != nil {
		return err
	}
	l.gen++
	l.seq, l.off = 0, 0
	clear(l.pending)
	if err := l.f.Truncate(0); err != nil {
		return diskErr(err, "objstore: empty index log %s", l.path)
	}
	// Not required for safety (old records are ignored), but keeps a
	// crash from leaving a long log of them to read.
	if err := l.f.Sync(); err != nil {
		return diskErr(err, "objstore: sync index log %s", l.path)
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
	l := &indexLog{f: f, path: path, gen: gen, pending: make(map[ids.ObjectID]dirtyEntry)}
	return l.replay(metas)
}
