package cluster

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

var seedFlag = flag.Uint64("seed", 0, "seed for randomised tests (0: from $CLUSTER_SEED, else the clock)")

// testSeed returns the seed for a randomised test and logs it so a failure
// can be replayed with -seed=N or CLUSTER_SEED=N.
func testSeed(t *testing.T) uint64 {
	t.Helper()
	seed := *seedFlag
	if seed == 0 {
		if s := os.Getenv("CLUSTER_SEED"); s != "" {
			v, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				t.Fatalf("CLUSTER_SEED=%q: %v", s, err)
			}
			seed = v
		}
	}
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay with -seed=%d or CLUSTER_SEED=%d)", seed, seed, seed)
	return seed
}

// memSink is a raft.SnapshotSink in memory.
type memSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) Close() error  { s.closed = true; return nil }

var _ raft.SnapshotSink = (*memSink)(nil)

// snapshotRoundTrip persists f's state and restores it into a fresh fsm.
func snapshotRoundTrip(t *testing.T, f *fsm) *fsm {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	snap.Release()
	if !sink.closed || sink.cancelled {
		t.Fatalf("Persist left the sink closed=%v cancelled=%v", sink.closed, sink.cancelled)
	}
	g := newFSM()
	changed := g.watch()
	if err := g.Restore(io.NopCloser(&sink.Buffer)); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	select {
	case <-changed:
	default:
		t.Fatalf("Restore did not publish the restored state")
	}
	return g
}

// randomCommand draws a command from small pools of names, nodes and
// mounts, so that commands collide often; some are malformed.
func randomCommand(rng *rand.Rand, step int) *Command {
	nodes := []ids.NodeID{"n1", "n2", "n3", "n4", "n5"}
	names := []string{"a", "b", "c", "d", "e", "f", "g", "h", "", ".x", "bad/name"}
	mounts := []ids.MountID{"m1", "m2", "m3", ""}
	pick := func() string {
		if rng.IntN(20) == 0 {
			return names[8+rng.IntN(3)]
		}
		return names[rng.IntN(8)]
	}
	size := func() uint64 {
		switch rng.IntN(10) {
		case 0:
			return MaxVDISize + 1 + rng.Uint64N(1<<40)
		case 1:
			return MaxVDISize
		case 2:
			return 0
		}
		return rng.Uint64N(1 << 40)
	}
	c := &Command{Time: int64(step)}
	switch r := rng.IntN(100); {
	case r < 3:
		c.Op = CmdMembers
		for _, n := range nodes {
			if rng.IntN(3) > 0 {
				c.Members = append(c.Members, Member{ID: n, Addr: string(n) + ":7000"})
			}
		}
		rng.Shuffle(len(c.Members), func(i, j int) { c.Members[i], c.Members[j] = c.Members[j], c.Members[i] })
	case r < 11:
		c.Op = CmdFormat
		c.Copies = rng.IntN(MaxCopies+3) - 1
	case r < 35:
		c.Op = CmdVDICreate
		c.Name, c.Size = pick(), size()
		if rng.IntN(10) == 0 {
			c.Copies = rng.IntN(MaxCopies+3) - 1
		}
	case r < 50:
		c.Op = CmdVDIDelete
		c.Name = pick()
	case r < 62:
		c.Op = CmdVDIResize
		c.Name, c.Size, c.Mount = pick(), size(), mounts[rng.IntN(len(mounts))]
	case r < 82:
		c.Op = CmdVDILock
		c.Name, c.Mount, c.Node = pick(), mounts[rng.IntN(3)], nodes[rng.IntN(len(nodes))]
	case r < 98:
		c.Op = CmdVDIUnlock
		c.Name, c.Mount = pick(), mounts[rng.IntN(len(mounts))]
	default:
		c.Op = "bogus"
	}
	return c
}

