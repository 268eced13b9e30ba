package objstore

import (
	"bytes"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/ids"
)

// reboot plays a power loss: the store is dropped as a killed process
// leaves it, every file change not synced since is undone (ffs tracks
// them), and the system comes back with a new boot ID. The store is then
// opened again.
func reboot(t *testing.T, s *Store, ffs *FaultFS, dir string, opts Options) *Store {
	t.Helper()
	s.crash()
	if err := ffs.PowerLoss(); err != nil {
		t.Fatalf("PowerLoss: %v", err)
	}
	bootID[0]++
	return open(t, dir, opts)
}

func keepBootID(t *testing.T) {
	old := bootID
	t.Cleanup(func() { bootID = old })
}

func block(c byte) []byte { return bytes.Repeat([]byte{c}, SumBlock) }

// TestJournalPowerLoss: a Sync of small writes fdatasyncs only the log,
// which carries their blocks. After a power loss that undid everything
// not synced, Open writes them back: the synced data is there, nothing
// reads as rot, and a later change (a punch fdatasyncs its object; a
// removal and a new creation) is not undone by an older journaled block.
func TestJournalPowerLoss(t *testing.T) {
	keepBootID(t)
	dir := t.TempDir()
	ffs := NewFaultFS(nil)
	ffs.TrackDurability()
	opts := Options{ObjectSize: testObjSize, FS: ffs}
	s := open(t, dir, opts)
	const a, b, c = ids.ObjectID(1), ids.ObjectID(2), ids.ObjectID(3)
	for _, oid := range []ids.ObjectID{a, b, c} {
		mustWrite(t, s, oid, 0, pattern(oid, 0, testObjSize, 1), 1, 1)
	}
	mustSync(t, s)

	mustWrite(t, s, a, SumBlock, block('A'), 2, 1)
	mustWrite(t, s, a, 3*SumBlock+10, []byte("small"), 3, 1)
	mustWrite(t, s, b, 2*SumBlock, block('X'), 2, 1)
	mustWrite(t, s, c, 5*SumBlock, block('C'), 2, 1)
	mustSync(t, s)
	if err := s.Punch(b, 2*SumBlock, SumBlock, 3, 1); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(c); err != nil {
		t.Fatal(err)
	}
	mustSync(t, s)
	mustWrite(t, s, c, 0, pattern(c, 0, testObjSize, 2), 4, 1)
	mustSync(t, s)
	mustWrite(t, s, a, SumBlock, block('Z'), 5, 1) // never synced

	s = reboot(t, s, ffs, dir, opts)
	wantA := pattern(a, 0, testObjSize, 1)
	copy(wantA[SumBlock:], block('A'))
	copy(wantA[3*SumBlock+10:], "small")
	wantB := pattern(b, 0, testObjSize, 1)
	clear(wantB[2*SumBlock : 3*SumBlock])
	for _, w := range []struct {
		oid  ids.ObjectID
		data []byte
		ver  ids.Version
	}{{a, wantA, 3}, {b, wantB, 3}, {c, pattern(c, 0, testObjSize, 2), 4}} {
		got, m := mustRead(t, s, w.oid, 0, testObjSize)
		if !bytes.Equal(got, w.data) || m.Version != w.ver {
			t.Errorf("%v after the power loss: version %d (want %d), data equal %v", w.oid, m.Version, w.ver, bytes.Equal(got, w.data))
		}
	}
	if s.Corruptions() != 0 {
		t.Errorf("%d corruptions after the power loss", s.Corruptions())
	}
	// The blocks written back are durable now: another power loss keeps them.
	s = reboot(t, s, ffs, dir, opts)
	if got, _ := mustRead(t, s, a, 0, testObjSize); !bytes.Equal(got, wantA) {
		t.Error("a lost its journaled blocks at a second power loss")
	}
}

// TestJournalSameBoot: after a crash of the process alone (the same boot),
// the page cache kept every write: Open does not write older journaled
// blocks over a newer write that was never synced, but it does fdatasync
// their files before it drops the log, so a power loss after the restart
// loses nothing that was synced.
func TestJournalSameBoot(t *testing.T) {
	keepBootID(t)
	dir := t.TempDir()
	ffs := NewFaultFS(nil)
	ffs.TrackDurability()
	opts := Options{ObjectSize: testObjSize, FS: ffs}
	s := open(t, dir, opts)
	const a = ids.ObjectID(1)
	mustWrite(t, s, a, 0, pattern(a, 0, testObjSize, 1), 1, 1)
	mustSync(t, s)
	mustWrite(t, s, a, SumBlock, block('A'), 2, 1)
	mustSync(t, s)
	mustWrite(t, s, a, SumBlock, block('B'), 3, 1)
	s.crash()
	s = open(t, dir, opts)
	if got, m := mustRead(t, s, a, SumBlock, SumBlock); !bytes.Equal(got, block('B')) || m.Version != 2 {
		t.Fatalf("after a crash: %q... at version %d, want the unsynced B at the synced version 2", got[:4], m.Version)
	}
	s = reboot(t, s, ffs, dir, opts)
	if got, _ := mustRead(t, s, a, SumBlock, SumBlock); !bytes.Equal(got, block('B')) {
		t.Fatalf("a power loss after the restart: %q..., want B (Open synced it)", got[:4])
	}
}

