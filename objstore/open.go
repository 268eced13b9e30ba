package objstore

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

// Open opens the store in dir, creating dir and an empty store if needed.
// It loads the whole index into memory (about 40 bytes per object) and
// reconciles it with the object files: leftover temp files are removed,
// files missing from the index are added with version 0, index entries
// whose file is missing are dropped, and files shorter than the object
// size (a crash during creation) are extended with zeros. Open reads the
// metadata of every object file, so its time grows with the number of
// objects.
//
// Errors: errs.Invalid for bad options, an object size different from the
// one the store was created with, or an object file larger than the
// object size; errs.Busy if another Store (in any process) has dir open;
// errs.NoSpace or errs.IO for disk failures.
func Open(dir string, opts Options) (*Store, error) {
	if opts.ObjectSize == 0 {
		opts.ObjectSize = DefaultObjectSize
	}
	if opts.ObjectSize < 0 {
		return nil, errs.E(errs.Invalid, "objstore: open %s: negative object size %d", dir, opts.ObjectSize)
	}
	if opts.MaxOpenFiles == 0 {
		opts.MaxOpenFiles = defaultMaxOpenFiles
	}
	if opts.MaxOpenFiles < 0 {
		return nil, errs.E(errs.Invalid, "objstore: open %s: negative MaxOpenFiles %d", dir, opts.MaxOpenFiles)
	}
	if opts.FS == nil {
		opts.FS = OSFS()
	}
	s := &Store{
		dir:       dir,
		objDir:    filepath.Join(dir, "obj"),
		fs:        opts.FS,
		objSize:   opts.ObjectSize,
		onChange:  opts.Replacing,
		objects:   make(map[ids.ObjectID]objInfo),
		dirty:     make(map[ids.ObjectID]dirtyEntry),
		stale:     make(map[ids.ObjectID]struct{}),
		journaled: make(map[ids.ObjectID]struct{}),
	}
	s.fds.init(opts.MaxOpenFiles)
	if err := s.fs.MkdirAll(dir, 0o755); err != nil {
		return nil, diskErr(err, "objstore: open %s", dir)
	}
	ipath := opts.IndexPath
	if ipath == "" {
		ipath = filepath.Join(dir, "index.db")
	} else if err := os.MkdirAll(filepath.Dir(ipath), 0o755); err != nil {
		return nil, diskErr(err, "objstore: open %s", ipath)
	}
	if s.objSize%SumBlock != 0 {
		return nil, errs.E(errs.Invalid, "objstore: open %s: object size %d is not a multiple of %d", dir, s.objSize, SumBlock)
	}
	db, noSums, err := openIndex(ipath, s.objSize)
	if err != nil {
		return nil, err
	}
	s.db = db
	s.noSums = noSums
	if err := syncFS(dir); err != nil {
		_ = db.Close() // the sync error is the one to report
		return nil, err
	}
	if err := s.load(ipath + ".log"); err != nil {
		if s.log != nil {
			_ = s.log.f.Close()
		}
		_ = db.Close() // the load error is the one to report
		return nil, err
	}
	return s, nil
}

// load fills s.objects from the index, its log at logPath and the object
// files, and commits the log and the reconciliation in one transaction (a
// checkpoint).
func (s *Store) load(logPath string) error {
	indexed, badKeys, err := loadIndex(s.db)
	if err != nil {
		return err
	}
	gen, err := logGenOf(s.db)
	if err != nil {
		return err
	}
	if s.log, err = openLog(s.fs, logPath, gen, indexed); err != nil {
		return err
	}
	for oid := range s.log.unsynced {
		s.journaled[oid] = struct{}{}
	}
	clear(s.log.unsynced)
	if err := s.makeDirs(); err != nil {
		return err
	}
	changes := make(map[ids.ObjectID]dirtyEntry)
	for i := range 256 {
		if err := s.reconcileDir(i, indexed, changes); err != nil {
			return err
		}
	}
	for oid := range indexed {
		if _, ok := s.objects[oid]; !ok {
			changes[oid] = dirtyEntry{removed: true}
			s.missing = append(s.missing, oid)
		}
	}
	for oid, e := range changes {
		s.log.pending[oid] = e
	}
	if err := s.applyJournal(); err != nil {
		return err
	}
	if _, err := s.checkpoint(badKeys); err != nil {
		return err
	}
	if s.noSums {
		s.noSums = false
		return setFormat(s.db)
	}
	return nil
}

