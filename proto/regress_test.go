package proto_test

import (
	"bytes"
	"testing"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/proto"
)

// Regression tests for bugs found in review; each names what it guards.

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
