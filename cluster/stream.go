package cluster

import (
	"context"
	"net"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sheepfs/sheepfs/auth"
)

// tlsStream is raft's stream layer over TLS: only peers of this cluster
// (holding its key) get a connection accepted, and this node connects
// only to them. Without it anyone reaching the raft port could vote or
// install a state.
type tlsStream struct {
	ln   *auth.Listener
	adv  net.Addr
	dial *auth.Dialer
}

func newTLSStream(addr string, adv net.Addr, keys *auth.Keys, onRefused func(string, error, int)) (*tlsStream, error) {
	cfg, err := keys.ServerConfig(auth.RolePeer)
	if err != nil {
		return nil, err
	}
	dial, err := keys.NewDialer(auth.RolePeer, 0)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	l := auth.Listen(ln, cfg, keys)
	l.OnRefused = onRefused
	return &tlsStream{ln: l, adv: adv, dial: dial}, nil
}

func (s *tlsStream) Accept() (net.Conn, error) { return s.ln.Accept() }
func (s *tlsStream) Close() error              { return s.ln.Close() }
func (s *tlsStream) Addr() net.Addr            { return s.adv }

func (s *tlsStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := *s.dial
	d.Timeout = timeout
	return d.DialContext(context.Background(), string(address))
}
