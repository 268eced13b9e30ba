package proto_test

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
)

var (
	seedFlag   = flag.Uint64("seed", 0, "seed for randomised tests (0: from $PROTO_SEED, else the clock)")
	updateFlag = flag.Bool("update", false, "rewrite testdata golden files")
)

// allOps returns every known request op.
func allOps() []proto.Op {
	var ops []proto.Op
	for op := range proto.Op(proto.RespBit) {
		if op.Valid() {
			ops = append(ops, op)
		}
	}
	return ops
}

// sampleMsgs returns a valid request and response of every op, plus edge
// cases: an error response, every flag, extreme header words and the
// largest allowed Length.
func sampleMsgs() []*proto.Msg {
	var ms []*proto.Msg
	for i, op := range allOps() {
		req := &proto.Msg{Header: proto.Header{Op: op, ReqID: uint64(i + 1), Epoch: ids.Epoch(7),
			ID: uint64(ids.DataObject(3, uint32(i))), Offset: uint64(i) * 4096, Length: 4096}, Aux: uint64(i)}
		switch op {
		case proto.OpWriteObj, proto.OpVDIWrite:
			req.Data = bytes.Repeat([]byte{byte(i)}, 64)
			req.Flags = proto.FlagCreate | proto.FlagSync
			req.Length = 0
		case proto.OpVDIDiscard:
			req.Flags = proto.FlagZeroKeep
		case proto.OpAdmin:
			req.Data = []byte(`{"cmd":"vdi.create","name":"a","size":4194304}`)
			req.Length = 0
		case proto.OpApply:
			req.Data = []byte(`{"op":"vdi.lock","name":"a","mount":"m","node":"n1"}`)
			req.Length = 0
		}
		resp := &proto.Msg{Header: proto.Header{Op: op | proto.RespBit, ReqID: req.ReqID, Epoch: req.Epoch, ID: req.ID},
			Aux: 99, Data: []byte("answer")}
		ms = append(ms, req, resp)
	}
	ms = append(ms,
		proto.ErrorResponse(&proto.Msg{Header: proto.Header{Op: proto.OpVDIRead, ReqID: 5}},
			errs.E(errs.Busy, "VDI %q is locked", "a")),
		&proto.Msg{Header: proto.Header{Op: proto.OpStatObj | proto.RespBit, Kind: errs.Closed,
			Flags: proto.FlagError | proto.FlagCreate | proto.FlagSync | proto.FlagZeroKeep,
			ReqID: ^uint64(0), Epoch: ids.Epoch(^uint64(0)), ID: ^uint64(0), Offset: ^uint64(0),
			Length: proto.MaxPayload}, Aux: ^uint64(0)},
		&proto.Msg{Header: proto.Header{Op: proto.OpSyncObjs}},
	)
	return ms
}

func encode(m *proto.Msg) []byte { return proto.AppendMsg(nil, m) }

// validHeader is the encoding of an ordinary request header.
func validHeader() []byte {
	b := make([]byte, proto.HeaderSize)
	proto.PutHeader(b, &proto.Header{Op: proto.OpVDIRead, ReqID: 1, ID: 2, Offset: 4096, Length: 512})
	return b
}

