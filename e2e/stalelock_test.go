package e2e

import (
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/auth"
	"github.com/sheepfs/sheepfs/client"
	"github.com/sheepfs/sheepfs/proto"
)

// TestLockOfARestartedGateway: a client holds a VDI's write lock through a
// node that is killed and restarted within the grace period (so it stays a
// member) while the client is gone too. The restarted node releases the
// lock its previous run held; a client that took its lock again through
// the new run keeps it.
func TestLockOfARestartedGateway(t *testing.T) {
	parallel(t)
	c := NewCluster(t, 3, 3)
	ctx := testCtx(t)
	admin := newClient(t, c.Nodes[0].Addr())
	for _, name := range []string{"gone", "back"} {
		createVDI(t, admin, name, 1<<30)
	}
	gone := client.New([]string{c.Nodes[1].Addr()}, client.Options{Dial: keyDial(auth.RoleClient), RetryFor: 5 * time.Second})
	if _, err := gone.Lock(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	back := newClient(t, c.Nodes[1].Addr())
	if _, err := back.Lock(ctx, "back"); err != nil {
		t.Fatal(err)
	}
	c.Kill(1)
	gone.Close() // this client does not come back
	c.Restart(1)
	// The other client reconnects and takes its lock again (its next
	// request does that).
	if err := back.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminVDILookup, Name: "back"}, nil); err != nil {
		t.Fatal(err)
	}
	locked := func(name string) bool { return lookupVDI(t, admin, name).Locked }
	if !waitFor(30*time.Second, func() bool { return !locked("gone") }) {
		t.Errorf("the lock of a client gone with the previous run of its gateway is still held")
	}
	time.Sleep(2 * time.Second) // the release has run; it must have left "back" alone
	if !locked("back") {
		t.Errorf("the lock a client took again through the restarted gateway was released")
	}
	c.WaitOK()
}
