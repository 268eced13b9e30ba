package cluster

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

func cmdSnap(name, tag string) *Command {
	return &Command{Op: CmdSnapshot, Name: name, Tag: tag, Time: 500}
}

func cmdSnapBy(name, tag string, mount ids.MountID, node ids.NodeID) *Command {
	return &Command{Op: CmdSnapshot, Name: name, Tag: tag, Mount: mount, Node: node, Time: 500}
}

func cmdClone(source, name string, copies int) *Command {
	return &Command{Op: CmdClone, Source: source, Name: name, Copies: copies, Time: 600}
}

func cmdRollback(name, tag string) *Command { return &Command{Op: CmdRollback, Name: name, Tag: tag} }

func cmdSnapDelete(name, tag string) *Command {
	return &Command{Op: CmdSnapDelete, Name: name, Tag: tag}
}

func cmdPurge(img ids.VDIID) *Command { return &Command{Op: CmdPurge, Image: img} }

// allIDs returns every handle and every image of s, live or dead.
func allIDs(s *State) map[ids.VDIID]bool {
	out := map[ids.VDIID]bool{}
	for _, m := range []map[string]*VDI{s.VDIs, s.Snaps} {
		for _, v := range m {
			out[v.ID] = true
			out[v.Image] = true
		}
	}
	for id := range s.Dead {
		out[id] = true
	}
	return out
}

// handlesOf and imagesOf return the handles and the images (live and dead)
// of s.
func handlesOf(s *State) map[ids.VDIID]bool {
	out := map[ids.VDIID]bool{}
	for _, m := range []map[string]*VDI{s.VDIs, s.Snaps} {
		for _, v := range m {
			out[v.ID] = true
		}
	}
	return out
}

func imagesOf(s *State) map[ids.VDIID]bool {
	out := map[ids.VDIID]bool{}
	for _, m := range []map[string]*VDI{s.VDIs, s.Snaps} {
		for _, v := range m {
			out[v.Image] = true
		}
	}
	for id := range s.Dead {
		out[id] = true
	}
	return out
}

// checkImages checks the invariants of a state's VDIs, snapshots and
// images: handles unique, images unique (live or dead), every parent
// present with the same copies, no cycles, and the derived maps (byID,
// images, children) and the queries (Chain, Root, Family, SnapshotsOf)
// agreeing with the serialised fields.
func checkImages(t *testing.T, s *State) {
	t.Helper()
	handles := map[ids.VDIID]string{}
	images := map[ids.VDIID]string{}
	inRange := func(id ids.VDIID) bool { return id != 0 && id <= ids.MaxVDIID }
	live := func(what string, v *VDI) {
		if !inRange(v.ID) || !inRange(v.Image) {
			t.Errorf("%s: handle %v or image %v out of range", what, v.ID, v.Image)
		}
		if o, dup := handles[v.ID]; dup {
			t.Errorf("handle %v is both %s and %s", v.ID, o, what)
		}
		handles[v.ID] = what
		if o, dup := images[v.Image]; dup {
			t.Errorf("image %v is used by both %s and %s", v.Image, o, what)
		}
		images[v.Image] = what
		if w, ok := s.VDIByID(v.ID); !ok || w != v {
			t.Errorf("VDIByID(%v) = %+v, %v; want %s", v.ID, w, ok, what)
		}
		img, ok := s.Image(v.Image)
		if !ok || img.VDI != v || img.ID != v.Image || img.Parent != v.Parent || img.Copies != v.Copies || img.Size != v.Size {
			t.Errorf("Image(%v) = %+v, %v; want that of %s %+v", v.Image, img, ok, what, v)
		}
	}
	for name, v := range s.VDIs {
		if v.Name != name || v.Tag != "" || v.IsSnapshot() {
			t.Errorf("VDI %q (tag %q) filed under %q", v.Name, v.Tag, name)
		}
		live(name, v)
	}
	for full, v := range s.Snaps {
		if v.FullName() != full || !v.IsSnapshot() {
			t.Errorf("snapshot %s filed under %q", v.FullName(), full)
		}
		if v.Lock != nil {
			t.Errorf("snapshot %s is locked: %+v", full, v.Lock)
		}
		if w, ok := s.Snapshot(v.Name, v.Tag); !ok || w != v {
			t.Errorf("Snapshot(%q, %q) = %v, %v", v.Name, v.Tag, w, ok)
		}
		live(full, v)
	}
	for id, d := range s.Dead {
		if !inRange(id) {
			t.Errorf("dead image %v out of range", id)
		}
		if o, dup := images[id]; dup {
			t.Errorf("dead image %v (was %s) is used by %s", id, d.Name, o)
		}
		images[id] = "dead " + d.Name
		img, ok := s.Image(id)
		if !ok || img.VDI != nil || img.Parent != d.Parent || img.Copies != d.Copies || img.Size != d.Size {
			t.Errorf("Image(%v) = %+v, %v; want dead %+v", id, img, ok, d)
		}
	}
	if len(s.byID) != len(handles) {
		t.Errorf("byID has %d entries for %d handles", len(s.byID), len(handles))
	}
	if len(s.images) != len(images) {
		t.Errorf("images has %d entries for %d images", len(s.images), len(images))
	}
	if t.Failed() {
		return
	}

	withParent := 0
	cyclic := false
	for id, what := range images {
		img, _ := s.Image(id)
		if img.Parent != 0 {
			withParent++
			p, ok := s.Image(img.Parent)
			switch {
			case !ok:
				t.Errorf("image %v (%s) has parent %v, which does not exist", id, what, img.Parent)
			case p.Copies != img.Copies:
				t.Errorf("image %v (%s) has %d copies, its parent %v (%s) %d: it could not read the objects it inherits",
					id, what, img.Copies, img.Parent, images[img.Parent], p.Copies)
			}
			if !slices.Contains(s.Children(img.Parent), id) {
				t.Errorf("Children(%v) = %v lacks %v", img.Parent, s.Children(img.Parent), id)
			}
		}
		chain := s.Chain(id)
		if len(chain) >= len(images) || slices.Contains(chain, id) {
			t.Errorf("image %v (%s) is in a cycle: chain %v", id, what, chain[:min(len(chain), 20)])
			cyclic = true
			continue
		}
		prev := id
		for _, c := range chain {
			if p, _ := s.Image(prev); p.Parent != c {
				t.Errorf("Chain(%v) = %v: %v is not the parent of %v", id, chain, c, prev)
			}
			prev = c
		}
		root := s.Root(id)
		if r, ok := s.Image(root); !ok || r.Parent != 0 || (len(chain) > 0 && root != chain[len(chain)-1]) || (len(chain) == 0 && root != id) {
			t.Errorf("Root(%v) = %v, chain %v", id, root, chain)
		}
	}
	if cyclic {
		return
	}
	total := 0
	for p, cs := range s.children {
		total += len(cs)
		if !slices.IsSorted(cs) {
			t.Errorf("Children(%v) = %v, not sorted", p, cs)
		}
		for _, c := range cs {
			if img, ok := s.Image(c); !ok || img.Parent != p {
				t.Errorf("Children(%v) holds %v, whose parent is %v", p, c, img.Parent)
			}
		}
	}
	if total != withParent {
		t.Errorf("children lists hold %d images, %d images have a parent", total, withParent)
	}
	// The families of the roots partition the images, parents first.
	seen := map[ids.VDIID]bool{}
	for id := range images {
		if img, _ := s.Image(id); img.Parent != 0 {
			continue
		}
		fam := s.Family(id)
		if fam[0] != id {
			t.Errorf("Family(%v) = %v does not start with the root", id, fam)
		}
		for i, m := range fam {
			if seen[m] {
				t.Errorf("image %v is twice in the families (Family(%v) = %v)", m, id, fam)
			}
			seen[m] = true
			if r := s.Root(m); r != id {
				t.Errorf("Family(%v) holds %v, whose root is %v", id, m, r)
			}
			if i > 0 {
				img, _ := s.Image(m)
				if j := slices.Index(fam, img.Parent); j < 0 || j >= i {
					t.Errorf("Family(%v) = %v: %v comes before its parent %v", id, fam, m, img.Parent)
				}
			}
		}
	}
	if len(seen) != len(images) {
		t.Errorf("the families hold %d images of %d", len(seen), len(images))
	}
	// SnapshotsOf lists a name's snapshots, oldest (smallest handle) first.
	names := map[string]int{}
	for _, v := range s.Snaps {
		names[v.Name]++
	}
	for name := range s.VDIs {
		names[name] += 0
	}
	for name, n := range names {
		got := s.SnapshotsOf(name)
		if len(got) != n || !slices.IsSortedFunc(got, func(a, b *VDI) int { return int(a.ID) - int(b.ID) }) {
			t.Errorf("SnapshotsOf(%q) = %d snapshots (sorted %v), want %d", name, len(got),
				slices.IsSortedFunc(got, func(a, b *VDI) int { return int(a.ID) - int(b.ID) }), n)
		}
		for _, v := range got {
			if v.Name != name || s.Snaps[v.FullName()] != v {
				t.Errorf("SnapshotsOf(%q) holds %s", name, v.FullName())
			}
		}
	}
}

