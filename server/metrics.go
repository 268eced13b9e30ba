package server

import (
	"time"

	"github.com/sheepfs/sheepfs/auth"
	"github.com/sheepfs/sheepfs/metrics"
	"github.com/sheepfs/sheepfs/proto"
)

// nodeMetrics are a node's request metrics; the rest (epoch, members,
// recovery, scrub, disks) is read from the node's state at each scrape.
type nodeMetrics struct {
	requests metrics.Counter   // op, role, result
	seconds  metrics.Histogram // op, role
	received metrics.Counter   // op, role: payload bytes in requests
	sent     metrics.Counter   // op, role: payload bytes in answers
	retries  metrics.Counter   // kind: replica operations tried again (epoch change, node down ...)
}

func newNodeMetrics(r *metrics.Registry) *nodeMetrics {
	return &nodeMetrics{
		requests: r.Counter("sheep_requests_total", "Requests served, by operation, by the role of the connection (client: sheepfs and the CLI; peer: other nodes) and by result (ok or the error's kind).", "op", "role", "result"),
		seconds:  r.Histogram("sheep_request_seconds", "Time to serve a request, by operation and role.", metrics.LatencyBuckets, "op", "role"),
		received: r.Counter("sheep_request_received_bytes_total", "Payload bytes received in requests (data written, commands), by operation and role.", "op", "role"),
		sent:     r.Counter("sheep_request_sent_bytes_total", "Payload bytes sent in answers (data read), by operation and role.", "op", "role"),
		retries:  r.Counter("sheep_retries_total", "Times this node, as a gateway, tried a replica operation again, by the kind of error it met (a new epoch, a node down ...).", "kind"),
	}
}

// observe records one request served.
func (m *nodeMetrics) observe(role auth.Role, req, resp *proto.Msg, start time.Time) {
	op, who := req.Op.String(), "client"
	if role == auth.RolePeer {
		who = "peer"
	}
	result := "ok"
	if resp != nil && resp.Flags&proto.FlagError != 0 {
		result = resp.Kind.String()
	}
	m.requests.Add(1, op, who, result)
	m.seconds.Since(start, op, who)
	m.received.Add(uint64(len(req.Data)), op, who)
	if resp != nil {
		m.sent.Add(uint64(len(resp.Data)), op, who)
	}
}

// writeMetrics writes the node's state as gauges and counters.
func (n *Node) writeMetrics(w *metrics.Writer) {
	st := n.cl.State()
	w.Gauge("sheep_epoch", "The cluster's epoch as this node sees it.", float64(st.Epoch))
	up, down := 0, 0
	for _, m := range st.Members {
		if m.Down {
			down++
		} else {
			up++
		}
	}
	w.Gauge("sheep_members", "Members of the cluster, by state.", float64(up), "state", "up")
	w.Gauge("sheep_members", "Members of the cluster, by state.", float64(down), "state", "down")
	leader := 0.0
	if n.cl.Leader() == n.id {
		leader = 1
	}
	w.Gauge("sheep_leader", "1 if this node is the raft leader.", leader)
	quorum := 0.0
	if n.cl.HasQuorum() {
		quorum = 1
	}
	w.Gauge("sheep_quorum", "1 if this node sees a majority of the members.", quorum)

	r := n.rec.progress(st)
	w.Gauge("sheep_recovery_running", "1 while this node recovers objects.", boolGauge(r.State == "recovering"))
	w.Gauge("sheep_recovery_objects", "Objects the current recovery asks this node to check or fetch.", float64(r.Objects))
	w.Gauge("sheep_recovery_done_objects", "Objects of the current recovery settled.", float64(r.Done))
	w.Gauge("sheep_recovery_degraded_objects", "Objects below their copies counted by this node.", float64(r.Degraded))
	w.Gauge("sheep_recovery_misplaced_objects", "Copies on this node no longer placed here.", float64(r.Misplaced))
	w.Gauge("sheep_recovery_rate_bytes_per_second", "Recent recovery copy rate.", r.Rate)

	sc := n.scrubInfo()
	w.Gauge("sheep_scrub_running", "1 while a scrub pass runs on this node.", boolGauge(sc.State == "scrubbing"))
	w.Gauge("sheep_scrub_objects", "Objects of the scrub pass under way.", float64(sc.Objects))
	w.Gauge("sheep_scrub_done_objects", "Objects of the scrub pass under way checked so far.", float64(sc.Done))
	w.Gauge("sheep_scrub_last_finished_timestamp_seconds", "When the last scrub pass ended (0: never).", float64(sc.Finished))

	in := n.integrity()
	w.CounterValue("sheep_damaged_copies_total", "Local copies found damaged (checksum, size) since the node started.", float64(in.Damaged))
	w.CounterValue("sheep_repaired_copies_total", "Local copies rewritten from a good copy since the node started.", float64(in.Repaired))
	w.CounterValue("sheep_unrepaired_copies_total", "Damaged local copies with no good copy to repair from.", float64(in.Unrepaired))

	disks := n.store.Info()
	for _, d := range disks {
		w.Gauge("sheep_disk_objects", "Objects on each data disk.", float64(d.Objects), "disk", d.Path)
	}
	for _, d := range disks {
		w.Gauge("sheep_disk_used_bytes", "Bytes of objects on each data disk.", float64(d.Used), "disk", d.Path)
	}
	for _, d := range disks {
		w.Gauge("sheep_disk_free_bytes", "Free bytes of each data disk's filesystem.", float64(d.Free), "disk", d.Path)
	}
	for _, d := range disks {
		w.Gauge("sheep_disk_in_service", "1 if the disk is in service.", boolGauge(d.State == "in service"), "disk", d.Path)
	}
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
