package cluster

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

// stateJSON is the serialised form of s, used to compare states and to
// catch changes to a State that must stay immutable.
func stateJSON(t *testing.T, s *State) string {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatalf("encode state: %v", err)
	}
	return string(b)
}

func membersOf(nodes ...ids.NodeID) []Member {
	ms := make([]Member, len(nodes))
	for i, n := range nodes {
		ms[i] = Member{ID: n, Addr: "10.0.0." + string(n) + ":7000"}
	}
	return ms
}

func cmdMembers(nodes ...ids.NodeID) *Command {
	return &Command{Op: CmdMembers, Members: membersOf(nodes...), Time: 100}
}

func cmdFormat(copies int) *Command { return &Command{Op: CmdFormat, Copies: copies, Time: 200} }

func cmdCreate(name string, size uint64) *Command {
	return &Command{Op: CmdVDICreate, Name: name, Size: size, Time: 300}
}

func cmdDelete(name string) *Command { return &Command{Op: CmdVDIDelete, Name: name} }

func cmdResize(name string, size uint64, mount ids.MountID) *Command {
	return &Command{Op: CmdVDIResize, Name: name, Size: size, Mount: mount}
}

func cmdLock(name string, mount ids.MountID, node ids.NodeID) *Command {
	return &Command{Op: CmdVDILock, Name: name, Mount: mount, Node: node, Time: 400}
}

func cmdUnlock(name string, mount ids.MountID) *Command {
	return &Command{Op: CmdVDIUnlock, Name: name, Mount: mount}
}

func emptyState() *State { return newFSM().state.Load() }

// mustApply applies cmds in order and fails the test on any error.
func mustApply(t *testing.T, s *State, cmds ...*Command) *State {
	t.Helper()
	for _, c := range cmds {
		n, r := apply(s, c)
		if r.Err != nil {
			t.Fatalf("apply %+v: %v", *c, r.Err)
		}
		s = n
	}
	return s
}

// clusterABC is a formatted cluster of nodes a, b and c with two copies.
func clusterABC(t *testing.T) *State {
	return mustApply(t, emptyState(), cmdMembers("a", "b", "c"), cmdFormat(2))
}

// checkConsistent checks the invariants every published State keeps.
func checkConsistent(t *testing.T, s *State) {
	t.Helper()
	if len(s.byID) != len(s.VDIs)+len(s.Snaps) {
		t.Errorf("byID has %d entries for %d VDIs and %d snapshots", len(s.byID), len(s.VDIs), len(s.Snaps))
	}
	for name, v := range s.VDIs {
		if v.Name != name {
			t.Errorf("VDI %q is filed under %q", v.Name, name)
		}
		if w, ok := s.VDIByID(v.ID); !ok || w != v {
			t.Errorf("VDIByID(%v) = %v, %v; want VDI %q", v.ID, w, ok, name)
		}
		if v.ID == 0 || v.ID > ids.MaxVDIID {
			t.Errorf("VDI %q has ID %v out of range", name, v.ID)
		}
		if v.Lock != nil {
			if _, ok := s.Member(v.Lock.Node); !ok {
				t.Errorf("VDI %q is locked through %s, not a member of epoch %v", name, v.Lock.Node, s.Epoch)
			}
		}
	}
	if !slices.IsSortedFunc(s.Members, func(a, b Member) int { return strings.Compare(string(a.ID), string(b.ID)) }) {
		t.Errorf("members not sorted: %v", s.Members)
	}
	nodes := make([]ids.NodeID, 0, len(s.Members))
	for _, m := range s.Members {
		nodes = append(nodes, m.ID)
		if got, ok := s.Member(m.ID); !ok || got != m {
			t.Errorf("Member(%s) = %v, %v", m.ID, got, ok)
		}
	}
	nodes = slices.Compact(nodes)
	if got := s.Ring().Nodes(); !slices.Equal(got, nodes) && len(nodes)+len(got) > 0 {
		t.Errorf("ring nodes %v, members %v", got, nodes)
	}
	if len(s.History) > maxEpochHistory {
		t.Errorf("%d history records, more than %d", len(s.History), maxEpochHistory)
	}
	if s.Epoch > 0 && (len(s.History) == 0 || s.History[len(s.History)-1].Epoch != s.Epoch) {
		t.Errorf("epoch %v but history ends with %v", s.Epoch, s.History)
	}
}

