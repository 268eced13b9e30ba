package objstore

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

func logPath(dir string) string { return filepath.Join(dir, "index.db.log") }

func stat(t *testing.T, s *Store, oid ids.ObjectID) (Meta, bool) {
	t.Helper()
	m, err := s.Stat(oid)
	return m, err == nil
}

// TestIndexLogTornTail: a record cut short by a crash, or garbage after
// the last record, is ignored at Open; the records before it count.
func TestIndexLogTornTail(t *testing.T) {
	for _, damage := range []string{"cut", "garbage", "flipped"} {
		t.Run(damage, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir, Options{ObjectSize: testObjSize})
			const a, b = ids.ObjectID(1), ids.ObjectID(2)
			mustWrite(t, s, a, 0, []byte("one"), 1, 1)
			mustWrite(t, s, b, 0, []byte("two"), 1, 1)
			mustSync(t, s)
			before := s.log.off
			// A whole block, none of it zeros: a record cut short reads
			// as zeros past the cut (the log's chunks are zero-filled),
			// which a record's own zeros would match.
			mustWrite(t, s, a, 0, bytes.Repeat([]byte("ONE!"), SumBlock/4), 2, 1)
			if err := s.Remove(b); err != nil {
				t.Fatal(err)
			}
			mustSync(t, s)
			end := s.log.off
			s.crash()
			raw, err := os.ReadFile(logPath(dir))
			if err != nil {
				t.Fatal(err)
			}
			switch damage {
			case "cut": // the second record, half written
				clear(raw[before+(end-before)/2 : end])
			case "garbage": // after both records
				copy(raw[end:], "not a record, but long enough to be read as one.....")
			case "flipped": // a byte of the second record's entries
				raw[end-3] ^= 0x10
			}
			if err := os.WriteFile(logPath(dir), raw, 0o644); err != nil {
				t.Fatal(err)
			}
			s = open(t, dir, Options{ObjectSize: testObjSize})
			defer s.Close()
			ma, _ := stat(t, s, a)
			_, hasB := stat(t, s, b)
			if damage == "garbage" {
				if ma.Version != 2 || hasB {
					t.Fatalf("a at %d, b present %v: want 2 and removed (both records are whole)", ma.Version, hasB)
				}
				return
			}
			// The second record is gone: a keeps its first version (its
			// file holds the newer bytes, which is what a lost index
			// update looks like: recovery refreshes it), b is still
			// indexed, but its file was removed: missing.
			if ma.Version != 1 {
				t.Fatalf("a at version %d, want 1 (the damaged record must not count)", ma.Version)
			}
			if _, ok := stat(t, s, b); ok {
				t.Fatal("b is back although its file is gone")
			}
			if miss := s.Missing(); len(miss) != 1 || miss[0] != b {
				t.Fatalf("missing %v, want [b]", miss)
			}
		})
	}
}

// TestIndexLogOldGeneration: the records a checkpoint has committed to
// bbolt are ignored if the log still holds them (a crash between the
// commit and the emptying of the log), even when newer changes followed.
func TestIndexLogOldGeneration(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{ObjectSize: testObjSize})
	const a, b = ids.ObjectID(1), ids.ObjectID(2)
	mustWrite(t, s, a, 0, []byte("one"), 1, 1)
	mustSync(t, s)
	if err := s.Remove(a); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, s, b, 0, []byte("two"), 5, 1)
	mustSync(t, s)
	old, err := os.ReadFile(logPath(dir)) // a written, then removed; b at 5
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil { // checkpoint: the log is emptied
		t.Fatal(err)
	}
	s = open(t, dir, Options{ObjectSize: testObjSize})
	mustWrite(t, s, b, 0, []byte("TWO"), 9, 1)
	mustSync(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(logPath(dir), old, 0o644); err != nil { // an old generation's records
		t.Fatal(err)
	}
	s = open(t, dir, Options{ObjectSize: testObjSize})
	defer s.Close()
	if m, ok := stat(t, s, b); !ok || m.Version != 9 {
		t.Fatalf("b at %+v (%v), want version 9: an old record was applied", m, ok)
	}
	if _, ok := stat(t, s, a); ok {
		t.Fatal("a is back")
	}
}