func TestDecodeHeaderErrors(t *testing.T) {
	tests := []struct {
		name string
		edit func(b []byte) []byte
		kind errs.Kind // Other: no error
	}{
		{"valid", func(b []byte) []byte { return b }, errs.Other},
		{"short", func(b []byte) []byte { return b[:proto.HeaderSize-1] }, errs.Invalid},
		{"empty", func(b []byte) []byte { return nil }, errs.Invalid},
		{"bad magic", func(b []byte) []byte { b[0] = 'X'; return b }, errs.Invalid},
		{"magic byte-swapped", func(b []byte) []byte { b[0], b[1] = b[1], b[0]; return b }, errs.Invalid},
		{"op zero", func(b []byte) []byte { b[2] = 0; return b }, errs.Invalid},
		{"op after OpCheckObj", func(b []byte) []byte { b[2] = byte(proto.OpCheckObj) + 1; return b }, errs.Invalid},
		{"op before OpVDIRead", func(b []byte) []byte { b[2] = byte(proto.OpVDIRead) - 1; return b }, errs.Invalid},
		{"op after OpVDILease", func(b []byte) []byte { b[2] = byte(proto.OpVDILease) + 1; return b }, errs.Invalid},
		{"response of unknown op", func(b []byte) []byte { b[2] = byte(proto.RespBit | 0x7f); return b }, errs.Invalid},
		{"bare RespBit", func(b []byte) []byte { b[2] = byte(proto.RespBit); return b }, errs.Invalid},
		{"response op", func(b []byte) []byte { b[2] = byte(proto.OpApply | proto.RespBit); return b }, errs.Other},
		{"unknown kind", func(b []byte) []byte { b[3] = byte(errs.Lost) + 1; return b }, errs.Invalid},
		{"kind 255", func(b []byte) []byte { b[3] = 255; return b }, errs.Invalid},
		{"last kind", func(b []byte) []byte { b[3] = byte(errs.Lost); return b }, errs.Other},
		{"unknown flag", func(b []byte) []byte { binary.BigEndian.PutUint16(b[4:], uint16(proto.FlagSparse)<<1); return b }, errs.Invalid},
		{"high flag", func(b []byte) []byte { binary.BigEndian.PutUint16(b[4:], 0x8000); return b }, errs.Invalid},
		{"all known flags", func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[4:], uint16(proto.FlagError|proto.FlagCreate|proto.FlagSync|proto.FlagZeroKeep|proto.FlagCurrent))
			return b
		}, errs.Other},
		{"reserved low bit", func(b []byte) []byte { b[7] = 1; return b }, errs.Invalid},
		{"reserved high bit", func(b []byte) []byte { b[6] = 0x80; return b }, errs.Invalid},
		{"dlen MaxPayload", func(b []byte) []byte { binary.BigEndian.PutUint32(b[44:], proto.MaxPayload); return b }, errs.Other},
		{"dlen > MaxPayload", func(b []byte) []byte { binary.BigEndian.PutUint32(b[44:], proto.MaxPayload+1); return b }, errs.TooLarge},
		{"dlen max uint32", func(b []byte) []byte { binary.BigEndian.PutUint32(b[44:], ^uint32(0)); return b }, errs.TooLarge},
		{"length MaxPayload", func(b []byte) []byte { binary.BigEndian.PutUint32(b[40:], proto.MaxPayload); return b }, errs.Other},
		{"length > MaxPayload", func(b []byte) []byte { binary.BigEndian.PutUint32(b[40:], proto.MaxPayload+1); return b }, errs.TooLarge},
		{"length max uint32", func(b []byte) []byte { binary.BigEndian.PutUint32(b[40:], ^uint32(0)); return b }, errs.TooLarge},
		{"longer buffer", func(b []byte) []byte { return append(b, 1, 2, 3) }, errs.Other},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.edit(validHeader())
			h, err := proto.DecodeHeader(b)
			if tt.kind == errs.Other {
				if err != nil {
					t.Fatalf("DecodeHeader: %v, want no error", err)
				}
				var again [proto.HeaderSize]byte
				proto.PutHeader(again[:], &h)
				if !bytes.Equal(again[:], b[:proto.HeaderSize]) {
					t.Fatalf("re-encoded header differs:\n got %x\nwant %x", again, b[:proto.HeaderSize])
				}
				return
			}
			if err == nil {
				t.Fatalf("DecodeHeader = %+v, nil; want a %v error", h, tt.kind)
			}
			if !errs.Is(err, tt.kind) {
				t.Fatalf("DecodeHeader: %v (kind %v), want kind %v", err, errs.KindOf(err), tt.kind)
			}
		})
	}
}

func TestOpsAndNames(t *testing.T) {
	ops := allOps()
	if len(ops) != 20 {
		t.Errorf("%d valid ops, want 20: %v", len(ops), ops)
	}
	seen := map[string]bool{}
	for _, op := range ops {
		s := op.String()
		if seen[s] || strings.HasPrefix(s, "op(") {
			t.Errorf("op %d has name %q (duplicate or missing)", uint8(op), s)
		}
		seen[s] = true
		if got, want := (op | proto.RespBit).String(), s+"_resp"; got != want {
			t.Errorf("(%v|RespBit).String() = %q, want %q", op, got, want)
		}
		if (op | proto.RespBit).Valid() {
			t.Errorf("%v|RespBit is Valid; Valid is for requests only", op)
		}
	}
	if got := proto.Op(0x7f).String(); got != "op(127)" {
		t.Errorf("Op(0x7f).String() = %q", got)
	}
}

// TestMsgRoundTrip encodes every sample message and reads it back, through
// readers that return whole frames and one byte at a time.
func TestMsgRoundTrip(t *testing.T) {
	var stream []byte
	msgs := sampleMsgs()
	for _, m := range msgs {
		b := encode(m)
		if len(b) != m.FrameSize() {
			t.Errorf("%v: encoding is %d bytes, FrameSize %d", m.Op, len(b), m.FrameSize())
		}
		stream = append(stream, b...)
	}
	for _, r := range []struct {
		name string
		r    io.Reader
	}{
		{"whole", bytes.NewReader(stream)},
		{"one byte", iotest.OneByteReader(bytes.NewReader(stream))},
		{"half", iotest.HalfReader(bytes.NewReader(stream))},
	} {
		t.Run(r.name, func(t *testing.T) {
			hdr := make([]byte, 3) // too small: ReadMsg must make its own
			for i, want := range msgs {
				var got proto.Msg
				if err := proto.ReadMsg(r.r, &got, hdr, nil); err != nil {
					t.Fatalf("message %d (%v): %v", i, want.Op, err)
				}
				if len(want.Data) == 0 {
					want.Data = nil
				}
				if !reflect.DeepEqual(&got, want) {
					t.Fatalf("message %d:\n got %+v\nwant %+v", i, got, *want)
				}
			}
			var m proto.Msg
			if err := proto.ReadMsg(r.r, &m, nil, nil); err != io.EOF {
				t.Fatalf("ReadMsg at the end: %v, want io.EOF", err)
			}
		})
	}
}

