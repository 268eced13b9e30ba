package cli

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/status"
)

// VDICheckCmd checks a VDI's objects on all their replicas.
type VDICheckCmd struct {
	Name string `arg:"" help:"VDI, or snapshot NAME@TAG."`
}

// Run checks and repairs, and prints a summary.
func (c *VDICheckCmd) Run(g *Globals) error {
	oids, err := g.readsOf(c.Name)
	if err != nil {
		return err
	}
	return g.check(c.Name, oids)
}

// ClusterCheckCmd checks every VDI and snapshot.
type ClusterCheckCmd struct{}

// Run checks every object any VDI or snapshot reads.
func (ClusterCheckCmd) Run(g *Globals) error {
	var vdis, snaps []proto.VDIInfo
	if err := g.admin(proto.AdminRequest{Cmd: proto.AdminVDIList}, &vdis); err != nil {
		return err
	}
	if err := g.admin(proto.AdminRequest{Cmd: proto.AdminSnapList}, &snaps); err != nil {
		return err
	}
	seen := map[ids.ObjectID]bool{}
	var all []ids.ObjectID
	for _, v := range append(vdis, snaps...) {
		oids, err := g.readsOf(v.FullName())
		if errs.Is(err, errs.NotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return err
		}
		for _, oid := range oids {
			if !seen[oid] {
				seen[oid] = true
				all = append(all, oid)
			}
		}
	}
	return g.check("the cluster", all)
}

// readsOf lists the objects a read of VDI or snapshot name may use.
func (g *Globals) readsOf(name string) ([]ids.ObjectID, error) {
	var oids []ids.ObjectID
	for off := uint64(0); ; {
		var page proto.ReadsPage
		if err := g.admin(proto.AdminRequest{Cmd: proto.AdminVDIReads, Name: name, Offset: off}, &page); err != nil {
			return nil, err
		}
		oids = append(oids, page.Objects...)
		if page.Next <= off {
			return oids, nil
		}
		off = page.Next
	}
}

// CheckSummary is what `vdi check` and `cluster check` print with --json.
type CheckSummary struct {
	Checked  int                 `json:"checked"`
	OK       int                 `json:"ok"`
	Repaired int                 `json:"repaired"`
	Absent   int                 `json:"absent"`
	Lost     int                 `json:"lost"`
	Degraded int                 `json:"degraded"`
	Unknown  int                 `json:"unknown"`
	Problems []proto.ObjectCheck `json:"problems"`
}

// check checks oids in batches, with a progress line on a terminal, and
// prints the summary. It fails if an object has no good copy, or could
// not be checked or repaired everywhere.
func (g *Globals) check(what string, oids []ids.ObjectID) error {
	var sum CheckSummary
	sum.Problems = []proto.ObjectCheck{}
	prog := startCountProgress("checking "+what, int64(len(oids)))
	for start := 0; start < len(oids); start += proto.MaxCheckObjects {
		batch := oids[start:min(len(oids), start+proto.MaxCheckObjects)]
		var res []proto.ObjectCheck
		if err := g.admin(proto.AdminRequest{Cmd: proto.AdminCheck, Objects: batch}, &res); err != nil {
			prog.finish(false)
			return err
		}
		for _, r := range res {
			sum.Checked++
			switch r.Status {
			case "ok":
				sum.OK++
			case "absent":
				sum.Absent++
			case "repaired":
				sum.Repaired++
				sum.Problems = append(sum.Problems, r)
			case "lost":
				sum.Lost++
				sum.Problems = append(sum.Problems, r)
			case "degraded":
				sum.Degraded++
				sum.Problems = append(sum.Problems, r)
			default:
				sum.Unknown++
				sum.Problems = append(sum.Problems, r)
			}
		}
		prog.add(int64(len(batch)))
	}
	prog.finish(true)
	slices.SortFunc(sum.Problems, func(a, b proto.ObjectCheck) int { return cmp.Compare(a.OID, b.OID) })
	if g.JSON {
		if err := g.printJSON(sum); err != nil {
			return err
		}
	} else {
		for _, p := range sum.Problems {
			fmt.Fprintf(g.out, "%-9s %v  %s\n", p.Status, p.OID, p.Detail)
		}
		fmt.Fprintf(g.out, "checked %s objects of %s: %s ok, %s repaired, %s lost", status.Count(sum.Checked), what,
			status.Count(sum.OK), status.Count(sum.Repaired), status.Count(sum.Lost))
		if sum.Degraded > 0 {
			fmt.Fprintf(g.out, ", %s not repaired", status.Count(sum.Degraded))
		}
		if sum.Unknown > 0 {
			fmt.Fprintf(g.out, ", %s not checked everywhere", status.Count(sum.Unknown))
		}
		fmt.Fprintf(g.out, " (%s absent: never written)\n", status.Count(sum.Absent))
	}
	switch {
	case sum.Lost > 0:
		return errs.E(errs.Corrupt, "%d objects of %s have no good copy left", sum.Lost, what)
	case sum.Degraded+sum.Unknown > 0:
		return errs.E(errs.IO, "%d objects of %s could not be checked or repaired on every node", sum.Degraded+sum.Unknown, what)
	}
	return nil
}

// startCountProgress is startProgress counting objects, not bytes.
func startCountProgress(what string, total int64) *progress {
	p := startProgress(what, total)
	if p != nil {
		p.objects = true
	}
	return p
}