// checkDerivedEqual checks that b's derived maps hold what a's do.
func checkDerivedEqual(t *testing.T, a, b *State) {
	t.Helper()
	if !slices.Equal(slices.Sorted(maps.Keys(a.byID)), slices.Sorted(maps.Keys(b.byID))) {
		t.Errorf("byID keys differ: %v and %v", slices.Sorted(maps.Keys(a.byID)), slices.Sorted(maps.Keys(b.byID)))
	}
	for id, x := range a.images {
		y, ok := b.images[id]
		if !ok || x.Parent != y.Parent || x.Copies != y.Copies || x.Size != y.Size || (x.VDI == nil) != (y.VDI == nil) ||
			(x.VDI != nil && x.VDI.FullName() != y.VDI.FullName()) {
			t.Errorf("image %v: %+v and %+v", id, x, y)
		}
	}
	if len(a.images) != len(b.images) {
		t.Errorf("%d images and %d", len(a.images), len(b.images))
	}
	if !maps.EqualFunc(a.children, b.children, slices.Equal) {
		t.Errorf("children differ: %v and %v", a.children, b.children)
	}
}

// snapBase is a formatted cluster of nodes a, b, c (two copies) holding
// VDI "a" of 1 GiB.
func snapBase(t *testing.T) *State {
	return mustApply(t, clusterABC(t), cmdCreate("a", 1<<30))
}

// snapT1 is snapBase with snapshot a@t1.
func snapT1(t *testing.T) *State { return mustApply(t, snapBase(t), cmdSnap("a", "t1")) }

