package metrics

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestText(t *testing.T) {
	r := New()
	c := r.Counter("x_requests_total", "Requests.", "op")
	c.Add(2, "read")
	c.Add(3, `we"ird`)
	h := r.Histogram("x_seconds", "Time.", []float64{0.1, 1}, "op")
	h.Observe(0.05, "read")
	h.Observe(0.5, "read")
	h.Observe(5, "read")
	r.Collect(func(w *Writer) {
		w.Gauge("x_epoch", "Epoch.", 7)
		w.Gauge("x_members", "Members.", 2, "state", "up")
		w.Gauge("x_members", "Members.", 1, "state", "down")
	})
	var b strings.Builder
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	want := `# HELP x_requests_total Requests.
# TYPE x_requests_total counter
x_requests_total{op="read"} 2
x_requests_total{op="we\"ird"} 3
# HELP x_seconds Time.
# TYPE x_seconds histogram
x_seconds_bucket{op="read",le="0.1"} 1
x_seconds_bucket{op="read",le="1"} 2
x_seconds_bucket{op="read",le="+Inf"} 3
x_seconds_sum{op="read"} 5.55
x_seconds_count{op="read"} 3
# HELP x_epoch Epoch.
# TYPE x_epoch gauge
x_epoch 7
# HELP x_members Members.
# TYPE x_members gauge
x_members{state="up"} 2
x_members{state="down"} 1
`
	if b.String() != want {
		t.Errorf("text:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestSeriesBounded(t *testing.T) {
	r := New()
	c := r.Counter("x_total", "X.", "k")
	for i := range 3 * maxSeries {
		c.Add(1, strings.Repeat("v", i%50)+string(rune('a'+i%26))+strings.Repeat("w", i/26))
	}
	if n := len(c.f.series); n > maxSeries+1 {
		t.Errorf("%d series kept, want at most %d", n, maxSeries+1)
	}
	if got := c.f.series["other"].n.Load(); got == 0 {
		t.Errorf("the series past the bound were not counted as other")
	}
}

func TestSinkAndServe(t *testing.T) {
	r := New()
	s := NewSink(r, "x")
	s.IncrCounter([]string{"raft", "apply"}, 2)
	s.SetGauge([]string{"memberlist", "health.score"}, 1)
	s.AddSample([]string{"raft", "commitTime"}, 3)
	s.AddSample([]string{"raft", "commitTime"}, 5)
	addr, err := r.Serve("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, want := range []string{"x_raft_apply_total 2\n", "x_memberlist_health_score 1\n", "x_raft_commitTime_sum 8\n", "x_raft_commitTime_count 2\n"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("metrics lack %q:\n%s", want, b)
		}
	}
}

// The cost a served request pays: one counter series and one histogram
// series per request, looked up by label values.
func BenchmarkRequestMetrics(b *testing.B) {
	r := New()
	c := r.Counter("x_requests_total", "Requests.", "op", "role", "result")
	h := r.Histogram("x_seconds", "Time.", LatencyBuckets, "op", "role")
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Add(1, "vdi_write", "client", "ok")
			h.Observe(0.0004, "vdi_write", "client")
			c.Add(4096, "vdi_write", "client", "bytes")
		}
	})
}
