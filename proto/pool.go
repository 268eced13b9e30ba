package proto

import "sync"

// Payload buffers are pooled by size class, so that a busy server does not
// allocate (and zero) a fresh megabyte per request.
var classes = [...]int{64 << 10, 1 << 20, 4<<20 + 64<<10, MaxPayload}

var pools [len(classes)]sync.Pool

func classOf(n int) int {
	for i, c := range classes {
		if n <= c {
			return i
		}
	}
	return -1
}

// bufSize is the capacity of a buffer from GetBuf(n).
func bufSize(n int) int {
	if c := classOf(n); c >= 0 {
		return classes[c]
	}
	return n
}

// GetBuf returns a buffer of length n, from the pool when one fits.
func GetBuf(n int) []byte {
	c := classOf(n)
	if c < 0 {
		return make([]byte, n)
	}
	if p, ok := pools[c].Get().(*[]byte); ok {
		return (*p)[:n]
	}
	return make([]byte, n, classes[c])
}

// PutBuf returns a buffer from GetBuf to the pool. The caller must not use
// it afterwards.
func PutBuf(b []byte) {
	c := classOf(cap(b))
	if c < 0 || cap(b) != classes[c] {
		return
	}
	b = b[:0]
	pools[c].Put(&b)
}
