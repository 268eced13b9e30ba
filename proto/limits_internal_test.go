package proto

import (
	"testing"
	"time"
)

// TestReportLimiter: a report at most once per refuseReportEvery, counting
// the events held back since the last one.
func TestReportLimiter(t *testing.T) {
	t0 := time.Unix(1000, 0)
	steps := []struct {
		at     time.Duration
		report bool
		n      int
	}{
		{0, true, 1},
		{10 * time.Millisecond, false, 0},
		{500 * time.Millisecond, false, 0},
		{999 * time.Millisecond, false, 0},
		{time.Second, true, 4},
		{time.Second + 1, false, 0},
		{5 * time.Second, true, 2},
		{7 * time.Second, true, 1},
	}
	var l reportLimiter
	for i, s := range steps {
		n, report := l.event(t0.Add(s.at))
		if report != s.report || n != s.n {
			t.Errorf("event %d at +%v: report %v of %d, want %v of %d", i, s.at, report, n, s.report, s.n)
		}
	}
}

// TestReplyRoom: reads have room for what they ask, sparse reads for a
// SparseObject header more, the ops whose answers the server sizes for a
// whole frame, the rest for a short answer.
func TestReplyRoom(t *testing.T) {
	sparse := int64(SparseHeaderSize(MaxExtents))
	tests := []struct {
		h    Header
		want int64
	}{
		{Header{Op: OpVDIRead, Length: 1 << 20}, 1 << 20},
		{Header{Op: OpVDIRead}, minReply},
		{Header{Op: OpReadObj, Length: 4 << 20}, 4 << 20},
		{Header{Op: OpReadObj, Flags: FlagSparse, Length: 4 << 20}, 4<<20 + sparse},
		{Header{Op: OpReadObj, Flags: FlagSparse}, sparse},
		{Header{Op: OpAdmin}, MaxPayload},
		{Header{Op: OpListObjs}, MaxPayload},
		{Header{Op: OpStatObjs}, MaxPayload},
		{Header{Op: OpInventory}, MaxPayload},
		{Header{Op: OpVDIAllocMap}, MaxPayload},
		{Header{Op: OpVDIWrite, DLen: 4 << 20}, minReply},
		{Header{Op: OpApply, Length: 1 << 20}, minReply},
	}
	for _, tt := range tests {
		if got := replyRoom(&tt.h); got != tt.want {
			t.Errorf("replyRoom(%v, flags %#x, length %d) = %d, want %d", tt.h.Op, tt.h.Flags, tt.h.Length, got, tt.want)
		}
	}
}
