package proto_test

import (
	"bytes"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/proto"
)

// Regression tests for bugs found in review; each names what it guards.

// goroutineIn reports whether some goroutine is blocked in state (as
// runtime.Stack prints it) with every one of frames in its stack.
func goroutineIn(state string, frames ...string) bool {
	buf := make([]byte, 1<<20)
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		head, _, _ := strings.Cut(g, "\n")
		if !strings.Contains(head, "["+state) {
			continue
		}
		all := true
		for _, f := range frames {
			all = all && strings.Contains(g, f)
		}
		if all {
			return true
		}
	}
	return false
}

// waitFor polls cond, yielding, until it holds; the deadline only guards
// against a hang.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		runtime.Gosched()
	}
}

// Was a bug: an error crosses the wire as its whole Error() text (which ends with
// the kind's name) and Msg.Err() appends the kind again, so every remote
// error reads "VDI "a" is locked: busy: busy".
func TestRegressErrorMessageRepeatsKind(t *testing.T) {
	orig := errs.E(errs.Busy, "VDI %q is locked", "a")
	resp := proto.ErrorResponse(&proto.Msg{Header: proto.Header{Op: proto.OpVDIRead}}, orig)
	var back proto.Msg
	if err := proto.ReadMsg(bytes.NewReader(encode(resp)), &back, nil, nil); err != nil {
		t.Fatal(err)
	}
	if got, want := back.Err().Error(), orig.Error(); got != want {
		t.Errorf("remote error reads %q, want %q", got, want)
	}
}