func TestSnapshotCommands(t *testing.T) {
	const gib = 1 << 30
	// newIDs checks that the given IDs were neither a handle nor an
	// image (live or dead) before, and differ from each other.
	newIDs := func(t *testing.T, before *State, idl ...ids.VDIID) {
		t.Helper()
		old := allIDs(before)
		seen := map[ids.VDIID]bool{}
		for _, id := range idl {
			if old[id] || seen[id] || id == 0 {
				t.Errorf("ID %v is not new (IDs before: %v)", id, slices.Sorted(maps.Keys(old)))
			}
			seen[id] = true
		}
	}
	tests := []applyCase{
		{name: "snapshot unlocked", setup: snapBase, cmd: cmdSnap("a", "t1"),
			check: func(t *testing.T, before, s *State, r Result) {
				old, v, snap := before.VDIs["a"], s.VDIs["a"], s.Snaps["a@t1"]
				if snap == nil || r.VDI != snap {
					t.Fatalf("snapshot %+v, result %+v", snap, r.VDI)
				}
				if snap.Image != old.Image || snap.Parent != old.Parent || snap.Name != "a" || snap.Tag != "t1" ||
					snap.SnapTime != 500 || snap.Size != old.Size || snap.Copies != old.Copies || snap.Created != old.Created || snap.Lock != nil {
					t.Errorf("snapshot %+v of %+v", snap, old)
				}
				if v.ID != old.ID || v.Parent != old.Image || v.Size != old.Size || v.WriteGen != old.WriteGen || v.Tag != "" {
					t.Errorf("VDI after the snapshot %+v, before %+v", v, old)
				}
				newIDs(t, before, snap.ID, v.Image)
				if !slices.Equal(s.Chain(v.Image), []ids.VDIID{old.Image}) || !slices.Equal(s.Children(old.Image), []ids.VDIID{v.Image}) {
					t.Errorf("Chain(%v) = %v, Children(%v) = %v", v.Image, s.Chain(v.Image), old.Image, s.Children(old.Image))
				}
				if len(s.Dead) != 0 {
					t.Errorf("dead images %v", s.Dead)
				}
			}},
		{name: "second snapshot chains", setup: snapT1, cmd: cmdSnap("a", "t2"),
			check: func(t *testing.T, before, s *State, r Result) {
				t1, t2, v := s.Snaps["a@t1"], s.Snaps["a@t2"], s.VDIs["a"]
				if t2.Image != before.VDIs["a"].Image || t2.Parent != t1.Image {
					t.Errorf("t2 %+v, t1 %+v", t2, t1)
				}
				newIDs(t, before, t2.ID, v.Image)
				if got := s.Chain(v.Image); !slices.Equal(got, []ids.VDIID{t2.Image, t1.Image}) {
					t.Errorf("Chain of the VDI = %v, want [t2 t1] = [%v %v]", got, t2.Image, t1.Image)
				}
				if got := s.Family(t1.Image); !slices.Equal(got, []ids.VDIID{t1.Image, t2.Image, v.Image}) {
					t.Errorf("Family = %v", got)
				}
				if got := s.SnapshotsOf("a"); len(got) != 2 || got[0] != t1 || got[1] != t2 {
					t.Errorf("SnapshotsOf = %v", got)
				}
			}},
		{name: "snapshot locked, by the holder", setup: func(t *testing.T) *State {
			return mustApply(t, snapBase(t), cmdLock("a", "m1", "b"))
		}, cmd: cmdSnapBy("a", "t1", "m1", "b"),
			check: func(t *testing.T, before, s *State, _ Result) {
				v, snap := s.VDIs["a"], s.Snaps["a@t1"]
				if v.Lock == nil || *v.Lock != *before.VDIs["a"].Lock || v.WriteGen != before.VDIs["a"].WriteGen {
					t.Errorf("the VDI's lock %+v (gen %d), before %+v", v.Lock, v.WriteGen, before.VDIs["a"].Lock)
				}
				if snap.Lock != nil || snap.Image != before.VDIs["a"].Image {
					t.Errorf("snapshot %+v", snap)
				}
			}},
		{name: "snapshot locked, no mount", setup: func(t *testing.T) *State {
			return mustApply(t, snapBase(t), cmdLock("a", "m1", "b"))
		}, cmd: cmdSnap("a", "t1"), kind: errs.StaleEpoch},
		{name: "snapshot locked, other mount", setup: func(t *testing.T) *State {
			return mustApply(t, snapBase(t), cmdLock("a", "m1", "b"))
		}, cmd: cmdSnapBy("a", "t1", "m2", "b"), kind: errs.StaleEpoch},
		{name: "snapshot locked, through another node", setup: func(t *testing.T) *State {
			return mustApply(t, snapBase(t), cmdLock("a", "m1", "b"))
		}, cmd: cmdSnapBy("a", "t1", "m1", "c"), kind: errs.StaleEpoch},
		{name: "snapshot by a writer whose lock went", setup: snapBase, cmd: cmdSnapBy("a", "t1", "m1", "b"), kind: errs.StaleEpoch},
		{name: "snapshot duplicate tag", setup: snapT1, cmd: cmdSnap("a", "t1"), kind: errs.Exists},
		{name: "snapshot same tag on another VDI", setup: func(t *testing.T) *State {
			return mustApply(t, snapT1(t), cmdCreate("b", gib))
		}, cmd: cmdSnap("b", "t1")},
		{name: "snapshot empty tag", setup: snapBase, cmd: cmdSnap("a", ""), kind: errs.Invalid},
		{name: "snapshot tag with @", setup: snapBase, cmd: cmdSnap("a", "x@y"), kind: errs.Invalid},
		{name: "snapshot tag with slash", setup: snapBase, cmd: cmdSnap("a", "x/y"), kind: errs.Invalid},
		{name: "snapshot tag leading dot", setup: snapBase, cmd: cmdSnap("a", ".t"), kind: errs.Invalid},
		{name: "snapshot tag too long", setup: snapBase, cmd: cmdSnap("a", strings.Repeat("t", MaxNameLen+1)), kind: errs.Invalid},
		{name: "snapshot missing VDI", setup: snapBase, cmd: cmdSnap("b", "t1"), kind: errs.NotFound},
		{name: "snapshot of a snapshot", setup: snapT1, cmd: cmdSnap("a@t1", "t2"), kind: errs.NotFound},
		{name: "snapshot unformatted", setup: func(*testing.T) *State { return emptyState() }, cmd: cmdSnap("a", "t1"), kind: errs.NotReady},

		{name: "clone", setup: snapT1, cmd: cmdClone("a@t1", "c", 0),
			check: func(t *testing.T, before, s *State, r Result) {
				c, snap := s.VDIs["c"], s.Snaps["a@t1"]
				if c == nil || r.VDI != c {
					t.Fatalf("clone %+v, result %+v", c, r.VDI)
				}
				if c.Image != c.ID || c.Parent != snap.Image || c.Source != "a@t1" || c.Size != snap.Size ||
					c.Copies != snap.Copies || c.Lock != nil || c.WriteGen != 0 || c.Created != 600 {
					t.Errorf("clone %+v of %+v", c, snap)
				}
				newIDs(t, before, c.ID)
				if *snap != *before.Snaps["a@t1"] {
					t.Errorf("the snapshot changed: %+v -> %+v", before.Snaps["a@t1"], snap)
				}
				if got := s.Children(snap.Image); !slices.Equal(got, []ids.VDIID{s.VDIs["a"].Image, c.Image}) {
					t.Errorf("Children of the snapshot = %v", got)
				}
				if s.Root(c.Image) != snap.Image || !slices.Equal(s.Chain(c.Image), []ids.VDIID{snap.Image}) {
					t.Errorf("Root %v, Chain %v", s.Root(c.Image), s.Chain(c.Image))
				}
			}},
		{name: "clone with the source's copies", setup: snapT1, cmd: cmdClone("a@t1", "c", 2)},
		{name: "clone with other copies", setup: snapT1, cmd: cmdClone("a@t1", "c", 3), kind: errs.Invalid},
		{name: "clone missing snapshot", setup: snapT1, cmd: cmdClone("a@t2", "c", 0), kind: errs.NotFound},
		{name: "clone of a VDI, not a snapshot", setup: snapT1, cmd: cmdClone("a", "c", 0), kind: errs.Invalid},
		{name: "clone source with a bad tag", setup: snapT1, cmd: cmdClone("a@", "c", 0), kind: errs.Invalid},
		{name: "clone name exists", setup: snapT1, cmd: cmdClone("a@t1", "a", 0), kind: errs.Exists},
		{name: "clone bad name", setup: snapT1, cmd: cmdClone("a@t1", "c@d", 0), kind: errs.Invalid},
		{name: "clone of a snapshot whose VDI is gone", setup: func(t *testing.T) *State {
			return mustApply(t, snapT1(t), cmdDelete("a"))
		}, cmd: cmdClone("a@t1", "c", 0),
			check: func(t *testing.T, _, s *State, _ Result) {
				if c := s.VDIs["c"]; c.Parent != s.Snaps["a@t1"].Image {
					t.Errorf("clone %+v", c)
				}
			}},
		{name: "clone of a clone's snapshot", setup: func(t *testing.T) *State {
			return mustApply(t, snapT1(t), cmdClone("a@t1", "c", 0), cmdSnap("c", "s1"))
		}, cmd: cmdClone("c@s1", "d", 0),
			check: func(t *testing.T, _, s *State, _ Result) {
				d := s.VDIs["d"]
				want := []ids.VDIID{s.Snaps["c@s1"].Image, s.Snaps["a@t1"].Image}
				if got := s.Chain(d.Image); !slices.Equal(got, want) {
					t.Errorf("Chain of the clone's clone %v, want %v", got, want)
				}
			}},

		{name: "rollback", setup: func(t *testing.T) *State {
			return mustApply(t, snapT1(t), cmdResize("a", 2*gib, ""), cmdSnap("a", "t2"), cmdLock("a", "m1", "a"), cmdUnlock("a", "m1"))
		}, cmd: cmdRollback("a", "t1"),
			check: func(t *testing.T, before, s *State, r Result) {
				old, v, snap := before.VDIs["a"], s.VDIs["a"], s.Snaps["a@t1"]
				if r.VDI == nil || *r.VDI != *v {
					t.Errorf("result %+v, VDI %+v", r.VDI, v)
				}
				if v.ID != old.ID || v.Parent != snap.Image || v.Size != gib || v.Source != "a@t1" || v.WriteGen != old.WriteGen+1 || v.Copies != old.Copies {
					t.Errorf("after the rollback %+v, before %+v", v, old)
				}
				newIDs(t, before, v.Image)
				d := s.Dead[old.Image]
				if d == nil || d.Parent != old.Parent || d.Name != "a" || d.Size != old.Size || d.Copies != old.Copies {
					t.Errorf("old image %v buried as %+v", old.Image, d)
				}
				if len(s.Children(old.Image)) != 0 {
					t.Errorf("the old image has children %v", s.Children(old.Image))
				}
				if len(s.Snaps) != 2 || *s.Snaps["a@t2"] != *before.Snaps["a@t2"] {
					t.Errorf("snapshots changed: %v", s.Snaps)
				}
			}},
		{name: "rollback locked", setup: func(t *testing.T) *State {
			return mustApply(t, snapT1(t), cmdLock("a", "m1", "a"))
		}, cmd: cmdRollback("a", "t1"), kind: errs.Busy},
		{name: "rollback missing snapshot", setup: snapT1, cmd: cmdRollback("a", "t2"), kind: errs.NotFound},
		{name: "rollback missing VDI", setup: snapT1, cmd: cmdRollback("b", "t1"), kind: errs.NotFound},
		{name: "rollback twice", setup: func(t *testing.T) *State {
			return mustApply(t, snapT1(t), cmdRollback("a", "t1"))
		}, cmd: cmdRollback("a", "t1"),
			check: func(t *testing.T, before, s *State, _ Result) {
				if len(s.Dead) != 2 || s.Dead[before.VDIs["a"].Image] == nil {
					t.Errorf("dead %v", s.Dead)
				}
				// Both buried images stay children of t1 until purged.
				if got := s.Children(s.Snaps["a@t1"].Image); !slices.Equal(got, []ids.VDIID{3, 4, 5}) || s.VDIs["a"].Image != 5 {
					t.Errorf("Children of t1 = %v, want [3 4 5] (5 the VDI's)", got)
				}
			}},

		{name: "snapshot delete", setup: snapT1, cmd: cmdSnapDelete("a", "t1"),
			check: func(t *testing.T, before, s *State, r Result) {
				snap := before.Snaps["a@t1"]
				if _, ok := s.Snaps["a@t1"]; ok || r.VDI == nil || *r.VDI != *snap {
					t.Errorf("snapshots %v, result %+v", s.Snaps, r.VDI)
				}
				if d := s.Dead[snap.Image]; d == nil || d.Name != "a@t1" || d.Parent != snap.Parent || d.Copies != snap.Copies || d.Size != snap.Size {
					t.Errorf("buried as %+v", d)
				}
				if _, ok := s.VDIByID(snap.ID); ok {
					t.Errorf("the deleted snapshot's handle %v still resolves", snap.ID)
				}
				// The VDI still inherits from the dead image.
				if got := s.Chain(s.VDIs["a"].Image); !slices.Equal(got, []ids.VDIID{snap.Image}) {
					t.Errorf("Chain of the VDI = %v", got)
				}
			}},
		{name: "snapshot delete missing", setup: snapT1, cmd: cmdSnapDelete("a", "t2"), kind: errs.NotFound},
		{name: "VDI delete keeps its snapshots", setup: snapT1, cmd: cmdDelete("a"),
			check: func(t *testing.T, before, s *State, _ Result) {
				v := before.VDIs["a"]
				if d := s.Dead[v.Image]; d == nil || d.Name != "a" || d.Parent != v.Parent {
					t.Errorf("buried as %+v", d)
				}
				if len(s.Snaps) != 1 || len(s.SnapshotsOf("a")) != 1 {
					t.Errorf("snapshots %v", s.Snaps)
				}
			}},

		{name: "purge childless", setup: func(t *testing.T) *State {
			return mustApply(t, snapT1(t), cmdDelete("a"))
		}, cmd: cmdPurge(3),
			check: func(t *testing.T, before, s *State, _ Result) {
				if before.Dead[3] == nil {
					t.Fatalf("image 3 was not dead: %v", before.Dead)
				}
				if _, ok := s.Dead[3]; ok {
					t.Errorf("still dead: %v", s.Dead)
				}
				if _, ok := s.Image(3); ok || len(s.Children(1)) != 0 {
					t.Errorf("image 3 is still known; children of 1: %v", s.Children(1))
				}
			}},
		{name: "purge with children", setup: func(t *testing.T) *State {
			return mustApply(t, snapT1(t), cmdSnapDelete("a", "t1"))
		}, cmd: cmdPurge(1), kind: errs.Busy},
		{name: "purge a dead chain, child first", setup: func(t *testing.T) *State {
			return mustApply(t, snapT1(t), cmdSnapDelete("a", "t1"), cmdDelete("a"), cmdPurge(3))
		}, cmd: cmdPurge(1),
			check: func(t *testing.T, _, s *State, _ Result) {
				if len(s.Dead) != 0 || len(s.images) != 0 {
					t.Errorf("left: dead %v, images %v", s.Dead, s.images)
				}
			}},
		{name: "purge a live image", setup: snapT1, cmd: cmdPurge(1), kind: errs.NotFound},
		{name: "purge zero", setup: snapT1, cmd: cmdPurge(0), kind: errs.NotFound},
		{name: "purge unknown", setup: snapT1, cmd: cmdPurge(99), kind: errs.NotFound},
		{name: "purge unformatted", setup: func(*testing.T) *State { return emptyState() }, cmd: cmdPurge(1), kind: errs.NotReady},

		{name: "IDs skip dead images", setup: func(t *testing.T) *State {
			return nextVDI(mustApply(t, snapT1(t), cmdSnapDelete("a", "t1"), cmdDelete("a")), 1) // as after wrapping
		}, cmd: cmdCreate("b", gib),
			check: func(t *testing.T, before, s *State, r Result) {
				newIDs(t, before, r.VDI.ID)
				if r.VDI.ID != 2 {
					t.Errorf("new VDI got ID %v, want 2 (1 and 3 are dead images)", r.VDI.ID)
				}
			}},
		{name: "IDs skip snapshot handles and images", setup: func(t *testing.T) *State {
			return nextVDI(mustApply(t, snapT1(t), cmdDelete("a")), 1) // as after wrapping
		}, cmd: cmdCreate("b", gib),
			check: func(t *testing.T, before, s *State, r Result) {
				newIDs(t, before, r.VDI.ID)
				if r.VDI.ID != 4 {
					t.Errorf("new VDI got ID %v, want 4 (1: a@t1's image, 2: its handle, 3: a dead image)", r.VDI.ID)
				}
			}},
		{name: "snapshot IDs wrap", setup: func(t *testing.T) *State {
			return nextVDI(snapT1(t), ids.MaxVDIID)
		}, cmd: cmdSnap("a", "t2"),
			check: func(t *testing.T, before, s *State, r Result) {
				newIDs(t, before, r.VDI.ID, s.VDIs["a"].Image)
				if r.VDI.ID != ids.MaxVDIID || s.VDIs["a"].Image != 4 {
					t.Errorf("snapshot handle %v, new image %v; want %v and 4", r.VDI.ID, s.VDIs["a"].Image, ids.MaxVDIID)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, checkImages) })
	}
}

