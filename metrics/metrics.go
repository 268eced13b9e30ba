// Package metrics keeps counters, gauges and histograms and serves them in
// the Prometheus text format (version 0.0.4) over HTTP.
//
// A Registry holds families, each a name, a help text, a type and label
// names; a series is one set of label values. Updates are cheap (a map
// look-up under a read lock, then atomics or a small mutex); the text is
// made only when scraped. Gauges that mirror state elsewhere (the epoch,
// recovery progress) are read at scrape time through collector functions
// instead of being kept up to date.
package metrics

import (
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Registry is a set of metric families.
type Registry struct {
	mu         sync.RWMutex
	families   map[string]*family
	collectors []func(*Writer)
}

// New returns an empty registry.
func New() *Registry { return &Registry{families: map[string]*family{}} }

// maxSeries bounds the series of one family: label values come from a
// fixed set (ops, error kinds, disks), but a bug must not grow a map
// without end.
const maxSeries = 1024

type family struct {
	name, help, typ string
	labels          []string
	buckets         []float64 // histograms

	mu     sync.RWMutex
	series map[string]*series // by label values joined with 0xff
}

type series struct {
	values []string
	n      atomic.Uint64 // counters

	mu     sync.Mutex // histograms
	counts []uint64
	sum    float64
	count  uint64
}

func (r *Registry) family(name, help, typ string, labels []string, buckets []float64) *family {
	r.mu.Lock()
	defer r.mu.Unlock()
	if f, ok := r.families[name]; ok {
		if f.typ != typ || len(f.labels) != len(labels) {
			panic(fmt.Sprintf("metrics: %s registered twice with different shapes", name))
		}
		return f
	}
	f := &family{name: name, help: help, typ: typ, labels: labels, buckets: buckets, series: map[string]*series{}}
	r.families[name] = f
	return f
}

func (f *family) get(values []string) *series {
	if len(values) != len(f.labels) {
		panic(fmt.Sprintf("metrics: %s takes %d labels, got %d", f.name, len(f.labels), len(values)))
	}
	// The key is made on the stack: a lookup of an existing series (every
	// update but a series' first) allocates nothing.
	var buf [128]byte
	key := seriesKey(buf[:0], values)
	f.mu.RLock()
	s, ok := f.series[string(key)]
	f.mu.RUnlock()
	if ok {
		return s
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok = f.series[string(key)]; ok {
		return s
	}
	if len(f.series) >= maxSeries {
		values = make([]string, len(f.labels))
		for i := range values {
			values[i] = "other"
		}
		key = seriesKey(buf[:0], values)
		if s, ok = f.series[string(key)]; ok {
			return s
		}
	}
	s = &series{values: append([]string(nil), values...)}
	if f.buckets != nil {
		s.counts = make([]uint64, len(f.buckets))
	}
	f.series[string(key)] = s
	return s
}

// seriesKey appends the label values, joined by 0xff (which no UTF-8
// text holds), to b.
func seriesKey(b []byte, values []string) []byte {
	for i, v := range values {
		if i > 0 {
			b = append(b, 0xff)
		}
		b = append(b, v...)
	}
	return b
}

// Counter is a family of counters.
type Counter struct{ f *family }

// Counter registers (or returns) the counter family name.
func (r *Registry) Counter(name, help string, labels ...string) Counter {
	c := Counter{r.family(name, help, "counter", labels, nil)}
	if len(labels) == 0 {
		c.f.get(nil) // shown as 0 until counted
	}
	return c
}

// Add adds n to the series with the given label values.
func (c Counter) Add(n uint64, values ...string) { c.f.get(values).n.Add(n) }

// Histogram is a family of histograms.
type Histogram struct{ f *family }

// LatencyBuckets are upper bounds in seconds, from 50 µs to 10 s.
var LatencyBuckets = []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10}

// Histogram registers (or returns) the histogram family name with the
// given bucket upper bounds (ascending; +Inf is implied).
func (r *Registry) Histogram(name, help string, buckets []float64, labels ...string) Histogram {
	return Histogram{r.family(name, help, "histogram", labels, buckets)}
}

// Observe adds the sample v to the series with the given label values.
func (h Histogram) Observe(v float64, values ...string) {
	s := h.f.get(values)
	i := sort.SearchFloat64s(h.f.buckets, v)
	s.mu.Lock()
	if i < len(s.counts) {
		s.counts[i]++
	}
	s.sum += v
	s.count++
	s.mu.Unlock()
}

// Since observes the seconds since start.
func (h Histogram) Since(start time.Time, values ...string) {
	h.Observe(time.Since(start).Seconds(), values...)
}

// Collect adds a function that writes gauges (or counters kept elsewhere)
// at every scrape.
func (r *Registry) Collect(fn func(*Writer)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.collectors = append(r.collectors, fn)
}

// Writer writes samples in the text format, each family's HELP and TYPE
// once, before its first sample.
type Writer struct {
	w    io.Writer
	seen map[string]bool
	err  error
}

func (w *Writer) head(name, help, typ string) {
	if w.seen[name] {
		return
	}
	w.seen[name] = true
	w.printf("# HELP %s %s\n# TYPE %s %s\n", name, escapeHelp(help), name, typ)
}

func (w *Writer) printf(format string, args ...any) {
	if w.err == nil {
		_, w.err = fmt.Fprintf(w.w, format, args...)
	}
}

// Gauge writes one gauge sample; labels are name, value pairs.
func (w *Writer) Gauge(name, help string, v float64, labels ...string) {
	w.sample(name, help, "gauge", v, labels)
}

// CounterValue writes one counter sample kept elsewhere.
func (w *Writer) CounterValue(name, help string, v float64, labels ...string) {
	w.sample(name, help, "counter", v, labels)
}

func (w *Writer) sample(name, help, typ string, v float64, labels []string) {
	w.head(name, help, typ)
	w.printf("%s%s %s\n", name, labelText(labels), formatFloat(v))
}

// WriteText writes every family and collector's samples to out.
func (r *Registry) WriteText(out io.Writer) error {
	w := &Writer{w: out, seen: map[string]bool{}}
	r.mu.RLock()
	fams := make([]*family, 0, len(r.families))
	for _, f := range r.families {
		fams = append(fams, f)
	}
	collectors := slices.Clone(r.collectors)
	r.mu.RUnlock()
	sort.Slice(fams, func(i, j int) bool { return fams[i].name < fams[j].name })
	for _, f := range fams {
		f.write(w)
	}
	for _, fn := range collectors {
		fn(w)
	}
	return w.err
}

func (f *family) write(w *Writer) {
	f.mu.RLock()
	ss := make([]*series, 0, len(f.series))
	for _, s := range f.series {
		ss = append(ss, s)
	}
	f.mu.RUnlock()
	if len(ss) == 0 {
		return
	}
	sort.Slice(ss, func(i, j int) bool {
		return strings.Join(ss[i].values, "\xff") < strings.Join(ss[j].values, "\xff")
	})
	w.head(f.name, f.help, f.typ)
	for _, s := range ss {
		pairs := make([]string, 0, 2*len(f.labels)+2)
		for i, l := range f.labels {
			pairs = append(pairs, l, s.values[i])
		}
		if f.typ == "counter" {
			w.printf("%s%s %d\n", f.name, labelText(pairs), s.n.Load())
			continue
		}
		s.mu.Lock()
		counts, sum, count := append([]uint64(nil), s.counts...), s.sum, s.count
		s.mu.Unlock()
		var cum uint64
		for i, le := range f.buckets {
			cum += counts[i]
			w.printf("%s_bucket%s %d\n", f.name, labelText(append(pairs, "le", formatFloat(le))), cum)
		}
		w.printf("%s_bucket%s %d\n", f.name, labelText(append(pairs, "le", "+Inf")), count)
		w.printf("%s_sum%s %s\n", f.name, labelText(pairs), formatFloat(sum))
		w.printf("%s_count%s %d\n", f.name, labelText(pairs), count)
	}
}

// labelText formats name, value pairs as {a="x",b="y"}.
func labelText(pairs []string) string {
	if len(pairs) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteByte('{')
	for i := 0; i+1 < len(pairs); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(pairs[i])
		b.WriteString(`="`)
		b.WriteString(escapeValue(pairs[i+1]))
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

var (
	valueEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
)

func escapeValue(s string) string { return valueEscaper.Replace(s) }
func escapeHelp(s string) string  { return helpEscaper.Replace(s) }

func formatFloat(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}

// Handler serves the registry at any path.
func (r *Registry) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		_ = r.WriteText(w)
	})
}

