package proto_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"testing"
	"testing/iotest"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
)

// frameSeeds returns inputs for the frame fuzzers: a valid frame of every
// op (request and response), several frames back to back, and broken ones
// (truncated, bad magic, oversized lengths, garbage).
func frameSeeds() [][]byte {
	var seeds [][]byte
	var all []byte
	for _, m := range sampleMsgs() {
		b := encode(m)
		seeds = append(seeds, b)
		all = append(all, b...)
	}
	seeds = append(seeds, all)
	good := encode(sampleMsgs()[0])
	edit := func(f func(b []byte)) []byte {
		b := bytes.Clone(good)
		f(b)
		return b
	}
	seeds = append(seeds,
		nil,
		[]byte{0x53},
		[]byte("SH"),
		good[:proto.HeaderSize],
		good[:len(good)-1],
		edit(func(b []byte) { b[0] = 0 }),
		edit(func(b []byte) { b[2] = 0xff }),
		edit(func(b []byte) { b[3] = 0xff }),
		edit(func(b []byte) { b[4] = 0xff }),
		edit(func(b []byte) { b[6] = 1 }),
		edit(func(b []byte) { binary.BigEndian.PutUint32(b[40:], proto.MaxPayload+1) }),
		edit(func(b []byte) { binary.BigEndian.PutUint32(b[44:], proto.MaxPayload+1) }),
		edit(func(b []byte) { binary.BigEndian.PutUint32(b[44:], proto.MaxPayload) }),
		edit(func(b []byte) { binary.BigEndian.PutUint32(b[44:], ^uint32(0)) }),
		bytes.Repeat([]byte{0xff}, 64),
		make([]byte, 64),
	)
	return seeds
}

// FuzzDecodeHeader checks that DecodeHeader never panics, fails only with
// errs.Invalid or errs.TooLarge, and that a header it accepts re-encodes to
// the same bytes and decodes to the same Header.
func FuzzDecodeHeader(f *testing.F) {
	for _, s := range frameSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := proto.DecodeHeader(b)
		if err != nil {
			if k := errs.KindOf(err); k != errs.Invalid && k != errs.TooLarge {
				t.Fatalf("DecodeHeader: %v has kind %v, want invalid or too large", err, k)
			}
			return
		}
		if h.DLen > proto.MaxPayload || h.Length > proto.MaxPayload {
			t.Fatalf("accepted header with DLen %d, Length %d over MaxPayload", h.DLen, h.Length)
		}
		var enc [proto.HeaderSize]byte
		proto.PutHeader(enc[:], &h)
		if !bytes.Equal(enc[:], b[:proto.HeaderSize]) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", enc, b[:proto.HeaderSize])
		}
		h2, err := proto.DecodeHeader(enc[:])
		if err != nil {
			t.Fatalf("re-encoded header does not decode: %v", err)
		}
		if h2 != h {
			t.Fatalf("round trip: %+v, want %+v", h2, h)
		}
	})
}

// payloadBuf backs the fuzzer's alloc so that a frame claiming MaxPayload
// bytes costs no allocation per input.
var payloadBuf = make([]byte, proto.MaxPayload)

