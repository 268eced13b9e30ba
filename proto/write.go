package proto

import (
	"bufio"
	"net"
)

// directPayload is the payload size from which a frame is sent with one
// writev of header and payload, instead of being copied through the
// connection's bufio.Writer.
const directPayload = 64 << 10

// writeFrame writes a frame (hdr, then payload) to w, buffered behind it.
// Small frames are buffered so that several share one syscall; a large
// payload goes out with its header in one writev, without a copy. The
// caller holds the connection's write lock, and flushes when nobody else
// is waiting to write.
func writeFrame(bw *bufio.Writer, nc net.Conn, hdr, payload []byte) error {
	if len(payload) < directPayload {
		if _, err := bw.Write(hdr); err != nil {
			return err
		}
		_, err := bw.Write(payload)
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	bufs := net.Buffers{hdr, payload}
	_, err := bufs.WriteTo(nc)
	return err
}
