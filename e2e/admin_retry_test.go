package e2e

import (
	"strings"
	"testing"

	"github.com/sheepfs/sheepfs/auth"
	"github.com/sheepfs/sheepfs/client"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/proto"
)

// TestCreateRetryAnswersTheFirst: a vdi.create (or vdi.clone) sent again
// with its token
// (as the client does when its gateway dies before answering: the same
// bytes go to the next one) answers what the first did, through any
// gateway, instead of "exists"; a create of the same name with another
// token is refused with "exists", and a token longer than 128 bytes as
// invalid.
func TestCreateRetryAnswersTheFirst(t *testing.T) {
	parallel(t)
	requireEnv(t)
	c := NewCluster(t, 3, 3)
	ctx := testCtx(t)
	var infos []proto.VDIInfo
	for _, n := range []*Node{c.Nodes[0], c.Nodes[2]} {
		cl := client.New([]string{n.Addr()}, client.Options{Dial: keyDial(auth.RoleClient)})
		defer cl.Close()
		var info proto.VDIInfo
		req := proto.AdminRequest{Cmd: proto.AdminVDICreate, Name: "once", Size: 1 << 30, Token: "a-create-of-once"}
		if err := cl.Admin(ctx, req, &info); err != nil {
			t.Fatalf("create through %s: %v", n.ID, err)
		}
		infos = append(infos, info)
	}
	if infos[0].ID == 0 || infos[0].ID != infos[1].ID || infos[0].Size != infos[1].Size {
		t.Fatalf("the create and its retry answered %+v and %+v, want the same VDI", infos[0], infos[1])
	}
	cl := client.New([]string{c.Nodes[1].Addr()}, client.Options{Dial: keyDial(auth.RoleClient)})
	defer cl.Close()
	err := cl.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDICreate, Name: "once", Size: 1 << 30}, nil)
	if !errs.Is(err, errs.Exists) {
		t.Fatalf("a second create of once (a token of its own): %v, want exists", err)
	}
	long := proto.AdminRequest{Cmd: proto.AdminVDICreate, Name: "long", Size: 1 << 30, Token: strings.Repeat("t", 129)}
	if err := cl.Admin(ctx, long, nil); !errs.Is(err, errs.Invalid) {
		t.Fatalf("a create with a token of 129 bytes: %v, want invalid", err)
	}
	if list := lookupVDI(t, cl, "once"); list.ID != infos[0].ID {
		t.Fatalf("once is VDI %v, the create answered %v", list.ID, infos[0].ID)
	}

	// The same for a clone.
	if err := cl.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDISnapshot, Name: "once", Tag: "s"}, nil); err != nil {
		t.Fatal(err)
	}
	var clones []proto.VDIInfo
	for range 2 {
		var info proto.VDIInfo
		req := proto.AdminRequest{Cmd: proto.AdminVDIClone, Source: "once@s", Name: "twice", Token: "a-clone-of-once"}
		if err := cl.Admin(ctx, req, &info); err != nil {
			t.Fatalf("clone: %v", err)
		}
		clones = append(clones, info)
	}
	if clones[0].ID == 0 || clones[0].ID != clones[1].ID {
		t.Fatalf("the clone and its retry answered %+v and %+v, want the same VDI", clones[0], clones[1])
	}
	err = cl.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDIClone, Source: "once@s", Name: "twice"}, nil)
	if !errs.Is(err, errs.Exists) {
		t.Fatalf("a second clone to twice (a token of its own): %v, want exists", err)
	}
}
