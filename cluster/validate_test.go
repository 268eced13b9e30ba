package cluster

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/rs/zerolog"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

// populated is a state with members, VDIs, a snapshot, a clone and a dead
// image: something for commands and snapshots to be checked against.
func populated(t testing.TB) *State {
	t.Helper()
	m := func(id string) Member { return Member{ID: idOf(id), Addr: id + ":7000", Store: "s" + id, Weight: 1024} }
	st, err := StateAfter(
		Command{Op: CmdMembers, Members: []Member{m("a"), m("b"), m("c")}},
		Command{Op: CmdFormat, Copies: 2},
		Command{Op: CmdVDICreate, Name: "v", Size: 1 << 30},
		Command{Op: CmdVDICreate, Name: "w", Size: 1 << 20},
		Command{Op: CmdSnapshot, Name: "v", Tag: "s1"},
		Command{Op: CmdClone, Source: "v@s1", Name: "c"},
		Command{Op: CmdVDIDelete, Name: "v"},
		Command{Op: CmdVDILock, Name: "w", Mount: "m1", Node: "a"},
	)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func encodeState(t testing.TB, s *State) []byte {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRestoreRefusesBadStates: snapshots with null entries, entries filed
// under another name, unsorted or oversized member lists and out-of-range
// fields are refused, and the state machine keeps the state it had.
func TestRestoreRefusesBadStates(t *testing.T) {
	good := encodeState(t, populated(t))
	f := newFSM()
	if err := f.Restore(io.NopCloser(bytes.NewReader(good))); err != nil {
		t.Fatalf("a good snapshot is refused: %v", err)
	}
	before := f.state.Load()
	many := `[` + strings.Repeat(`{"id":"x","addr":"x"},`, maxMembers) + `{"id":"y","addr":"y"}]`
	for name, js := range map[string]string{
		"null VDI":            `{"vdis":{"x":null}}`,
		"null snapshot":       `{"vdis":{},"snaps":{"x@t":null}}`,
		"null dead image":     `{"vdis":{},"dead":{"5":null}}`,
		"VDI under wrong key": `{"copies":1,"vdis":{"x":{"name":"y","id":1,"copies":1}}}`,
		"zero copies VDI":     `{"copies":1,"vdis":{"x":{"name":"x","id":1,"copies":0}}}`,
		"VDI ID 0":            `{"copies":1,"vdis":{"x":{"name":"x","id":0,"copies":1}}}`,
		"huge VDI":            `{"copies":1,"vdis":{"x":{"name":"x","id":1,"copies":1,"size":18446744073709551615}}}`,
		"writable in snaps":   `{"copies":1,"vdis":{},"snaps":{"x":{"name":"x","id":1,"copies":1}}}`,
		"unsorted members":    `{"vdis":{},"members":[{"id":"b","addr":"b"},{"id":"a","addr":"a"}]}`,
		"duplicate members":   `{"vdis":{},"members":[{"id":"a","addr":"a"},{"id":"a","addr":"a"}]}`,
		"empty member ID":     `{"vdis":{},"members":[{"id":"","addr":"a"}]}`,
		"too many members":    `{"vdis":{},"members":` + many + `}`,
		"copies 1000":         `{"vdis":{},"copies":1000}`,
		"history ahead":       `{"vdis":{},"epoch":1,"history":[{"epoch":2,"members":[]}]}`,
		"history gap":         `{"vdis":{},"epoch":9,"history":[{"epoch":2,"members":[]},{"epoch":4,"members":[]}]}`,
		"bad zone":            `{"vdis":{},"members":[{"id":"a","addr":"a","zone":"/etc"}]}`,
		"bad recovery":        `{"vdis":{},"recovery":{"max_parallel":100000}}`,
		"not JSON":            `{"vdis":`,
		"long token":          `{"vdis":{},"recent":[{"token":"` + strings.Repeat("t", 1000) + `"}]}`,
	} {
		err := f.Restore(io.NopCloser(strings.NewReader(js)))
		if !errs.Is(err, errs.Invalid) && !errs.Is(err, errs.TooLarge) {
			t.Errorf("%s: Restore = %v, want it refused as invalid", name, err)
		}
		if f.state.Load() != before {
			t.Fatalf("%s: a refused snapshot changed the state", name)
		}
	}
}

// TestCommandsOutOfBounds: commands with oversized fields, or members on a
// command that takes none, are refused before they are applied.
func TestCommandsOutOfBounds(t *testing.T) {
	s := populated(t)
	long := strings.Repeat("x", 1000)
	many := make([]Member, maxMembers+1)
	for i := range many {
		many[i] = Member{ID: idOf("n" + strings.Repeat("0", 5) + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676%26))), Addr: "x"}
	}
	for name, c := range map[string]Command{
		"long token":       {Op: CmdVDICreate, Name: "n1", Size: 1, Token: long},
		"long session":     {Op: CmdVDILock, Name: "w", Mount: "m2", Node: "a", Session: long},
		"long mount":       {Op: CmdVDILock, Name: "w", Mount: idMount(long), Node: "a"},
		"members on lock":  {Op: CmdVDILock, Name: "w", Mount: "m1", Node: "a", Members: []Member{{ID: "evil", Addr: "x"}}},
		"too many members": {Op: CmdMembers, Members: many},
		"long op":          {Op: long},
	} {
		n, r := apply(s, &c)
		if r.Err == nil || n != s {
			t.Errorf("%s: applied (err %v)", name, r.Err)
		}
	}
}

