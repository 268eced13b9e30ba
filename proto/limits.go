package proto

import (
	"net"
	"sync"
	"time"
)

// Defaults of a Server's limits on connections; the Server fields of the
// same names override them. A daemon faces whoever can reach its port, so
// every resource a connection can hold is bounded, and the connection is
// dropped when it holds one too long.
const (
	// DefaultMaxConns is the number of connections a server keeps open
	// at once.
	DefaultMaxConns = 4096
	// DefaultMaxConnsPerIP is the number of connections a server keeps
	// open at once from one IP address. Generous, since a test cluster
	// runs all its nodes and clients on 127.0.0.1.
	DefaultMaxConnsPerIP = 1024
	// DefaultIdleTimeout is how long a connection with no request in
	// flight may send nothing. Long, since clients (a mount) keep idle
	// connections; they redial on their next call when it has gone.
	DefaultIdleTimeout = 10 * time.Minute
	// DefaultFrameTimeout is how long a frame may take to arrive once
	// its first byte has.
	DefaultFrameTimeout = 60 * time.Second
	// DefaultWriteTimeout is how long writing one answer may take.
	DefaultWriteTimeout = 30 * time.Second
	// DefaultSharedBytes is the server-wide budget of request payloads
	// and reserved answers of the connections that share one (see
	// Server.Shared): with MaxInflightBytes per connection alone, forty
	// connections that never read their answers could pin 1.25 GiB. A
	// daemon's resident set may hold about twice this (the garbage
	// collector lets the heap grow to twice what is live).
	DefaultSharedBytes = 128 << 20
)

// Backoff of the accept loop after an error (out of file descriptors): as
// net/http, 5 ms doubling to 1 s, so the loop neither spins nor gives up.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// refuseReportEvery is how often OnRefuse may be called: a flood of
// connections must not become a flood of log lines.
const refuseReportEvery = time.Second

// minReply is the room for an answer that every request gets: enough for
// an error message or a small answer (a stat, a JSON result).
const minReply = 4 << 10

// replyRoom is the most bytes of payload the answer to a request with
// header h may carry. The server reserves it, with the request's own
// payload, against MaxInflightBytes before it runs the request, so that the
// answers a client has asked for and not yet read stay bounded; an answer
// that would not fit is replaced by an error (see Server.run).
func replyRoom(h *Header) int64 {
	switch h.Op {
	case OpReadObj:
		if h.Flags&FlagSparse != 0 {
			return int64(h.Length) + int64(SparseHeaderSize(MaxExtents))
		}
		return max(int64(h.Length), minReply)
	case OpVDIRead:
		return max(int64(h.Length), minReply)
	case OpListObjs, OpStatObjs, OpInventory, OpAdmin, OpVDIAllocMap:
		// Answers sized by the server's state, not by the request.
		return MaxPayload
	}
	return minReply
}

// remoteIP is the IP address a connection comes from, which the
// per-address cap counts by.
func remoteIP(nc net.Conn) string {
	switch a := nc.RemoteAddr().(type) {
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap().String()
	case nil:
		return ""
	}
	s := nc.RemoteAddr().String()
	if host, _, err := net.SplitHostPort(s); err == nil {
		return host
	}
	return s
}

// reportLimiter lets a report through at most once per refuseReportEvery
// and counts the events it held back, so the next report can say how many
// there were.
type reportLimiter struct {
	mu   sync.Mutex
	last time.Time
	held int
}

// event counts one event at now. It returns whether to report it, and the
// number of events the report stands for (this one and those held back).
func (l *reportLimiter) event(now time.Time) (n int, report bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.held++
	if !l.last.IsZero() && now.Sub(l.last) < refuseReportEvery {
		return 0, false
	}
	n, l.held, l.last = l.held, 0, now
	return n, true
}
