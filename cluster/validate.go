package cluster

import (
	"slices"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
)

// Limits on what a command or a state may carry, so that neither a
// command nor a raft snapshot from a peer can make a node hold more than
// these, or panic on what it holds.
const (
	// maxTokenLen bounds the strings that name requests, mounts and
	// sessions.
	maxTokenLen = 128
	// maxSnapshotBytes bounds a raft snapshot's encoded state.
	maxSnapshotBytes = 512 << 20
)

// checkCommand rejects a command whose fields are out of bounds, before
// anything is applied. The command's own rules (names, sizes, members)
// are checked where it is applied.
func checkCommand(c *Command) error {
	switch {
	case len(c.Op) > 32:
		return errs.E(errs.Invalid, "cluster command name of %d bytes", len(c.Op))
	case len(c.Token) > maxTokenLen || len(c.Session) > maxTokenLen || len(c.Mount) > maxTokenLen:
		return errs.E(errs.Invalid, "cluster command %q: token, session or mount longer than %d bytes", c.Op, maxTokenLen)
	case len(c.Node) > 64 || len(c.Name) > MaxNameLen || len(c.Tag) > MaxNameLen || len(c.Source) > 2*MaxNameLen+1:
		return errs.E(errs.Invalid, "cluster command %q: node, name, tag or source too long", c.Op)
	case len(c.Members) > maxMembers:
		return errs.E(errs.Invalid, "cluster command %q: %d members, at most %d", c.Op, len(c.Members), maxMembers)
	case c.Op != CmdMembers && len(c.Members) > 0:
		return errs.E(errs.Invalid, "cluster command %q carries members", c.Op)
	}
	return nil
}

// validate checks a state that came from outside this node (a raft
// snapshot, sent by a peer or read back from disk): every map entry
// present and filed under its own name, and every count and length within
// what commands could have made. A state that fails is never published.
func (s *State) validate() error {
	bad := func(format string, args ...any) error {
		return errs.E(errs.Invalid, "cluster state: "+format, args...)
	}
	if s.Copies < 0 || s.Copies > MaxCopies {
		return bad("%d copies", s.Copies)
	}
	if s.NextVDI > ids.MaxVDIID+1 || s.WeightUnit > 1<<40 {
		return bad("next VDI %v, weight unit %d", s.NextVDI, s.WeightUnit)
	}
	if r := s.Recovery; r.MaxRate < 0 || r.MaxParallel < 0 || r.MaxParallel > MaxRecoveryParallel {
		return bad("recovery settings %+v", r)
	}
	if !s.Scrub.valid() {
		return bad("scrub settings %+v", s.Scrub)
	}
	sorted := func(ms []Member) error {
		if !slices.IsSortedFunc(ms, func(a, b Member) int { return cmpID(a.ID, b.ID) }) {
			return bad("members not sorted by ID")
		}
		return checkMembers(ms)
	}
	if err := sorted(s.Members); err != nil {
		return err
	}
	if len(s.History) > maxEpochHistory {
		return bad("%d epochs of history, at most %d", len(s.History), maxEpochHistory)
	}
	for i := range s.History {
		r := &s.History[i]
		if (i > 0 && r.Epoch != s.History[i-1].Epoch+1) || r.Epoch > s.Epoch || r.WeightUnit > 1<<40 {
			return bad("epoch history out of order at epoch %v", r.Epoch)
		}
		if err := sorted(r.Members); err != nil {
			return err
		}
	}
	if len(s.Recent) > maxRecent {
		return bad("%d recent commands, at most %d", len(s.Recent), maxRecent)
	}
	for _, d := range s.Recent {
		if len(d.Token) > maxTokenLen {
			return bad("a recent command's token of %d bytes", len(d.Token))
		}
	}
	checkVDI := func(key string, v *VDI, snap bool) error {
		switch {
		case v == nil:
			return bad("no VDI under %q", key)
		case v.FullName() != key || v.IsSnapshot() != snap:
			return bad("VDI %q filed under %q", v.FullName(), key)
		case v.ID == 0 || v.ID > ids.MaxVDIID || v.Image > ids.MaxVDIID || v.Parent > ids.MaxVDIID:
			return bad("VDI %q has ID %v, image %v, parent %v", key, v.ID, v.Image, v.Parent)
		case v.Copies < 1 || v.Copies > MaxCopies:
			return bad("VDI %q has %d copies", key, v.Copies)
		case len(v.Source) > 2*MaxNameLen+1:
			return bad("VDI %q: source of %d bytes", key, len(v.Source))
		}
		if err := CheckName(v.Name); err != nil {
			return err
		}
		if snap {
			if err := CheckTag(v.Tag); err != nil {
				return err
			}
		}
		if err := CheckSize(v.Size); err != nil {
			return err
		}
		if l := v.Lock; l != nil && (len(l.Mount) > maxTokenLen || len(l.Session) > maxTokenLen || len(l.Node) > 64) {
			return bad("VDI %q: lock with fields too long", key)
		}
		return nil
	}
	for k, v := range s.VDIs {
		if err := checkVDI(k, v, false); err != nil {
			return err
		}
	}
	for k, v := range s.Snaps {
		if err := checkVDI(k, v, true); err != nil {
			return err
		}
	}
	for id, d := range s.Dead {
		switch {
		case d == nil:
			return bad("no record for dead image %v", id)
		case id == 0 || id > ids.MaxVDIID || d.Parent > ids.MaxVDIID || d.Copies < 1 || d.Copies > MaxCopies || d.Size > MaxVDISize || len(d.Name) > 2*MaxNameLen+1:
			return bad("dead image %v: bad fields", id)
		}
	}
	return nil
}
