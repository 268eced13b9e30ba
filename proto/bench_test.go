package proto_test

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"strconv"
	"testing"

	"github.com/sheepfs/sheepfs/proto"
)

// repeatReader serves the same bytes over and over, so that ReadMsg can be
// measured without a socket.
type repeatReader struct {
	b []byte
	i int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	n := copy(p, r.b[r.i:])
	r.i = (r.i + n) % len(r.b)
	return n, nil
}

// BenchmarkReadMsg reads frames from memory through a bufio.Reader the
// size the server and client use, into pooled buffers: the cost of
// decoding and of placing the payload, without the network.
func BenchmarkReadMsg(b *testing.B) {
	for _, size := range []int{4 << 10, 1 << 20, 4 << 20} {
		b.Run(byteSize(size), func(b *testing.B) {
			frame := encode(&proto.Msg{Header: proto.Header{Op: proto.OpVDIWrite}, Data: make([]byte, size)})
			br := bufio.NewReaderSize(&repeatReader{b: frame}, 256<<10)
			hdr := make([]byte, proto.HeaderSize+8)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				var m proto.Msg
				if err := proto.ReadMsg(br, &m, hdr, proto.GetBuf); err != nil {
					b.Fatal(err)
				}
				proto.PutBuf(m.Data)
			}
		})
	}
}

// BenchmarkCall measures whole calls over loopback TCP: writes whose
// payload the server reads, and reads whose payload the client reads
// into its own buffer, one at a time and many at once.
func BenchmarkCall(b *testing.B) {
	srv := &proto.Server{Handler: proto.HandlerFunc(func(ctx context.Context, _ *proto.Conn, req *proto.Msg) *proto.Msg {
		if req.Op == proto.OpVDIRead {
			m := &proto.Msg{Data: proto.GetBuf(int(req.Length))}
			m.SetPooled()
			return m
		}
		return &proto.Msg{}
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	c := proto.NewClient(ln.Addr().String())
	defer c.Close()
	for _, size := range []int{4 << 10, 4 << 20} {
		payload := bytes.Repeat([]byte{0x5a}, size)
		for _, par := range []int{1, 8} {
			name := byteSize(size)
			if par > 1 {
				name += "-par"
			}
			b.Run("write-"+name, func(b *testing.B) {
				b.SetBytes(int64(size))
				runCalls(b, par, func() error {
					_, err := c.Call(context.Background(), &proto.Msg{Header: proto.Header{Op: proto.OpVDIWrite}, Data: payload})
					return err
				})
			})
			b.Run("read-"+name, func(b *testing.B) {
				b.SetBytes(int64(size))
				runCalls(b, par, func() error {
					dst := proto.GetBuf(size)
					defer proto.PutBuf(dst)
					_, err := c.CallInto(context.Background(), &proto.Msg{Header: proto.Header{Op: proto.OpVDIRead, Length: uint32(size)}}, dst)
					return err
				})
			})
		}
	}
}

// runCalls runs call b.N times, from par goroutines per GOMAXPROCS when
// par > 1.
func runCalls(b *testing.B, par int, call func() error) {
	if par == 1 {
		for b.Loop() {
			if err := call(); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	b.SetParallelism(par)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := call(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func byteSize(n int) string {
	switch {
	case n >= 1<<20:
		return strconv.Itoa(n>>20) + "MiB"
	case n >= 1<<10:
		return strconv.Itoa(n>>10) + "KiB"
	}
	return strconv.Itoa(n) + "B"
}