func TestApply(t *testing.T) {
	const gib = 1 << 30
	tests := []applyCase{
		{name: "format", setup: func(t *testing.T) *State { return mustApply(t, emptyState(), cmdMembers("a")) },
			cmd: cmdFormat(3),
			check: func(t *testing.T, _, s *State, _ Result) {
				if !s.Formatted() || s.Copies != 3 || s.Format != 200 || s.NextVDI != 1 {
					t.Errorf("after format: copies %d, time %d, next %v", s.Copies, s.Format, s.NextVDI)
				}
			}},
		{name: "format twice", setup: clusterABC, cmd: cmdFormat(2), kind: errs.Exists},
		{name: "format twice other copies", setup: clusterABC, cmd: cmdFormat(3), kind: errs.Exists},
		{name: "format 0 copies", setup: func(*testing.T) *State { return emptyState() }, cmd: cmdFormat(0), kind: errs.Invalid},
		{name: "format negative copies", setup: func(*testing.T) *State { return emptyState() }, cmd: cmdFormat(-1), kind: errs.Invalid},
		{name: "format too many copies", setup: func(*testing.T) *State { return emptyState() }, cmd: cmdFormat(MaxCopies + 1), kind: errs.Invalid},
		{name: "format max copies", setup: func(*testing.T) *State { return emptyState() }, cmd: cmdFormat(MaxCopies)},
		{name: "create unformatted", setup: func(*testing.T) *State { return emptyState() }, cmd: cmdCreate("a", gib), kind: errs.NotReady},
		{name: "create empty name", setup: clusterABC, cmd: cmdCreate("", gib), kind: errs.Invalid},
		{name: "create 256-byte name", setup: clusterABC, cmd: cmdCreate(strings.Repeat("n", 256), gib), kind: errs.Invalid},
		{name: "create 255-byte name", setup: clusterABC, cmd: cmdCreate(strings.Repeat("n", 255), gib)},
		{name: "create name with slash", setup: clusterABC, cmd: cmdCreate("a/b", gib), kind: errs.Invalid},
		{name: "create name slash only", setup: clusterABC, cmd: cmdCreate("/", gib), kind: errs.Invalid},
		{name: "create name leading dot", setup: clusterABC, cmd: cmdCreate(".a", gib), kind: errs.Invalid},
		{name: "create name dot dot", setup: clusterABC, cmd: cmdCreate("..", gib), kind: errs.Invalid},
		{name: "create name leading dash", setup: clusterABC, cmd: cmdCreate("-a", gib), kind: errs.Invalid},
		{name: "create name with space", setup: clusterABC, cmd: cmdCreate("a b", gib), kind: errs.Invalid},
		{name: "create name with newline", setup: clusterABC, cmd: cmdCreate("a\n", gib), kind: errs.Invalid},
		{name: "create name with NUL", setup: clusterABC, cmd: cmdCreate("a\x00", gib), kind: errs.Invalid},
		{name: "create non-ASCII name", setup: clusterABC, cmd: cmdCreate("é", gib), kind: errs.Invalid},
		{name: "create name of every allowed sign", setup: clusterABC, cmd: cmdCreate("_Az09.+-x", gib)},
		{name: "create size over max", setup: clusterABC, cmd: cmdCreate("a", MaxVDISize+1), kind: errs.TooLarge},
		{name: "create size max uint64", setup: clusterABC, cmd: cmdCreate("a", ^uint64(0)), kind: errs.TooLarge},
		{name: "create size max", setup: clusterABC, cmd: cmdCreate("a", MaxVDISize)},
		{name: "create size 0", setup: clusterABC, cmd: cmdCreate("a", 0)},
		{name: "create copies over max", setup: clusterABC, cmd: &Command{Op: CmdVDICreate, Name: "a", Copies: MaxCopies + 1}, kind: errs.Invalid},
		{name: "create negative copies", setup: clusterABC, cmd: &Command{Op: CmdVDICreate, Name: "a", Copies: -2}, kind: errs.Invalid},
		{name: "create default copies", setup: clusterABC, cmd: cmdCreate("a", gib),
			check: func(t *testing.T, _, s *State, r Result) {
				v := s.VDIs["a"]
				if v == nil || v.Copies != 2 || v.Size != gib || v.ID != 1 || v.Created != 300 || v.Lock != nil {
					t.Errorf("created %+v", v)
				}
				if r.VDI == nil || *r.VDI != *v {
					t.Errorf("result %+v, state %+v", r.VDI, v)
				}
			}},
		{name: "create duplicate", setup: func(t *testing.T) *State { return mustApply(t, clusterABC(t), cmdCreate("a", gib)) },
			cmd: cmdCreate("a", 2*gib), kind: errs.Exists},
		{name: "IDs increase, not reused after delete",
			setup: func(t *testing.T) *State {
				return mustApply(t, clusterABC(t), cmdCreate("a", 0), cmdCreate("b", 0), cmdCreate("c", 0),
					cmdDelete("c"), cmdDelete("a"))
			},
			cmd: cmdCreate("d", 0),
			check: func(t *testing.T, _, s *State, r Result) {
				if r.VDI.ID != 4 || s.NextVDI != 5 {
					t.Errorf("new VDI got ID %v (next %v), want 4: deleted IDs 1 and 3 must not be reused yet", r.VDI.ID, s.NextVDI)
				}
			}},
		{name: "IDs wrap and skip used ones",
			setup: func(t *testing.T) *State {
				s := mustApply(t, clusterABC(t), cmdCreate("one", 0), cmdCreate("two", 0))
				s = s.clone()
				s.NextVDI = ids.MaxVDIID
				s.derive()
				return mustApply(t, s, cmdCreate("max", 0))
			},
			cmd: cmdCreate("wrapped", 0),
			check: func(t *testing.T, _, s *State, r Result) {
				if got := s.VDIs["max"].ID; got != ids.MaxVDIID {
					t.Errorf("VDI after NextVDI=MaxVDIID got ID %v", got)
				}
				if r.VDI.ID != 3 {
					t.Errorf("wrapped ID %v, want 3 (1 and 2 are in use)", r.VDI.ID)
				}
			}},
		{name: "delete", setup: func(t *testing.T) *State { return mustApply(t, clusterABC(t), cmdCreate("a", gib)) },
			cmd: cmdDelete("a"),
			check: func(t *testing.T, _, s *State, r Result) {
				if _, ok := s.VDIs["a"]; ok || len(s.byID) != 0 || r.VDI == nil || r.VDI.Name != "a" {
					t.Errorf("after delete: %v, byID %v, result %+v", s.VDIs, s.byID, r.VDI)
				}
			}},
		{name: "delete missing", setup: clusterABC, cmd: cmdDelete("a"), kind: errs.NotFound},
		{name: "delete locked", setup: func(t *testing.T) *State {
			return mustApply(t, clusterABC(t), cmdCreate("a", gib), cmdLock("a", "m1", "a"))
		}, cmd: cmdDelete("a"), kind: errs.Busy},
		{name: "lock", setup: func(t *testing.T) *State { return mustApply(t, clusterABC(t), cmdCreate("a", gib)) },
			cmd: cmdLock("a", "m1", "b"),
			check: func(t *testing.T, _, s *State, _ Result) {
				if l := s.VDIs["a"].Lock; l == nil || *l != (Lock{Mount: "m1", Node: "b", Since: 400}) {
					t.Errorf("lock %+v", l)
				}
			}},
		{name: "lock missing", setup: clusterABC, cmd: cmdLock("a", "m1", "b"), kind: errs.NotFound},
		{name: "lock through a non-member", setup: func(t *testing.T) *State { return mustApply(t, clusterABC(t), cmdCreate("a", gib)) },
			cmd: cmdLock("a", "m1", "z"), kind: errs.NotReady},
		{name: "lock by a second mount", setup: func(t *testing.T) *State {
			return mustApply(t, clusterABC(t), cmdCreate("a", gib), cmdLock("a", "m1", "a"))
		}, cmd: cmdLock("a", "m2", "a"), kind: errs.Busy},
		{name: "relock by the same mount", setup: func(t *testing.T) *State {
			return mustApply(t, clusterABC(t), cmdCreate("a", gib), cmdLock("a", "m1", "a"))
		}, cmd: cmdLock("a", "m1", "c"),
			check: func(t *testing.T, _, s *State, _ Result) {
				if l := s.VDIs["a"].Lock; l == nil || l.Mount != "m1" || l.Node != "c" {
					t.Errorf("lock %+v, want m1 through c", l)
				}
			}},
		{name: "unlock by a non-holder is a no-op", setup: func(t *testing.T) *State {
			return mustApply(t, clusterABC(t), cmdCreate("a", gib), cmdLock("a", "m1", "a"))
		}, cmd: cmdUnlock("a", "m2"),
			check: func(t *testing.T, before, after *State, r Result) {
				if after != before {
					t.Errorf("unlock by a non-holder published a new state")
				}
				if l := after.VDIs["a"].Lock; l == nil || l.Mount != "m1" {
					t.Errorf("lock %+v, want m1's", l)
				}
				if r.VDI == nil || r.VDI.Lock == nil {
					t.Errorf("result %+v, want the VDI as it is", r.VDI)
				}
			}},
		{name: "unlock unlocked is a no-op", setup: func(t *testing.T) *State { return mustApply(t, clusterABC(t), cmdCreate("a", gib)) },
			cmd: cmdUnlock("a", "m1"),
			check: func(t *testing.T, before, after *State, _ Result) {
				if after != before {
					t.Errorf("unlock of an unlocked VDI published a new state")
				}
			}},
		{name: "unlock by the holder", setup: func(t *testing.T) *State {
			return mustApply(t, clusterABC(t), cmdCreate("a", gib), cmdLock("a", "m1", "a"))
		}, cmd: cmdUnlock("a", "m1"),
			check: func(t *testing.T, _, s *State, _ Result) {
				if l := s.VDIs["a"].Lock; l != nil {
					t.Errorf("still locked: %+v", l)
				}
			}},
		{name: "unlock with no mount releases any holder", setup: func(t *testing.T) *State {
			return mustApply(t, clusterABC(t), cmdCreate("a", gib), cmdLock("a", "m1", "a"))
		}, cmd: cmdUnlock("a", ""),
			check: func(t *testing.T, _, s *State, _ Result) {
				if l := s.VDIs["a"].Lock; l != nil {
					t.Errorf("still locked: %+v", l)
				}
			}},
		{name: "unlock missing", setup: clusterABC, cmd: cmdUnlock("a", "m1"), kind: errs.NotFound},
		{name: "resize grow", setup: func(t *testing.T) *State { return mustApply(t, clusterABC(t), cmdCreate("a", gib)) },
			cmd: cmdResize("a", 2*gib, ""),
			check: func(t *testing.T, _, s *State, r Result) {
				if s.VDIs["a"].Size != 2*gib || r.VDI.Size != 2*gib {
					t.Errorf("size %d, result %d", s.VDIs["a"].Size, r.VDI.Size)
				}
			}},
		{name: "grow-only resize to a smaller size changes nothing",
			setup: func(t *testing.T) *State { return mustApply(t, clusterABC(t), cmdCreate("a", 2*gib)) },
			cmd:   &Command{Op: CmdVDIResize, Name: "a", Size: gib, Grow: true},
			check: func(t *testing.T, before, s *State, r Result) {
				if s != before || r.VDI.Size != 2*gib {
					t.Errorf("grow-only resize down: state changed or result size %d", r.VDI.Size)
				}
			}},
		{name: "grow-only resize to a larger size grows",
			setup: func(t *testing.T) *State { return mustApply(t, clusterABC(t), cmdCreate("a", gib)) },
			cmd:   &Command{Op: CmdVDIResize, Name: "a", Size: 3 * gib, Grow: true},
			check: func(t *testing.T, _, s *State, r Result) {
				if s.VDIs["a"].Size != 3*gib {
					t.Errorf("size %d, want %d", s.VDIs["a"].Size, 3*gib)
				}
			}},
		{name: "resize over max", setup: func(t *testing.T) *State { return mustApply(t, clusterABC(t), cmdCreate("a", gib)) },
			cmd: cmdResize("a", MaxVDISize+1, ""), kind: errs.TooLarge},
		{name: "resize missing", setup: clusterABC, cmd: cmdResize("a", gib, ""), kind: errs.NotFound},
		{name: "resize shrink unlocked", setup: func(t *testing.T) *State { return mustApply(t, clusterABC(t), cmdCreate("a", gib)) },
			cmd: cmdResize("a", 0, "")},
		{name: "resize shrink locked by another mount", setup: func(t *testing.T) *State {
			return mustApply(t, clusterABC(t), cmdCreate("a", gib), cmdLock("a", "m1", "a"))
		}, cmd: cmdResize("a", gib/2, "m2"), kind: errs.Busy},
		{name: "resize shrink locked, no mount", setup: func(t *testing.T) *State {
			return mustApply(t, clusterABC(t), cmdCreate("a", gib), cmdLock("a", "m1", "a"))
		}, cmd: cmdResize("a", gib/2, ""), kind: errs.Busy},
		{name: "resize shrink by the holder", setup: func(t *testing.T) *State {
			return mustApply(t, clusterABC(t), cmdCreate("a", gib), cmdLock("a", "m1", "a"))
		}, cmd: cmdResize("a", gib/2, "m1"),
			check: func(t *testing.T, _, s *State, _ Result) {
				if v := s.VDIs["a"]; v.Size != gib/2 || v.Lock == nil || v.Lock.Mount != "m1" {
					t.Errorf("after shrink by holder: %+v", v)
				}
			}},
		{name: "resize grow locked by another mount", setup: func(t *testing.T) *State {
			return mustApply(t, clusterABC(t), cmdCreate("a", gib), cmdLock("a", "m1", "a"))
		}, cmd: cmdResize("a", 2*gib, "m2")},
		{name: "members drop a node and its locks", setup: func(t *testing.T) *State {
			return mustApply(t, clusterABC(t), cmdCreate("x", gib), cmdCreate("y", gib), cmdCreate("z", gib),
				cmdLock("x", "m1", "a"), cmdLock("y", "m2", "b"), cmdLock("z", "m3", "b"))
		}, cmd: &Command{Op: CmdMembers, Members: membersOf("c", "a"), Time: 500},
			check: func(t *testing.T, before, s *State, _ Result) {
				if s.Epoch != before.Epoch+1 {
					t.Errorf("epoch %v -> %v, want exactly one step", before.Epoch, s.Epoch)
				}
				if got := []ids.NodeID{s.Members[0].ID, s.Members[1].ID}; len(s.Members) != 2 || got[0] != "a" || got[1] != "c" {
					t.Errorf("members %v, want a, c sorted", s.Members)
				}
				last := s.History[len(s.History)-1]
				if last.Epoch != s.Epoch || last.Time != 500 || len(last.Members) != 2 {
					t.Errorf("history record %+v", last)
				}
				if len(s.History) != len(before.History)+1 {
					t.Errorf("%d history records, want %d", len(s.History), len(before.History)+1)
				}
				if l := s.VDIs["x"].Lock; l == nil || l.Mount != "m1" {
					t.Errorf("x lost the lock held through a, a live node: %+v", l)
				}
				for _, n := range []string{"y", "z"} {
					if l := s.VDIs[n].Lock; l != nil {
						t.Errorf("%s keeps a lock through b, which left: %+v", n, l)
					}
				}
				if s.Ring().Contains("b") {
					t.Errorf("ring still holds b")
				}
			}},
		{name: "members unchanged keep the epoch", setup: clusterABC,
			cmd: &Command{Op: CmdMembers, Members: membersOf("c", "b", "a"), Time: 999},
			check: func(t *testing.T, before, after *State, _ Result) {
				if after != before || after.Epoch != before.Epoch {
					t.Errorf("same members published epoch %v -> %v", before.Epoch, after.Epoch)
				}
			}},
		{name: "members address change is a new epoch", setup: clusterABC,
			cmd: &Command{Op: CmdMembers, Members: []Member{{ID: "a", Addr: "elsewhere:1"}, {ID: "b", Addr: "10.0.0.b:7000"}, {ID: "c", Addr: "10.0.0.c:7000"}}},
			check: func(t *testing.T, before, after *State, _ Result) {
				if after.Epoch != before.Epoch+1 {
					t.Errorf("epoch %v -> %v", before.Epoch, after.Epoch)
				}
			}},
		{name: "members empty", setup: clusterABC, cmd: &Command{Op: CmdMembers},
			check: func(t *testing.T, before, after *State, _ Result) {
				if after.Epoch != before.Epoch+1 || len(after.Members) != 0 || after.Ring().Len() != 0 {
					t.Errorf("epoch %v, members %v", after.Epoch, after.Members)
				}
			}},
		{name: "unknown command", setup: clusterABC, cmd: &Command{Op: "vdi.explode", Name: "a"}, kind: errs.Invalid},
		{name: "empty command", setup: clusterABC, cmd: &Command{}, kind: errs.Invalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, checkConsistent) })
	}
}

