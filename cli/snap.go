package cli

import (
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/ids"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/status"
)

// VDISnapshotCmd takes a snapshot.
type VDISnapshotCmd struct {
	Snapshot string `arg:"" help:"NAME@TAG: the VDI and the new snapshot's tag."`
}

// Run takes the snapshot.
func (c *VDISnapshotCmd) Run(g *Globals) error {
	name, tag, err := cluster.SplitSnapshot(c.Snapshot)
	if err != nil {
		return err
	}
	var v proto.VDIInfo
	if err := g.admin(proto.AdminRequest{Cmd: proto.AdminVDISnapshot, Name: name, Tag: tag}, &v); err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(v)
	}
	fmt.Fprintf(g.out, "snapshot %s taken\n", v.FullName())
	return nil
}

// VDISnapshotsCmd lists snapshots.
type VDISnapshotsCmd struct {
	Name string `arg:"" optional:"" help:"Only the snapshots of this VDI."`
}

// Run prints the snapshot table.
func (c *VDISnapshotsCmd) Run(g *Globals) error {
	var list []proto.VDIInfo
	if err := g.admin(proto.AdminRequest{Cmd: proto.AdminSnapList, Name: c.Name}, &list); err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(list)
	}
	tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SNAPSHOT\tID\tSIZE\tCOPIES\tTAKEN")
	for _, v := range list {
		fmt.Fprintf(tw, "%s\t%v\t%s\t%d\t%s\n", v.FullName(), v.ID, status.HumanBytes(int64(v.Size)), v.Copies,
			time.Unix(v.SnapTime, 0).UTC().Format("2006-01-02 15:04:05"))
	}
	return tw.Flush()
}

// VDICloneCmd clones a snapshot.
type VDICloneCmd struct {
	Source string `arg:"" help:"The snapshot to start from, NAME@TAG."`
	Name   string `arg:"" help:"The new VDI's name."`
	Copies int    `help:"Replicas; a clone shares objects with its source, so only the source's count is allowed."`
}

// Run makes the clone.
func (c *VDICloneCmd) Run(g *Globals) error {
	var v proto.VDIInfo
	if err := g.admin(proto.AdminRequest{Cmd: proto.AdminVDIClone, Source: c.Source, Name: c.Name, Copies: c.Copies}, &v); err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(v)
	}
	fmt.Fprintf(g.out, "created %s from %s (%s, %d copies)\n", v.Name, v.Source, status.HumanBytes(int64(v.Size)), v.Copies)
	return nil
}

// VDIRollbackCmd rolls a VDI back to a snapshot.
type VDIRollbackCmd struct {
	Snapshot string `arg:"" help:"NAME@TAG: the VDI and the snapshot it goes back to."`
}

// Run rolls back.
func (c *VDIRollbackCmd) Run(g *Globals) error {
	name, tag, err := cluster.SplitSnapshot(c.Snapshot)
	if err != nil {
		return err
	}
	var v proto.VDIInfo
	if err := g.admin(proto.AdminRequest{Cmd: proto.AdminVDIRollback, Name: name, Tag: tag}, &v); err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(v)
	}
	fmt.Fprintf(g.out, "%s is %s again\n", v.Name, c.Snapshot)
	return nil
}

// VDIGCCmd runs the collector.
type VDIGCCmd struct{}

// Run collects.
func (VDIGCCmd) Run(g *Globals) error {
	var r proto.GCResult
	if err := g.admin(proto.AdminRequest{Cmd: proto.AdminGC}, &r); err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(r)
	}
	fmt.Fprintf(g.out, "freed %d objects; %d deleted images forgotten, %d still needed by descendants\n", r.Freed, r.Purged, r.Left)
	return nil
}

// VDITreeCmd draws the families.
type VDITreeCmd struct{}

// Run draws every family, its root first.
func (VDITreeCmd) Run(g *Globals) error {
	var imgs []proto.ImageInfo
	if err := g.admin(proto.AdminRequest{Cmd: proto.AdminVDITree}, &imgs); err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(imgs)
	}
	_, err := g.out.Write([]byte(DrawTree(imgs)))
	return err
}

// DrawTree draws the image families as indented trees: snapshots by
// NAME@TAG with their time, writable VDIs by NAME (current), deleted images
// that descendants still need in brackets.
func DrawTree(imgs []proto.ImageInfo) string {
	byID := map[ids.VDIID]proto.ImageInfo{}
	kids := map[ids.VDIID][]ids.VDIID{}
	for _, im := range imgs {
		byID[im.ID] = im
	}
	var roots []ids.VDIID
	for _, im := range imgs {
		if _, ok := byID[im.Parent]; im.Parent == 0 || !ok {
			roots = append(roots, im.ID)
		} else {
			kids[im.Parent] = append(kids[im.Parent], im.ID)
		}
	}
	slices.Sort(roots)
	var b strings.Builder
	var draw func(id ids.VDIID, prefix string, last, root bool)
	draw = func(id ids.VDIID, prefix string, last, root bool) {
		im := byID[id]
		label := ""
		switch {
		case im.VDI == nil:
			label = fmt.Sprintf("[deleted %s]", im.Was)
		case im.VDI.Tag != "":
			label = fmt.Sprintf("%s  (snapshot, %s)", im.VDI.FullName(), time.Unix(im.VDI.SnapTime, 0).UTC().Format("2006-01-02 15:04:05"))
		default:
			label = fmt.Sprintf("%s  (current, %s)", im.VDI.Name, status.HumanBytes(int64(im.VDI.Size)))
		}
		next := prefix
		switch {
		case root:
			b.WriteString(label + "\n")
		case last:
			b.WriteString(prefix + "└─ " + label + "\n")
			next += "   "
		default:
			b.WriteString(prefix + "├─ " + label + "\n")
			next += "│  "
		}
		ks := kids[id]
		slices.Sort(ks)
		for i, k := range ks {
			draw(k, next, i == len(ks)-1, false)
		}
	}
	for _, r := range roots {
		draw(r, "", true, true)
	}
	return b.String()
}