// nextVDI returns a copy of s whose next ID is id.
func nextVDI(s *State, id ids.VDIID) *State {
	s = s.clone()
	s.NextVDI = id
	s.derive()
	return s
}

// TestRollbackToSnapshotOfOtherCopies: a snapshot may outlive its VDI, and
// a new VDI of the same name may have other copies. Rolling it back to the
// old snapshot would make an image inherit objects that it reads with the
// wrong replica count (placed on other nodes, or not found at all).
func TestRollbackToSnapshotOfOtherCopies(t *testing.T) {
	s := mustApply(t, clusterABC(t), cmdCreate("a", 1<<30), cmdSnap("a", "t1"), cmdDelete("a"),
		&Command{Op: CmdVDICreate, Name: "a", Size: 1 << 30, Copies: 3})
	n, r := apply(s, cmdRollback("a", "t1"))
	if !errs.Is(r.Err, errs.Invalid) || n != s {
		v := n.VDIs["a"]
		p, _ := n.Image(v.Parent)
		t.Fatalf("rollback: %v; the VDI has %d copies, the image it inherits from %d", r.Err, v.Copies, p.Copies)
	}
	// Same copies: fine.
	s = mustApply(t, s, cmdDelete("a"), cmdCreate("a", 1<<30), cmdRollback("a", "t1"))
	if v := s.VDIs["a"]; v.Parent != s.Snaps["a@t1"].Image || v.Copies != 2 {
		t.Fatalf("rollback gave %+v", v)
	}
}