// applyCase is one command applied to a state, for the table tests.
type applyCase struct {
	name  string
	setup func(t *testing.T) *State
	cmd   *Command
	kind  errs.Kind // the error wanted; Other for success
	check func(t *testing.T, before, after *State, r Result)
}

// run applies the case's command and checks what every command must do:
// change neither its input state nor its command, fail with the wanted
// kind leaving the state as it was (or succeed), keep the invariants inv,
// and pass the case's own check.
func (tt applyCase) run(t *testing.T, inv func(*testing.T, *State)) {
	t.Helper()
	before := tt.setup(t)
	beforeJSON := stateJSON(t, before)
	cmdJSON, _ := json.Marshal(tt.cmd)
	after, r := apply(before, tt.cmd)
	if got := stateJSON(t, before); got != beforeJSON {
		t.Fatalf("apply changed its input state:\nbefore %s\nafter  %s", beforeJSON, got)
	}
	if got, _ := json.Marshal(tt.cmd); string(got) != string(cmdJSON) {
		t.Fatalf("apply changed its command: %s -> %s", cmdJSON, got)
	}
	if tt.kind != errs.Other {
		if r.Err == nil {
			t.Fatalf("apply succeeded; want a %v error", tt.kind)
		}
		if k := errs.KindOf(r.Err); k != tt.kind {
			t.Fatalf("apply: %v (kind %v), want kind %v", r.Err, k, tt.kind)
		}
		if after != before {
			t.Fatalf("a failed command returned a new state")
		}
	} else if r.Err != nil {
		t.Fatalf("apply: %v", r.Err)
	}
	inv(t, after)
	if tt.check != nil {
		tt.check(t, before, after, r)
	}
}

