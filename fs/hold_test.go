package fs

import (
	"context"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/errs"
)

// TestHold: a VDI's I/O is sent again while the cluster is not ready,
// and fails at once for any other reason, or once its context ends.
func TestHold(t *testing.T) {
	f := &FS{}
	ctx := context.Background()
	calls := 0
	err := f.hold(ctx, "v", 1, func() error {
		calls++
		switch calls {
		case 1:
			return errs.E(errs.NotReady, "no quorum")
		case 2:
			return errs.E(errs.StaleEpoch, "epoch moved on")
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("hold: %v after %d calls, want success after 3", err, calls)
	}

	calls = 0
	err = f.hold(ctx, "v", 1, func() error { calls++; return errs.E(errs.Busy, "not the writer") })
	if !errs.Is(err, errs.Busy) || calls != 1 {
		t.Fatalf("hold: %v after %d calls, want busy after 1", err, calls)
	}

	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	calls = 0
	err = f.hold(short, "", 1, func() error { calls++; return errs.E(errs.NotReady, "no quorum") })
	if !errs.Is(err, errs.NotReady) || calls < 2 {
		t.Fatalf("hold with a context that ends: %v after %d calls, want not ready after several", err, calls)
	}
}