// FuzzReadMsg reads frames from arbitrary bytes until an error. ReadMsg must
// not panic, must ask alloc for no more than MaxPayload (and exactly DLen)
// bytes, must fail only with errs.Invalid, errs.TooLarge, io.EOF (nothing
// left) or io.ErrUnexpectedEOF, and every frame it returns must re-encode to
// the bytes it consumed. Reading one byte at a time must give the same.
func FuzzReadMsg(f *testing.F) {
	for _, s := range frameSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		type result struct {
			msgs []proto.Msg
			err  error
		}
		read := func(r io.Reader, size func() int) result {
			var res result
			hdr := make([]byte, proto.HeaderSize+8)
			for {
				before := size()
				var m proto.Msg
				err := proto.ReadMsg(r, &m, hdr, func(n int) []byte {
					if n < 0 || n > proto.MaxPayload {
						t.Fatalf("alloc(%d): more than MaxPayload", n)
					}
					if n != int(m.DLen) {
						t.Fatalf("alloc(%d) for a frame with DLen %d", n, m.DLen)
					}
					return payloadBuf[:n:n]
				})
				if err != nil {
					res.err = err
					return res
				}
				consumed := in[len(in)-before : len(in)-size()]
				if got := proto.AppendMsg(nil, &m); !bytes.Equal(got, consumed) {
					t.Fatalf("frame re-encodes differently:\n got %x\nwant %x", got, consumed)
				}
				m.Data = bytes.Clone(m.Data)
				res.msgs = append(res.msgs, m)
			}
		}
		br := bytes.NewReader(in)
		whole := read(br, br.Len)
		switch k := errs.KindOf(whole.err); {
		case k == errs.Invalid || k == errs.TooLarge:
		case whole.err == io.EOF || whole.err == io.ErrUnexpectedEOF:
		default:
			t.Fatalf("ReadMsg: unexpected error %v (%T, kind %v)", whole.err, whole.err, k)
		}
		if errors.Is(whole.err, io.EOF) && len(in) != frameBytes(whole.msgs) {
			t.Fatalf("io.EOF with %d of %d bytes consumed", frameBytes(whole.msgs), len(in))
		}
		br2 := bytes.NewReader(in)
		bytewise := read(iotest.OneByteReader(br2), br2.Len)
		if !reflect.DeepEqual(whole.msgs, bytewise.msgs) || whole.err != bytewise.err &&
			whole.err.Error() != bytewise.err.Error() {
			t.Fatalf("one byte at a time: %d frames, %v; whole: %d frames, %v",
				len(bytewise.msgs), bytewise.err, len(whole.msgs), whole.err)
		}
	})
}

func frameBytes(ms []proto.Msg) int {
	n := 0
	for i := range ms {
		n += ms[i].FrameSize()
	}
	return n
}

// FuzzAdminRequest checks that decoding an AdminRequest never panics and
// that whatever decodes survives an encode/decode round trip.
func FuzzAdminRequest(f *testing.F) {
	for _, s := range []string{
		`{"cmd":"cluster.format","copies":3}`,
		`{"cmd":"cluster.info"}`,
		`{"cmd":"node.list"}`,
		`{"cmd":"node.stat"}`,
		`{"cmd":"vdi.create","name":"disk0","size":1073741824,"copies":2}`,
		`{"cmd":"vdi.delete","name":"disk0"}`,
		`{"cmd":"vdi.resize","name":"disk0","size":18446744073709551615}`,
		`{"cmd":"vdi.list"}`,
		`{"cmd":"vdi.lookup","name":"disk0"}`,
		`{"cmd":"vdi.lock","name":"disk0","mount":"m-1234"}`,
		`{"cmd":"vdi.unlock","name":"disk0","mount":"m-1234"}`,
		`{"cmd":"vdi.objects","name":"disk0"}`,
		`{"cmd":"vdi.create","name":"\u00e9\ud800","size":-1}`,
		`{"cmd":"x","size":1e400,"copies":1.5}`,
		`{"cmd":"x","unknown":[1,2,{"a":null}],"name":null}`,
		`[1,2,3]`,
		`null`,
		`"cmd"`,
		`{"cmd":`,
		`{}`,
		"",
		"{\"name\":\"\xff\xfe\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var req proto.AdminRequest
		if err := json.Unmarshal(b, &req); err != nil {
			return
		}
		enc, err := json.Marshal(&req)
		if err != nil {
			t.Fatalf("Marshal(%+v): %v", req, err)
		}
		var back proto.AdminRequest
		if err := json.Unmarshal(enc, &back); err != nil {
			t.Fatalf("Unmarshal(%s): %v", enc, err)
		}
		// Encoded again, the same bytes (an empty list and none both
		// encode as none).
		if enc2, err := json.Marshal(&back); err != nil || !bytes.Equal(enc2, enc) {
			t.Fatalf("round trip: %s, want %s (%v)", enc2, enc, err)
		}
	})
}