// TestBadSnapshotSetAside: a snapshot that does not validate, saved by
// raft before it was refused, is moved aside at the next start, and the
// good one before it stays for raft to start from.
func TestBadSnapshotSetAside(t *testing.T) {
	dir := t.TempDir()
	store, err := raft.NewFileSnapshotStore(dir, 3, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	save := func(index uint64, data []byte) string {
		sink, err := store.Create(raft.SnapshotVersionMax, index, 1, raft.Configuration{}, 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sink.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := sink.Close(); err != nil {
			t.Fatal(err)
		}
		return sink.ID()
	}
	good := save(10, encodeState(t, populated(t)))
	bad := save(20, []byte(`{"vdis":{"x":null}}`))
	c := &Cluster{cfg: Config{Dir: dir}, log: zerolog.Nop()}
	c.setAsideBadSnapshots(store)
	list, err := store.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != good {
		t.Fatalf("after setting aside: snapshots %v, want only %s", list, good)
	}
	if _, err := os.Stat(filepath.Join(dir, "snapshots-rejected", bad)); err != nil {
		t.Fatalf("the refused snapshot is not kept aside: %v", err)
	}
}

// FuzzApplyCommand: no command, however malformed, panics the state
// machine, and every state it publishes validates (as a snapshot of it
// would have to, on every other node).
func FuzzApplyCommand(f *testing.F) {
	for _, c := range []Command{
		{Op: CmdVDICreate, Name: "n", Size: 1 << 20},
		{Op: CmdVDIDelete, Name: "w"},
		{Op: CmdVDIResize, Name: "w", Size: 1 << 30},
		{Op: CmdVDILock, Name: "c", Mount: "m", Node: "b"},
		{Op: CmdVDIUnlock, Name: "w"},
		{Op: CmdSnapshot, Name: "w", Tag: "t"},
		{Op: CmdClone, Source: "v@s1", Name: "c2"},
		{Op: CmdRollback, Name: "c", Tag: "s1"},
		{Op: CmdSnapDelete, Name: "v", Tag: "s1"},
		{Op: CmdPurge, Image: 1},
		{Op: CmdRecovery, Recovery: &RecoveryConf{MaxRate: 1}},
		{Op: CmdMembers, Members: []Member{{ID: "a", Addr: "a"}, {ID: "z", Addr: "z", Zone: "r1", Weight: 1 << 40}}},
	} {
		b, _ := json.Marshal(c)
		f.Add(b)
	}
	f.Add([]byte(`{"op":"members","members":[{"id":"a"},{"id":"a"}]}`))
	f.Add([]byte(`{"op":"recovery","recovery":null}`))
	f.Add([]byte(`{"op":"vdi.clone","source":"@","name":"x"}`))
	base := populated(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		fsm := newFSM()
		fsm.publish(base)
		res := fsm.Apply(&raft.Log{Index: 100, Data: data})
		if _, ok := res.(Result); !ok {
			t.Fatalf("Apply returned %T", res)
		}
		s := fsm.state.Load()
		if err := s.validate(); err != nil {
			t.Fatalf("after %q the state does not validate: %v", data, err)
		}
		back, err := decodeSnapshot(bytes.NewReader(encodeState(t, s)))
		if err != nil {
			t.Fatalf("after %q the state's snapshot is refused: %v", data, err)
		}
		back.derive()
	})
}

// FuzzRestore: no snapshot, however malformed, panics the state machine;
// one it accepts can be used (derived, placed, changed by a command).
func FuzzRestore(f *testing.F) {
	f.Add(encodeState(f, populated(f)))
	f.Add([]byte(`{"vdis":{"x":null}}`))
	f.Add([]byte(`{"vdis":{},"snaps":{"a@b":{"name":"a","tag":"b","id":3,"copies":1}},"dead":{"4":{"copies":1}}}`))
	f.Add([]byte(`{"members":[{"id":"a","addr":"a","weight":1099511627776},{"id":"b","addr":"b"}],"copies":2,"vdis":{}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		fsm := newFSM()
		if err := fsm.Restore(io.NopCloser(bytes.NewReader(data))); err != nil {
			return
		}
		s := fsm.state.Load()
		var buf [4]Member
		_ = s.Placement(1, 3, buf[:0])
		for _, v := range s.VDIs {
			_, _ = s.Image(v.Image)
		}
		fsm.Apply(&raft.Log{Index: s.Index + 1, Data: []byte(`{"op":"vdi.create","name":"fz","size":1}`)})
		fsm.Apply(&raft.Log{Index: s.Index + 2, Data: []byte(`{"op":"vdi.snapshot","name":"fz","tag":"t"}`)})
	})
}

func idOf(s string) ids.NodeID     { return ids.NodeID(s) }
func idMount(s string) ids.MountID { return ids.MountID(s) }
