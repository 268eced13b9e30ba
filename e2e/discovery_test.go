package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLANDiscovery: nodes in network namespaces on one bridge. A cluster
// runs in the first; a node started without --join in the second finds it
// by multicast and joins it; a node with another key in the third does
// not: it starts a cluster of its own.
func TestLANDiscovery(t *testing.T) {
	parallel(t)
	requireEnv(t, "ip", "nft", "timeout", "python3")
	lab := newNetLab(t, 3)
	c := newCluster(t, 1, 1, lab.base, func(node *Node) {
		node.Host, node.NetNS = lab.ip(node.Index), lab.ns[node.Index]
	})
	add := func(i int, args ...string) *Node {
		n := &Node{Index: i, ID: fmt.Sprintf("node%d", i), Port: lab.base + 10*i, c: c,
			Host: lab.ip(i), NetNS: lab.ns[i], Args: args, Discover: true}
		n.Dir = filepath.Join(c.Dir, n.ID)
		n.Log = filepath.Join(c.Dir, n.ID+".log")
		c.Nodes = append(c.Nodes, n)
		c.startNode(n, nil)
		return n
	}
	lab.checkPath(1, c.Nodes[0].Addr())
	n1 := add(1)
	c.waitMembers(2)
	if b, _ := os.ReadFile(n1.Log); !strings.Contains(string(b), "found the cluster on the local network") {
		logTail(t, n1.Log, 20)
		t.Errorf("node1 joined without saying it found the cluster")
	}

	other := filepath.Join(t.TempDir(), "other.key")
	r := runCmd(quickTimeout, nil, nil, "sh", "-c", sheepBin+" keygen > "+other)
	if r.Code != 0 {
		t.Fatalf("keygen: %v", r)
	}
	n2 := add(2, "--key-file", other)
	if !waitFor(30*time.Second, func() bool {
		b, _ := os.ReadFile(n2.Log)
		return strings.Contains(string(b), "no cluster of this key answered")
	}) {
		logTail(t, n2.Log, 20)
		t.Fatalf("the node with another key did not start a cluster of its own")
	}
	time.Sleep(2 * time.Second)
	var nodes []NodeInfo
	c.SheepJSON(&nodes, "node", "list")
	if len(nodes) != 2 {
		t.Errorf("the cluster lists %d nodes after a node with another key started, want 2: %+v", len(nodes), nodes)
	}
	for _, n := range nodes {
		if n.ID == "node2" {
			t.Errorf("the node with another key is a member: %+v", nodes)
		}
	}
}