// TestSnapQueries checks Chain, Root, Family, Children, SnapshotsOf and
// Image on a family with snapshots, clones and dead images.
func TestSnapQueries(t *testing.T) {
	s := mustApply(t, snapBase(t),
		cmdSnap("a", "t1"),                // a@t1: handle 2, image 1; a: image 3
		cmdSnap("a", "t2"),                // a@t2: handle 4, image 3; a: image 5
		cmdClone("a@t1", "c", 0),          // c: 6, parent 1
		cmdSnap("c", "s1"),                // c@s1: handle 7, image 6; c: image 8
		cmdCreate("b", 1<<20),             // b: 9
		cmdSnapDelete("a", "t2"),          // 3 dead, still a's parent
		cmdClone("c@s1", "d", 0),          // d: 10, parent 6
		cmdRollback("c", "s1"),            // c: image 11, parent 6; 8 dead
		cmdSnap("b", "t1"),                // b@t1: handle 12, image 9; b: image 13
		&Command{Op: CmdMembers, Time: 1}, // a new epoch changes nothing here
	)
	checkImages(t, s)
	for _, tt := range []struct {
		id     ids.VDIID
		chain  []ids.VDIID
		family []ids.VDIID // of id
	}{
		{1, nil, []ids.VDIID{1, 3, 6, 5, 8, 10, 11}},
		{3, []ids.VDIID{1}, []ids.VDIID{3, 5}},
		{5, []ids.VDIID{3, 1}, []ids.VDIID{5}},
		{6, []ids.VDIID{1}, []ids.VDIID{6, 8, 10, 11}},
		{8, []ids.VDIID{6, 1}, []ids.VDIID{8}},
		{10, []ids.VDIID{6, 1}, []ids.VDIID{10}},
		{11, []ids.VDIID{6, 1}, []ids.VDIID{11}},
		{9, nil, []ids.VDIID{9, 13}},
		{13, []ids.VDIID{9}, []ids.VDIID{13}},
		{99, nil, []ids.VDIID{99}}, // unknown
	} {
		if got := s.Chain(tt.id); !slices.Equal(got, tt.chain) {
			t.Errorf("Chain(%v) = %v, want %v", tt.id, got, tt.chain)
		}
		if got := s.Family(tt.id); !slices.Equal(got, tt.family) {
			t.Errorf("Family(%v) = %v, want %v", tt.id, got, tt.family)
		}
		root := tt.id
		if len(tt.chain) > 0 {
			root = tt.chain[len(tt.chain)-1]
		}
		if got := s.Root(tt.id); got != root {
			t.Errorf("Root(%v) = %v, want %v", tt.id, got, root)
		}
	}
	if got := s.Children(1); !slices.Equal(got, []ids.VDIID{3, 6}) {
		t.Errorf("Children(1) = %v", got)
	}
	if got := s.Children(8); len(got) != 0 {
		t.Errorf("Children(8) = %v", got)
	}
	for id, want := range map[ids.VDIID]string{1: "a@t1", 5: "a", 6: "c@s1", 11: "c", 10: "d", 9: "b@t1", 13: "b"} {
		if img, ok := s.Image(id); !ok || img.VDI == nil || img.VDI.FullName() != want {
			t.Errorf("Image(%v) = %+v, %v; want %s", id, img, ok, want)
		}
	}
	for id, want := range map[ids.VDIID]string{3: "a@t2", 8: "c"} {
		if img, ok := s.Image(id); !ok || img.VDI != nil || s.Dead[id] == nil || s.Dead[id].Name != want {
			t.Errorf("Image(%v) = %+v, %v; want dead %s", id, img, ok, want)
		}
	}
	for name, want := range map[string][]string{"a": {"a@t1"}, "b": {"b@t1"}, "c": {"c@s1"}, "d": nil, "x": nil} {
		var got []string
		for _, v := range s.SnapshotsOf(name) {
			got = append(got, v.FullName())
		}
		if !slices.Equal(got, want) {
			t.Errorf("SnapshotsOf(%q) = %v, want %v", name, got, want)
		}
	}
	// Handles resolve to VDIs and snapshots; a snapshot's handle is not
	// its image.
	for id, want := range map[ids.VDIID]string{1: "a", 2: "a@t1", 6: "c", 7: "c@s1", 9: "b", 12: "b@t1", 10: "d"} {
		if v, ok := s.VDIByID(id); !ok || v.FullName() != want {
			t.Errorf("VDIByID(%v) = %v, %v; want %s", id, v, ok, want)
		}
	}
	for _, id := range []ids.VDIID{3, 4, 5, 8, 11, 13} {
		if v, ok := s.VDIByID(id); ok {
			t.Errorf("VDIByID(%v) = %s: not a handle", id, v.FullName())
		}
	}
}

