package cli

import (
	"bytes"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sheepfs/sheepfs/cluster"
	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/status"
)

// ClusterScrubCmd shows the background scrub and changes its setting.
type ClusterScrubCmd struct {
	Status  string        `arg:"" optional:"" enum:"status," default:"" help:"Only show each node's scrub (the default when no setting is given)."`
	MaxRate string        `help:"Most bytes per second each node's scrub reads, e.g. 20MB/s (0: the default, 16 MiB/s)." placeholder:"RATE"`
	Every   time.Duration `help:"Time from the start of one pass to the start of the next (default 168h)." placeholder:"DURATION"`
	Grace   time.Duration `help:"How long after its last write an object that no index references is freed (default 1h, at least 10m); it is freed at the second pass that finds it so." placeholder:"DURATION"`
	Start   bool          `help:"Start a pass on every node now."`
	Pause   bool          `help:"Stop the scrub (a pass under way stops where it is)." xor:"pause"`
	Resume  bool          `help:"Resume the scrub." xor:"pause"`
}

// Run applies the changes asked for, then prints every node's scrub.
func (c *ClusterScrubCmd) Run(g *Globals) error {
	var ch proto.ScrubChange
	set := false
	if c.MaxRate != "" {
		r, err := ParseSize(strings.TrimSuffix(strings.TrimSpace(c.MaxRate), "/s"))
		if err != nil || r > 1<<62 {
			return errs.E(errs.Invalid, "max rate %q: want bytes per second such as 20MB/s", c.MaxRate)
		}
		rate := int64(r)
		ch.MaxRate, set = &rate, true
	}
	if c.Every < 0 {
		return errs.E(errs.Invalid, "--every must not be negative")
	}
	if c.Every > 0 {
		s := max(int64(c.Every/time.Second), 1)
		ch.Every, set = &s, true
	}
	if c.Grace < 0 || c.Grace > 0 && c.Grace < cluster.MinScrubGrace*time.Second {
		return errs.E(errs.Invalid, "--grace must be at least %v", cluster.MinScrubGrace*time.Second)
	}
	if c.Grace > 0 {
		g := max(int64(c.Grace/time.Second), 1)
		ch.Grace, set = &g, true
	}
	if c.Pause || c.Resume {
		p := c.Pause
		ch.Paused, set = &p, true
	}
	if c.Start {
		ch.Start, set = true, true
	}
	var ci proto.ClusterInfo
	req := proto.AdminRequest{Cmd: proto.AdminClusterInfo}
	if set {
		req = proto.AdminRequest{Cmd: proto.AdminScrubSet, Scrub: &ch}
	}
	if err := g.admin(req, &ci); err != nil {
		return err
	}
	if g.JSON {
		type node struct {
			ID    string          `json:"id"`
			State string          `json:"state"`
			Scrub proto.ScrubInfo `json:"scrub"`
		}
		out := struct {
			Settings proto.ScrubSettings `json:"settings"`
			Nodes    []node              `json:"nodes"`
		}{Settings: ci.ScrubSettings}
		for _, n := range ci.Nodes {
			out.Nodes = append(out.Nodes, node{string(n.ID), n.State, n.Scrub})
		}
		return g.printJSON(out)
	}
	_, err := g.out.Write(FormatScrub(ci))
	return err
}

// FormatScrub renders the scrub's setting and each node's scrub.
func FormatScrub(ci proto.ClusterInfo) []byte {
	var b bytes.Buffer
	s := ci.ScrubSettings
	state := "on"
	if s.Paused {
		state = "paused"
	}
	fmt.Fprintf(&b, "scrub %s: %s/s per node, a pass every %v; unreferenced objects freed %v after their last write\n",
		state, status.HumanBytes(s.MaxRate), time.Duration(s.Every)*time.Second, time.Duration(s.Grace)*time.Second)
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATE\tPASS\tLAST FINISHED\tCHECKED\tREPAIRED\tLOST\tORPHANS")
	for _, n := range ci.Nodes {
		sc := n.Scrub
		pass := "-"
		if sc.State == "scrubbing" || sc.Objects > 0 {
			pass = fmt.Sprintf("%s of %s", status.Count(sc.Done), status.Count(sc.Objects))
		}
		state := sc.State
		if n.State != "up" {
			state = n.State
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.ID, state, pass, status.FormatWhen(sc.Finished),
			status.Count(sc.Checked), status.Count(sc.Repaired), status.Count(sc.Lost), status.Count(sc.Orphans))
	}
	tw.Flush()
	return b.Bytes()
}
