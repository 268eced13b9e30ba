package fs

import (
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/errs"
)

// TestErrnoLogsCause: the cause of an errno goes to the log, one line per
// kind every logEvery (then with a count of those left out), and the
// errors programs cause on purpose only at debug level.
func TestErrnoLogsCause(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := os.Stderr
	os.Stderr = w
	defer func() { os.Stderr = stderr }()
	SetLogLevel(LogInfo)
	defer SetLogLevel(LogInfo)

	if e := toErrno(errs.E(errs.IO, "read of object 12 failed on every copy")); e != syscall.EIO {
		t.Errorf("errno %v, want EIO", e)
	}
	toErrno(errs.E(errs.IO, "again"))
	toErrno(errs.E(errs.NotFound, "no VDI x")) // debug only
	logged.Lock()
	logged.at["errno "+errs.IO.String()] = time.Now().Add(-logEvery)
	logged.Unlock()
	toErrno(errs.E(errs.IO, "third"))
	w.Close()
	out, _ := io.ReadAll(r)
	want := "sheepfs: EIO to the kernel: read of object 12 failed on every copy: I/O error\n" +
		"sheepfs: EIO to the kernel: third: I/O error (and 1 more like it since the last)\n"
	if string(out) != want {
		t.Errorf("log:\n%s\nwant:\n%s", out, want)
	}
	if strings.Contains(string(out), "no VDI x") {
		t.Errorf("ENOENT logged at info level")
	}
}