// TestSnapStateRoundTrip persists a state with snapshots, clones and dead
// images and restores it: the same JSON, the same derived maps, and the
// same answers to the next commands.
func TestSnapStateRoundTrip(t *testing.T) {
	s := mustApply(t, snapBase(t), cmdLock("a", "m1", "b"), cmdSnapBy("a", "t1", "m1", "b"), cmdUnlock("a", "m1"),
		cmdSnap("a", "t2"), cmdClone("a@t1", "c", 0), cmdSnapDelete("a", "t2"), cmdRollback("a", "t1"), cmdLock("c", "m2", "c"))
	f := newFSM()
	f.publish(s)
	g := snapshotRoundTrip(t, f)
	r := g.state.Load()
	if a, b := stateJSON(t, s), stateJSON(t, r); a != b {
		t.Fatalf("restored state differs:\n got %s\nwant %s", b, a)
	}
	if len(r.Snaps) != 1 || len(r.Dead) != 2 {
		t.Fatalf("restored %d snapshots, %d dead images", len(r.Snaps), len(r.Dead))
	}
	checkImages(t, r)
	checkDerivedEqual(t, s, r)
	for _, c := range []*Command{cmdSnap("c", "x"), cmdClone("a@t1", "e", 0), cmdRollback("a", "t1"), cmdPurge(5), cmdPurge(3), cmdCreate("z", 0)} {
		s1, r1 := apply(s, c)
		s2, r2 := apply(r, c)
		if errs.KindOf(r1.Err) != errs.KindOf(r2.Err) {
			t.Errorf("%+v: %v before the round trip, %v after", *c, r1.Err, r2.Err)
			continue
		}
		if a, b := stateJSON(t, s1), stateJSON(t, s2); a != b {
			t.Errorf("%+v: different states before and after the round trip:\n%s\n%s", *c, a, b)
		}
	}
}

// TestRestoreStateBeforeImages restores a state written before VDIs had
// images: each VDI's image is its ID, and snapshots work on it.
func TestRestoreStateBeforeImages(t *testing.T) {
	const old = `{"epoch":1,"members":[{"id":"a","addr":"10.0.0.a:7000"}],"history":[{"epoch":1,"members":[{"id":"a","addr":"10.0.0.a:7000"}],"time":100}],` +
		`"copies":1,"format_time":200,` +
		`"vdis":{"x":{"name":"x","id":1,"size":1048576,"copies":1,"created":300,"write_gen":2},` +
		`"y":{"name":"y","id":7,"size":0,"copies":1,"created":300,"lock":{"mount":"m","node":"a","since":1}}},` +
		`"next_vdi":6,"index":9}`
	f := newFSM()
	if err := f.Restore(io.NopCloser(strings.NewReader(old))); err != nil {
		t.Fatal(err)
	}
	s := f.state.Load()
	checkImages(t, s)
	for name, id := range map[string]ids.VDIID{"x": 1, "y": 7} {
		v := s.VDIs[name]
		if v == nil || v.ID != id || v.Image != id || v.Parent != 0 {
			t.Errorf("VDI %s restored as %+v", name, v)
		}
		if img, ok := s.Image(id); !ok || img.VDI != v {
			t.Errorf("Image(%v) = %+v, %v", id, img, ok)
		}
	}
	s = mustApply(t, s, cmdSnap("x", "t"), cmdSnapBy("y", "t", "m", "a"), cmdClone("x@t", "z", 0))
	checkImages(t, s)
	if snap := s.Snaps["x@t"]; snap.Image != 1 || s.VDIs["x"].Parent != 1 || s.VDIs["z"].Parent != 1 {
		t.Errorf("after snapshot and clone: x@t %+v, x %+v, z %+v", snap, s.VDIs["x"], s.VDIs["z"])
	}
	if snap := s.Snaps["y@t"]; snap.Image != 7 || s.VDIs["y"].Parent != 7 {
		t.Errorf("y@t %+v, y %+v", snap, s.VDIs["y"])
	}
	// New IDs skipped 7, in use as a handle and an image since before
	// images existed.
	for _, id := range []ids.VDIID{s.Snaps["x@t"].ID, s.VDIs["x"].Image, s.Snaps["y@t"].ID, s.VDIs["y"].Image, s.VDIs["z"].ID} {
		if id == 1 || id == 7 {
			t.Errorf("an old ID was handed out again: %v", id)
		}
	}
}

