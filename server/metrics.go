package server

import (
	"errors"
	"time"

	"github.com/berthhq/berth"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the Manager's Prometheus collectors.
type Metrics struct {
	connects     *prometheus.CounterVec
	warm, cold   prometheus.Counter // connects' children, resolved once: connect is a hot path
	spawns       prometheus.Counter
	terminations *prometheus.CounterVec
	startup      prometheus.Histogram
	saveErrors   prometheus.Counter

	// A replica's (see Cluster).
	renewals   *prometheus.HistogramVec
	placements *prometheus.CounterVec
}

// NewMetrics registers Berth's collectors with reg (nil: unregistered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		connects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_connects_total", Help: "Connect calls answered, by whether they spawned a backend.",
		}, []string{"spawned"}),
		spawns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_spawns_total", Help: "Backends spawned.",
		}),
		terminations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_terminations_total", Help: "Backends terminated, by reason.",
		}, []string{"reason"}),
		startup: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "berth_startup_seconds",
			Help:    "Time from start to the backend answering HTTP.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		saveErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_state_save_errors_total", Help: "Failed state saves (each is retried).",
		}),
		renewals: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "berth_lease_renew_seconds",
			Help:    "Time a renewal of this node's lease took, by outcome.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"result"}),
		placements: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_placements_total", Help: "New backends placed, by where: local, remote, or none (refused).",
		}, []string{"where"}),
	}
	m.warm, m.cold = m.connects.WithLabelValues("false"), m.connects.WithLabelValues("true")
	if reg != nil {
		reg.MustRegister(m.connects, m.spawns, m.terminations, m.startup, m.saveErrors, m.renewals, m.placements)
	}
	return m
}

// SaveError counts one failed state save.
func (m *Metrics) SaveError() { m.saveErrors.Inc() }

func (m *Metrics) connect(spawned bool) {
	if spawned {
		m.cold.Inc()
	} else {
		m.warm.Inc()
	}
}

func (m *Metrics) leaseRenew(took time.Duration, err error) {
	result := "ok"
	switch {
	case errors.Is(err, berth.ErrLeaseExpired):
		result = "expired"
	case err != nil:
		result = "error"
	}
	m.renewals.WithLabelValues(result).Observe(took.Seconds())
}

func (m *Metrics) placed(where string) { m.placements.WithLabelValues(where).Inc() }

// Collector reports what the Manager holds now: its live backends by
// state and, for a replica, whether it holds its lease. Register it beside
// the Metrics the Manager was given.
func (m *Manager) Collector() prometheus.Collector { return managerCollector{m} }

type managerCollector struct{ m *Manager }

var (
	backendsDesc = prometheus.NewDesc("berth_backends", "Live backends this Berth runs, by state.", []string{"state"}, nil)
	leaseDesc    = prometheus.NewDesc("berth_lease_held",
		"1 while this replica's lease is renewed (it may run backends), 0 once cut off; absent for a Berth that is no replica.", nil, nil)
)

func (c managerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- backendsDesc
	ch <- leaseDesc
	describeFrozen(ch)
}

func (c managerCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[berth.State]int{berth.StateScheduled: 0, berth.StateStarting: 0, berth.StateReady: 0, berth.StateTerminating: 0}
	c.m.mu.Lock()
	insts := make([]*instance, 0, len(c.m.live))
	for _, inst := range c.m.live {
		insts = append(insts, inst)
	}
	c.m.mu.Unlock()
	for _, inst := range insts {
		if s := inst.state(); s.Live() {
			counts[s]++
		}
	}
	for s, n := range counts {
		ch <- prometheus.MustNewConstMetric(backendsDesc, prometheus.GaugeValue, float64(n), string(s))
	}
	collectFrozen(ch, insts)
	if cl := c.m.cluster; cl != nil {
		held := 1.0
		if cl.cutOff.Load() || c.m.fenced() {
			held = 0
		}
		ch <- prometheus.MustNewConstMetric(leaseDesc, prometheus.GaugeValue, held)
	}
}
