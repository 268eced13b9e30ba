package e2e

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/client"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
)

// TestSnapshotRandomModel runs a few thousand random operations (write,
// discard, snapshot, clone, rollback, delete, read) against a real cluster
// and an in-memory model of every VDI and snapshot, and compares every
// read. At the end everything is deleted and no object may be left.
//
// Replay a failure with SNAP_SEED=<seed printed by the test>.
func TestSnapshotRandomModel(t *testing.T) {
	parallel(t)
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("SNAP_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("SNAP_SEED: %v", err)
		}
		seed = v
	}
	t.Logf("seed %d (replay with SNAP_SEED=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	ops := 3000
	if testing.Short() {
		ops = 500
	}

	c := NewCluster(t, 3, 3)
	// One context for all 3,000 operations, a guard against a hang only:
	// they take 70-120 s on 2 busy vCPUs, and a slow hour must not fail
	// the model.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// Writes and reads of writable VDIs go through the writer's gateway
	// (another gateway may serve a slightly old index, as documented);
	// snapshots are read through any node.
	w := newClient(t, c.Nodes[0].Addr())
	readers := []*client.Client{w}
	for _, n := range c.Nodes[1:] {
		readers = append(readers, newClient(t, n.Addr()))
	}

	const size = 3*objSize + 512<<10 // a last object cut short
	vdis := map[string][]byte{}      // writable VDIs, locked by w
	snaps := map[string][]byte{}     // NAME@TAG
	handles := map[string]uint32{}   // handle of each
	next := 0
	counts := map[string]int{}

	lock := func(name string) {
		t.Helper()
		v, err := w.Lock(ctx, name)
		if err != nil {
			t.Fatalf("lock %s: %v", name, err)
		}
		handles[name] = uint32(v.ID)
	}
	admin := func(req proto.AdminRequest, out any) {
		t.Helper()
		if err := w.Admin(ctx, req, out); err != nil {
			t.Fatalf("%s %s %s: %v", req.Cmd, req.Name, req.Tag, err)
		}
	}
	newVDI := func() {
		name := fmt.Sprintf("v%d", next)
		next++
		admin(proto.AdminRequest{Cmd: proto.AdminVDICreate, Name: name, Size: uint64(size)}, nil)
		vdis[name] = make([]byte, size)
		lock(name)
	}
	pick := func(m map[string][]byte) string {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		return keys[rng.IntN(len(keys))]
	}
	randRange := func() (int64, int) {
		switch r := rng.IntN(10); {
		case r < 5:
			n := 1 + rng.IntN(16<<10)
			return rng.Int64N(size - int64(n) + 1), n
		case r < 8: // across an object boundary
			b := int64(1+rng.IntN(3)) * objSize
			off := b - 1 - rng.Int64N(8192)
			return off, int(min(b+rng.Int64N(8192)+1, size) - off)
		default:
			n := 1 + rng.IntN(1<<20)
			return rng.Int64N(size - int64(n) + 1), n
		}
	}
	check := func(what string, got, want []byte) {
		t.Helper()
		if !bytes.Equal(got, want) {
			t.Fatalf("seed %d, %s: %s (operations so far: %v)", seed, what, firstDiff(got, want), counts)
		}
	}

	noise := make([]byte, 4<<20) // writes take slices of it
	for j := range noise {
		noise[j] = byte(rng.Uint32())
	}
	newVDI()
	spent := map[string]time.Duration{}
	for i := 0; i < ops; i++ {
		before := maps.Clone(counts)
		start := time.Now()
		r := rng.IntN(100)
		switch {
		case r < 35 || len(vdis) == 0 && r < 60: // write
			if len(vdis) == 0 {
				newVDI()
			}
			name := pick(vdis)
			off, n := randRange()
			data := noise[rng.IntN(len(noise)-n):][:n]
			if err := w.WriteAt(ctx, idOf(handles, name), data, off, false); err != nil {
				t.Fatalf("seed %d: write %s [%d,+%d): %v", seed, name, off, n, err)
			}
			copy(vdis[name][off:], data)
			counts["write"]++
		case r < 40: // discard (punch or zero range)
			if len(vdis) == 0 {
				continue
			}
			name := pick(vdis)
			off, n := randRange()
			if err := w.Discard(ctx, idOf(handles, name), off, int64(n), rng.IntN(2) == 0); err != nil {
				t.Fatalf("seed %d: discard %s [%d,+%d): %v", seed, name, off, n, err)
			}
			clear(vdis[name][off : off+int64(n)])
			counts["discard"]++
		case r < 60: // read
			var name string
			var want []byte
			cl := w
			if len(snaps) > 0 && rng.IntN(2) == 0 {
				name = pick(snaps)
				want = snaps[name]
				cl = readers[rng.IntN(len(readers))]
			} else if len(vdis) > 0 {
				name = pick(vdis)
				want = vdis[name]
			} else {
				continue
			}
			off, n := randRange()
			got := make([]byte, n)
			if err := cl.ReadAt(ctx, idOf(handles, name), got, off); err != nil {
				t.Fatalf("seed %d: read %s [%d,+%d): %v", seed, name, off, n, err)
			}
			check(fmt.Sprintf("read %s [%d,+%d)", name, off, n), got, want[off:off+int64(n)])
			counts["read"]++
		case r < 70: // snapshot
			if len(vdis) == 0 || len(snaps) >= 24 {
				continue
			}
			name := pick(vdis)
			tag := fmt.Sprintf("t%d", next)
			next++
			var v proto.VDIInfo
			admin(proto.AdminRequest{Cmd: proto.AdminVDISnapshot, Name: name, Tag: tag}, &v)
			snaps[name+"@"+tag] = bytes.Clone(vdis[name])
			handles[name+"@"+tag] = uint32(v.ID)
			counts["snapshot"]++
		case r < 77: // clone
			if len(snaps) == 0 || len(vdis) >= 8 {
				continue
			}
			src := pick(snaps)
			name := fmt.Sprintf("v%d", next)
			next++
			admin(proto.AdminRequest{Cmd: proto.AdminVDIClone, Source: src, Name: name}, nil)
			vdis[name] = bytes.Clone(snaps[src])
			lock(name)
			counts["clone"]++
		case r < 83: // rollback to one of the VDI's snapshots
			var cands []string
			for s := range snaps {
				if n, _, _ := splitFull(s); vdis[n] != nil {
					cands = append(cands, s)
				}
			}
			if len(cands) == 0 {
				continue
			}
			slices.Sort(cands)
			s := cands[rng.IntN(len(cands))]
			name, tag, _ := splitFull(s)
			if err := w.Unlock(ctx, name); err != nil {
				t.Fatal(err)
			}
			admin(proto.AdminRequest{Cmd: proto.AdminVDIRollback, Name: name, Tag: tag}, nil)
			vdis[name] = bytes.Clone(snaps[s])
			lock(name)
			counts["rollback"]++
		case r < 90: // delete a VDI or a snapshot
			if len(snaps) > 0 && (len(vdis) == 0 || rng.IntN(2) == 0) {
				s := pick(snaps)
				name, tag, _ := splitFull(s)
				admin(proto.AdminRequest{Cmd: proto.AdminSnapDelete, Name: name, Tag: tag}, nil)
				delete(snaps, s)
			} else if len(vdis) > 1 {
				name := pick(vdis)
				if err := w.Unlock(ctx, name); err != nil {
					t.Fatal(err)
				}
				admin(proto.AdminRequest{Cmd: proto.AdminVDIDelete, Name: name}, nil)
				delete(vdis, name)
			} else {
				continue
			}
			counts["delete"]++
		case r < 93: // a new VDI
			if len(vdis) < 8 {
				newVDI()
				counts["create"]++
			}
		default: // flush
			for name := range vdis {
				if err := w.Flush(ctx, idOf(handles, name)); err != nil {
					t.Fatal(err)
				}
				break
			}
			counts["flush"]++
		}
		for k := range counts {
			if counts[k] != before[k] {
				spent[k] += time.Since(start)
			}
		}
	}
	t.Logf("operations: %v; %d VDIs and %d snapshots at the end", counts, len(vdis), len(snaps))
	t.Logf("time spent: %v", spent)

	// Everything, whole, through every node for snapshots.
	for name, want := range snaps {
		for _, cl := range readers {
			got := make([]byte, size)
			if err := cl.ReadAt(ctx, idOf(handles, name), got, 0); err != nil {
				t.Fatal(err)
			}
			check("final read of "+name, got, want)
		}
	}
	for name, want := range vdis {
		got := make([]byte, size)
		if err := w.ReadAt(ctx, idOf(handles, name), got, 0); err != nil {
			t.Fatal(err)
		}
		check("final read of "+name, got, want)
	}
	// Copies away from deleted images free the old objects in the
	// background.
	var problems []string
	if !waitFor(30*time.Second, func() bool {
		problems = objectsVsReferences(t, c, w)
		return len(problems) == 0
	}) {
		t.Fatalf("seed %d: objects vs references: %v", seed, problems)
	}
	for s := range snaps {
		name, tag, _ := splitFull(s)
		admin(proto.AdminRequest{Cmd: proto.AdminSnapDelete, Name: name, Tag: tag}, nil)
	}
	for name := range vdis {
		if err := w.Unlock(ctx, name); err != nil {
			t.Fatal(err)
		}
		admin(proto.AdminRequest{Cmd: proto.AdminVDIDelete, Name: name}, nil)
	}
	if files := c.ObjectFiles(); len(files) != 0 {
		t.Errorf("seed %d: %d objects left after deleting everything", seed, len(files))
	}
}

func idOf(m map[string]uint32, name string) ids.VDIID { return ids.VDIID(m[name]) }

func splitFull(s string) (name, tag string, ok bool) {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '@' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}
