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
