package objstore

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/sheepfs/sheepfs/ids"
)

// hookFS calls onLogSync before every fdatasync of the index log.
type hookFS struct {
	*FaultFS
	onLogSync func()
}

type hookFile struct {
	File
	fs *hookFS
}

func (h *hookFS) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	f, err := h.FaultFS.OpenFile(name, flag, perm)
	if err != nil || !strings.HasSuffix(name, ".log") {
		return f, err
	}
	return &hookFile{f, h}, nil
}

func (f *hookFile) Sync() error {
	if hk := f.fs.onLogSync; hk != nil {
		f.fs.onLogSync = nil
		hk()
	}
	return f.File.Sync()
}

// A Sync acknowledges a journaled write to X. Later, X is removed while
// another Sync checkpoints: the checkpoint's fdatasync of X finds it
// gone and skips it, the log (the only durable copy of the write) is
// dropped, and the unlink is not durable yet. Power loss: X comes back,
// at the acknowledged version, without the acknowledged write.
func TestJournalCheckpointRemoveRace(t *testing.T) {
	keepBootID(t)
	defer func(m int64) { logMax = m }(logMax)
	logMax = 6000
	dir := t.TempDir()
	ffs := NewFaultFS(nil)
	ffs.TrackDurability()
	hfs := &hookFS{FaultFS: ffs}
	opts := Options{ObjectSize: testObjSize, FS: hfs}
	s := open(t, dir, opts)
	const x, y = ids.ObjectID(1), ids.ObjectID(2)
	mustWrite(t, s, x, 0, pattern(x, 0, testObjSize, 1), 1, 1)
	mustWrite(t, s, y, 0, pattern(y, 0, testObjSize, 1), 1, 1)
	mustSync(t, s)
	if s.log.off != 0 {
		s.checkpoint(nil)
	}
	mustWrite(t, s, x, SumBlock, block('A'), 2, 1)
	mustSync(t, s) // acknowledged: journaled, X not fdatasynced
	if s.log.off == 0 || s.log.off >= logMax {
		t.Fatalf("setup: log off %d", s.log.off)
	}
	backup := dir + "/x.link"
	mustWrite(t, s, y, 0, block('B'), 2, 1)
	hfs.onLogSync = func() {
		// Remove X after this Sync took its batch, before its checkpoint.
		if err := os.Link(s.objPath(x), backup); err != nil {
			t.Error(err)
		}
		if err := s.Remove(x); err != nil {
			t.Error(err)
		}
	}
	mustSync(t, s) // checkpoints
	if s.log.off != 0 {
		t.Fatalf("no checkpoint: off %d", s.log.off)
	}
	// Power loss before the next Sync: the unlink was never made durable.
	s.crash()
	if err := ffs.PowerLoss(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(backup, s.objPath(x)); err != nil {
		t.Fatal(err)
	}
	bootID[0]++
	s = open(t, dir, opts)
	defer s.Close()
	got, m := mustRead(t, s, x, SumBlock, SumBlock)
	if m.Version == 2 && !bytes.Equal(got, block('A')) {
		t.Fatalf("X at version %d lost its acknowledged write: block 1 starts %q", m.Version, got[:8])
	}
	t.Logf("X version %d", m.Version)
}
