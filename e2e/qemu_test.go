package e2e

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
)

// qemuIO runs qemu-io with the given format, cache mode and commands, and
// fails the test unless it exits 0 and reports no failure (qemu-io prints
// "Pattern verification failed" for a read -P that does not match).
func qemuIO(t *testing.T, format, cache, path string, cmds ...string) string {
	t.Helper()
	args := []string{"-f", format, "-t", cache}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	args = append(args, path)
	r := runCmd(cmdTimeout, nil, nil, "qemu-io", args...)
	out := r.Stdout + r.Stderr
	if r.Code != 0 || strings.Contains(out, "failed") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io (cache=%s) on %s: %v", cache, path, r)
	}
	// Every read and write must have done its I/O.
	io := 0
	for _, c := range cmds {
		if strings.HasPrefix(c, "read ") || strings.HasPrefix(c, "write ") {
			io++
		}
	}
	if n := strings.Count(out, "ops;"); n != io {
		t.Fatalf("qemu-io ran %d of %d reads and writes: %v", n, io, r)
	}
	return out
}

// TestQemuImg: qemu-img and qemu-io use VDIs as raw images, with the host
// page cache (writeback) and with O_DIRECT (none); a qcow2 image inside a
// VDI checks clean; qemu-img convert copies a VDI out and back in.
func TestQemuImg(t *testing.T) {
	parallel(t)
	requireEnv(t, "qemu-img", "qemu-io")
	c := NewCluster(t, 3, 3)
	m := c.Mount()

	// Create and inspect a raw image.
	q := m.VDI("q")
	run(t, cmdTimeout, "qemu-img", "create", "-f", "raw", q, "1G")
	var info struct {
		Format      string `json:"format"`
		VirtualSize int64  `json:"virtual-size"`
	}
	r := run(t, cmdTimeout, "qemu-img", "info", "--output=json", q)
	if err := json.Unmarshal([]byte(r.Stdout), &info); err != nil {
		t.Fatalf("qemu-img info: %v\n%s", err, r.Stdout)
	}
	if info.Format != "raw" || info.VirtualSize != 1<<30 {
		t.Fatalf("qemu-img info says format %q, virtual size %d; want raw, %d", info.Format, info.VirtualSize, 1<<30)
	}
	if v := c.VDI("q"); v.Size != 1<<30 {
		t.Fatalf("sheep vdi list says q is %d bytes, want %d", v.Size, 1<<30)
	}

	// Write with one cache mode, read back with both: cache=none reads
	// bypass the page cache, so they see what reached the cluster.
	for _, mode := range []struct{ name, cache, alt string }{
		{"q", "writeback", "none"},
		{"qn", "none", "writeback"},
	} {
		p := m.VDI(mode.name)
		if mode.name != "q" {
			run(t, cmdTimeout, "qemu-img", "create", "-f", "raw", p, "1G")
		}
		qemuIO(t, "raw", mode.cache, p, "write -P 0xab 0 4M", "write -P 0xcd 10M 1M", "flush")
		for _, cache := range []string{mode.cache, mode.alt} {
			qemuIO(t, "raw", cache, p, "read -P 0xab 0 4M", "read -P 0xcd 10M 1M", "read -P 0 4M 6M", "read -P 0 11M 1M")
		}
		dropCaches(t)
		qemuIO(t, "raw", "writeback", p, "read -P 0xab 0 4M", "read -P 0xcd 10M 1M", "read -P 0 4M 6M")
	}

	// A read that expects the wrong pattern must fail: qemuIO's check works.
	if r := runCmd(cmdTimeout, nil, nil, "qemu-io", "-f", "raw", "-t", "none", "-c", "read -P 0x77 0 4k", q); !strings.Contains(r.Stdout+r.Stderr, "Pattern verification failed") {
		t.Fatalf("qemu-io did not notice a wrong pattern: %v", r)
	}

	// qcow2 inside a VDI (a subtest: the conversions below do not
	// depend on it).
	t.Run("qcow2", func(t *testing.T) { qcow2InVDI(t, m) })

	// Convert out of the cluster and back into a new VDI.
	t.Run("convert", func(t *testing.T) { convertInAndOut(t, m, q) })
}

// qcow2InVDI creates a qcow2 image in a VDI, writes to it and checks it.
func qcow2InVDI(t *testing.T, m *Mount) {
	var info struct {
		Format      string `json:"format"`
		VirtualSize int64  `json:"virtual-size"`
	}
	q2 := m.VDI("q2")
	run(t, cmdTimeout, "qemu-img", "create", "-f", "qcow2", q2, "1G")
	qemuIO(t, "qcow2", "writeback", q2, "write -P 0x11 0 8M", "write -P 0x22 512M 1M", "write -P 0x33 1020M 4M", "flush")
	qemuIO(t, "qcow2", "none", q2, "read -P 0x11 0 8M", "read -P 0x22 512M 1M", "read -P 0x33 1020M 4M", "read -P 0 8M 1M")
	r := run(t, cmdTimeout, "qemu-img", "check", "-f", "qcow2", q2)
	if !strings.Contains(r.Stdout, "No errors were found") {
		t.Fatalf("qemu-img check: %v", r)
	}
	r = run(t, cmdTimeout, "qemu-img", "info", "--output=json", q2)
	if err := json.Unmarshal([]byte(r.Stdout), &info); err != nil || info.Format != "qcow2" || info.VirtualSize != 1<<30 {
		t.Fatalf("qemu-img info of the qcow2 image: %+v, %v\n%s", info, err, r.Stdout)
	}
}

// convertInAndOut copies VDI q (written by TestQemuImg) to a local file
// with qemu-img convert, and back into a new VDI.
func convertInAndOut(t *testing.T, m *Mount, q string) {
	local := filepath.Join(t.TempDir(), "q.raw")
	run(t, cmdTimeout, "qemu-img", "convert", "-f", "raw", "-O", "raw", q, local)
	qemuIO(t, "raw", "writeback", local, "read -P 0xab 0 4M", "read -P 0xcd 10M 1M", "read -P 0 4M 6M")
	q3 := m.VDI("q3")
	run(t, cmdTimeout, "qemu-img", "convert", "-f", "raw", "-O", "raw", local, q3)
	if st := statFile(t, q3); st.Size != 1<<30 {
		t.Fatalf("converted VDI q3 is %d bytes, want %d", st.Size, 1<<30)
	}
	dropCaches(t)
	sumQ, sumLocal, sumQ3 := sha256File(t, q), sha256File(t, local), sha256File(t, q3)
	if sumQ != sumLocal || sumQ3 != sumLocal {
		t.Fatalf("SHA-256 of q %s, of its local copy %s, of the copy back in q3 %s: want all equal", sumQ, sumLocal, sumQ3)
	}
	qemuIO(t, "raw", "none", q3, "read -P 0xab 0 4M", "read -P 0xcd 10M 1M", "read -P 0 4M 6M")
	r := run(t, cmdTimeout, "qemu-img", "compare", "-f", "raw", "-F", "raw", q, q3)
	if !strings.Contains(r.Stdout, "identical") {
		t.Fatalf("qemu-img compare q q3: %v", r)
	}
}