func TestCheckNameAndSize(t *testing.T) {
	for _, name := range []string{"a", "A", "0", "_", "a.", "a-", "a+b", "a..b", "vm_01.img", strings.Repeat("x", MaxNameLen)} {
		if err := CheckName(name); err != nil {
			t.Errorf("CheckName(%q): %v", name, err)
		}
	}
	for _, name := range []string{"", ".", "..", ".a", "-a", "+a", "a/b", "/", "a b", "a\x00", "a\n", "ä", "a:b", "a*", strings.Repeat("x", MaxNameLen+1)} {
		if err := CheckName(name); !errs.Is(err, errs.Invalid) {
			t.Errorf("CheckName(%q) = %v, want an invalid error", name, err)
		}
	}
	for _, size := range []uint64{0, 1, 4 << 20, MaxVDISize} {
		if err := CheckSize(size); err != nil {
			t.Errorf("CheckSize(%d): %v", size, err)
		}
	}
	for _, size := range []uint64{MaxVDISize + 1, 1 << 63, ^uint64(0)} {
		if err := CheckSize(size); !errs.Is(err, errs.TooLarge) {
			t.Errorf("CheckSize(%d) = %v, want a too-large error", size, err)
		}
	}
}

// TestEpochHistoryBounded changes the members more often than the history
// keeps: the oldest records go, the newest stay.
func TestEpochHistoryBounded(t *testing.T) {
	s := emptyState()
	for i := range maxEpochHistory + 40 {
		node := ids.NodeID("n" + strings.Repeat("x", i%7) + string(rune('a'+i%26)))
		s = mustApply(t, s, cmdMembers("base", node))
	}
	checkConsistent(t, s)
	if len(s.History) != maxEpochHistory {
		t.Fatalf("%d history records, want %d", len(s.History), maxEpochHistory)
	}
	for i, h := range s.History {
		if want := s.Epoch - ids.Epoch(maxEpochHistory-1-i); h.Epoch != want {
			t.Fatalf("history[%d] is epoch %v, want %v", i, h.Epoch, want)
		}
	}
}

