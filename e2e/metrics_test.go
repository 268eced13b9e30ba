package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scrape reads the Prometheus text at url and returns each sample's value
// by its name with labels, as written.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	cl := &http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scrape %s: %s, %q\n%s", url, resp.Status, resp.Header.Get("Content-Type"), b)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if i < 0 || err != nil {
			t.Fatalf("scrape %s: bad line %q", url, line)
		}
		out[line[:i]] = v
	}
	return out
}

// sum adds the samples whose name (with labels) starts with prefix and
// contains every one of parts.
func sum(samples map[string]float64, prefix string, parts ...string) float64 {
	var s float64
next:
	for k, v := range samples {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		for _, p := range parts {
			if !strings.Contains(k, p) {
				continue next
			}
		}
		s += v
	}
	return s
}

// freeAddr returns a loopback address with a port nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestMetrics: every node serves Prometheus metrics on port+3; after N
// bytes are written and fsynced through a mount, the bytes the nodes
// received for writes (the gateway's vdi_write and the peers' write_obj)
// add up to at least N x copies; the mount's own metrics (--metrics) count
// at least N bytes sent.
func TestMetrics(t *testing.T) {
	c := NewCluster(t, 3, 3)
	fsAddr := freeAddr(t)
	m := c.mount([]string{"--metrics", fsAddr})
	const n = 32 << 20
	run(t, quickTimeout, "truncate", "-s", "64M", m.VDI("v"))
	run(t, cmdTimeout, "dd", "if=/dev/urandom", "of="+m.VDI("v"), "bs=1M", fmt.Sprint("count=", n>>20), "conv=notrunc,fsync", "status=none")
	var written float64
	names := map[string]bool{}
	for _, node := range c.Nodes {
		s := scrape(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", node.Port+3))
		for k := range s {
			names[strings.SplitN(k, "{", 2)[0]] = true
		}
		for _, want := range []string{"sheep_epoch", `sheep_members{state="up"}`, "sheep_leader", "go_goroutines"} {
			if _, ok := s[want]; !ok {
				t.Errorf("%s's metrics lack %s", node.ID, want)
			}
		}
		if up := s[`sheep_members{state="up"}`]; up != 3 {
			t.Errorf("%s: sheep_members{state=\"up\"} = %v, want 3", node.ID, up)
		}
		written += sum(s, "sheep_request_received_bytes_total", `op="vdi_write"`) + sum(s, "sheep_request_received_bytes_total", `op="write_obj"`)
		if sum(s, "sheep_request_seconds_count") == 0 {
			t.Errorf("%s counts no request latencies", node.ID)
		}
	}
	t.Logf("%d bytes written through the mount; the nodes received %.0f for writes", n, written)
	for _, lib := range []string{"sheep_raft_", "sheep_memberlist_"} {
		found := false
		for name := range names {
			found = found || strings.HasPrefix(name, lib)
		}
		if !found {
			t.Errorf("no %s* metric: raft's and memberlist's go-metrics do not reach /metrics", lib)
		}
	}
	if written < 3*n {
		t.Errorf("the nodes received %.0f bytes for writes, want at least %d (%d written, 3 copies)", written, 3*n, n)
	}
	s := scrape(t, "http://"+fsAddr+"/metrics")
	for k := range s {
		names[strings.SplitN(k, "{", 2)[0]] = true
	}
	// Every metric the Grafana dashboard asks for exists.
	b, err := os.ReadFile(filepath.Join(repoRoot, "dist", "grafana", "sheepfs.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil || len(dash.Panels) == 0 {
		t.Fatalf("dist/grafana/sheepfs.json: %v", err)
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, name := range regexp.MustCompile(`\bsheep(fs)?_[a-z_]+`).FindAllString(tg.Expr, -1) {
				if !names[name] {
					t.Errorf("dashboard panel %q asks for %s, which no node or mount serves", p.Title, name)
				}
			}
		}
	}
	if sent := sum(s, "sheepfs_request_sent_bytes_total", `op="vdi_write"`); sent < n {
		t.Errorf("sheepfs sent %.0f bytes of writes, want at least %d", sent, n)
	}
	if ok := sum(s, "sheepfs_requests_total", `op="vdi_flush"`, `result="ok"`); ok < 1 {
		t.Errorf("sheepfs counts no successful flush after an fsync")
	}
}
