package cluster

import (
	"testing"

	"github.com/sheepfs/sheepfs/errs"
)

func cmdSnap(name, tag string) *Command {
	return &Command{Op: CmdSnapshot, Name: name, Tag: tag, Time: 500}
}

func cmdRollback(name, tag string) *Command { return &Command{Op: CmdRollback, Name: name, Tag: tag} }

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