// TestUnlockThroughNode: an unlock naming a node leaves the lock alone once
// the mount has taken it again through another node.
func TestUnlockThroughNode(t *testing.T) {
	s := mustApply(t, clusterABC(t), cmdCreate("v", 1<<20), cmdLock("v", "m1", "a"), cmdLock("v", "m1", "b"))
	s = mustApply(t, s, &Command{Op: CmdVDIUnlock, Name: "v", Mount: "m1", Node: "a"})
	if l := s.VDIs["v"].Lock; l == nil || l.Node != "b" {
		t.Fatalf("after an unlock through a, the lock is %+v, want held through b", l)
	}
	s = mustApply(t, s, &Command{Op: CmdVDIUnlock, Name: "v", Mount: "m1", Node: "b"})
	if l := s.VDIs["v"].Lock; l != nil {
		t.Fatalf("after an unlock through b, the lock is %+v, want none", l)
	}
}

// TestUnlockOfASession: an unlock naming a session releases only a lock
// taken through that session (a closed connection's late unlock leaves the
// lock its mount took again through a new connection to the same node).
func TestUnlockOfASession(t *testing.T) {
	lock := func(session string) *Command {
		return &Command{Op: CmdVDILock, Name: "v", Mount: "m1", Node: "a", Session: session}
	}
	s := mustApply(t, clusterABC(t), cmdCreate("v", 1<<20), lock("old"), lock("new"))
	if l := s.VDIs["v"].Lock; l == nil || l.Session != "new" {
		t.Fatalf("lock after relocking: %+v", l)
	}
	s = mustApply(t, s, &Command{Op: CmdVDIUnlock, Name: "v", Mount: "m1", Node: "a", Session: "old"})
	if l := s.VDIs["v"].Lock; l == nil || l.Session != "new" {
		t.Fatalf("the old session's unlock released the new session's lock: %+v", l)
	}
	s = mustApply(t, s, &Command{Op: CmdVDIUnlock, Name: "v", Mount: "m1", Node: "a", Session: "new"})
	if l := s.VDIs["v"].Lock; l != nil {
		t.Fatalf("the new session's unlock left %+v", l)
	}
}