// Serve serves the registry at /metrics on addr until the process ends.
// It returns once listening, or the error of the listen.
func (r *Registry) Serve(addr string) (net.Addr, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", r.Handler())
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    8 << 10,
	}
	go func() { _ = srv.Serve(&limitListener{Listener: l, slots: make(chan struct{}, maxConns)}) }()
	return l.Addr(), nil
}

// maxConns bounds the connections the metrics server keeps open: scrapers
// are few, and idle connections must not use up the daemon's files.
const maxConns = 32

// limitListener accepts a connection only while fewer than cap(slots) are
// open; a further one waits in the kernel's backlog.
type limitListener struct {
	net.Listener
	slots chan struct{}
}

func (l *limitListener) Accept() (net.Conn, error) {
	l.slots <- struct{}{}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.slots }}, nil
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CollectRuntime adds the Go runtime's goroutines and heap to r.
func CollectRuntime(r *Registry) {
	r.Collect(func(w *Writer) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		w.Gauge("go_goroutines", "Goroutines that currently exist.", float64(runtime.NumGoroutine()))
		w.Gauge("go_memstats_heap_alloc_bytes", "Bytes of allocated heap objects.", float64(ms.HeapAlloc))
		w.Gauge("go_memstats_sys_bytes", "Bytes of memory obtained from the OS.", float64(ms.Sys))
		w.CounterValue("go_gc_cycles_total", "Completed GC cycles.", float64(ms.NumGC))
	})
}
