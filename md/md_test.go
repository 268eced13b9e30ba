package md

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/objstore"
)

const objSize = 64 << 10

type lostLog struct {
	mu   sync.Mutex
	lost map[string][]ids.ObjectID
}

func (l *lostLog) add(disk string, oids []ids.ObjectID) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lost[disk] = append(l.lost[disk], oids...)
}

func (l *lostLog) get(disk string) []ids.ObjectID {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.lost[disk])
}

func openSet(t *testing.T, dir string, disks []string, l *lostLog) *Set {
	t.Helper()
	s, err := Open(Options{Dir: dir, Disks: disks, FaultFS: true, Store: objstore.Options{ObjectSize: objSize}, OnLost: l.add})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func data(oid ids.ObjectID) []byte { return bytes.Repeat([]byte{byte(oid), byte(oid >> 8)}, 512) }

// TestSpreadAndFail: objects spread over both disks and read back; a disk
// whose writes fail with EIO leaves service, its objects are reported
// lost, the others still serve, and new objects go to the remaining disk.
// A restart keeps the failed disk out.
func TestSpreadAndFail(t *testing.T) {
	dir := t.TempDir()
	d1, d2 := filepath.Join(dir, "d1"), filepath.Join(dir, "d2")
	l := &lostLog{lost: map[string][]ids.ObjectID{}}
	s := openSet(t, filepath.Join(dir, "meta"), []string{d1, d2}, l)
	var oids []ids.ObjectID
	for i := range 200 {
		oid := ids.DataObject(1, uint32(i))
		oids = append(oids, oid)
		if err := s.Write(oid, 0, data(oid), 1, 1); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	per := map[string]int{}
	for _, d := range s.Info() {
		per[d.Path] = d.Objects
	}
	t.Logf("objects per disk: %v", per)
	if per[d1] < 60 || per[d2] < 60 {
		t.Fatalf("objects not spread over the disks: %v", per)
	}
	if _, err := os.Stat(filepath.Join(dir, "meta", "md")); err != nil {
		t.Fatalf("indexes are not under the metadata directory: %v", err)
	}

	if err := s.Fault(d2, "write"); err != nil {
		t.Fatal(err)
	}
	// Write every object again: the first write to d2 fails it.
	failedOnce := false
	for _, oid := range oids {
		if err := s.Update(oid, 0, data(oid), 2, 1); err != nil {
			if !errs.Is(err, errs.IO) && !errs.Is(err, errs.NotFound) && !errs.Is(err, errs.Closed) {
				t.Fatalf("Update(%v) after the fault: %v", oid, err)
			}
			failedOnce = true
		}
	}
	lost := l.get(d2)
	if !failedOnce || len(lost) != per[d2] {
		t.Fatalf("after d2 failed: %d objects reported lost, want %d (a write failed: %v)", len(lost), per[d2], failedOnce)
	}
	for _, oid := range oids {
		_, err := s.Stat(oid)
		if slices.Contains(lost, oid) != errs.Is(err, errs.NotFound) {
			t.Fatalf("%v: Stat %v, lost %v", oid, err, slices.Contains(lost, oid))
		}
		if err == nil {
			buf := make([]byte, 1024)
			if _, err := s.Read(oid, 0, buf); err != nil || !bytes.Equal(buf, data(oid)) {
				t.Fatalf("%v on the good disk: %v", oid, err)
			}
		}
	}
	// A lost object comes back on the remaining disk.
	if err := s.Write(lost[0], 0, data(lost[0]), 3, 2); err != nil {
		t.Fatal(err)
	}
	if err := s.Sync(); err != nil {
		t.Fatalf("Sync after the failed disk left: %v", err)
	}
	info := s.Info()
	if len(info) != 2 || info[1].State == "in service" || info[0].Objects != per[d1]+1 {
		t.Fatalf("disks after the failure: %+v", info)
	}
	if err := s.Unplug(d1); !errs.Is(err, errs.Invalid) {
		t.Fatalf("Unplug of the last disk = %v, want Invalid", err)
	}
	s.Close()

	// Restart with the same flags: d2 stays out.
	s = openSet(t, filepath.Join(dir, "meta"), []string{d1, d2}, l)
	if info := s.Info(); len(info) != 2 || info[1].State == "in service" {
		t.Fatalf("after a restart: %+v", info)
	}
	// Plug it back: its copies that d1 has too are dropped, the others
	// returned to be checked.
	var stale []ids.ObjectID
	if err := s.Plug(d2, func(o []ids.ObjectID) { stale = o }); err != nil {
		t.Fatal(err)
	}
	if len(stale) != per[d2]-1 {
		t.Fatalf("plug: %d copies to check, want %d", len(stale), per[d2]-1)
	}
	if err := s.Plug(d2, nil); !errs.Is(err, errs.Exists) {
		t.Fatalf("second plug = %v, want Exists", err)
	}
	// Unplug d1: every object it held is reported lost.
	before := len(l.get(d1))
	if err := s.Unplug(d1); err != nil {
		t.Fatal(err)
	}
	if got := len(l.get(d1)) - before; got != per[d1]+1 {
		t.Fatalf("unplug: %d objects reported lost, want %d", got, per[d1]+1)
	}
	s.Close()
}

// TestReplacedDisk: a disk wiped while the node was down (a new disk in
// its place) is detected at Open, and what it held is reported lost.
func TestReplacedDisk(t *testing.T) {
	dir := t.TempDir()
	d1, d2 := filepath.Join(dir, "d1"), filepath.Join(dir, "d2")
	l := &lostLog{lost: map[string][]ids.ObjectID{}}
	s := openSet(t, filepath.Join(dir, "meta"), []string{d1, d2}, l)
	for i := range 50 {
		oid := ids.DataObject(2, uint32(i))
		if err := s.Write(oid, 0, data(oid), 1, 1); err != nil {
			t.Fatal(err)
		}
	}
	on2 := 0
	for _, d := range s.Info() {
		if d.Path == d2 {
			on2 = d.Objects
		}
	}
	s.Close()
	if err := os.RemoveAll(d2); err != nil {
		t.Fatal(err)
	}
	s = openSet(t, filepath.Join(dir, "meta"), []string{d1, d2}, l)
	defer s.Close()
	if got := len(l.get("")); got != on2 || on2 == 0 {
		t.Fatalf("replaced disk: %d objects reported lost, want %d", got, on2)
	}
}