func TestReadMsgErrors(t *testing.T) {
	good := encode(&proto.Msg{Header: proto.Header{Op: proto.OpVDIWrite, ReqID: 1}, Data: []byte("0123456789")})
	tooBig := bytes.Clone(good)
	binary.BigEndian.PutUint32(tooBig[44:], proto.MaxPayload+1)
	badMagic := bytes.Clone(good)
	badMagic[0] = 0
	tests := []struct {
		name  string
		in    []byte
		want  error     // matched with errors.Is, or nil
		kind  errs.Kind // if want is nil
		alloc bool      // whether alloc may be called
	}{
		{"empty", nil, io.EOF, 0, false},
		{"short header", good[:10], io.ErrUnexpectedEOF, 0, false},
		{"no aux", good[:proto.HeaderSize], io.ErrUnexpectedEOF, 0, false},
		{"short payload", good[:len(good)-1], io.ErrUnexpectedEOF, 0, true},
		{"header only", good[:proto.HeaderSize+8], io.ErrUnexpectedEOF, 0, true},
		{"bad magic", badMagic, nil, errs.Invalid, false},
		{"too large", tooBig, nil, errs.TooLarge, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			called := false
			var m proto.Msg
			err := proto.ReadMsg(bytes.NewReader(tt.in), &m, nil, func(n int) []byte { called = true; return make([]byte, n) })
			switch {
			case tt.want != nil && !errors.Is(err, tt.want):
				t.Fatalf("ReadMsg: %v, want %v", err, tt.want)
			case tt.want == nil && !errs.Is(err, tt.kind):
				t.Fatalf("ReadMsg: %v, want kind %v", err, tt.kind)
			}
			if called && !tt.alloc {
				t.Errorf("alloc called for a frame rejected before its payload")
			}
		})
	}
}

func TestErrorResponse(t *testing.T) {
	for k := errs.Other; k <= errs.Closed; k++ {
		req := &proto.Msg{Header: proto.Header{Op: proto.OpVDIWrite, ReqID: 42, Epoch: 3, ID: 9}, Data: []byte("payload")}
		resp := proto.ErrorResponse(req, errs.E(k, "failed on purpose"))
		if resp.Op != proto.OpVDIWrite|proto.RespBit || resp.ReqID != 42 || resp.Epoch != 3 || resp.ID != 9 {
			t.Errorf("kind %v: response header %+v does not answer the request", k, resp.Header)
		}
		var back proto.Msg
		if err := proto.ReadMsg(bytes.NewReader(encode(resp)), &back, nil, nil); err != nil {
			t.Fatalf("kind %v: %v", k, err)
		}
		err := back.Err()
		if err == nil || errs.KindOf(err) != k {
			t.Errorf("kind %v: Err() = %v (kind %v)", k, err, errs.KindOf(err))
		}
	}
	ok := &proto.Msg{Header: proto.Header{Op: proto.OpVDIRead | proto.RespBit}}
	if err := ok.Err(); err != nil {
		t.Errorf("Err() of a success = %v", err)
	}
}

// goldenMsg is the frame whose encoding is kept in testdata/frame.golden:
// every header field distinct, so that a moved field shows.
func goldenMsg() *proto.Msg {
	return &proto.Msg{
		Header: proto.Header{Op: proto.OpWriteObj, Kind: errs.Other, Flags: proto.FlagCreate | proto.FlagSync,
			ReqID: 0x0102030405060708, Epoch: 0x1112131415161718, ID: uint64(ids.DataObject(0xabcdef, 0x12345678)),
			Offset: 0x2122232425262728, Length: 0x00313233},
		Aux:  0x4142434445464748,
		Data: []byte("sheepfs frame payload"),
	}
}

// TestGoldenFrame pins the wire encoding. Run with -update only when a
// protocol change is intended (and then think about old peers).
func TestGoldenFrame(t *testing.T) {
	got := hex.Dump(encode(goldenMsg()))
	path := filepath.Join("testdata", "frame.golden")
	if *updateFlag {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Fatalf("frame encoding changed (run with -update if intended):\n got:\n%s\nwant:\n%s", got, want)
	}
	var m proto.Msg
	raw := encode(goldenMsg())
	if err := proto.ReadMsg(bytes.NewReader(raw), &m, nil, nil); err != nil {
		t.Fatal(err)
	}
	wantMsg := goldenMsg()
	wantMsg.DLen = uint32(len(wantMsg.Data))
	if !reflect.DeepEqual(&m, wantMsg) {
		t.Fatalf("golden frame decodes to %+v, want %+v", m, *wantMsg)
	}
}
