package fs

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A test binary started with this variable set runs as a write-back
// helper for the directory it names.
const wbHelperEnv = "SHEEPFS_TEST_WRITE_BACK_HELPER"

func init() {
	if dir := os.Getenv(wbHelperEnv); dir != "" {
		if err := RunWriteBackHelper(dir, os.Stdin, os.Stdout); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(2)
		}
		os.Exit(0)
	}
}

// helperDir makes a directory with vdi/a, a plain file with a write in
// its page cache.
func helperDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "vdi"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "vdi", "a"), bytes.Repeat([]byte("a"), 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestWriteBackHelperAnswers: a helper process answers each request with
// its id, for several in flight at once, and a file that is not there is
// no error (its writers' data is theirs to flush).
func TestWriteBackHelperAnswers(t *testing.T) {
	dir := helperDir(t)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), wbHelperEnv+"="+dir)
	cmd.Stderr = os.Stderr
	h, err := startWBHelper(cmd)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 30)
	for i := 0; i < 30; i++ {
		go func() {
			name, op := "a", byte(wbOpRange)
			if i%3 == 1 {
				op = wbOpFsync
			}
			if i%3 == 2 {
				name = "missing"
			}
			errno, err := h.call(op, name, uint64(i)*512)
			if err == nil && errno != 0 {
				err = errno
			}
			errc <- err
		}()
	}
	for i := 0; i < 30; i++ {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if errno, err := h.call(wbOpRange, strings.Repeat("x", wbMaxName+1), 0); err != nil || errno != syscall.ENAMETOOLONG {
		t.Fatalf("a name longer than a request carries: %v, %v; want ENAMETOOLONG", errno, err)
	}
	h.in.Close() // the helper ends with its input
	<-h.done
	if _, err := h.call(wbOpRange, "a", 0); err != errHelperGone {
		t.Fatalf("a call after the helper ended: %v, want errHelperGone", err)
	}
}

// TestWriteBackHelperRefuses: a request the helper cannot parse, or that
// names anything but a file directly in vdi/, ends it with an error and
// is not acted on.
func TestWriteBackHelperRefuses(t *testing.T) {
	dir := helperDir(t)
	long := make([]byte, wbReqHead)
	long[4] = wbOpRange
	binary.LittleEndian.PutUint16(long[13:], wbMaxName+1)
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"unknown op", wbRequest(1, 9, 0, "a")},
		{"op 0", wbRequest(1, 0, 0, "a")},
		{"empty name", wbRequest(1, wbOpRange, 0, "")},
		{"name too long", long},
		{"parent", wbRequest(1, wbOpRange, 0, "..")},
		{"dot", wbRequest(1, wbOpRange, 0, ".")},
		{"path", wbRequest(1, wbOpRange, 0, "../vdi/a")},
		{"offset", wbRequest(1, wbOpRange, 1<<63, "a")},
		{"short head", wbRequest(1, wbOpRange, 0, "a")[:7]},
		{"short name", wbRequest(1, wbOpRange, 0, "abc")[:wbReqHead+1]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := RunWriteBackHelper(dir, bytes.NewReader(tc.in), &out); err == nil {
				t.Fatalf("accepted")
			}
			if out.Len() != 0 {
				t.Fatalf("answered %x", out.Bytes())
			}
		})
	}
	var out bytes.Buffer
	if err := RunWriteBackHelper(dir, bytes.NewReader(nil), &out); err != nil {
		t.Fatalf("no requests at all: %v", err)
	}
}

// FuzzWriteBackHelper: no input makes the helper panic or answer a
// request it did not read whole.
func FuzzWriteBackHelper(f *testing.F) {
	f.Add(wbRequest(1, wbOpRange, 0, "a"))
	f.Add(append(wbRequest(1, wbOpFsync, 0, "a"), wbRequest(2, wbOpRange, 4096, "b")...))
	f.Add(wbRequest(7, 3, 0, "../a"))
	dir := f.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "vdi"), 0o755); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		pr, pw := io.Pipe()
		go func() {
			buf := make([]byte, 8)
			for {
				if _, err := io.ReadFull(pr, buf); err != nil {
					return
				}
			}
		}()
		_ = RunWriteBackHelper(dir, bytes.NewReader(in), pw)
		pw.Close()
	})
}
