package cluster

import (
	"slices"
	"strings"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

// Image is one image of the state: a VDI's current image, a snapshot, or a
// dead image kept for its descendants.
type Image struct {
	ID     ids.VDIID
	Parent ids.VDIID
	Copies int
	Size   uint64
	// VDI is the writable VDI or snapshot using the image; nil if dead.
	VDI *VDI
}

// DeadImage is an image that no VDI uses any more, kept while descendants
// may inherit its index or read its objects.
type DeadImage struct {
	Parent ids.VDIID `json:"parent,omitempty"`
	Copies int       `json:"copies"`
	Size   uint64    `json:"size"`
	// Name is what it was, for the family tree (NAME or NAME@TAG).
	Name string `json:"name,omitempty"`
}

// maxChain bounds the ancestry walked from one image: a longer chain means
// a corrupt state, not a family.
const maxChain = 1 << 16

// Image returns the image with the given ID (live or dead).
func (s *State) Image(id ids.VDIID) (Image, bool) {
	img, ok := s.images[id]
	return img, ok
}

// Children returns the images whose index inherits from image id.
func (s *State) Children(id ids.VDIID) []ids.VDIID { return s.children[id] }

// Chain returns the ancestors of image id whose indexes its own inherits
// from, nearest first (not id itself).
func (s *State) Chain(id ids.VDIID) []ids.VDIID {
	var out []ids.VDIID
	img, ok := s.images[id]
	for ok && img.Parent != 0 && len(out) < maxChain {
		out = append(out, img.Parent)
		img, ok = s.images[img.Parent]
	}
	return out
}

// Root returns the oldest ancestor of image id.
func (s *State) Root(id ids.VDIID) ids.VDIID {
	if c := s.Chain(id); len(c) > 0 {
		return c[len(c)-1]
	}
	return id
}

// Family returns image root and all its descendants, parents before
// children.
func (s *State) Family(root ids.VDIID) []ids.VDIID {
	out := []ids.VDIID{root}
	for i := 0; i < len(out) && len(out) < maxChain; i++ {
		out = append(out, s.children[out[i]]...)
	}
	return out
}

// Snapshot returns the snapshot NAME@TAG.
func (s *State) Snapshot(name, tag string) (*VDI, bool) {
	v, ok := s.Snaps[name+"@"+tag]
	return v, ok
}

// SnapshotsOf returns the snapshots of the VDI named name, oldest first.
func (s *State) SnapshotsOf(name string) []*VDI {
	var out []*VDI
	for _, v := range s.Snaps {
		if v.Name == name {
			out = append(out, v)
		}
	}
	slices.SortFunc(out, func(a, b *VDI) int { return int(a.ID) - int(b.ID) })
	return out
}

// SplitSnapshot splits NAME@TAG.
func SplitSnapshot(full string) (name, tag string, err error) {
	name, tag, ok := strings.Cut(full, "@")
	if !ok {
		return "", "", errs.E(errs.Invalid, "%q is not a snapshot: want NAME@TAG", full)
	}
	if err := CheckName(name); err != nil {
		return "", "", err
	}
	if err := CheckTag(tag); err != nil {
		return "", "", err
	}
	return name, tag, nil
}

// CheckTag returns an errs.Invalid error if tag is not a usable snapshot
// tag (the same rules as a VDI name).
func CheckTag(tag string) error {
	if err := CheckName(tag); err != nil {
		return errs.E(errs.Invalid, "snapshot tag: %w", err)
	}
	return nil
}

// newID hands out an unused VDI ID (a handle or an image). IDs are given
// in increasing order and reused only after wrapping, so that the objects
// of a freed image are long gone first.
func (s *State) newID() (ids.VDIID, error) {
	id := s.NextVDI
	for tries := 0; ; tries++ {
		if tries > int(ids.MaxVDIID) {
			return 0, errs.E(errs.NoSpace, "no free VDI IDs")
		}
		if id == 0 || id > ids.MaxVDIID {
			id = 1
		}
		_, handle := s.byID[id]
		_, image := s.images[id]
		if !handle && !image {
			break
		}
		id++
	}
	// NextVDI moves past it, so a second newID in the same command gets
	// another one.
	s.NextVDI = id + 1
	return id, nil
}

// bury records that v no longer uses its image: the image becomes dead,
// to be freed by the collector (which also forgets it once it has no
// children). The caller derives afterwards.
func (s *State) bury(v *VDI) {
	s.Dead[v.Image] = &DeadImage{Parent: v.Parent, Copies: v.Copies, Size: v.Size, Name: v.FullName()}
}

// applySnap applies the snapshot commands; n is a clone of s.
func applySnap(s, n *State, c *Command) (*State, Result) {
	fail := func(err error) (*State, Result) { return s, Result{Err: err} }
	if !s.Formatted() {
		return fail(errs.E(errs.NotReady, "cluster is not formatted"))
	}
	switch c.Op {
	case CmdSnapshot:
		v, ok := s.VDIs[c.Name]
		if !ok {
			return fail(errs.E(errs.NotFound, "VDI %q", c.Name))
		}
		if err := CheckTag(c.Tag); err != nil {
			return fail(err)
		}
		if _, ok := s.Snapshot(c.Name, c.Tag); ok {
			return fail(errs.E(errs.Exists, "snapshot %s@%s", c.Name, c.Tag))
		}
		// A VDI open for writing is snapshotted by the node its writer
		// writes through, which has stopped its writes meanwhile.
		switch {
		case v.Lock != nil && (v.Lock.Mount != c.Mount || v.Lock.Node != c.Node):
			return fail(errs.E(errs.StaleEpoch, "VDI %q is open for writing through node %s: the snapshot must be taken there", c.Name, v.Lock.Node))
		case v.Lock == nil && c.Mount != "":
			return fail(errs.E(errs.StaleEpoch, "VDI %q is no longer open for writing by mount %s", c.Name, c.Mount))
		}
		// The snapshot keeps the image; the VDI goes on in a new one.
		// Handles and images are told apart by the map they are in, so
		// the snapshot gets a handle of its own.
		id, err := n.newID()
		if err != nil {
			return fail(err)
		}
		img, err := n.newID()
		if err != nil {
			return fail(err)
		}
		snap := &VDI{Name: v.Name, ID: id, Image: v.Image, Parent: v.Parent, Tag: c.Tag,
			SnapTime: c.Time, Source: v.Source, Size: v.Size, Copies: v.Copies, Created: v.Created}
		nv := *v
		nv.Image, nv.Parent = img, v.Image
		n.VDIs[c.Name] = &nv
		n.Snaps[snap.FullName()] = snap
		n.derive()
		return n, Result{VDI: snap}
	case CmdClone:
		name, tag, err := SplitSnapshot(c.Source)
		if err != nil {
			return fail(err)
		}
		src, ok := s.Snapshot(name, tag)
		if !ok {
			return fail(errs.E(errs.NotFound, "snapshot %s", c.Source))
		}
		if err := CheckName(c.Name); err != nil {
			return fail(err)
		}
		if _, ok := s.VDIs[c.Name]; ok {
			return fail(errs.E(errs.Exists, "VDI %q", c.Name))
		}
		if c.Copies != 0 && c.Copies != src.Copies {
			return fail(errs.E(errs.Invalid, "a clone shares its objects with %s, which has %d copies: it cannot have %d", c.Source, src.Copies, c.Copies))
		}
		id, err := n.newID()
		if err != nil {
			return fail(err)
		}
		v := &VDI{Name: c.Name, ID: id, Image: id, Parent: src.Image, Source: c.Source,
			Size: src.Size, Copies: src.Copies, Created: c.Time}
		n.VDIs[c.Name] = v
		n.derive()
		return n, Result{VDI: v}
	case CmdRollback:
		v, ok := s.VDIs[c.Name]
		if !ok {
			return fail(errs.E(errs.NotFound, "VDI %q", c.Name))
		}
		src, ok := s.Snapshot(c.Name, c.Tag)
		if !ok {
			return fail(errs.E(errs.NotFound, "snapshot %s@%s", c.Name, c.Tag))
		}
		if v.Lock != nil {
			return fail(errs.E(errs.Busy, "VDI %q is open for writing by mount %s on node %s: close it before a rollback", c.Name, v.Lock.Mount.Shown(), v.Lock.Node))
		}
		// The VDI goes on from the snapshot's objects, which it reads
		// with its own replica count: they must be the same. (A snapshot
		// of an earlier VDI of the same name may have had other copies.)
		if src.Copies != v.Copies {
			return fail(errs.E(errs.Invalid, "%s has %d copies and VDI %q %d: roll back only to a snapshot of the same copies (or clone it)", src.FullName(), src.Copies, c.Name, v.Copies))
		}
		img, err := n.newID()
		if err != nil {
			return fail(err)
		}
		n.bury(v)
		nv := *v
		nv.Image, nv.Parent, nv.Size, nv.Source = img, src.Image, src.Size, src.FullName()
		nv.WriteGen++
		n.VDIs[c.Name] = &nv
		n.derive()
		return n, Result{VDI: &nv}
	case CmdSnapDelete:
		v, ok := s.Snapshot(c.Name, c.Tag)
		if !ok {
			return fail(errs.E(errs.NotFound, "snapshot %s@%s", c.Name, c.Tag))
		}
		delete(n.Snaps, v.FullName())
		n.bury(v)
		n.derive()
		return n, Result{VDI: v}
	case CmdPurge:
		if _, ok := s.Dead[c.Image]; !ok {
			return fail(errs.E(errs.NotFound, "dead image %v", c.Image))
		}
		if len(s.children[c.Image]) > 0 {
			return fail(errs.E(errs.Busy, "image %v still has descendants", c.Image))
		}
		delete(n.Dead, c.Image)
		n.derive()
		return n, Result{}
	}
	return fail(errs.E(errs.Invalid, "unknown cluster command %q", c.Op))
}
