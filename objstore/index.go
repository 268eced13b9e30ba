package objstore

import (
	"encoding/binary"
	"errors"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

// The index is a bbolt database, dir/index.db, with two buckets:
//
//	config   "format" -> uint64 formatVersion, "objectSize" -> uint64 bytes
//	         (format 1: object files without checksums; Open adds them),
//	         "logGen" -> uint64, the generation of the index log (indexlog.go)
//	objects  8-byte big-endian ObjectID -> 16 bytes: Version, Epoch
//	         (big-endian uint64 each)
//
// It holds no object data. Changes reach it through the index log
// (indexlog.go), which holds those made since its last checkpoint.
var (
	configBucket  = []byte("config")
	objectsBucket = []byte("objects")
	keyFormat     = []byte("format")
	keyObjectSize = []byte("objectSize")
)

const (
	formatVersion = 2 // object files end with their checksums
	formatNoSums  = 1
	keySize       = 8
	metaSize      = 16
)

// lockTimeout bounds how long Open waits for another process to release
// the index (bbolt's flock). A variable so tests can shorten it.
var lockTimeout = time.Second

func encodeMeta(b []byte, m Meta) {
	binary.BigEndian.PutUint64(b[0:8], uint64(m.Version))
	binary.BigEndian.PutUint64(b[8:16], uint64(m.Epoch))
}

func decodeMeta(b []byte) Meta {
	return Meta{
		Version: ids.Version(binary.BigEndian.Uint64(b[0:8])),
		Epoch:   ids.Epoch(binary.BigEndian.Uint64(b[8:16])),
	}
}

func encodeUint(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// openIndex opens (creating if needed) the index at path and checks that
// it belongs to a store of objSize-byte objects. noSums: the store's object
// files have no checksums yet (format 1).
func openIndex(path string, objSize int64) (db *bolt.DB, noSums bool, err error) {
	db, err = bolt.Open(path, 0o644, &bolt.Options{Timeout: lockTimeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, false, errs.E(errs.Busy, "objstore: open index %s: in use by another process", path)
	}
	if err != nil {
		return nil, false, diskErr(err, "objstore: open index %s", path)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		cfg, err := tx.CreateBucketIfNotExists(configBucket)
		if err != nil {
			return err
		}
		if _, err := tx.CreateBucketIfNotExists(objectsBucket); err != nil {
			return err
		}
		if v := cfg.Get(keyFormat); v == nil {
			if err := cfg.Put(keyFormat, encodeUint(formatVersion)); err != nil {
				return err
			}
		} else if len(v) == 8 && binary.BigEndian.Uint64(v) == formatNoSums {
			noSums = true
		} else if len(v) != 8 || binary.BigEndian.Uint64(v) != formatVersion {
			return errs.E(errs.Invalid, "objstore: index %s: unknown format %x", path, v)
		}
		if v := cfg.Get(keyObjectSize); v == nil {
			return cfg.Put(keyObjectSize, encodeUint(uint64(objSize)))
		} else if len(v) != 8 || binary.BigEndian.Uint64(v) != uint64(objSize) {
			return errs.E(errs.Invalid, "objstore: index %s: store has object size %x, opened with %d", path, v, objSize)
		}
		return nil
	})
	if err != nil {
		_ = db.Close() // the Update error is the one to report
		if errs.KindOf(err) != errs.Other {
			return nil, false, err
		}
		return nil, false, diskErr(err, "objstore: init index %s", path)
	}
	return db, noSums, nil
}

// setFormat records that every object file has its checksums.
func setFormat(db *bolt.DB) error {
	err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(configBucket).Put(keyFormat, encodeUint(formatVersion))
	})
	if err != nil {
		return diskErr(err, "objstore: index format")
	}
	return nil
}

// loadIndex reads every entry of the objects bucket. Entries of the wrong
// shape (a corrupt index) are returned in bad, to be deleted; their
// objects are found again by the directory walk, with version 0.
func loadIndex(db *bolt.DB) (metas map[ids.ObjectID]Meta, bad [][]byte, err error) {
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(objectsBucket)
		metas = make(map[ids.ObjectID]Meta)
		return b.ForEach(func(k, v []byte) error {
			if len(k) != keySize || len(v) != metaSize {
				bad = append(bad, slices.Clone(k))
				return nil
			}
			metas[ids.ObjectID(binary.BigEndian.Uint64(k))] = decodeMeta(v)
			return nil
		})
	})
	if err != nil {
		return nil, nil, diskErr(err, "objstore: load index")
	}
	return metas, bad, nil
}

// commitIndex applies a batch of index changes and records logGen (the
// index log's next generation), in one transaction. The batch is not
// modified.
func commitIndex(db *bolt.DB, batch map[ids.ObjectID]dirtyEntry, badKeys [][]byte, logGen uint64) error {
	oids := make([]ids.ObjectID, 0, len(batch))
	for oid := range batch {
		oids = append(oids, oid)
	}
	slices.Sort(oids) // sequential puts keep bbolt's page splits cheap
	buf := make([]byte, len(oids)*(keySize+metaSize))
	err := db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(configBucket).Put(keyLogGen, encodeUint(logGen)); err != nil {
			return err
		}
		b := tx.Bucket(objectsBucket)
		for _, k := range badKeys {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		for i, oid := range oids {
			rec := buf[i*(keySize+metaSize) : (i+1)*(keySize+metaSize)]
			k, v := rec[:keySize], rec[keySize:]
			binary.BigEndian.PutUint64(k, uint64(oid))
			e := batch[oid]
			var err error
			if e.removed {
				err = b.Delete(k)
			} else {
				encodeMeta(v, e.meta)
				err = b.Put(k, v)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return diskErr(err, "objstore: commit index (%d objects)", len(oids))
	}
	return nil
}