// snapCommand draws a random command for TestRandomSnapCommands, mostly
// about names, snapshots and images that exist in s.
func snapCommand(rng *rand.Rand, s *State, step int) *Command {
	names := []string{"a", "b", "c", "d", "e"}
	tags := []string{"t1", "t2", "t3"}
	nodes := []ids.NodeID{"n1", "n2", "n3"}
	mounts := []ids.MountID{"m1", "m2"}
	name := func() string {
		if rng.IntN(40) == 0 {
			return []string{"", ".x", "a@t1"}[rng.IntN(3)]
		}
		return names[rng.IntN(len(names))]
	}
	tag := func() string {
		if rng.IntN(40) == 0 {
			return []string{"", "x@y", "-t"}[rng.IntN(3)]
		}
		return tags[rng.IntN(len(tags))]
	}
	// snap picks an existing snapshot most of the time.
	snap := func() (string, string) {
		if len(s.Snaps) > 0 && rng.IntN(4) > 0 {
			keys := slices.Sorted(maps.Keys(s.Snaps))
			v := s.Snaps[keys[rng.IntN(len(keys))]]
			return v.Name, v.Tag
		}
		return name(), tag()
	}
	copies := func() int {
		if rng.IntN(4) == 0 {
			return rng.IntN(4)
		}
		return 0
	}
	c := &Command{Time: int64(step)}
	switch r := rng.IntN(100); {
	case r < 12:
		c.Op, c.Name, c.Size, c.Copies = CmdVDICreate, name(), uint64(rng.IntN(4))<<30, copies()
	case r < 30:
		c.Op, c.Name, c.Tag = CmdSnapshot, name(), tag()
		// Mostly as the server does it: through the writer's node.
		if v, ok := s.VDIs[c.Name]; ok && v.Lock != nil && rng.IntN(3) > 0 {
			c.Mount, c.Node = v.Lock.Mount, v.Lock.Node
		} else if rng.IntN(5) == 0 {
			c.Mount, c.Node = mounts[rng.IntN(len(mounts))], nodes[rng.IntN(len(nodes))]
		}
	case r < 40:
		n, t := snap()
		c.Op, c.Source, c.Name, c.Copies = CmdClone, n+"@"+t, name(), copies()
	case r < 50:
		c.Op = CmdRollback
		c.Name, c.Tag = snap()
		if rng.IntN(5) == 0 {
			c.Name = name()
		}
	case r < 58:
		c.Op, c.Name = CmdVDIDelete, name()
	case r < 68:
		c.Op = CmdSnapDelete
		c.Name, c.Tag = snap()
	case r < 78:
		c.Op = CmdPurge
		// Mostly what the collector does: childless dead images.
		dead := slices.Sorted(maps.Keys(s.Dead))
		childless := slices.DeleteFunc(slices.Clone(dead), func(id ids.VDIID) bool { return len(s.Children(id)) > 0 })
		switch {
		case len(childless) > 0 && rng.IntN(4) > 0:
			c.Image = childless[rng.IntN(len(childless))]
		case len(dead) > 0 && rng.IntN(2) > 0:
			c.Image = dead[rng.IntN(len(dead))]
		case rng.IntN(2) == 0:
			c.Image = ids.VDIID(rng.IntN(int(s.NextVDI) + 2))
		default:
			c.Image = ids.VDIID(rng.Uint32())
		}
	case r < 88:
		c.Op, c.Name, c.Mount, c.Node = CmdVDILock, name(), mounts[rng.IntN(len(mounts))], nodes[rng.IntN(len(nodes))]
	case r < 97:
		c.Op, c.Name = CmdVDIUnlock, name()
		if rng.IntN(3) > 0 {
			c.Mount = mounts[rng.IntN(len(mounts))]
		}
	case r < 99:
		c.Op, c.Name, c.Size, c.Mount = CmdVDIResize, name(), uint64(rng.IntN(4))<<30, mounts[rng.IntN(len(mounts))]
	default:
		c.Op = CmdMembers
		for _, n := range nodes {
			if rng.IntN(4) > 0 {
				c.Members = append(c.Members, Member{ID: n, Addr: string(n) + ":7000"})
			}
		}
	}
	return c
}

