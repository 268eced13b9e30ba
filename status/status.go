// Package status formats what the cluster reports of itself for people:
// the text of cluster/info and node/list on the mount, and the tables of
// the sheep command. Both sheepfs and the CLI use it.
package status

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sheepfs/sheepfs/proto"
)

// FormatClusterInfo renders cluster status for people.
func FormatClusterInfo(ci proto.ClusterInfo) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "status:  %s\n", ci.Status)
	fmt.Fprintf(&b, "epoch:   %v\n", ci.Epoch)
	if ci.Copies > 0 {
		fmt.Fprintf(&b, "copies:  %d\n", ci.Copies)
		fmt.Fprintf(&b, "formatted: %s\n", time.Unix(ci.FormatTime, 0).UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(&b, "leader:  %s\n", ci.Leader)
	fmt.Fprintf(&b, "vdis:    %d\n", ci.VDIs)
	fmt.Fprintf(&b, "space:   %s used, %s free\n", HumanBytes(ci.Used), HumanBytes(ci.Free))
	if ci.Copies > 0 {
		fmt.Fprintf(&b, "recovery:   %s\n", FormatRecovery(ci.Recovery))
		if ci.Recovery.Degraded > 0 {
			fmt.Fprintf(&b, "redundancy: %s objects below their copies\n", Count(ci.Recovery.Degraded))
		} else {
			fmt.Fprintf(&b, "redundancy: every object has its copies\n")
		}
		if ci.Recovery.Misplaced > 0 {
			fmt.Fprintf(&b, "misplaced:  %s copies to delete once their new holders have them\n", Count(ci.Recovery.Misplaced))
		}
		fmt.Fprintf(&b, "throttle:   %s\n", FormatThrottle(ci.Throttle))
		fmt.Fprintf(&b, "scrub:      %s\n", FormatScrubSummary(ci))
		for _, n := range ci.Nodes {
			sc := n.Scrub
			switch {
			case sc.State == "scrubbing":
				fmt.Fprintf(&b, "            %s: scrubbing, %s of %s objects; last pass finished %s\n", n.ID, Count(sc.Done), Count(sc.Objects), FormatWhen(sc.Finished))
			case sc.Finished != 0:
				fmt.Fprintf(&b, "            %s: last pass finished %s: %s objects checked, %s repaired, %s lost, %s freed\n",
					n.ID, FormatWhen(sc.Finished), Count(sc.Checked), Count(sc.Repaired), Count(sc.Lost), Count(sc.Orphans))
			}
		}
		var found proto.IntegrityInfo
		for _, n := range ci.Nodes {
			found.Damaged += n.Integrity.Damaged
			found.Repaired += n.Integrity.Repaired
			found.Unrepaired += n.Integrity.Unrepaired
		}
		if found.Damaged+found.Repaired+found.Unrepaired > 0 {
			fmt.Fprintf(&b, "integrity:  %d damaged copies found since the nodes started, %d repaired, %d with no good copy to repair from\n",
				found.Damaged, found.Repaired, found.Unrepaired)
		}
	}
	fmt.Fprintf(&b, "nodes:   %d\n\n", len(ci.Nodes))
	b.Write(FormatNodes(ci.Nodes))
	return b.Bytes()
}

// FormatRecovery renders recovery progress in one line, e.g. "1,234 of
// 5,000 objects (24%), 180.0 MiB/s, ETA 0:21".
func FormatRecovery(r proto.RecoveryInfo) string {
	if r.State == "idle" || r.State == "" {
		return "idle"
	}
	if r.Objects == 0 {
		// Nothing found to fetch yet: inventories still coming in, or a
		// member down that may hold some.
		return "nothing to fetch so far (" + r.State + ")"
	}
	pct := 100
	if r.Objects > 0 {
		pct = r.Done * 100 / r.Objects
	}
	s := fmt.Sprintf("%s of %s objects (%d%%)", Count(r.Done), Count(r.Objects), pct)
	if r.Rate > 0 {
		s += fmt.Sprintf(", %s/s", HumanBytes(int64(r.Rate)))
	}
	if r.ETA > 0 {
		e := int64(r.ETA + 0.5)
		if e >= 3600 {
			s += fmt.Sprintf(", ETA %d:%02d:%02d", e/3600, e/60%60, e%60)
		} else {
			s += fmt.Sprintf(", ETA %d:%02d", e/60, e%60)
		}
	}
	if r.State != "recovering" {
		s += " (" + r.State + ")"
	}
	return s
}

// FormatThrottle renders the recovery throttle.
func FormatThrottle(t proto.RecoverySettings) string {
	rate := "no rate limit"
	if t.MaxRate > 0 {
		rate = "at most " + HumanBytes(t.MaxRate) + "/s"
	}
	s := fmt.Sprintf("%s, %d objects at a time per node", rate, t.MaxParallel)
	if t.Paused {
		s += ", paused"
	}
	return s
}

// Count formats n with thousands separators: 1,234,567.
func Count(n int) string {
	s := strconv.Itoa(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		s = "-" + s
	}
	return s
}

// FormatNodes renders a node table.
func FormatNodes(nodes []proto.NodeInfo) []byte {
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tADDRESS\tSTATE\tROLE\tZONE\tWEIGHT\tSHARE\tOBJECTS\tUSED\tFREE\tRECOVERY")
	for _, n := range nodes {
		zone := n.Zone
		if zone == "" {
			zone = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%.1f%%\t%d\t%s\t%s\t%s\n", n.ID, n.Addr, n.State, n.Role, zone,
			HumanBytes(int64(n.Weight)<<20), 100*n.Share, n.Objects, HumanBytes(n.Used), HumanBytes(n.Free), FormatRecovery(n.Recovery))
	}
	tw.Flush()
	return b.Bytes()
}

// HumanBytes formats a byte count with a binary unit.
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// FormatScrubSummary renders the scrub in one line: the oldest last pass
// over the nodes, and what the last passes found.
func FormatScrubSummary(ci proto.ClusterInfo) string {
	var oldest int64 = -1
	never, scrubbing, repaired, lost, orphans := 0, 0, 0, 0, 0
	for _, n := range ci.Nodes {
		sc := n.Scrub
		if sc.State == "scrubbing" {
			scrubbing++
		}
		if sc.Finished == 0 {
			never++
			continue
		}
		if oldest < 0 || sc.Finished < oldest {
			oldest = sc.Finished
		}
		repaired += sc.Repaired
		lost += sc.Lost
		orphans += sc.Orphans
	}
	var b strings.Builder
	switch {
	case ci.ScrubSettings.Paused:
		b.WriteString("paused; ")
	case scrubbing > 0:
		fmt.Fprintf(&b, "scrubbing on %d of %d nodes; ", scrubbing, len(ci.Nodes))
	}
	if never == len(ci.Nodes) {
		b.WriteString("no pass finished yet")
		return b.String()
	}
	fmt.Fprintf(&b, "last passes finished by %s", FormatWhen(oldest))
	if never > 0 {
		fmt.Fprintf(&b, " (never on %d nodes)", never)
	}
	fmt.Fprintf(&b, ", found %d objects repaired, %d lost, %d orphan copies removed", repaired, lost, orphans)
	return b.String()
}

// FormatWhen renders a unix time as UTC, or "never" for 0.
func FormatWhen(unix int64) string {
	if unix == 0 {
		return "never"
	}
	return time.Unix(unix, 0).UTC().Format("2006-01-02 15:04:05 UTC")
}