// TestRandomCommands applies thousands of random commands through the raft
// FSM and checks the invariants after each: the input state is never
// changed, a failed command changes nothing, the epoch only grows (by one
// per member change), names and IDs are unique and byID agrees with VDIs,
// new IDs are not reused before wrapping, and a snapshot restores to an
// equal state.
func TestRandomCommands(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	const steps = 2000

	f := newFSM()
	if rng.IntN(3) == 0 {
		// Start near the end of the ID space, so that IDs wrap.
		start := &State{Epoch: 0, VDIs: map[string]*VDI{}, NextVDI: ids.MaxVDIID - ids.VDIID(rng.IntN(4))}
		b, err := json.Marshal(start)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Restore(io.NopCloser(bytes.NewReader(b))); err != nil {
			t.Fatal(err)
		}
		t.Logf("starting with NextVDI %v", start.NextVDI)
	}
	kinds := map[string]map[errs.Kind]int{}
	oldJSON := stateJSON(t, f.state.Load())
	for step := range steps {
		c := randomCommand(rng, step)
		data, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		old := f.state.Load()
		res := f.Apply(&raft.Log{Index: uint64(step + 1), Data: data})
		r, ok := res.(Result)
		if !ok {
			t.Fatalf("step %d: Apply returned %T", step, res)
		}
		s := f.state.Load()
		where := fmt.Sprintf("step %d, %s", step, data)
		if got := stateJSON(t, old); got != oldJSON {
			t.Fatalf("%s: the previous state changed:\nbefore %s\nafter  %s", where, oldJSON, got)
		}
		newJSON := oldJSON
		if s != old {
			newJSON = stateJSON(t, s)
		}
		if kinds[c.Op] == nil {
			kinds[c.Op] = map[errs.Kind]int{}
		}
		kinds[c.Op][errs.KindOf(r.Err)]++
		if r.Err != nil && s != old {
			t.Fatalf("%s: failed (%v) but published a new state", where, r.Err)
		}
		switch {
		case s.Epoch < old.Epoch:
			t.Fatalf("%s: epoch went back from %v to %v", where, old.Epoch, s.Epoch)
		case s.Epoch > old.Epoch+1:
			t.Fatalf("%s: epoch jumped from %v to %v", where, old.Epoch, s.Epoch)
		case s.Epoch != old.Epoch && c.Op != CmdMembers:
			t.Fatalf("%s: epoch changed by a %s command", where, c.Op)
		}
		if c.Op == CmdVDICreate && r.Err == nil {
			id := r.VDI.ID
			if _, used := old.VDIByID(id); used {
				t.Fatalf("%s: ID %v is in use", where, id)
			}
			// An ID below NextVDI is reused only after wrapping: every
			// ID from NextVDI to the top must be taken.
			if id < old.NextVDI {
				for x := old.NextVDI; x <= ids.MaxVDIID && x != 0; x++ {
					if _, used := old.VDIByID(x); !used {
						t.Fatalf("%s: reused ID %v while %v (>= NextVDI %v) was free", where, id, x, old.NextVDI)
					}
				}
			}
		}
		checkConsistent(t, s)
		if t.Failed() {
			t.Fatalf("%s: state %s", where, newJSON)
		}
		if step%97 == 0 || step == steps-1 {
			g := snapshotRoundTrip(t, f)
			r := g.state.Load()
			if got := stateJSON(t, r); got != newJSON {
				t.Fatalf("%s: restored state differs:\n got %s\nwant %s", where, got, newJSON)
			}
			checkConsistent(t, r)
			f = g // carry on from the restored copy
		}
		oldJSON = newJSON
	}
	s := f.state.Load()
	t.Logf("final: epoch %v, %d VDIs, next ID %v; outcomes per command: %v", s.Epoch, len(s.VDIs), s.NextVDI, kinds)
}

// TestApplyUndecodable checks that a log entry that is not JSON gives an
// errs.Invalid result and no new state.
func TestApplyUndecodable(t *testing.T) {
	f := newFSM()
	old := f.state.Load()
	for _, data := range []string{"", "{", "[]", `{"op":7}`, "\xff"} {
		res := f.Apply(&raft.Log{Data: []byte(data)})
		if r, ok := res.(Result); !ok || !errs.Is(r.Err, errs.Invalid) {
			t.Errorf("Apply(%q) = %+v, want an invalid error", data, res)
		}
	}
	if f.state.Load() != old {
		t.Errorf("undecodable commands published a state")
	}
	if err := newFSM().Restore(io.NopCloser(bytes.NewReader([]byte("{not json")))); !errs.Is(err, errs.Invalid) {
		t.Errorf("Restore of garbage: %v, want an invalid error", err)
	}
}
