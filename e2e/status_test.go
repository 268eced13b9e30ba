package e2e

import (
	"encoding/json"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sheepfs/sheepfs/auth"
)

// TestStatusFiles: cluster/info, cluster/info.json, node/list and
// node/ID/info on the mount, and the CLI's cluster info, node list and vdi
// list (as tables and as JSON) all describe the same healthy 3-node
// cluster; every CLI command has a working --help.
func TestStatusFiles(t *testing.T) {
	c := NewCluster(t, 3, 3)
	m := c.Mount()
	run(t, quickTimeout, "truncate", "-s", "1G", m.VDI("one"))
	if r := c.Sheep("vdi", "create", "two", "2G"); r.Code != 0 {
		t.Fatalf("vdi create: %v", r)
	}
	wantAddr := map[string]string{}
	for _, n := range c.Nodes {
		wantAddr[n.ID] = n.Addr()
	}
	checkNodes := func(what string, nodes []NodeInfo) {
		t.Helper()
		if len(nodes) != 3 {
			t.Errorf("%s lists %d nodes, want 3: %+v", what, len(nodes), nodes)
		}
		seen := map[string]bool{}
		for _, n := range nodes {
			if wantAddr[n.ID] == "" || seen[n.ID] {
				t.Errorf("%s lists unexpected or repeated node %q", what, n.ID)
			}
			seen[n.ID] = true
			if n.Addr != wantAddr[n.ID] || n.State != "up" {
				t.Errorf("%s: node %s at %q state %q, want %q up", what, n.ID, n.Addr, n.State, wantAddr[n.ID])
			}
		}
	}

	// cluster/info for people.
	text := run(t, quickTimeout, "cat", m.Path("cluster", "info")).Stdout
	field := func(name string) string {
		t.Helper()
		re := regexp.MustCompile(`(?m)^` + name + `:\s+(\S+)`)
		mm := re.FindStringSubmatch(text)
		if mm == nil {
			t.Errorf("cluster/info has no %q line:\n%s", name, text)
			return ""
		}
		return mm[1]
	}
	if s := field("status"); s != "ok" {
		t.Errorf("cluster/info status %q, want ok", s)
	}
	epoch, err := strconv.ParseUint(field("epoch"), 10, 64)
	if err != nil || epoch == 0 {
		t.Errorf("cluster/info epoch %q: want a positive number", field("epoch"))
	}
	if s := field("copies"); s != "3" {
		t.Errorf("cluster/info copies %q, want 3", s)
	}
	if s := field("vdis"); s != "2" {
		t.Errorf("cluster/info vdis %q, want 2", s)
	}
	if s := field("nodes"); s != "3" {
		t.Errorf("cluster/info nodes %q, want 3", s)
	}
	checkNodeTable(t, "cluster/info", text, wantAddr)

	// cluster/info.json for programs: the same facts.
	ci := readClusterJSON(t, m)
	if ci.Status != "ok" || ci.Copies != 3 || ci.VDIs != 2 || ci.Epoch != epoch {
		t.Errorf("cluster/info.json: status %q copies %d vdis %d epoch %d; want ok, 3, 2, %d", ci.Status, ci.Copies, ci.VDIs, ci.Epoch, epoch)
	}
	if ci.Free <= 0 {
		t.Errorf("cluster/info.json free %d, want > 0", ci.Free)
	}
	checkNodes("cluster/info.json", ci.Nodes)

	// node/list and node/ID/info.
	checkNodeTable(t, "node/list", run(t, quickTimeout, "cat", m.Path("node", "list")).Stdout, wantAddr)
	entries := lsNames(t, m.Path("node"))
	for _, n := range c.Nodes {
		if !contains(entries, n.ID) {
			t.Errorf("ls node shows %v, no %s", entries, n.ID)
		}
		var ni NodeInfo
		out := run(t, quickTimeout, "cat", m.Path("node", n.ID, "info")).Stdout
		if err := jsonUnmarshal(out, &ni); err != nil {
			t.Errorf("node/%s/info is not JSON: %v\n%s", n.ID, err, out)
			continue
		}
		if ni.ID != n.ID || ni.Addr != n.Addr() || ni.State != "up" {
			t.Errorf("node/%s/info: %+v, want id %s addr %s state up", n.ID, ni, n.ID, n.Addr())
		}
	}
	if r := runCmd(quickTimeout, nil, nil, "cat", m.Path("node", "nosuchnode", "info")); r.Code == 0 {
		t.Errorf("node/nosuchnode/info exists: %v", r)
	}

	// The CLI, as tables and as JSON.
	r := c.Sheep("cluster", "info")
	if r.Code != 0 || !regexp.MustCompile(`(?m)^status:\s+ok$`).MatchString(r.Stdout) {
		t.Errorf("sheep cluster info: %v", r)
	} else {
		checkNodeTable(t, "sheep cluster info", r.Stdout, wantAddr)
	}
	ci2 := c.Info()
	if ci2.Status != "ok" || ci2.Copies != 3 || ci2.VDIs != 2 || ci2.Epoch != epoch {
		t.Errorf("sheep --json cluster info: %+v", ci2)
	}
	checkNodes("sheep --json cluster info", ci2.Nodes)

	r = c.Sheep("node", "list")
	if r.Code != 0 {
		t.Errorf("sheep node list: %v", r)
	} else {
		checkNodeTable(t, "sheep node list", r.Stdout, wantAddr)
	}
	var nodes []NodeInfo
	c.SheepJSON(&nodes, "node", "list")
	checkNodes("sheep --json node list", nodes)

	r = c.Sheep("vdi", "list")
	if r.Code != 0 || !regexp.MustCompile(`(?m)^one\s`).MatchString(r.Stdout) || !regexp.MustCompile(`(?m)^two\s`).MatchString(r.Stdout) {
		t.Errorf("sheep vdi list does not list one and two: %v", r)
	}
	vdis := c.VDIs()
	sizes := map[string]uint64{}
	for _, v := range vdis {
		sizes[v.Name] = v.Size
		if v.ID == 0 || v.Copies != 3 {
			t.Errorf("sheep --json vdi list: %+v", v)
		}
	}
	if len(vdis) != 2 || sizes["one"] != uint64(giB) || sizes["two"] != uint64(2*giB) {
		t.Errorf("sheep --json vdi list: %+v, want one (1 GiB) and two (2 GiB)", vdis)
	}

	// --help of every command and group.
	helps := [][]string{
		{}, {"daemon"}, {"cluster"}, {"cluster", "format"}, {"cluster", "info"},
		{"node"}, {"node", "list"}, {"vdi"}, {"vdi", "create"}, {"vdi", "list"},
		{"vdi", "delete"}, {"vdi", "resize"},
	}
	// Commands that `sheep --help` lists are covered too.
	r = runCmd(quickTimeout, nil, nil, sheepBin, "--help")
	inCommands := false
	for _, line := range strings.Split(r.Stdout, "\n") {
		if strings.HasPrefix(line, "Commands:") {
			inCommands = true
			continue
		}
		if !inCommands || !strings.HasPrefix(line, "  ") || strings.HasPrefix(line, "   ") {
			continue // not a command line, or a wrapped help text
		}
		f := strings.Fields(line)
		var cmd []string
		for _, w := range f {
			if !regexp.MustCompile(`^[a-z][a-z-]*$`).MatchString(w) {
				break
			}
			cmd = append(cmd, w)
		}
		if len(cmd) > 2 {
			cmd = cmd[:2] // "node list  List the nodes": the first words
		}
		if len(cmd) > 0 {
			helps = append(helps, cmd)
		}
	}
	for _, args := range helps {
		r := runCmd(quickTimeout, nil, nil, sheepBin, append(args, "--help")...)
		if r.Code != 0 || !strings.Contains(r.Stdout, "Usage: sheep") {
			t.Errorf("sheep %s --help: %v", strings.Join(args, " "), r)
		}
	}
	if r := runCmd(quickTimeout, nil, nil, sheepfsBin, "--help"); r.Code != 0 || !strings.Contains(r.Stdout, "Usage: sheepfs") {
		t.Errorf("sheepfs --help: %v", r)
	}
}

