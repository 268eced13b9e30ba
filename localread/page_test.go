package localread

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/ids"
)

func TestStampHoldsUntilItsChange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "page")
	p, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	v, err := OpenView(p.Path(), p.Stamp(0).Inst)
	if err != nil {
		t.Fatal(err)
	}
	a, b := ids.ObjectID(1<<32|5), ids.ObjectID(2<<32|9)
	if slot(a) == slot(b) {
		t.Fatal("the test's objects share a slot")
	}
	sa, sb := p.Stamp(a), p.Stamp(b)
	if !v.Holds(a, sa) || !v.Holds(b, sb) {
		t.Fatal("fresh stamps do not hold")
	}
	p.Bump(a)
	if v.Holds(a, sa) {
		t.Error("a's stamp holds after a's file changed")
	}
	if !v.Holds(b, sb) {
		t.Error("b's stamp no longer holds after a's file changed")
	}
	sa = p.Stamp(a)
	p.BumpAll()
	if v.Holds(a, sa) || v.Holds(b, sb) {
		t.Error("stamps hold after a new state")
	}
	if v.Holds(b, Stamp{Inst: sb.Inst + 1, Global: p.Global(), Slot: p.Stamp(b).Slot}) {
		t.Error("a stamp of another instance holds")
	}
	sb = p.Stamp(b)
	p.Retire()
	if v.Holds(b, sb) || !v.Dead() {
		t.Error("a stamp holds after the page was retired")
	}
}

func TestStampEndsWithTheBeat(t *testing.T) {
	p, err := Create(filepath.Join(t.TempDir(), "page"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := OpenView(p.Path(), p.Stamp(0).Inst)
	if err != nil {
		t.Fatal(err)
	}
	s := p.Stamp(7)
	if !v.Holds(7, s) {
		t.Fatal("a fresh stamp does not hold")
	}
	word(p.mem, wBeat).Add(^uint64(int64(2 * MaxQuiet))) // the last beat two quiet spells earlier
	if v.Holds(7, s) {
		t.Error("a stamp holds although the daemon has not beaten for 2 s")
	}
	p.Beat(time.Now())
	if !v.Holds(7, s) {
		t.Error("the stamp does not hold after the next beat")
	}
	word(p.mem, wBeat).Add(uint64(int64(2 * MaxQuiet))) // a beat in the future: a clock set back
	if v.Holds(7, s) {
		t.Error("a stamp holds although the clock went back")
	}
}

// A new daemon at the same place retires the page of the one before, which
// may have been killed: mounts' leases from it end before the new daemon
// changes anything.
func TestCreateRetiresThePageBefore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "page")
	old, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	v, err := OpenView(path, old.Stamp(0).Inst)
	if err != nil {
		t.Fatal(err)
	}
	s := old.Stamp(3)
	p, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if v.Holds(3, s) {
		t.Error("a lease of the daemon before holds after a new one started")
	}
	if _, err := OpenView(path, old.Stamp(0).Inst); err == nil {
		t.Error("the new page opens as the old instance's")
	}
	nv, err := OpenView(path, p.Stamp(0).Inst)
	if err != nil {
		t.Fatal(err)
	}
	if !nv.Holds(3, p.Stamp(3)) {
		t.Error("the new page's stamps do not hold")
	}
}

func TestOpenViewRefusesOtherFiles(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string][]byte{"short": make([]byte, 100), "zeros": make([]byte, size)} {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := OpenView(path, 0); err == nil {
			t.Errorf("%s: OpenView succeeded", name)
		}
	}
	if _, err := OpenView(dir, 1); err == nil {
		t.Error("a directory opens as a page")
	}
}

// A killed daemon's lock goes with its process: a mount's lease ends at
// once, however fresh the last beat.
func TestStampEndsWithTheProcess(t *testing.T) {
	p, err := Create(filepath.Join(t.TempDir(), "page"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := OpenView(p.Path(), p.Stamp(0).Inst)
	if err != nil {
		t.Fatal(err)
	}
	s := p.Stamp(7)
	if !v.Holds(7, s) {
		t.Fatal("a fresh stamp does not hold")
	}
	p.f.Close() // what the kernel does at the process's end
	p.Beat(time.Now())
	if v.Holds(7, s) {
		t.Error("a stamp holds after the daemon's lock went")
	}
}

// BenchmarkHolds: the check a mount makes after each read.
func BenchmarkHolds(b *testing.B) {
	p, err := Create(filepath.Join(b.TempDir(), "page"))
	if err != nil {
		b.Fatal(err)
	}
	v, err := OpenView(p.Path(), p.Stamp(0).Inst)
	if err != nil {
		b.Fatal(err)
	}
	s := p.Stamp(7)
	i := 0
	for b.Loop() {
		if i++; i%1024 == 0 {
			p.Beat(time.Now()) // as the daemon does every 100 ms
		}
		if !v.Holds(7, s) {
			b.Fatal("does not hold")
		}
	}
}
