package e2e

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/auth"
	"github.com/sheepfs/sheepfs/client"
	"github.com/sheepfs/sheepfs/proto"
)

// TestAbandonedSnapshotRequests: snapshot requests whose client goes away
// while the writer's gateway takes them (the CLI timed out, was killed)
// neither fail the writer's writes nor leave a snapshot that changes
// afterwards. The writer's gateway is not the leader, so the snapshot
// command is forwarded, and the client's leaving cancels that.
func TestAbandonedSnapshotRequests(t *testing.T) {
	parallel(t)
	c := NewCluster(t, 3, 3)
	ctx := testCtx(t)
	var gw *Node
	for _, n := range c.Nodes {
		if c.Info().Leader != n.ID {
			gw = n
			break
		}
	}
	w := newClient(t, gw.Addr())
	v := createVDI(t, w, "v", 8<<20)
	if _, err := w.Lock(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := w.WriteAt(ctx, v.ID, bytes.Repeat([]byte{byte(i)}, 64<<10), int64(i%128)*(64<<10), false); err != nil {
				werr = fmt.Errorf("write %d: %w", i, err)
				return
			}
		}
	}()
	for i := 0; i < 200 && werr == nil; i++ {
		a := client.New([]string{gw.Addr()}, client.Options{Dial: keyDial(auth.RoleClient), RetryFor: time.Second})
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = a.Admin(context.Background(), proto.AdminRequest{Cmd: proto.AdminVDISnapshot, Name: "v", Tag: fmt.Sprintf("s%d", i)}, nil)
		}()
		time.Sleep(time.Duration(rand.IntN(20000)) * time.Microsecond)
		a.Close()
		<-done
	}
	close(stop)
	wg.Wait()
	var snaps []proto.VDIInfo
	if err := w.Admin(ctx, proto.AdminRequest{Cmd: proto.AdminSnapList, Name: "v"}, &snaps); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d snapshots taken of 200 requests", len(snaps))
	if werr != nil {
		t.Fatalf("the writer failed while snapshot requests were abandoned: %v", werr)
	}
}