// checkNodeTable checks a node table (ID ADDRESS STATE ...) in text: one
// row per node with its address and state up.
func checkNodeTable(t *testing.T, what, text string, wantAddr map[string]string) {
	t.Helper()
	for id, addr := range wantAddr {
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(id) + `\s+` + regexp.QuoteMeta(addr) + `\s+up\s`)
		if n := len(re.FindAllString(text, -1)); n != 1 {
			t.Errorf("%s: %d rows for node %s at %s in state up, want 1:\n%s", what, n, id, addr, text)
		}
	}
	if !regexp.MustCompile(`(?m)^ID\s+ADDRESS\s+STATE`).MatchString(text) {
		t.Errorf("%s: no node table header:\n%s", what, text)
	}
}

// TestClusterHealth: sheep cluster health exits 0 on a healthy cluster, 1
// once a node is killed (a member down), and 2 when the node asked has no
// quorum; --json says the same.
func TestClusterHealth(t *testing.T) {
	parallel(t)
	c := NewCluster(t, 3, 3)
	c.WaitOK()
	health := func(args ...string) Result {
		var env []string
		if c.KeyFile != "" {
			env = []string{auth.EnvFile + "=" + c.KeyFile}
		}
		return runCmd(cmdTimeout, env, nil, sheepBin, append([]string{"--addr", c.Nodes[0].Addr(), "--timeout", "5s", "cluster", "health"}, args...)...)
	}
	want := func(code int, line string) {
		t.Helper()
		var last Result
		if !waitFor(60*time.Second, func() bool {
			last = health()
			return last.Code == code
		}) {
			t.Fatalf("cluster health: %v, printed %q; want exit %d", last, last.Stdout, code)
		}
		if !strings.HasPrefix(last.Stdout, line) || strings.Count(last.Stdout, "\n") != 1 {
			t.Errorf("cluster health printed %q; want one line starting %q", last.Stdout, line)
		}
		r := health("--json")
		var h struct {
			Health string `json:"health"`
			Exit   int    `json:"exit"`
		}
		if err := json.Unmarshal([]byte(r.Stdout), &h); err != nil || r.Code != code || h.Exit != code || !strings.HasPrefix(line, h.Health) {
			t.Errorf("cluster health --json: %v (%v); want exit %d, health %q", r, err, code, strings.TrimSuffix(line, ":"))
		}
	}
	want(0, "healthy:")
	c.Kill(1)
	want(1, "degraded: "+string(c.Nodes[1].ID)+" down")
	c.Kill(2)
	want(2, "unavailable:")
}

// TestVersion: sheep version, sheep --version and sheepfs --version print
// one line naming the program, and the commit built when built from a git
// checkout; none needs a cluster key.
func TestVersion(t *testing.T) {
	parallel(t)
	commit := builtCommit[:min(12, len(builtCommit))]
	for _, args := range [][]string{{sheepBin, "version"}, {sheepBin, "--version"}, {sheepfsBin, "--version"}} {
		r := runCmd(quickTimeout, []string{"SHEEP_KEY_FILE=/nonexistent"}, nil, args[0], args[1:]...)
		name := filepath.Base(args[0])
		if r.Code != 0 || !strings.HasPrefix(r.Stdout, name+" ") || strings.Count(r.Stdout, "\n") != 1 {
			t.Errorf("%s %s: %v; want one line starting %q", name, args[1], r, name+" ")
		}
		if commit != "" && !strings.Contains(r.Stdout, "commit "+commit) {
			t.Errorf("%s %s printed %q; want the commit built, %s", name, args[1], r.Stdout, commit)
		}
	}
}
