package cli

import (
	"errors"
	"strings"
	"testing"

	"github.com/sheepfs/sheepfs/proto"
)

func TestHealthOf(t *testing.T) {
	up := []proto.NodeInfo{{ID: "n0", State: "up"}, {ID: "n1", State: "up"}, {ID: "n2", State: "up"}}
	oneDown := []proto.NodeInfo{{ID: "n0", State: "up"}, {ID: "n1", State: "down"}, {ID: "n2", State: "up"}}
	cases := []struct {
		name string
		ci   proto.ClusterInfo
		err  error
		exit int
		line string
	}{
		{"healthy", proto.ClusterInfo{Status: proto.HealthOK, Nodes: up, Copies: 3, Epoch: 4}, nil, 0, "healthy: 3 nodes up, 3 copies, epoch 4"},
		{"node down", proto.ClusterInfo{Status: proto.HealthDegraded, Nodes: oneDown, Copies: 3,
			Recovery: proto.RecoveryInfo{Degraded: 12}}, nil, 1, "degraded: n1 down; 12 objects below their copies"},
		{"recovering", proto.ClusterInfo{Status: proto.HealthOK, Nodes: up, Copies: 3,
			Recovery: proto.RecoveryInfo{State: "recovering", Objects: 10, Done: 4, ETA: 3}}, nil, 1, "degraded: recovery running (4 of 10 objects settled, ETA 3s)"},
		{"too few nodes", proto.ClusterInfo{Status: proto.HealthDegraded, Nodes: up[:2], Copies: 3}, nil, 1, "degraded: 2 nodes for 3 copies"},
		{"degraded, no detail", proto.ClusterInfo{Status: proto.HealthDegraded, Nodes: up, Copies: 3}, nil, 1, `degraded: the cluster's status is "degraded"`},
		{"no quorum", proto.ClusterInfo{Status: proto.HealthNoQuorum}, nil, 2, "unavailable: no quorum"},
		{"unformatted", proto.ClusterInfo{Status: proto.HealthUnformatted}, nil, 2, "unavailable: not formatted"},
		{"no answer", proto.ClusterInfo{}, errors.New("dial tcp 127.0.0.1:7000: connection refused"), 2, "unavailable: dial tcp"},
	}
	for _, c := range cases {
		h := healthOf(c.ci, c.err)
		if h.Exit != c.exit || !strings.HasPrefix(h.line(c.ci), c.line) {
			t.Errorf("%s: exit %d, %q; want exit %d, %q...", c.name, h.Exit, h.line(c.ci), c.exit, c.line)
		}
	}
}