// TestIndexLogCheckpoints: with a small log, Syncs checkpoint it into
// bbolt as they go; the log stays small and a crash at any point loses no
// synced version. ListIndex sees what a crash left in the log too.
func TestIndexLogCheckpoints(t *testing.T) {
	defer func(m int64) { logMax = m }(logMax)
	logMax = 300 // a few records
	dir := t.TempDir()
	s := open(t, dir, Options{ObjectSize: testObjSize})
	want := map[ids.ObjectID]ids.Version{}
	for v := ids.Version(1); v <= 50; v++ {
		oid := ids.ObjectID(v % 7)
		mustWrite(t, s, oid, 0, []byte{byte(v)}, v, 1)
		want[oid] = v
		if v%3 == 0 {
			if err := s.Remove(ids.ObjectID(v % 5)); err != nil {
				t.Fatal(err)
			}
			delete(want, ids.ObjectID(v%5))
		}
		mustSync(t, s)
		if s.log.off > logMax+2*(logHeaderSize+3*(logEntrySize+logBlockHeader+SumBlock)) {
			t.Fatalf("log of %d bytes, checkpoints at %d", s.log.off, logMax)
		}
		if fi, err := os.Stat(logPath(dir)); err != nil || fi.Size() > logChunk {
			t.Fatalf("log file of %v bytes (%v), grown in chunks of %d", fi.Size(), err, logChunk)
		}
		if v%10 == 0 {
			s.crash()
			listed, err := ListIndex(filepath.Join(dir, "index.db"))
			if err != nil {
				t.Fatal(err)
			}
			if len(listed) != len(want) {
				t.Fatalf("ListIndex after a crash: %v, want the objects of %v", listed, want)
			}
			s = open(t, dir, Options{ObjectSize: testObjSize})
			got := collect(t, s)
			if len(got) != len(want) {
				t.Fatalf("after a crash at %d: %v, want %v", v, got, want)
			}
			for oid, ver := range want {
				if got[oid].Version != ver {
					t.Fatalf("after a crash at %d: %v at %d, want %d", v, oid, got[oid].Version, ver)
				}
			}
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// FuzzIndexLogRecord: decoding never panics and accepts only what was
// encoded, for the generation and sequence number asked.
func FuzzIndexLogRecord(f *testing.F) {
	block := bytes.Repeat([]byte{7}, SumBlock)
	f.Add(encodeRecord(nil, map[ids.ObjectID]dirtyEntry{1: {meta: Meta{Version: 2, Epoch: 3}}, 9: {removed: true}, 4: {data: true}}, nil, 4, 5), uint64(4), uint64(5))
	f.Add(encodeRecord(nil, map[ids.ObjectID]dirtyEntry{1: {meta: Meta{Version: 2, Epoch: 3}}},
		map[ids.ObjectID][]logBlock{1: {{block: 3, sum: blockSum(1, 3, block), data: block}}}, 0, 0), uint64(0), uint64(0))
	f.Add(encodeRecord(nil, nil, nil, 0, 0), uint64(0), uint64(0))
	f.Add([]byte("SIXM"), uint64(0), uint64(0))
	f.Add([]byte("SIXL"), uint64(0), uint64(0))
	f.Fuzz(func(t *testing.T, b []byte, gen, seq uint64) {
		n, batch, blocks := decodeRecord(b, gen, seq)
		if n == 0 {
			return
		}
		if n > len(b) {
			t.Fatalf("record of %d bytes in %d", n, len(b))
		}
		if binary.LittleEndian.Uint32(b) == logMagicV1 {
			return // the old format is only read
		}
		for oid, bs := range blocks {
			if e := batch[oid]; e.removed || e.data || len(e.blocks) != len(bs) {
				t.Fatalf("%v: entry %+v with %d blocks", oid, e, len(bs))
			}
		}
		again := encodeRecord(nil, batch, blocks, gen, seq)
		if len(again) != n {
			t.Fatalf("decoded %d bytes to %d entries, which encode to %d", n, len(batch), len(again))
		}
	})
}

// TestIndexLogAppendRetried: a Sync whose log append fails (a full disk)
// fails without harm, and the next Sync logs the same changes: after a
// crash, the store holds the version written before the failure.
func TestIndexLogAppendRetried(t *testing.T) {
	dir := t.TempDir()
	ffs := NewFaultFS(nil)
	s := open(t, dir, Options{ObjectSize: testObjSize, FS: ffs})
	const a = ids.ObjectID(1)
	mustWrite(t, s, a, 0, []byte("one"), 1, 1)
	mustSync(t, s)
	mustWrite(t, s, a, 0, []byte("two"), 2, 1)
	ffs.FailWrite(0, syscall.ENOSPC, false) // Sync's first write is the log's
	wantKind(t, "Sync with the log's append failing", s.Sync(), errs.NoSpace)
	if ffs.Injected() != 1 {
		t.Fatalf("%d faults injected, want 1", ffs.Injected())
	}
	mustSync(t, s)
	s.crash()
	s = open(t, dir, Options{ObjectSize: testObjSize})
	defer s.Close()
	if buf, m := mustRead(t, s, a, 0, 3); m.Version != 2 || string(buf) != "two" {
		t.Fatalf("after the crash a is %q at version %d, want \"two\" at 2", buf, m.Version)
	}
}

// TestIndexLogSyncFailureSticky: if the log's fdatasync fails, the record
// may or may not be on disk, so no later Sync may succeed (the error is
// sticky, and Close reports it). A reopened store may hold data newer than
// its version (a lost index update: recovery refreshes such a copy from
// its peers), never a version newer than its data, nor one no Sync logged.
func TestIndexLogSyncFailureSticky(t *testing.T) {
	dir := t.TempDir()
	ffs := NewFaultFS(nil)
	s := open(t, dir, Options{ObjectSize: testObjSize, FS: ffs})
	const a = ids.ObjectID(1)
	mustWrite(t, s, a, 0, []byte("one"), 1, 1)
	mustSync(t, s)
	mustWrite(t, s, a, 0, []byte("two"), 2, 1)
	ffs.FailSync(0, syscall.EIO, false) // the log's: the small write is journaled, its file not synced
	wantKind(t, "Sync with the log's fdatasync failing", s.Sync(), errs.IO)
	if ffs.Injected() != 1 {
		t.Fatalf("%d faults injected, want 1", ffs.Injected())
	}
	mustWrite(t, s, a, 0, []byte("3"), 3, 1)
	wantKind(t, "the next Sync", s.Sync(), errs.IO)
	wantKind(t, "Close", s.Close(), errs.IO)
	s = open(t, dir, Options{ObjectSize: testObjSize})
	defer s.Close()
	buf, m := mustRead(t, s, a, 0, 3)
	dataVer := map[string]ids.Version{"one": 1, "two": 2, "3wo": 3}[string(buf)]
	if dataVer == 0 || m.Version < 1 || m.Version > 2 || m.Version > dataVer {
		t.Fatalf("reopened: a is %q at version %d", buf, m.Version)
	}
}
