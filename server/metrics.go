package server

import (
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
	}
	m.warm, m.cold = m.connects.WithLabelValues("false"), m.connects.WithLabelValues("true")
	if reg != nil {
		reg.MustRegister(m.connects, m.spawns, m.terminations, m.startup, m.saveErrors)
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