// TestRestoreKeepsAppliedIndex: a node that installs a raft snapshot has
// applied every command up to it, also the ones after the last change of
// state (failed commands, no-op resizes): the leader counts them in the
// applied index that CatchUp waits for.
func TestRestoreKeepsAppliedIndex(t *testing.T) {
	f := newFSM()
	index := uint64(0)
	for _, c := range []*Command{cmdMembers("a", "b", "c"), cmdFormat(2), cmdCreate("v", 1<<20), cmdCreate("v", 1<<20)} {
		data, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		index++
		f.Apply(&raft.Log{Index: index, Data: data})
	}
	if got := f.applied.Load(); got != 4 {
		t.Fatalf("applied %d, want 4", got)
	}
	g := snapshotRoundTrip(t, f)
	if got := g.applied.Load(); got != 4 {
		t.Errorf("after restoring a snapshot taken at 4 (last change at %d), applied is %d", f.state.Load().Index, got)
	}
	if a, b := stateJSON(t, f.state.Load()), stateJSON(t, g.state.Load()); a != b {
		t.Errorf("restored state differs:\n%s\n%s", a, b)
	}
}

// TestRetriedCommand: a command applied again with the same token (a retry
// after its answer was lost) changes nothing and answers the first result;
// the state remembers a bounded number of tokens.
func TestRetriedCommand(t *testing.T) {
	s := mustApply(t, clusterABC(t), cmdCreate("v", 1<<20))
	snap := &Command{Op: CmdSnapshot, Name: "v", Tag: "t", Token: "tok1"}
	s1, r1 := apply(s, snap)
	if r1.Err != nil {
		t.Fatal(r1.Err)
	}
	s2, r2 := apply(s1, snap)
	if r2.Err != nil || s2 != s1 || r2.VDI != r1.VDI {
		t.Errorf("the retried snapshot: %v, state changed %v, result %+v want %+v", r2.Err, s2 != s1, r2.VDI, r1.VDI)
	}
	// Without a token, or with another one, it is a new command.
	if _, r := apply(s1, &Command{Op: CmdSnapshot, Name: "v", Tag: "t", Token: "tok2"}); !errs.Is(r.Err, errs.Exists) {
		t.Errorf("another snapshot with the same tag: %v, want exists", r.Err)
	}
	for i := range maxRecent + 10 {
		var r Result
		s1, r = apply(s1, &Command{Op: CmdVDICreate, Name: fmt.Sprintf("w%d", i), Token: fmt.Sprintf("c%d", i)})
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	if len(s1.Recent) != maxRecent {
		t.Errorf("%d tokens remembered, want %d", len(s1.Recent), maxRecent)
	}
	checkConsistent(t, s1)
}