// FuzzRecoveryPayloads: the recovery payloads (object states, object ID
// lists, sparse objects) never panic, reject what they cannot use with
// errs.Invalid, and what they accept encodes back to the same bytes.
func FuzzRecoveryPayloads(f *testing.F) {
	states := proto.AppendObjStates(nil, []proto.ObjState{{OID: 0x100000002, Version: 7, Valid: 3, Flags: proto.ObjPresent | proto.ObjDegraded}})
	f.Add(states)
	f.Add(proto.AppendOIDs(nil, []ids.ObjectID{1, 2, 0x8000000100000000}))
	sparse := make([]byte, proto.SparseHeaderSize(2))
	proto.PutSparseHeader(sparse, []proto.Extent{{Off: 0, Len: 4}, {Off: 4096, Len: 2}})
	f.Add(append(sparse, 1, 2, 3, 4, 5, 6))
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0xff}, 40))
	f.Fuzz(func(t *testing.T, b []byte) {
		if s, err := proto.DecodeObjStates(b); err == nil {
			if got := proto.AppendObjStates(nil, s); !bytes.Equal(got, b) {
				t.Fatalf("object states %x re-encode as %x", b, got)
			}
		} else if !errs.Is(err, errs.Invalid) {
			t.Fatalf("DecodeObjStates: %v, want an Invalid error", err)
		}
		if o, err := proto.DecodeOIDs(b); err == nil {
			if got := proto.AppendOIDs(nil, o); !bytes.Equal(got, b) {
				t.Fatalf("object IDs %x re-encode as %x", b, got)
			}
		} else if !errs.Is(err, errs.Invalid) {
			t.Fatalf("DecodeOIDs: %v, want an Invalid error", err)
		}
		const objSize = 1 << 16
		exts, data, err := proto.DecodeSparse(b, objSize)
		if err != nil {
			if !errs.Is(err, errs.Invalid) {
				t.Fatalf("DecodeSparse: %v, want an Invalid error", err)
			}
			return
		}
		var end, total int64
		for _, e := range exts {
			if e.Len <= 0 || e.Off < end || e.Off+e.Len > objSize {
				t.Fatalf("DecodeSparse accepted extent %+v", e)
			}
			end = e.Off + e.Len
			total += e.Len
		}
		if int64(len(data)) != total {
			t.Fatalf("DecodeSparse: %d data bytes for %d", len(data), total)
		}
		hdr := make([]byte, proto.SparseHeaderSize(len(exts)))
		proto.PutSparseHeader(hdr, exts)
		if !bytes.Equal(append(hdr, data...), b) {
			t.Fatalf("sparse object %x re-encodes differently", b)
		}
	})
}

// FuzzDecodeLease: a lease decodes only when whole, with paths of 1 to
// MaxLeasePath bytes, and then encodes back to the same bytes.
func FuzzDecodeLease(f *testing.F) {
	f.Add(proto.AppendLease(nil, proto.Lease{Inst: 1, Global: 2, Slot: 3, OID: 0x100000002, Path: "/d/obj/00/x", Page: "/d/local-reads"}))
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0xff}, 40))
	f.Add(append(make([]byte, 32), 0, 0, 0, 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := proto.DecodeLease(b)
		if err != nil {
			if !errs.Is(err, errs.Invalid) {
				t.Fatalf("DecodeLease: %v, want an Invalid error", err)
			}
			return
		}
		for _, p := range []string{l.Path, l.Page} {
			if len(p) == 0 || len(p) > proto.MaxLeasePath {
				t.Fatalf("DecodeLease accepted a path of %d bytes", len(p))
			}
		}
		if got := proto.AppendLease(nil, l); !bytes.Equal(got, b) {
			t.Fatalf("lease %x re-encodes as %x", b, got)
		}
	})
}
