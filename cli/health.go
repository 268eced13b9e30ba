package cli

import (
	"fmt"
	"strings"

	"github.com/sheepfs/sheepfs/proto"
)

// ClusterHealthCmd prints the cluster's health in one line, with an exit
// status for scripts and monitoring.
type ClusterHealthCmd struct{}

// Health is the cluster's health as `sheep cluster health` sees it.
type Health struct {
	Health  string       `json:"health"` // healthy, degraded, unavailable
	Exit    int          `json:"exit"`   // the command's exit status: 0, 1, 2
	Status  proto.Health `json:"status,omitempty"`
	Reasons []string     `json:"reasons,omitempty"`
}

// healthOf judges the answer ci (or the error getting it).
func healthOf(ci proto.ClusterInfo, err error) Health {
	if err != nil {
		return Health{Health: "unavailable", Exit: 2, Reasons: []string{strings.TrimSpace(err.Error())}}
	}
	h := Health{Status: ci.Status}
	switch ci.Status {
	case proto.HealthNoQuorum:
		h.Reasons = append(h.Reasons, "no quorum: the node asked sees no majority of the members")
	case proto.HealthUnformatted:
		h.Reasons = append(h.Reasons, "not formatted (sheep cluster format)")
	}
	if len(h.Reasons) > 0 {
		h.Health, h.Exit = "unavailable", 2
		return h
	}
	var down []string
	for _, n := range ci.Nodes {
		if n.State != "up" {
			down = append(down, string(n.ID))
		}
	}
	if len(down) > 0 {
		h.Reasons = append(h.Reasons, fmt.Sprintf("%s down", strings.Join(down, ", ")))
	}
	if len(ci.Nodes) < ci.Copies {
		h.Reasons = append(h.Reasons, fmt.Sprintf("%d nodes for %d copies", len(ci.Nodes), ci.Copies))
	}
	r := ci.Recovery
	if r.Degraded > 0 {
		h.Reasons = append(h.Reasons, fmt.Sprintf("%d objects below their copies", r.Degraded))
	}
	switch r.State {
	case "recovering", "waiting", "paused":
		s := "recovery " + r.State
		if r.State == "recovering" {
			s = "recovery running"
		}
		if r.Objects > 0 {
			s += fmt.Sprintf(" (%d of %d objects settled", r.Done, r.Objects)
			if r.ETA > 0 {
				s += fmt.Sprintf(", ETA %.0fs", r.ETA)
			}
			s += ")"
		}
		h.Reasons = append(h.Reasons, s)
	}
	if len(h.Reasons) == 0 && ci.Status != proto.HealthOK {
		h.Reasons = append(h.Reasons, fmt.Sprintf("the cluster's status is %q", ci.Status))
	}
	if len(h.Reasons) > 0 {
		h.Health, h.Exit = "degraded", 1
		return h
	}
	h.Health = "healthy"
	return h
}

// line is h in one line.
func (h Health) line(ci proto.ClusterInfo) string {
	if h.Exit == 0 {
		return fmt.Sprintf("healthy: %d nodes up, %d copies, epoch %d", len(ci.Nodes), ci.Copies, ci.Epoch)
	}
	return h.Health + ": " + strings.Join(h.Reasons, "; ")
}

// Run prints the health and exits 0 when healthy, 1 when degraded, 2 when
// unavailable (no quorum, not formatted, no answer).
func (c *ClusterHealthCmd) Run(g *Globals) error {
	var ci proto.ClusterInfo
	err := g.admin(proto.AdminRequest{Cmd: proto.AdminClusterInfo}, &ci)
	h := healthOf(ci, err)
	if g.JSON {
		if err := g.printJSON(h); err != nil {
			return err
		}
	} else if _, err := fmt.Fprintln(g.out, h.line(ci)); err != nil {
		return err
	}
	if h.Exit != 0 {
		return exitStatus(h.Exit)
	}
	return nil
}

// exitStatus is an error that makes Main exit with that status without
// printing anything more: the command said what it had to.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }
