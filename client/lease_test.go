package client

import (
	"context"
	"net"
	"sync/atomic"
	"testing"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/proto"
)

// A daemon from before local reads drops a connection that sends an op it
// does not know: Lease asks first, once per connection, with an admin
// command such a daemon answers with an error, and then sends no lease
// request on that connection.
func TestLeaseAsksTheGatewayFirst(t *testing.T) {
	for _, lends := range []bool{false, true} {
		var admins, leases atomic.Int32
		srv := &proto.Server{Handler: proto.HandlerFunc(func(ctx context.Context, c *proto.Conn, req *proto.Msg) *proto.Msg {
			switch req.Op {
			case proto.OpAdmin:
				admins.Add(1)
				if !lends {
					return proto.ErrorResponse(req, errs.E(errs.Invalid, `unknown admin command "local.reads"`))
				}
				return &proto.Msg{Data: []byte("{}")}
			case proto.OpVDILease:
				leases.Add(1)
				return &proto.Msg{Data: proto.AppendLease(nil, proto.Lease{Inst: 1, OID: req.Offset, Path: "/p", Page: "/q"})}
			}
			return proto.ErrorResponse(req, errs.E(errs.Invalid, "op %v", req.Op))
		})}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln)
		c := New([]string{ln.Addr().String()}, Options{})
		for i := range 3 {
			l, _, err := c.Lease(context.Background(), 5, uint32(i))
			switch {
			case !lends && !errs.Is(err, errs.Unsupported):
				t.Errorf("lease %d from a gateway that does not lend: %v, want Unsupported", i, err)
			case lends && (err != nil || l.OID != uint64(i)):
				t.Errorf("lease %d: %+v, %v", i, l, err)
			}
		}
		if admins.Load() != 1 {
			t.Errorf("lends=%v: asked %d times whether the gateway lends, want once per connection", lends, admins.Load())
		}
		if want := map[bool]int32{false: 0, true: 3}[lends]; leases.Load() != want {
			t.Errorf("lends=%v: %d lease requests sent, want %d", lends, leases.Load(), want)
		}
		c.Close()
		srv.Close()
	}
}
