package e2e

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/auth"
	"github.com/sheepfs/sheepfs/client"
)

// TestChangeGivenUpLeavesCopiesAlike: a write reaches two of its three
// replicas; the third node breaks the connection of every replica write
// (a fault of the test seam) while it stays up and in the cluster, and
// the client gives up and goes away, so no attempt follows. The copies
// then differed for good while every node was up: each node read its
// own, and nothing compared them until a scrub or `sheep vdi check`. Now
// the gateway checks such an object a few seconds after the change gave
// up, and the three nodes soon read the same bytes.
func TestChangeGivenUpLeavesCopiesAlike(t *testing.T) {
	parallel(t)
	c := NewClusterEnv(t, 3, 3, "SHEEP_FAULTS=1")
	ctx := testCtx(t)
	admin := newClient(t, c.Nodes[0].Addr())
	createVDI(t, admin, "u", 64<<20)
	w := client.New([]string{c.Nodes[0].Addr()}, client.Options{Dial: keyDial(auth.RoleClient), RetryFor: 5 * time.Second})
	defer w.Close()
	info, err := w.Lock(ctx, "u")
	if err != nil {
		t.Fatal(err)
	}
	first, second := bytes.Repeat([]byte("a"), 4096), bytes.Repeat([]byte("b"), 4096)
	if err := w.WriteAt(ctx, info.ID, first, 0, true); err != nil {
		t.Fatal(err)
	}
	n2 := c.Nodes[2]
	if r := c.SheepAt(n2.Addr(), "node", "md", "fault", n2.Dir, "dropwrites"); r.Code != 0 {
		t.Fatalf("arm the fault: %v", r)
	}
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	err = w.WriteAt(short, info.ID, second, 0, true)
	cancel()
	if err == nil {
		t.Fatalf("a write succeeded while node2 dropped every replica write")
	}
	w.Close() // the client goes away: no attempt follows
	if r := c.SheepAt(n2.Addr(), "node", "md", "fault", n2.Dir, "heal"); r.Code != 0 {
		t.Fatalf("heal: %v", r)
	}
	gave := time.Now()

	// Each node reads its own copy first.
	readers := make([]*client.Client, len(c.Nodes))
	for i, n := range c.Nodes {
		readers[i] = newClient(t, n.Addr())
	}
	var got [][]byte
	alike := func() bool {
		got = got[:0]
		for _, r := range readers {
			buf := make([]byte, 4096)
			if err := r.ReadAt(ctx, info.ID, buf, 0); err != nil {
				t.Fatalf("read: %v", err)
			}
			got = append(got, buf)
		}
		for _, b := range got[1:] {
			if !bytes.Equal(b, got[0]) {
				return false
			}
		}
		return true
	}
	if !waitFor(30*time.Second, alike) {
		for i, b := range got {
			t.Logf("node%d reads %q...", i, b[:8])
		}
		t.Fatalf("the copies of the object still differ %v after the write gave up", time.Since(gave).Round(time.Second))
	}
	t.Logf("the copies read alike %v after the write gave up; they hold %q...", time.Since(gave).Round(100*time.Millisecond), got[0][:8])
	if !bytes.Equal(got[0], first) && !bytes.Equal(got[0], second) {
		t.Fatalf("the copies hold neither write")
	}
}