// makeDirs creates obj/ and its 256 fan-out directories, durably, if any
// is missing.
func (s *Store) makeDirs() error {
	ents, err := s.fs.ReadDir(s.objDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return diskErr(err, "objstore: open %s", s.dir)
	}
	have := make(map[string]bool, len(ents))
	for _, e := range ents {
		have[e.Name()] = e.IsDir()
	}
	made := false
	for i := range 256 {
		name := fanoutName(i)
		if have[name] {
			continue
		}
		if err := s.fs.MkdirAll(filepath.Join(s.objDir, name), 0o755); err != nil {
			return diskErr(err, "objstore: open %s", s.dir)
		}
		made = true
	}
	if !made {
		return nil
	}
	// The fan-out directories are entries of obj/; obj/ and index.db
	// entries of dir.
	for _, d := range []string{s.objDir, s.dir} {
		if _, err := s.syncDir(d); err != nil {
			return err
		}
	}
	return nil
}

// reconcileDir walks obj/XX for fan-out i: it removes temp files, repairs
// short files and records every object in s.objects, adding to changes
// the objects the index lacks. Files not named like an object of this
// directory are left alone.
func (s *Store) reconcileDir(i int, indexed map[ids.ObjectID]Meta, changes map[ids.ObjectID]dirtyEntry) error {
	dir := filepath.Join(s.objDir, fanoutName(i))
	ents, err := s.fs.ReadDir(dir)
	if err != nil {
		return diskErr(err, "objstore: open %s: scan %s", s.dir, dir)
	}
	for _, e := range ents {
		name := e.Name()
		path := filepath.Join(dir, name)
		if filepath.Ext(name) == ".tmp" {
			if err := s.fs.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return diskErr(err, "objstore: open %s: remove temp file", s.dir)
			}
			continue
		}
		if len(name) != 16 || !e.Type().IsRegular() {
			continue
		}
		oid, err := ids.ParseObjectID(name)
		if err != nil || fanout(oid) != i {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			return diskErr(err, "objstore: open %s: stat object %v", s.dir, oid)
		}
		switch {
		case s.noSums && fi.Size() <= s.fileSize():
			// (also a file whose migration a crash stopped: redone)
			// A store from before checksums: add them.
			if fi, err = s.addSums(path, oid); err != nil {
				return err
			}
		case fi.Size() > s.fileSize():
			return errs.E(errs.Invalid, "objstore: open %s: object %v has %d bytes, more than the %d of an object and its checksums",
				s.dir, oid, fi.Size(), s.fileSize())
		case fi.Size() < s.fileSize():
			// Truncated behind our back, or made just before a crash
			// that lost its size (never synced, so never counted on):
			// the node does not have this object. Recovery fetches it
			// again if it should.
			if err := s.fs.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return diskErr(err, "objstore: open %s: remove damaged object %v", s.dir, oid)
			}
			s.corrupt.Add(1)
			s.damaged = append(s.damaged, oid)
			continue
		}
		m, ok := indexed[oid]
		if !ok {
			changes[oid] = dirtyEntry{}
		}
		alloc := allocOf(fi)
		s.objects[oid] = objInfo{Meta: m, alloc: alloc}
		s.used += alloc
	}
	return nil
}

