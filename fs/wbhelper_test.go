package fs

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// A test binary started with this variable set runs as a write-back
// helper for the directory it names.
const wbHelperEnv = "SHEEPFS_TEST_WRITE_BACK_HELPER"

// With this one set too, the helper dies before it reads a request.
const wbHelperDieEnv = "SHEEPFS_TEST_WRITE_BACK_HELPER_DIES"

func init() {
	if dir := os.Getenv(wbHelperEnv); dir != "" {
		if os.Getenv(wbHelperDieEnv) != "" {
			os.Exit(3)
		}
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
// its own id and errno, for many in flight at once (a write-back from an
// offset no file has fails with EINVAL, as sync_file_range does); a file
// that is not there is no error (its writers' data is theirs to flush); a
// size fix truncates; and once the helper is gone, calls say so and its
// pid is no longer taken for the helper's.
func TestWriteBackHelperAnswers(t *testing.T) {
	dir := helperDir(t)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), wbHelperEnv+"="+dir)
	cmd.Stderr = os.Stderr
	h, err := startWBHelper(cmd)
	if err != nil {
		t.Fatal(err)
	}
	if !h.owns(uint32(h.cmd.Process.Pid)) {
		t.Fatalf("the helper's main thread is not taken for the helper's")
	}
	if h.owns(uint32(os.Getpid())) {
		t.Fatalf("this process is taken for the helper")
	}
	type want struct {
		op    byte
		name  string
		off   uint64
		errno syscall.Errno
	}
	cases := []want{
		{wbOpRange, "a", 512, 0},
		{wbOpFsync, "a", 0, 0},
		{wbOpRange, "missing", 0, 0},
		{wbOpRange, "a", 1 << 63, syscall.EINVAL},
	}
	errc := make(chan error, 40)
	for i := 0; i < 40; i++ {
		go func() {
			w := cases[i%len(cases)]
			errno, err := h.call(w.op, w.name, w.off)
			if err == nil && errno != w.errno {
				err = fmt.Errorf("op %d on %s from %d: errno %v, want %v", w.op, w.name, w.off, errno, w.errno)
			}
			errc <- err
		}()
	}
	for i := 0; i < 40; i++ {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if errno, err := h.call(wbOpFixSize, "a", 4096); err != nil || errno != 0 {
		t.Fatalf("size fix: %v, %v", errno, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "vdi", "a")); err != nil || st.Size() != 4096 {
		t.Fatalf("after a size fix to 4096: %v, %v", st.Size(), err)
	}
	if errno, err := h.call(wbOpSetSize, "a", 8192); err != nil || errno != 0 {
		t.Fatalf("size set: %v, %v", errno, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "vdi", "a")); err != nil || st.Size() != 8192 {
		t.Fatalf("after a size set to 8192: %v, %v", st.Size(), err)
	}
	if errno, err := h.call(wbOpRange, strings.Repeat("x", wbMaxName+1), 0); err != nil || errno != syscall.ENAMETOOLONG {
		t.Fatalf("a name longer than a request carries: %v, %v; want ENAMETOOLONG", errno, err)
	}
	h.in.Close() // the helper ends with its input
	<-h.done
	if _, err := h.call(wbOpRange, "a", 0); err != errHelperGone {
		t.Fatalf("a call after the helper ended: %v, want errHelperGone", err)
	}
	if h.owns(uint32(h.cmd.Process.Pid)) {
		t.Fatalf("the pid of a helper that ended is still taken for the helper's")
	}
}

// TestOwnWriteBackHelperDies: a helper that dies before it answers is
// replaced once, and the new one does the write-back; when that one dies
// too, or none can be started, this process does it itself.
func TestOwnWriteBackHelperDies(t *testing.T) {
	withFile := helperDir(t) // vdi/a is here
	empty := t.TempDir()     // and not here
	for _, tc := range []struct {
		name      string
		mount     string // FS.dir: where a write-back in this process looks
		dies      int32  // how many helpers die (of at most 2 started)
		noStart   bool   // no helper can be started
		wantStart int32
	}{
		// The mount has no vdi/a: only the helper, which looks in
		// withFile, finds the file and fails the offset with EINVAL.
		{"the second helper serves", empty, 1, false, 2},
		{"both die: this process serves", withFile, 2, false, 2},
		{"none starts: this process serves", withFile, 0, true, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var starts atomic.Int32
			f := &FS{dir: tc.mount, helperCmd: func(string) *exec.Cmd {
				n := starts.Add(1)
				if tc.noStart {
					return exec.Command(filepath.Join(empty, "no-such-helper"))
				}
				cmd := exec.Command(os.Args[0])
				cmd.Env = append(os.Environ(), wbHelperEnv+"="+withFile)
				if n <= tc.dies {
					cmd.Env = append(cmd.Env, wbHelperDieEnv+"=1")
				}
				cmd.Stderr = os.Stderr
				return cmd
			}}
			t.Cleanup(func() {
				if h := f.wbh.Load(); h != nil {
					h.in.Close()
					<-h.done
				}
			})
			if errno := f.ownWriteBack(wbOpRange, "a", 1<<63); errno != syscall.EINVAL {
				t.Fatalf("write-back from an offset no file has: %v, want EINVAL", errno)
			}
			if n := starts.Load(); n != tc.wantStart {
				t.Fatalf("%d helpers started, want %d", n, tc.wantStart)
			}
			f.own.mu.Lock()
			left := len(f.own.ids)
			f.own.mu.Unlock()
			if left != 0 {
				t.Fatalf("%d threads still marked as doing a write-back", left)
			}
		})
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
		{"op 5", wbRequest(1, wbOpSetSize+1, 0, "a")},
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
		var out lockedBuffer
		_ = RunWriteBackHelper(dir, bytes.NewReader(in), &out)
		// Its answers may still be on their way (none of these
		// requests waits for a server).
		time.Sleep(time.Millisecond)
		if n := out.Len(); n%8 != 0 || n > len(in)/(wbReqHead+1)*8 {
			t.Fatalf("%d bytes of answers to %d bytes of requests", n, len(in))
		}
	})
}

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}
