package e2e

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const (
	miB     = int64(1) << 20
	giB     = int64(1) << 30
	objSize = 4 * miB
)

// region is a piece of random data written at an offset.
type region struct {
	off  int64
	data []byte
}

// TestSparseSeekAndCp: a thin VDI reports its data regions through
// SEEK_DATA/SEEK_HOLE at object granularity, its allocation through
// st_blocks (du), copies sparsely with cp --sparse=always, frees space on
// fallocate --punch-hole, zeros on --zero-range, and refuses plain
// preallocation without changing anything.
func TestSparseSeekAndCp(t *testing.T) {
	parallel(t)
	requireEnv(t, "python3", "fallocate", "cp", "cmp")
	c := NewCluster(t, 3, 3)
	m := c.Mount()
	vdi := m.VDI("s")
	const size = 10 * giB
	run(t, quickTimeout, "truncate", "-s", "10G", vdi)
	if regs := dataRegions(t, vdi); len(regs) != 0 {
		t.Fatalf("a new VDI has data regions %v, want none", regs)
	}
	if du := duKiB(t, vdi); du != 0 {
		t.Errorf("du of a new 10 GiB VDI is %d KiB, want 0", du)
	}

	tmp := t.TempDir()
	regions := []region{
		{off: 0, data: randomBytes(t, miB)},
		{off: 3 * giB, data: randomBytes(t, 4*miB)},
		{off: 9*giB + 5*miB, data: randomBytes(t, miB)},
	}
	for i, r := range regions {
		src := filepath.Join(tmp, fmt.Sprintf("region%d", i))
		if err := os.WriteFile(src, r.data, 0o644); err != nil {
			t.Fatal(err)
		}
		shell(t, cmdTimeout, fmt.Sprintf("dd if=%s of=%s bs=1M seek=%d conv=notrunc,fsync status=none",
			q(src), q(vdi), r.off/miB))
	}
	// The objects (4 MiB aligned) that hold the writes.
	want := [][2]int64{{0, objSize}, {3 * giB, 3*giB + objSize}, {9*giB + 4*miB, 9*giB + 8*miB}}
	if got := dataRegions(t, vdi); !reflect.DeepEqual(got, want) {
		t.Errorf("SEEK_DATA/SEEK_HOLE regions %v, want %v", got, want)
	}
	if st := statFile(t, vdi); st.Size != size {
		t.Fatalf("size after writing is %d, want %d", st.Size, size)
	}
	if du := duKiB(t, vdi); du != 3*objSize/1024 {
		t.Errorf("du right after writing 3 objects: %d KiB, want %d", du, 3*objSize/1024)
	}
	dropCaches(t) // a fresh lookup of the file
	if du := duKiB(t, vdi); du != 3*objSize/1024 {
		t.Errorf("du after dropping caches, 3 objects written: %d KiB, want %d", du, 3*objSize/1024)
	}
	for _, r := range regions {
		if got := sha256Range(t, vdi, r.off/miB, int64(len(r.data))/miB); got != sha256Bytes(r.data) {
			t.Errorf("%d MiB at %d read back wrong", len(r.data)>>20, r.off)
		}
	}

	// cp --sparse=always: small on disk, same contents.
	local := filepath.Join(tmp, "s.copy")
	run(t, cmdTimeout, "cp", "--sparse=always", vdi, local)
	if du := duKiB(t, local); du >= 64<<10 {
		t.Errorf("cp --sparse=always made a copy of %d KiB allocated, want < 64 MiB", du)
	}
	checkLocalImage(t, local, size, regions)
	// Compare the copy with the VDI where the data is, and around it (a
	// full cmp of 10 GiB through FUSE takes too long for the suite).
	for _, w := range append(want, [2]int64{2 * giB, 2*giB + 64*miB}, [2]int64{size - 64*miB, size}) {
		r := runCmd(cmdTimeout, nil, nil, "cmp", "-i", fmt.Sprint(w[0]), "-n", fmt.Sprint(w[1]-w[0]), vdi, local)
		if r.Code != 0 {
			t.Errorf("cmp of [%d, %d) between the VDI and its sparse copy: %v", w[0], w[1], r)
		}
	}

	// Punch the whole object at 3 GiB: zeros, and the space is freed.
	run(t, quickTimeout, "fallocate", "--punch-hole", "--offset", fmt.Sprint(3*giB), "--length", fmt.Sprint(objSize), vdi)
	dropCaches(t)
	readZeros(t, vdi, 3*giB/miB, objSize/miB)
	want = [][2]int64{{0, objSize}, {9*giB + 4*miB, 9*giB + 8*miB}}
	if got := dataRegions(t, vdi); !reflect.DeepEqual(got, want) {
		t.Errorf("after punching the object at 3 GiB, data regions %v, want %v", got, want)
	}
	if du := duKiB(t, vdi); du != 2*objSize/1024 {
		t.Errorf("du after punching one of 3 objects: %d KiB, want %d", du, 2*objSize/1024)
	}
	if st := statFile(t, vdi); st.Size != size {
		t.Errorf("punch-hole changed the size to %d", st.Size)
	}

	// Punch part of an object: that part reads zeros, the rest is kept.
	last := regions[2]
	run(t, quickTimeout, "fallocate", "--punch-hole", "--offset", fmt.Sprint(last.off), "--length", fmt.Sprint(512<<10), vdi)
	dropCaches(t)
	wantLast := append(make([]byte, 512<<10), last.data[512<<10:]...)
	if got := sha256Range(t, vdi, last.off/miB, 1); got != sha256Bytes(wantLast) {
		t.Errorf("after punching the first 512 KiB of the MiB at %d, it does not read as zeros + the rest", last.off)
	}

	// Zero range: reads zeros, size unchanged.
	run(t, quickTimeout, "fallocate", "--zero-range", "--offset", "0", "--length", fmt.Sprint(miB), vdi)
	dropCaches(t)
	readZeros(t, vdi, 0, 4)
	if st := statFile(t, vdi); st.Size != size {
		t.Errorf("zero-range changed the size to %d", st.Size)
	}

	// Plain fallocate (mode 0) is refused and changes nothing: neither
	// inside the VDI (no allocation) nor past its end (no growth).
	before := dataRegions(t, vdi)
	sumBefore := sha256Range(t, vdi, (9*giB+4*miB)/miB, 4)
	for _, f := range [][2]int64{{1 * giB, 8 * miB}, {size, 8 * miB}} {
		r := runCmd(quickTimeout, nil, nil, "fallocate", "--offset", fmt.Sprint(f[0]), "--length", fmt.Sprint(f[1]), vdi)
		if r.Code == 0 || !strings.Contains(r.Stderr, "Operation not supported") {
			t.Errorf("plain fallocate of [%d, +%d): want failure with \"Operation not supported\", got %v", f[0], f[1], r)
		}
	}
	dropCaches(t)
	if st := statFile(t, vdi); st.Size != size {
		t.Errorf("refused fallocate changed the size to %d", st.Size)
	}
	if got := dataRegions(t, vdi); !reflect.DeepEqual(got, before) {
		t.Errorf("refused fallocate changed the data regions from %v to %v", before, got)
	}
	if got := sha256Range(t, vdi, (9*giB+4*miB)/miB, 4); got != sumBefore {
		t.Errorf("refused fallocate changed the data")
	}
}

func randomBytes(t testing.TB, n int64) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "r")
	writeRandomFile(t, p, n)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkLocalImage checks that a local file (not on the mount) has the
// given size and holds regions and zeros everywhere else.
func checkLocalImage(t *testing.T, path string, size int64, regions []region) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() != size {
		t.Errorf("%s is %d bytes, want %d", path, fi.Size(), size)
	}
	buf := make([]byte, 4*miB)
	zero := make([]byte, len(buf))
	for off := int64(0); off < fi.Size(); off += int64(len(buf)) {
		n, err := f.ReadAt(buf, off)
		if err != nil && err != io.EOF {
			t.Fatal(err)
		}
		want := zero[:n]
		for _, r := range regions {
			if r.off < off+int64(n) && r.off+int64(len(r.data)) > off {
				w := make([]byte, n)
				for i := range w {
					if p := off + int64(i) - r.off; p >= 0 && p < int64(len(r.data)) {
						w[i] = r.data[p]
					}
				}
				want = w
			}
		}
		if !bytes.Equal(buf[:n], want) {
			t.Errorf("%s differs from what was written in [%d, %d)", path, off, off+int64(n))
			return
		}
	}
}
