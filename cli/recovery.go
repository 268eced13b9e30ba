package cli

import (
	"bytes"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/sheepfs/sheepfs/errs"
	"github.com/sheepfs/sheepfs/proto"
	"github.com/sheepfs/sheepfs/status"
)

// ClusterRecoveryCmd shows recovery and changes its throttle.
type ClusterRecoveryCmd struct {
	MaxRate     string `help:"Most bytes per second each node copies in the background, e.g. 100MB/s; 0 for no limit." placeholder:"RATE"`
	MaxParallel *int   `help:"How many objects each node copies at once (1 to 64)." placeholder:"N"`
	Pause       bool   `help:"Stop background copies (objects clients ask for are still recovered at once)." xor:"pause"`
	Resume      bool   `help:"Resume background copies." xor:"pause"`
}

// Run applies the changes asked for, then prints every node's recovery.
func (c *ClusterRecoveryCmd) Run(g *Globals) error {
	var ch proto.RecoveryChange
	if c.MaxRate != "" {
		r, err := ParseSize(strings.TrimSuffix(strings.TrimSpace(c.MaxRate), "/s"))
		if err != nil {
			return errs.E(errs.Invalid, "max rate %q: want bytes per second such as 100MB/s", c.MaxRate)
		}
		if r > 1<<62 {
			return errs.E(errs.Invalid, "max rate %q is too large", c.MaxRate)
		}
		rate := int64(r)
		ch.MaxRate = &rate
	}
	if c.MaxParallel != nil {
		if *c.MaxParallel < 1 || *c.MaxParallel > 64 {
			return errs.E(errs.Invalid, "max parallel must be 1 to 64, not %d", *c.MaxParallel)
		}
		ch.MaxParallel = c.MaxParallel
	}
	if c.Pause || c.Resume {
		p := c.Pause
		ch.Paused = &p
	}
	var ci proto.ClusterInfo
	req := proto.AdminRequest{Cmd: proto.AdminClusterInfo}
	if ch.MaxRate != nil || ch.MaxParallel != nil || ch.Paused != nil {
		req = proto.AdminRequest{Cmd: proto.AdminRecoverySet, Recovery: &ch}
	}
	if err := g.admin(req, &ci); err != nil {
		return err
	}
	if g.JSON {
		return g.printJSON(struct {
			Recovery proto.RecoveryInfo     `json:"recovery"`
			Throttle proto.RecoverySettings `json:"throttle"`
			Nodes    []nodeRecovery         `json:"nodes"`
		}{ci.Recovery, ci.Throttle, nodeRecoveries(ci)})
	}
	_, err := g.out.Write(formatRecovery(ci))
	return err
}

// nodeRecovery is one node's line of `sheep cluster recovery --json`.
type nodeRecovery struct {
	ID       string             `json:"id"`
	State    string             `json:"state"`
	Recovery proto.RecoveryInfo `json:"recovery"`
}

func nodeRecoveries(ci proto.ClusterInfo) []nodeRecovery {
	out := make([]nodeRecovery, len(ci.Nodes))
	for i, n := range ci.Nodes {
		out[i] = nodeRecovery{ID: string(n.ID), State: n.State, Recovery: n.Recovery}
	}
	return out
}

// formatRecovery renders the cluster's recovery and a table per node.
func formatRecovery(ci proto.ClusterInfo) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "epoch:      %v\n", ci.Epoch)
	fmt.Fprintf(&b, "recovery:   %s\n", status.FormatRecovery(ci.Recovery))
	if ci.Recovery.Degraded > 0 {
		fmt.Fprintf(&b, "redundancy: %s objects below their copies\n", status.Count(ci.Recovery.Degraded))
	} else {
		fmt.Fprintf(&b, "redundancy: every object has its copies\n")
	}
	fmt.Fprintf(&b, "throttle:   %s\n\n", status.FormatThrottle(ci.Throttle))
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATE\tRECOVERED\tPROGRESS\tFETCHED\tDEGRADED\tMISPLACED")
	for _, n := range ci.Nodes {
		r := n.Recovery
		fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s (%s)\t%s\t%s\n", n.ID, n.State, r.Recovered, status.FormatRecovery(r),
			status.Count(r.Fetched), status.HumanBytes(r.Bytes), status.Count(r.Degraded), status.Count(r.Misplaced))
	}
	tw.Flush()
	return b.Bytes()
}
