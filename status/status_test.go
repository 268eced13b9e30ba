package status

import (
	"strings"
	"testing"

	"github.com/sheepfs/sheepfs/proto"
)

func TestNumbers(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB", 10 << 30: "10.0 GiB", 64 << 40: "64.0 TiB"} {
		if got := HumanBytes(n); got != want {
			t.Errorf("HumanBytes(%d) = %q, want %q", n, got, want)
		}
	}
	for n, want := range map[int]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -1234: "-1,234"} {
		if got := Count(n); got != want {
			t.Errorf("Count(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestClusterInfo(t *testing.T) {
	ci := proto.ClusterInfo{Status: proto.HealthDegraded, Epoch: 7, Copies: 3,
		Nodes: []proto.NodeInfo{{ID: "node0", State: "up"}, {ID: "node1", State: "down"}}}
	text := string(FormatClusterInfo(ci))
	for _, want := range []string{"degraded", "node0", "node1", "down"} {
		if !strings.Contains(text, want) {
			t.Errorf("cluster info text lacks %q:\n%s", want, text)
		}
	}
}
