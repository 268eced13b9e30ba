package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/vdi"
)

const obj = vdi.ObjectSize

// fakeCluster holds snapshots as owner lists over immutable objects, the
// way the cluster does.
type fakeCluster struct {
	snaps map[string]*fakeSnap
	objs  map[ids.ObjectID][]byte
	reads int
	mu    sync.Mutex
}

type fakeSnap struct {
	info   proto.VDIInfo
	owners []ids.VDIID
}

func (f *fakeCluster) Owners(_ context.Context, name string, off uint64, count uint32) ([]ids.VDIID, error) {
	s, ok := f.snaps[name]
	if !ok {
		return nil, errs.E(errs.NotFound, "snapshot %s", name)
	}
	if off > uint64(len(s.owners)) {
		return nil, errs.E(errs.Invalid, "past the end")
	}
	end := min(off+uint64(count), uint64(len(s.owners)))
	return append([]ids.VDIID(nil), s.owners[off:end]...), nil
}

func (f *fakeCluster) ReadAt(_ context.Context, vid ids.VDIID, buf []byte, off int64) error {
	f.mu.Lock()
	f.reads++
	f.mu.Unlock()
	for _, s := range f.snaps {
		if s.info.ID != vid {
			continue
		}
		idx := uint32(off / obj)
		if uint64(off)+uint64(len(buf)) > s.info.Size || off%obj+int64(len(buf)) > obj {
			return errs.E(errs.Invalid, "read past the end or across objects")
		}
		clear(buf)
		if o := s.owners[idx]; o != 0 {
			copy(buf, f.objs[ids.DataObject(o, idx)][off%obj:])
		}
		return nil
	}
	return errs.E(errs.NotFound, "VDI %v", vid)
}

// content is what snapshot name reads as.
func (f *fakeCluster) content(t *testing.T, name string) []byte {
	s := f.snaps[name]
	b := make([]byte, s.info.Size)
	for i := range s.owners {
		if err := f.ReadAt(context.Background(), s.info.ID, b[i*obj:min(len(b), (i+1)*obj)], int64(i)*obj); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// fakeVDI is a restore target: a VDI's bytes.
type fakeVDI struct {
	mu       sync.Mutex
	id       ids.VDIID
	data     []byte
	writes   int
	discards int
	failAt   int // fail the nth write (1-based), 0: never
}

func (v *fakeVDI) WriteAt(_ context.Context, vid ids.VDIID, data []byte, off int64, _ bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.writes++
	if v.failAt == v.writes {
		return errs.E(errs.IO, "injected failure")
	}
	if vid != v.id || off+int64(len(data)) > int64(len(v.data)) {
		return errs.E(errs.Invalid, "write of %d bytes at %d to VDI %v of %d bytes", len(data), off, vid, len(v.data))
	}
	copy(v.data[off:], data)
	return nil
}

func (v *fakeVDI) Discard(_ context.Context, vid ids.VDIID, off, length int64, keep bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.discards++
	if vid != v.id || off+length > int64(len(v.data)) || keep {
		return errs.E(errs.Invalid, "discard %d at %d", length, off)
	}
	clear(v.data[off : off+length])
	return nil
}

// pattern fills an object with bytes derived from seed, its last byte
// nonzero.
func pattern(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7) | 1
	}
	return b
}

// family builds d@mon (image 1) and d@tue (image 2, child of 1) with every
// kind of change between them, and a snapshot of another family.
func family() *fakeCluster {
	f := &fakeCluster{snaps: map[string]*fakeSnap{}, objs: map[ids.ObjectID][]byte{}}
	put := func(img ids.VDIID, idx uint32, b []byte) { f.objs[ids.DataObject(img, idx)] = b }
	// mon: 5 objects and 1000 bytes.
	put(1, 0, pattern(1, obj))
	put(1, 1, pattern(2, obj))
	put(1, 2, pattern(3, obj))
	put(1, 3, pattern(4, obj))
	half := append(pattern(5, obj/2), make([]byte, obj/2)...) // trailing zeros
	put(1, 4, half)
	put(1, 5, pattern(6, 1000))
	f.snaps["d@mon"] = &fakeSnap{info: proto.VDIInfo{Name: "d", Tag: "mon", ID: 10, Image: 1, Size: 5*obj + 1000, SnapTime: 100},
		owners: []ids.VDIID{1, 1, 1, 1, 1, 1}}
	// tue: grown by two objects; object 0 unchanged, 1 rewritten, 2
	// discarded, 3 rewritten with zeros, 4 unchanged, 5 rewritten short, 6
	// unallocated, 7 new and partial.
	put(2, 1, pattern(20, obj))
	put(2, 3, make([]byte, obj))
	put(2, 5, []byte("abc"))
	put(2, 7, pattern(21, 5))
	f.snaps["d@tue"] = &fakeSnap{info: proto.VDIInfo{Name: "d", Tag: "tue", ID: 11, Image: 2, Parent: 1, Size: 7*obj + 5, SnapTime: 200},
		owners: []ids.VDIID{1, 2, 0, 2, 1, 2, 0, 2}}
	return f
}