// addSums gives an object file of a store from before checksums (data
// only, perhaps short) its checksums, durably, and returns its new
// metadata. The data it holds is taken as good: nothing checked it before.
func (s *Store) addSums(path string, oid ids.ObjectID) (os.FileInfo, error) {
	f, err := s.fs.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, diskErr(err, "objstore: open %s: add checksums to %v", s.dir, oid)
	}
	defer f.Close()
	nb := s.objSize / SumBlock
	t := make(trailer, s.trailerSize())
	buf := make([]byte, min(s.objSize, 1<<20))
	for off := int64(0); off < s.objSize; off += int64(len(buf)) {
		n, err := f.ReadAt(buf, off)
		if err != nil && err != io.EOF {
			return nil, diskErr(err, "objstore: open %s: add checksums to %v", s.dir, oid)
		}
		clear(buf[n:]) // past the end: zeros
		for i := int64(0); i < int64(len(buf))/SumBlock; i++ {
			b := off/SumBlock + i
			v := blockSum(oid, b, buf[i*SumBlock:(i+1)*SumBlock])
			t.set(b, entry{v, v})
		}
	}
	err = f.Truncate(s.fileSize())
	if err == nil {
		err = s.writeTrailer(f, t, 0, nb)
	}
	if err == nil {
		err = f.Sync()
	}
	var fi os.FileInfo
	if err == nil {
		fi, err = f.Stat()
	}
	if err != nil {
		return nil, diskErr(err, "objstore: open %s: add checksums to %v", s.dir, oid)
	}
	return fi, nil
}

// Damaged returns the objects whose files Open found damaged (shorter than
// an object with its checksums) and removed: the node no longer has them.
// Those the index listed are in Missing too. The list is returned once.
func (s *Store) Damaged() []ids.ObjectID {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.damaged
	s.damaged = nil
	return d
}

// applyJournal writes the journaled blocks that the log's records leave
// standing into their objects, with their checksums, as a Sync had made
// them durable: a power loss may have cut them from the files, which that
// Sync did not fdatasync. Blocks of objects that are gone are dropped.
// The checkpoint that follows fdatasyncs the files.
func (s *Store) applyJournal() error {
	for oid, blocks := range s.log.replayed {
		if _, ok := s.objects[oid]; !ok {
			continue
		}
		f, err := s.fs.OpenFile(s.objPath(oid), os.O_RDWR, 0)
		if err != nil {
			return diskErr(err, "objstore: open %s: journaled blocks of %v", s.dir, oid)
		}
		err = s.applyBlocks(oid, f, blocks)
		if cerr := f.Close(); err == nil && cerr != nil {
			err = diskErr(cerr, "objstore: open %s: journaled blocks of %v", s.dir, oid)
		}
		if err != nil {
			return err
		}
		s.journaled[oid] = struct{}{}
		s.replayed += len(blocks)
	}
	clear(s.log.replayed)
	return nil
}

// Replayed returns how many journaled blocks Open wrote back into their
// objects (records written before a reboot).
func (s *Store) Replayed() int { return s.replayed }

// applyBlocks writes blocks, in order, into oid's file f.
func (s *Store) applyBlocks(oid ids.ObjectID, f File, blocks []logBlock) error {
	t, err := s.readTrailer(oid, f)
	if err != nil {
		return err
	}
	for _, b := range blocks {
		if b.block >= s.objSize/SumBlock || blockSum(oid, b.block, b.data) != b.sum {
			return errs.E(errs.IO, "objstore: open %s: index log: journaled block %d of %v is not a block of it", s.dir, b.block, oid)
		}
		if _, err := f.WriteAt(b.data, b.block*SumBlock); err != nil {
			return diskErr(err, "objstore: open %s: write journaled block of %v", s.dir, oid)
		}
		t.set(b.block, entry{b.sum, b.sum})
	}
	if err := s.writeTrailer(f, t, 0, s.objSize/SumBlock); err != nil {
		return diskErr(err, "objstore: open %s: write checksums of %v", s.dir, oid)
	}
	return nil
}

// syncFS makes durable everything written to the file system holding dir
// (syncfs(2)). A process that stopped without a Sync (killed, or it
// crashed) may have acknowledged writes that are only in the page cache,
// and this process's Syncs know nothing of them: a flush a client retries
// after the restart would vouch for them. After a reboot there is nothing
// left to write back, and it costs nothing.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return diskErr(err, "objstore: open %s", dir)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return diskErr(err, "objstore: sync the file system of %s", dir)
	}
	return nil
}
