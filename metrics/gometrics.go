package metrics

import (
	"sort"
	"strings"
	"sync"

	gometrics "github.com/armon/go-metrics"
)

// Sink receives what raft and memberlist emit through go-metrics and shows
// it in a registry: gauges as gauges, counters as counters and samples
// (timings, in milliseconds as go-metrics measures them) as summaries
// without quantiles (_sum and _count).
type Sink struct {
	prefix string

	mu      sync.Mutex
	gauges  map[string]*sinkValue
	counts  map[string]*sinkValue
	samples map[string]*sinkValue
}

type sinkValue struct {
	name   string
	labels []string
	v      float64
	n      uint64
}

// maxSinkKeys bounds the keys kept by a Sink.
const maxSinkKeys = 2048

// NewSink returns a sink whose metric names start with prefix and shows
// them in r.
func NewSink(r *Registry, prefix string) *Sink {
	s := &Sink{prefix: prefix, gauges: map[string]*sinkValue{}, counts: map[string]*sinkValue{}, samples: map[string]*sinkValue{}}
	r.Collect(s.write)
	return s
}

// Install makes s the destination of go-metrics, as used by raft and
// memberlist in this process.
func (s *Sink) Install() error {
	conf := gometrics.DefaultConfig("")
	conf.EnableHostname = false
	conf.EnableHostnameLabel = false
	conf.EnableRuntimeMetrics = false
	conf.EnableServiceLabel = false
	_, err := gometrics.NewGlobal(conf, s)
	return err
}

// Name makes a metric name of a go-metrics key: prefix_a_b_c, with every
// character outside [a-zA-Z0-9_] turned into _.
func (s *Sink) name(key []string) string {
	n := s.prefix
	for _, k := range key {
		if k == "" {
			continue
		}
		n += "_" + k
	}
	return sanitize(n)
}

func sanitize(n string) string {
	return strings.Map(func(r rune) rune {
		if r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, n)
}

func (s *Sink) value(m map[string]*sinkValue, key []string, labels []gometrics.Label) *sinkValue {
	name := s.name(key)
	pairs := make([]string, 0, 2*len(labels))
	for _, l := range labels {
		pairs = append(pairs, sanitize(l.Name), l.Value)
	}
	id := name + "\xff" + strings.Join(pairs, "\xff")
	v, ok := m[id]
	if !ok {
		if len(m) >= maxSinkKeys {
			return &sinkValue{} // dropped
		}
		v = &sinkValue{name: name, labels: pairs}
		m[id] = v
	}
	return v
}

// SetGauge implements go-metrics' MetricSink.
func (s *Sink) SetGauge(key []string, val float32) { s.SetGaugeWithLabels(key, val, nil) }

// SetGaugeWithLabels implements go-metrics' MetricSink.
func (s *Sink) SetGaugeWithLabels(key []string, val float32, labels []gometrics.Label) {
	s.mu.Lock()
	s.value(s.gauges, key, labels).v = float64(val)
	s.mu.Unlock()
}

// EmitKey implements go-metrics' MetricSink (kept as a gauge).
func (s *Sink) EmitKey(key []string, val float32) { s.SetGauge(key, val) }

// IncrCounter implements go-metrics' MetricSink.
func (s *Sink) IncrCounter(key []string, val float32) { s.IncrCounterWithLabels(key, val, nil) }

// IncrCounterWithLabels implements go-metrics' MetricSink.
func (s *Sink) IncrCounterWithLabels(key []string, val float32, labels []gometrics.Label) {
	s.mu.Lock()
	s.value(s.counts, key, labels).v += float64(val)
	s.mu.Unlock()
}

// AddSample implements go-metrics' MetricSink.
func (s *Sink) AddSample(key []string, val float32) { s.AddSampleWithLabels(key, val, nil) }

// AddSampleWithLabels implements go-metrics' MetricSink.
func (s *Sink) AddSampleWithLabels(key []string, val float32, labels []gometrics.Label) {
	s.mu.Lock()
	v := s.value(s.samples, key, labels)
	v.v += float64(val)
	v.n++
	s.mu.Unlock()
}

func (s *Sink) write(w *Writer) {
	s.mu.Lock()
	snap := func(m map[string]*sinkValue) []sinkValue {
		out := make([]sinkValue, 0, len(m))
		for _, v := range m {
			out = append(out, *v)
		}
		sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
		return out
	}
	gauges, counts, samples := snap(s.gauges), snap(s.counts), snap(s.samples)
	s.mu.Unlock()
	for _, v := range gauges {
		w.Gauge(v.name, "From go-metrics (raft, memberlist).", v.v, v.labels...)
	}
	for _, v := range counts {
		w.CounterValue(v.name+"_total", "From go-metrics (raft, memberlist).", v.v, v.labels...)
	}
	for _, v := range samples {
		w.head(v.name, "From go-metrics (raft, memberlist): timings in milliseconds.", "summary")
		w.printf("%s_sum%s %s\n", v.name, labelText(v.labels), formatFloat(v.v))
		w.printf("%s_count%s %d\n", v.name, labelText(v.labels), v.n)
	}
}