// runBackup returns the stream of a backup of to (since from, if not "").
func runBackup(t *testing.T, f *fakeCluster, from, to string) []byte {
	t.Helper()
	ci := proto.ClusterInfo{FormatTime: 42}
	toInfo := f.snaps[to].info
	h := Header{ObjectSize: obj, Size: toInfo.Size, To: IdentOf(ci, toInfo)}
	var fromInfo *proto.VDIInfo
	if from != "" {
		fi := f.snaps[from].info
		fromInfo = &fi
		h.From = IdentOf(ci, fi)
	}
	var buf bytes.Buffer
	w, err := NewWriter(&buf, h)
	if err != nil {
		t.Fatal(err)
	}
	var done int64
	total, err := Plan(context.Background(), f, fromInfo, toInfo, func(uint32, bool) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := Dump(context.Background(), f, fromInfo, toInfo, w, func(n int64) { done += n }); err != nil {
		t.Fatalf("backup %s %s: %v", from, to, err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if done != total {
		t.Errorf("backup %s %s: progress %d bytes, plan %d", from, to, done, total)
	}
	return buf.Bytes()
}

// records lists a stream's records as "D0 H2 ...".
func records(t *testing.T, stream []byte) string {
	t.Helper()
	rd, err := NewReader(bytes.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for {
		r, err := rd.Next()
		if err == io.EOF {
			return strings.Join(out, " ")
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%c%d", r.Kind, r.Index))
	}
}

func apply(t *testing.T, v *fakeVDI, stream []byte, fresh bool) (Stats, error) {
	t.Helper()
	rd, err := NewReader(bytes.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	if h := rd.Header(); uint64(len(v.data)) != h.Size {
		v.data = append(v.data, make([]byte, int(h.Size)-len(v.data))...) // the restore's resize (growing)
	}
	var st Stats
	err = Apply(context.Background(), v, v.id, rd, fresh, &st)
	return st, err
}

func TestBackupRestoreChain(t *testing.T) {
	f := family()
	full := runBackup(t, f, "", "d@mon")
	inc := runBackup(t, f, "d@mon", "d@tue")
	if got, want := records(t, full), "D0 D1 D2 D3 D4 D5"; got != want {
		t.Errorf("full backup records %s, want %s", got, want)
	}
	// Only what changed: object 3 became zeros, written as a hole.
	if got, want := records(t, inc), "D1 H2 H3 D5 D7"; got != want {
		t.Errorf("increment records %s, want %s", got, want)
	}
	if len(inc) > 2*obj+4096 {
		t.Errorf("increment of %d bytes for two full objects and two short ones", len(inc))
	}

	v := &fakeVDI{id: 77}
	st, err := apply(t, v, full, true)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(v.data, f.content(t, "d@mon")) {
		t.Fatalf("after the full backup: %s", firstDiffAt(v.data, f.content(t, "d@mon")))
	}
	if st.Data != 6 || st.Holes != 0 || v.discards != 0 {
		t.Errorf("full restore: %+v, %d discards", st, v.discards)
	}
	st, err = apply(t, v, inc, false)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(v.data, f.content(t, "d@tue")) {
		t.Fatalf("after the increment: %s", firstDiffAt(v.data, f.content(t, "d@tue")))
	}
	if st.Data != 3 || st.Holes != 2 || v.discards != 2 {
		t.Errorf("increment: %+v, %d discards", st, v.discards)
	}

	// A full backup of tue restores the same.
	v2 := &fakeVDI{id: 78}
	if _, err := apply(t, v2, runBackup(t, f, "", "d@tue"), true); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(v2.data, v.data) {
		t.Errorf("full backup of tue: %s", firstDiffAt(v2.data, v.data))
	}
}

func firstDiffAt(a, b []byte) string {
	if len(a) != len(b) {
		return fmt.Sprintf("sizes %d and %d", len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			return fmt.Sprintf("first difference at byte %d (object %d)", i, i/obj)
		}
	}
	return "equal"
}

func TestRestoreWriteFails(t *testing.T) {
	f := family()
	full := runBackup(t, f, "", "d@mon")
	v := &fakeVDI{id: 77, failAt: 3}
	_, err := apply(t, v, full, true)
	if !errs.Is(err, errs.IO) || !strings.Contains(err.Error(), "injected") {
		t.Fatalf("error %v, want the injected failure", err)
	}
	// A damaged stream stops the restore with the reader's error.
	bad := bytes.Clone(full)
	bad[len(bad)/2] ^= 1
	v = &fakeVDI{id: 77}
	if _, err := apply(t, v, bad, true); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged stream: %v", err)
	}
}

func TestBackupReadFails(t *testing.T) {
	f := family()
	toInfo := f.snaps["d@mon"].info
	toInfo.ID = 98 // reads find no VDI
	w, _ := NewWriter(io.Discard, Header{ObjectSize: obj, Size: toInfo.Size, To: IdentOf(proto.ClusterInfo{}, toInfo)})
	err := Dump(context.Background(), f, nil, toInfo, w, func(int64) {})
	if !errs.Is(err, errs.NotFound) || !strings.Contains(err.Error(), "read object 0 of d@mon") {
		t.Fatalf("error %v", err)
	}
}

func TestCheckChain(t *testing.T) {
	f := family()
	mon, tue := f.snaps["d@mon"].info, f.snaps["d@tue"].info
	ci := proto.ClusterInfo{FormatTime: 42}
	full := Header{ObjectSize: obj, Size: mon.Size, To: IdentOf(ci, mon)}
	inc := Header{ObjectSize: obj, Size: tue.Size, From: IdentOf(ci, mon), To: IdentOf(ci, tue)}
	inc2 := Header{ObjectSize: obj, Size: tue.Size, From: IdentOf(ci, tue), To: Ident{Cluster: 42, Image: 3, SnapTime: 300, Name: "d@wed"}}
	other := inc
	other.From.Cluster = 43
	small := full
	small.ObjectSize = 512
	for _, c := range []struct {
		hs   []Header
		want string
	}{
		{[]Header{full}, ""},
		{[]Header{full, inc, inc2}, ""},
		{[]Header{inc}, "b0 is an increment from d@mon to d@tue: a restore starts with a full backup"},
		{[]Header{full, inc2}, "b1 starts from d@tue (image 000002"},
		{[]Header{full, inc2, inc}, "b1 starts from d@tue"},
		{[]Header{full, full}, "b1 is a full backup of d@mon: only the first"},
		{[]Header{full, other}, "b1 starts from d@mon"},
		{[]Header{small}, "objects of 512 bytes"},
	} {
		names := make([]string, len(c.hs))
		for i := range names {
			names[i] = fmt.Sprintf("b%d", i)
		}
		err := CheckChain(names, c.hs)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%v: %v", names, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("chain %d files: error %v, want %q", len(c.hs), err, c.want)
		}
	}
}

func TestCheckFamily(t *testing.T) {
	snap := func(name string, img ids.VDIID) proto.VDIInfo {
		n, tag, _ := strings.Cut(name, "@")
		return proto.VDIInfo{Name: n, Tag: tag, Image: img}
	}
	// 1 <- 2 <- 3 (current), 2 <- 4 (a rollback's image), 9 alone.
	imgs := []proto.ImageInfo{{ID: 1}, {ID: 2, Parent: 1}, {ID: 3, Parent: 2}, {ID: 4, Parent: 2}, {ID: 9}}
	for _, c := range []struct {
		from, to proto.VDIInfo
		want     string
	}{
		{snap("d@mon", 1), snap("d@tue", 2), ""},
		{snap("d@mon", 1), snap("d@wed", 3), ""},
		{snap("d@wed", 3), snap("d@thu", 4), ""},
		{snap("d@tue", 2), snap("d@mon", 1), "d@tue is newer than d@mon: give the older snapshot first"},
		{snap("d@mon", 1), snap("e@x", 9), "not of the same family"},
		{snap("d@mon", 1), snap("d@mon2", 1), "same image"},
	} {
		err := CheckFamily(imgs, c.from, c.to)
		if (c.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %s: error %v, want %q", c.from.FullName(), c.to.FullName(), err, c.want)
		}
	}
}
