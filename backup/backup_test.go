package backup_test

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/sheepfs/sheepfs/backup"
)

const objSize = 4096

var (
	monIdent = backup.Ident{Cluster: 1700000000, Image: 3, SnapTime: 1700000100, Name: "disk1@mon"}
	tueIdent = backup.Ident{Cluster: 1700000000, Image: 5, SnapTime: 1700086500, Name: "disk1@tue"}
)

// object is what a test writes for one object index: data (possibly with
// trailing zeros, possibly all zero) or a hole.
type object struct {
	index uint32
	hole  bool
	data  []byte
}

// encode writes a stream of h with objs and returns it.
func encode(t testing.TB, h backup.Header, objs []object) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := backup.NewWriter(&buf, h)
	if err != nil {
		t.Fatalf("NewWriter: %v", err)
	}
	for _, o := range objs {
		if o.hole {
			err = w.Hole(o.index)
		} else {
			err = w.Data(o.index, o.data)
		}
		if err != nil {
			t.Fatalf("object %d: %v", o.index, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return buf.Bytes()
}

// decoded is a whole stream read back: the header and every record (with
// its data copied).
type decoded struct {
	h    backup.Header
	recs []backup.Record
	err  error // the error that ended the stream (io.EOF when intact)
}

func decode(r io.Reader) decoded {
	var d decoded
	rd, err := backup.NewReader(r)
	if err != nil {
		d.err = err
		return d
	}
	d.h = rd.Header()
	for {
		rec, err := rd.Next()
		if err != nil {
			d.err = err
			return d
		}
		rec.Data = bytes.Clone(rec.Data)
		d.recs = append(d.recs, rec)
	}
}

// sample is an increment with every kind of record: a full object, a
// partial one with trailing zeros, one of zeros, a hole and a short last
// object.
func sample() (backup.Header, []object) {
	h := backup.Header{ObjectSize: objSize, Size: 10*objSize + 100, From: monIdent, To: tueIdent}
	rng := rand.New(rand.NewPCG(1, 2))
	full := make([]byte, objSize)
	for i := range full {
		full[i] = byte(rng.Uint32())
	}
	full[len(full)-1] = 7
	partial := make([]byte, objSize)
	copy(partial, "hello, object")
	last := bytes.Repeat([]byte{0xaa}, 100)
	return h, []object{
		{index: 0, data: full},
		{index: 2, data: partial},
		{index: 3, data: make([]byte, objSize)},
		{index: 7, hole: true},
		{index: 10, data: last},
	}
}

func TestRoundTrip(t *testing.T) {
	h, objs := sample()
	stream := encode(t, h, objs)
	d := decode(bytes.NewReader(stream))
	if d.err != io.EOF {
		t.Fatalf("decode: %v", d.err)
	}
	if d.h != h {
		t.Errorf("header %+v, want %+v", d.h, h)
	}
	if d.h.Full() || d.h.Objects() != 11 || d.h.Extent(10) != 100 || d.h.Extent(9) != objSize || d.h.Extent(11) != 0 {
		t.Errorf("header helpers: full %v, objects %d, extents %d %d %d", d.h.Full(), d.h.Objects(), d.h.Extent(10), d.h.Extent(9), d.h.Extent(11))
	}
	want := []backup.Record{
		{Kind: backup.KindData, Index: 0, Data: objs[0].data},
		{Kind: backup.KindData, Index: 2, Data: []byte("hello, object")},
		{Kind: backup.KindHole, Index: 3},
		{Kind: backup.KindHole, Index: 7},
		{Kind: backup.KindData, Index: 10, Data: objs[4].data},
	}
	if len(d.recs) != len(want) {
		t.Fatalf("%d records, want %d: %+v", len(d.recs), len(want), d.recs)
	}
	for i, r := range d.recs {
		w := want[i]
		if r.Kind != w.Kind || r.Index != w.Index || !bytes.Equal(r.Data, w.Data) {
			t.Errorf("record %d: kind %c object %d, %d bytes; want kind %c object %d, %d bytes", i, r.Kind, r.Index, len(r.Data), w.Kind, w.Index, len(w.Data))
		}
	}
	// A small reader buffer and one byte at a time give the same.
	if d2 := decode(iotest.OneByteReader(bytes.NewReader(stream))); d2.err != io.EOF || len(d2.recs) != len(want) {
		t.Errorf("one byte at a time: %d records, %v", len(d2.recs), d2.err)
	}
	// Next after the end keeps saying io.EOF.
	rd, _ := backup.NewReader(bytes.NewReader(stream))
	for range len(want) + 3 {
		if _, err := rd.Next(); err != nil && err != io.EOF {
			t.Fatalf("Next: %v", err)
		}
	}
	if n, b := rd.Counts(); n != uint64(len(want)) || b != objSize+13+100 {
		t.Errorf("Counts: %d records, %d bytes", n, b)
	}
}

func TestFullBackupAndEmpty(t *testing.T) {
	h := backup.Header{ObjectSize: objSize, Size: 0, To: monIdent}
	d := decode(bytes.NewReader(encode(t, h, nil)))
	if d.err != io.EOF || !d.h.Full() || len(d.recs) != 0 || d.h.Objects() != 0 {
		t.Fatalf("empty full backup: %+v", d)
	}
	// Object sizes of the real thing.
	h = backup.Header{ObjectSize: 4 << 20, Size: 1 << 30, To: monIdent}
	obj := bytes.Repeat([]byte{1}, 4<<20)
	d = decode(bytes.NewReader(encode(t, h, []object{{index: 0, data: obj}, {index: 255, data: obj}})))
	if d.err != io.EOF || len(d.recs) != 2 || !bytes.Equal(d.recs[1].Data, obj) {
		t.Fatalf("4 MiB objects: %d records, %v", len(d.recs), d.err)
	}
}

func TestWriterRefuses(t *testing.T) {
	for _, h := range []backup.Header{
		{ObjectSize: 1000, Size: 1, To: monIdent},
		{ObjectSize: 256, Size: 1, To: monIdent},
		{ObjectSize: objSize, Size: 1},
		{ObjectSize: objSize, Size: objSize<<32 + 1, To: monIdent},
		{ObjectSize: objSize, Size: 1, To: monIdent, From: backup.Ident{Name: "x"}},
		{ObjectSize: objSize, Size: 1, To: backup.Ident{Image: 1, Name: strings.Repeat("n", backup.MaxNameLen+1)}},
	} {
		if _, err := backup.NewWriter(io.Discard, h); err == nil {
			t.Errorf("NewWriter accepted %+v", h)
		}
	}
	w, err := backup.NewWriter(io.Discard, backup.Header{ObjectSize: objSize, Size: 3 * objSize, To: monIdent})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Data(0, make([]byte, objSize+1)); err == nil {
		t.Error("Data accepted more than an object")
	}
	w, _ = backup.NewWriter(io.Discard, backup.Header{ObjectSize: objSize, Size: 3 * objSize, To: monIdent})
	if err := w.Hole(1); err != nil {
		t.Fatal(err)
	}
	if err := w.Data(1, []byte{1}); err == nil {
		t.Error("Data accepted an object twice")
	}
	if err := w.Close(); err == nil {
		t.Error("Close after a failed write succeeded")
	}
	w, _ = backup.NewWriter(io.Discard, backup.Header{ObjectSize: objSize, Size: 3 * objSize, To: monIdent})
	if err := w.Hole(3); err == nil {
		t.Error("Hole accepted an object past the end")
	}
}

func TestIdent(t *testing.T) {
	a := tueIdent
	b := a
	b.Name = "renamed@tue"
	if !a.Same(b) {
		t.Error("names should not matter")
	}
	b.SnapTime++
	if a.Same(b) {
		t.Error("another snapshot time is another snapshot")
	}
	if s := a.String(); !strings.Contains(s, "disk1@tue") || !strings.Contains(s, "image 000005") {
		t.Errorf("String: %s", s)
	}
	if !(backup.Ident{}).IsZero() || a.IsZero() {
		t.Error("IsZero")
	}
}

// wantKind fails unless err wraps one of the sentinel errors.
func wantKind(t *testing.T, what string, err error, kinds ...error) {
	t.Helper()
	for _, k := range kinds {
		if errors.Is(err, k) {
			return
		}
	}
	t.Errorf("%s: error %v, want one of %v", what, err, kinds)
}

func TestTruncated(t *testing.T) {
	h, objs := sample()
	stream := encode(t, h, objs)
	for n := range len(stream) {
		d := decode(bytes.NewReader(stream[:n]))
		if n == 0 {
			wantKind(t, "empty", d.err, backup.ErrFormat)
			continue
		}
		wantKind(t, fmt.Sprintf("cut at %d of %d", n, len(stream)), d.err, backup.ErrTruncated)
	}
	d := decode(bytes.NewReader(append(bytes.Clone(stream), 0)))
	wantKind(t, "a byte after the trailer", d.err, backup.ErrCorrupt)
}

func TestCorrupt(t *testing.T) {
	h, objs := sample()
	stream := encode(t, h, objs)
	for i := range stream {
		for _, bit := range []byte{0x01, 0x80} {
			b := bytes.Clone(stream)
			b[i] ^= bit
			d := decode(bytes.NewReader(b))
			wantKind(t, fmt.Sprintf("bit %#x of byte %d flipped", bit, i), d.err,
				backup.ErrCorrupt, backup.ErrTruncated, backup.ErrFormat, backup.ErrVersion)
		}
	}
	// Some specific damage, with the error each must give.
	edit := func(f func([]byte) []byte) []byte { return f(bytes.Clone(stream)) }
	for _, c := range []struct {
		what string
		in   []byte
		want error
		msg  string
	}{
		{"not a backup", []byte("#!/bin/sh\necho hello\n"), backup.ErrFormat, ""},
		{"version 2", edit(func(b []byte) []byte { b[9] = 2; return b }), backup.ErrVersion, "version 2"},
		{"flags", edit(func(b []byte) []byte { b[11] = 1; return b }), backup.ErrVersion, "flags"},
		{"header byte", edit(func(b []byte) []byte { b[20]++; return b }), backup.ErrCorrupt, "header checksum"},
		{"payload byte", edit(func(b []byte) []byte { b[len(b)-trailerLen-10]++; return b }), backup.ErrCorrupt, "record 5 (object 10): checksum mismatch"},
		{"trailer byte", edit(func(b []byte) []byte { b[len(b)-10]++; return b }), backup.ErrCorrupt, "trailer checksum"},
		{"no trailer", stream[:len(stream)-trailerLen], backup.ErrTruncated, "before the trailer"},
		{"record dropped", dropRecord(t, stream, h, objs), backup.ErrCorrupt, "trailer counts 5 records"},
	} {
		d := decode(bytes.NewReader(c.in))
		wantKind(t, c.what, d.err, c.want)
		if d.err != nil && !strings.Contains(d.err.Error(), c.msg) {
			t.Errorf("%s: error %q does not say %q", c.what, d.err, c.msg)
		}
	}
}

const trailerLen = 29

// dropRecord returns stream without its third record but with the
// original trailer: every record intact, one missing.
func dropRecord(t *testing.T, stream []byte, h backup.Header, objs []object) []byte {
	t.Helper()
	without := encode(t, h, append(append([]object{}, objs[:2]...), objs[3:]...))
	return append(without[:len(without)-trailerLen], stream[len(stream)-trailerLen:]...)
}

// A reader must not allocate what a corrupt length claims before the bytes
// are there.
func TestHugeLengthSmallInput(t *testing.T) {
	h := backup.Header{ObjectSize: backup.MaxObjectSize, Size: backup.MaxObjectSize, To: monIdent}
	stream := encode(t, h, []object{{index: 0, data: []byte{1}}})
	hdrLen := len(stream) - trailerLen - (9 + 1 + 4)
	b := bytes.Clone(stream[:hdrLen+9])
	b[hdrLen+5], b[hdrLen+6], b[hdrLen+7], b[hdrLen+8] = 0x04, 0, 0, 0 // 64 MiB
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	d := decode(bytes.NewReader(b))
	runtime.ReadMemStats(&after)
	wantKind(t, "64 MiB claimed, none there", d.err, backup.ErrTruncated)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 8<<20 {
		t.Errorf("decoding a stream of %d bytes allocated %d bytes", len(b), grew)
	}
}

var update = flag.Bool("update", false, "rewrite testdata/fuzz/FuzzReader from the current encoder")

// corpus is the seed corpus of FuzzReader: intact streams and damaged ones.
func corpus(t testing.TB) map[string][]byte {
	h, objs := sample()
	inc := encode(t, h, objs)
	full := encode(t, backup.Header{ObjectSize: 512, Size: 3*512 + 1, To: monIdent},
		[]object{{index: 0, data: bytes.Repeat([]byte{'x'}, 512)}, {index: 3, data: []byte{'y'}}})
	crc := bytes.Clone(full)
	crc[len(crc)-trailerLen-5] ^= 1
	return map[string][]byte{
		"increment":     inc,
		"full":          full,
		"empty":         encode(t, backup.Header{ObjectSize: 512, Size: 0, To: monIdent}, nil),
		"truncated":     full[:len(full)-7],
		"bad-crc":       crc,
		"no-trailer":    full[:len(full)-trailerLen],
		"header-only":   full[:60],
		"trailing-junk": append(bytes.Clone(full), "junk"...),
	}
}

func corpusFile(b []byte) []byte {
	return fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", b)
}

// TestSeedCorpus keeps testdata/fuzz/FuzzReader what the current encoder
// writes (go test -run TestSeedCorpus -update rewrites it).
func TestSeedCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzReader")
	for name, b := range corpus(t) {
		path := filepath.Join(dir, name)
		if *update {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, corpusFile(b), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, corpusFile(b)) {
			t.Errorf("%s is missing or out of date (%v): run go test ./backup -run TestSeedCorpus -update", path, err)
		}
	}
}

// FuzzReader reads arbitrary bytes as a backup stream. It must not panic,
// must fail only with the package's errors, must give the same one byte at
// a time, and a stream it reads to the end must encode back to the same
// bytes.
func FuzzReader(f *testing.F) {
	for _, b := range corpus(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		d := decode(bytes.NewReader(in))
		if d.err != io.EOF {
			wantKind(t, "decode", d.err, backup.ErrCorrupt, backup.ErrTruncated, backup.ErrFormat, backup.ErrVersion)
		}
		d1 := decode(iotest.OneByteReader(bytes.NewReader(in)))
		if (d1.err == nil) != (d.err == nil) || d1.err.Error() != d.err.Error() || len(d1.recs) != len(d.recs) {
			t.Fatalf("one byte at a time: %d records, %v; whole: %d records, %v", len(d1.recs), d1.err, len(d.recs), d.err)
		}
		if d.err != io.EOF {
			return
		}
		var buf bytes.Buffer
		w, err := backup.NewWriter(&buf, d.h)
		if err != nil {
			t.Fatalf("a header that reads does not write: %v", err)
		}
		for _, r := range d.recs {
			if r.Kind == backup.KindHole {
				err = w.Hole(r.Index)
			} else {
				err = w.Data(r.Index, r.Data)
			}
			if err != nil {
				t.Fatalf("re-encode record %+v: %v", r, err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf.Bytes(), in) {
			t.Fatalf("re-encodes differently:\n got %x\nwant %x", buf.Bytes(), in)
		}
	})
}
