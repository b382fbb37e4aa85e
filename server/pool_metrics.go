package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// poolMetrics counts what the pools do; the pool sizes are read when
// scraped (PoolCollector).
type poolMetrics struct {
	claims   *prometheus.CounterVec
	failures *prometheus.CounterVec
	colds    *prometheus.CounterVec
	claimDur prometheus.Histogram
	sizes    *prometheus.Desc
}

func newPoolMetrics() *poolMetrics {
	return &poolMetrics{
		claims: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_pool_claims_total", Help: "Connects served by claiming a ready pooled backend, by pool.",
		}, []string{"pool"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_pool_claim_failures_total", Help: "Pooled backends that failed their claim (and were stopped), by pool.",
		}, []string{"pool"}),
		colds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_pool_cold_fallbacks_total", Help: "Connects for a pool that found no ready backend and spawned cold, by pool.",
		}, []string{"pool"}),
		claimDur: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "berth_pool_claim_seconds",
			Help:    "Time a claim's POST /.berth/claim took (the backend loading its state).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
		}),
		sizes: prometheus.NewDesc("berth_pool_backends", "A pool's live backends on this node, by status: ready (unclaimed), starting, claimed.",
			[]string{"pool", "status"}, nil),
	}
}

func (pm *poolMetrics) claimed(pool string, took time.Duration) {
	pm.claims.WithLabelValues(pool).Inc()
	pm.claimDur.Observe(took.Seconds())
}

func (pm *poolMetrics) failed(pool string) { pm.failures.WithLabelValues(pool).Inc() }
func (pm *poolMetrics) cold(pool string)   { pm.colds.WithLabelValues(pool).Inc() }

// PoolCollector reports the pools' sizes and counters. Register it beside
// the Metrics; it reports nothing until StartPools ran.
func (m *Manager) PoolCollector() prometheus.Collector { return poolCollector{m} }

type poolCollector struct{ m *Manager }

// Describe sends nothing: the collector is unchecked, since its counters
// exist only once StartPools ran.
func (poolCollector) Describe(chan<- *prometheus.Desc) {}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	ps := c.m.pools
	if ps == nil {
		return
	}
	pm := ps.metrics
	ps.mu.Lock()
	for name, p := range ps.byName {
		for _, s := range []struct {
			status string
			n      int
		}{{"ready", len(p.ready)}, {"starting", len(p.starting)}, {"claimed", len(p.claimed)}} {
			ch <- prometheus.MustNewConstMetric(pm.sizes, prometheus.GaugeValue, float64(s.n), name, s.status)
		}
	}
	ps.mu.Unlock()
	pm.claims.Collect(ch)
	pm.failures.Collect(ch)
	pm.colds.Collect(ch)
	pm.claimDur.Collect(ch)
}