// TestJournalModel runs random small and large writes, punches, Syncs and
// power losses, with a log small enough to checkpoint often: after every
// power loss each object holds exactly what it held at the last Sync, with
// that Sync's version. Replay a failure with -seed=N or SHEEP_SEED=N.
func TestJournalModel(t *testing.T) {
	keepBootID(t)
	defer func(m int64) { logMax = m }(logMax)
	logMax = 64 << 10
	seed := *seedFlag
	if v := os.Getenv("SHEEP_SEED"); seed == 0 && v != "" {
		seed, _ = strconv.ParseUint(v, 10, 64)
	}
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay with -seed=%d or SHEEP_SEED=%d)", seed, seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed>>32))
	ops := 1500
	if testing.Short() {
		ops = 400
	}
	dir := t.TempDir()
	ffs := NewFaultFS(nil)
	ffs.TrackDurability()
	opts := Options{ObjectSize: testObjSize, MaxOpenFiles: 2, FS: ffs}
	s := open(t, dir, opts)
	const objects = 4
	data := make([][]byte, objects)
	vers := make([]ids.Version, objects)
	for i := range objects {
		data[i] = pattern(ids.ObjectID(i), 0, testObjSize, 1)
		mustWrite(t, s, ids.ObjectID(i), 0, data[i], 1, 1)
		vers[i] = 1
	}
	mustSync(t, s)
	synced := make([][]byte, objects)
	syncedVers := make([]ids.Version, objects)
	keep := func() {
		for i := range objects {
			synced[i] = bytes.Clone(data[i])
		}
		copy(syncedVers, vers)
	}
	keep()
	ver := ids.Version(1)
	for op := range ops {
		i := rng.IntN(objects)
		oid := ids.ObjectID(i)
		ver++
		switch r := rng.IntN(100); {
		case r < 50: // small, often unaligned
			off := rng.Int64N(testObjSize - 1)
			n := 1 + rng.Int64N(min(2*SumBlock, testObjSize-off))
			buf := make([]byte, n)
			for j := range buf {
				buf[j] = byte(rng.UintN(256))
			}
			mustWrite(t, s, oid, off, buf, ver, 1)
			copy(data[i][off:], buf)
			vers[i] = ver
		case r < 58: // the whole object
			buf := pattern(oid, 0, testObjSize, byte(op))
			mustWrite(t, s, oid, 0, buf, ver, 1)
			copy(data[i], buf)
			vers[i] = ver
		case r < 65:
			off := rng.Int64N(testObjSize)
			n := rng.Int64N(testObjSize - off + 1)
			if err := s.Punch(oid, off, n, ver, 1); err != nil {
				t.Fatalf("op %d: Punch: %v", op, err)
			}
			clear(data[i][off : off+n])
			vers[i] = ver
		case r < 85:
			mustSync(t, s)
			keep()
		case r < 90: // the process dies, the page cache stays
			s.crash()
			s = open(t, dir, opts)
			for j := range objects {
				got, m := mustRead(t, s, ids.ObjectID(j), 0, testObjSize)
				if !bytes.Equal(got, data[j]) || m.Version != syncedVers[j] {
					t.Fatalf("op %d: after a crash %v is at version %d (synced %d), data as written: %v",
						op, ids.ObjectID(j), m.Version, syncedVers[j], bytes.Equal(got, data[j]))
				}
			}
			// What of the unsynced changes is durable now is not known:
			// write every object whole, so that the next Sync says.
			for j := range objects {
				ver++
				mustWrite(t, s, ids.ObjectID(j), 0, data[j], ver, 1)
				vers[j] = ver
			}
			mustSync(t, s)
			keep()
		default:
			s = reboot(t, s, ffs, dir, opts)
			for j := range objects {
				got, m := mustRead(t, s, ids.ObjectID(j), 0, testObjSize)
				if !bytes.Equal(got, synced[j]) || m.Version != syncedVers[j] {
					t.Fatalf("op %d: after a power loss %v is at version %d (synced %d), data as synced: %v",
						op, ids.ObjectID(j), m.Version, syncedVers[j], bytes.Equal(got, synced[j]))
				}
				data[j] = bytes.Clone(synced[j])
				vers[j] = syncedVers[j]
			}
			if s.Corruptions() != 0 {
				t.Fatalf("op %d: %d corruptions after a power loss", op, s.Corruptions())
			}
		}
	}
}