// TestRandomSnapCommands applies thousands of random commands about
// snapshots, clones, rollbacks and images through the raft FSM, and checks
// after each: the input state never changes, a failed command publishes
// nothing, new IDs collide with no handle or image (live or dead) and are
// not reused before wrapping, dead images are used by no VDI, images have
// their parents and no cycles, and each successful command did what it
// says. A snapshot round trip along the way must restore an equal state.
func TestRandomSnapCommands(t *testing.T) {
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 0x5a4b))
	const steps = 2000

	f := newFSM()
	start := &State{VDIs: map[string]*VDI{}}
	if rng.IntN(3) == 0 {
		// Near the end of the ID space, so that IDs wrap.
		start.NextVDI = ids.MaxVDIID - ids.VDIID(rng.IntN(8))
		t.Logf("starting with NextVDI %v", start.NextVDI)
	}
	b, err := json.Marshal(start)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Restore(io.NopCloser(bytes.NewReader(b))); err != nil {
		t.Fatal(err)
	}
	index := uint64(0)
	mustLog := func(c *Command) {
		data, _ := json.Marshal(c)
		index++
		if r := f.Apply(&raft.Log{Index: index, Data: data}).(Result); r.Err != nil {
			t.Fatalf("%s: %v", data, r.Err)
		}
	}
	mustLog(&Command{Op: CmdMembers, Members: []Member{{ID: "n1", Addr: "n1:7000"}, {ID: "n2", Addr: "n2:7000"}, {ID: "n3", Addr: "n3:7000"}}})
	mustLog(&Command{Op: CmdFormat, Copies: 2})

	outcomes := map[string]map[errs.Kind]int{}
	maxDead, maxSnaps := 0, 0
	oldJSON := stateJSON(t, f.state.Load())
	for step := range steps {
		old := f.state.Load()
		c := snapCommand(rng, old, step)
		data, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		index++
		r := f.Apply(&raft.Log{Index: index, Data: data}).(Result)
		s := f.state.Load()
		where := fmt.Sprintf("step %d, %s", step, data)
		if outcomes[c.Op] == nil {
			outcomes[c.Op] = map[errs.Kind]int{}
		}
		outcomes[c.Op][errs.KindOf(r.Err)]++
		if got := stateJSON(t, old); got != oldJSON {
			t.Fatalf("%s: the previous state changed:\nbefore %s\nafter  %s", where, oldJSON, got)
		}
		if r.Err != nil {
			if s != old {
				t.Fatalf("%s: failed (%v) but published a new state", where, r.Err)
			}
			continue
		}
		newJSON := oldJSON
		if s != old {
			newJSON = stateJSON(t, s)
		}
		checkImages(t, s)

		// New handles and images are new IDs: no handle or image
		// (live or dead) had them, and none below NextVDI while any
		// from NextVDI up is free.
		oldAll := allIDs(old)
		oldHandles, oldImages := handlesOf(old), imagesOf(old)
		var fresh []ids.VDIID
		for id := range handlesOf(s) {
			if !oldHandles[id] {
				fresh = append(fresh, id)
			}
		}
		for id := range imagesOf(s) {
			if !oldImages[id] && !slices.Contains(fresh, id) {
				fresh = append(fresh, id)
			}
		}
		for _, id := range fresh {
			if oldAll[id] {
				t.Errorf("new ID %v was a handle or an image already", id)
			}
			if id < old.NextVDI {
				for x := old.NextVDI; x <= ids.MaxVDIID && x != 0; x++ {
					if !oldAll[x] && !slices.Contains(fresh, x) {
						t.Errorf("ID %v handed out while %v (>= NextVDI %v) was free", id, x, old.NextVDI)
						break
					}
				}
			}
		}

		// What each command must have done.
		images := len(old.images)
		switch c.Op {
		case CmdVDICreate, CmdClone:
			images++
			if v := s.VDIs[c.Name]; v != r.VDI || v.ID != v.Image || len(fresh) != 1 {
				t.Errorf("created %+v, fresh IDs %v", v, fresh)
			}
			if c.Op == CmdClone {
				if p := s.Snaps[c.Source]; p == nil || r.VDI.Parent != p.Image || r.VDI.Copies != p.Copies {
					t.Errorf("clone %+v of %+v", r.VDI, p)
				}
			}
		case CmdSnapshot:
			images++
			ov, nv := old.VDIs[c.Name], s.VDIs[c.Name]
			if r.VDI.Image != ov.Image || nv.Parent != ov.Image || nv.ID != ov.ID || nv.WriteGen != ov.WriteGen || len(fresh) != 2 {
				t.Errorf("snapshot %+v of %+v, now %+v, fresh IDs %v", r.VDI, ov, nv, fresh)
			}
		case CmdRollback:
			images++
			ov, nv, snap := old.VDIs[c.Name], s.VDIs[c.Name], s.Snaps[c.Name+"@"+c.Tag]
			if nv.Parent != snap.Image || nv.WriteGen != ov.WriteGen+1 || s.Dead[ov.Image] == nil || len(fresh) != 1 {
				t.Errorf("rollback of %+v to %+v gave %+v; dead %v", ov, snap, nv, s.Dead)
			}
		case CmdVDIDelete:
			if ov := old.VDIs[c.Name]; s.Dead[ov.Image] == nil || len(s.Snaps) != len(old.Snaps) {
				t.Errorf("deleted %+v, dead %v", ov, s.Dead)
			}
		case CmdSnapDelete:
			if ov := old.Snaps[c.Name+"@"+c.Tag]; s.Dead[ov.Image] == nil {
				t.Errorf("deleted %+v, dead %v", ov, s.Dead)
			}
		case CmdPurge:
			images--
			if len(old.Children(c.Image)) != 0 || old.Dead[c.Image] == nil || s.Dead[c.Image] != nil {
				t.Errorf("purged %v: children before %v", c.Image, old.Children(c.Image))
			}
		}
		if len(s.images) != images {
			t.Errorf("%d images after %s, %d before", len(s.images), c.Op, len(old.images))
		}
		if c.Op != CmdSnapshot && c.Op != CmdClone && c.Op != CmdRollback && c.Op != CmdVDICreate && len(fresh) != 0 {
			t.Errorf("%s made new IDs %v", c.Op, fresh)
		}
		if t.Failed() {
			t.Fatalf("%s: result %+v\nbefore %s\nafter  %s", where, r.VDI, oldJSON, newJSON)
		}
		maxDead, maxSnaps = max(maxDead, len(s.Dead)), max(maxSnaps, len(s.Snaps))

		if step%101 == 0 || step == steps-1 {
			g := snapshotRoundTrip(t, f)
			rs := g.state.Load()
			if got := stateJSON(t, rs); got != newJSON {
				t.Fatalf("%s: restored state differs:\n got %s\nwant %s", where, got, newJSON)
			}
			checkImages(t, rs)
			checkDerivedEqual(t, s, rs)
			if t.Failed() {
				t.Fatalf("%s: after a round trip of %s", where, newJSON)
			}
			f = g
		}
		oldJSON = newJSON
	}
	s := f.state.Load()
	t.Logf("final: %d VDIs, %d snapshots, %d dead (at most %d snapshots, %d dead), next ID %v",
		len(s.VDIs), len(s.Snaps), len(s.Dead), maxSnaps, maxDead, s.NextVDI)
	t.Logf("outcomes: %v", outcomes)
	for _, op := range []string{CmdSnapshot, CmdClone, CmdRollback, CmdSnapDelete, CmdVDIDelete, CmdPurge} {
		if outcomes[op][errs.Other] == 0 {
			t.Errorf("no %s succeeded: the test does not exercise it", op)
		}
	}
}
