package edge

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the edge's Prometheus collectors.
type Metrics struct {
	rejected    *prometheus.CounterVec
	timeouts    *prometheus.CounterVec
	conns       prometheus.Gauge
	proxyErrors prometheus.Counter
	handshakes  *prometheus.CounterVec
	requests    *prometheus.CounterVec

	connLimit, rateLimit, headerSize, urlSize prometheus.Counter
	h1, h2                                    prometheus.Counter
	hsH1, hsH2                                prometheus.Counter
}

// NewMetrics registers the edge's collectors with reg (nil: unregistered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_edge_rejected_total",
			Help: "Requests the edge refused, by reason: conn_limit (429), rate_limit (429), header_size (431), url_size (414).",
		}, []string{"reason"}),
		timeouts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_edge_slow_clients_total",
			Help: "Connections closed because the client did not finish its TLS handshake or first request head in time (408 on plain HTTP), by phase.",
		}, []string{"phase"}),
		conns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "berth_edge_connections", Help: "Client connections open at the edge.",
		}),
		proxyErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "berth_edge_proxy_protocol_errors_total", Help: "Connections closed for a missing or malformed PROXY protocol header.",
		}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_edge_tls_handshakes_total", Help: "TLS handshakes completed, by negotiated protocol (h2, http/1.1).",
		}, []string{"alpn"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "berth_edge_requests_total", Help: "Requests the edge passed to the proxy, by HTTP version.",
		}, []string{"proto"}),
	}
	m.connLimit = m.rejected.WithLabelValues("conn_limit")
	m.rateLimit = m.rejected.WithLabelValues("rate_limit")
	m.headerSize = m.rejected.WithLabelValues("header_size")
	m.urlSize = m.rejected.WithLabelValues("url_size")
	m.h1, m.h2 = m.requests.WithLabelValues("1"), m.requests.WithLabelValues("2")
	m.hsH1, m.hsH2 = m.handshakes.WithLabelValues("http/1.1"), m.handshakes.WithLabelValues("h2")
	if reg != nil {
		reg.MustRegister(m.rejected, m.timeouts, m.conns, m.proxyErrors, m.handshakes, m.requests)
	}
	return m
}

// handshake counts a TLS handshake that negotiated alpn ("": none, which
// is HTTP/1.1).
func (m *Metrics) handshake(alpn string) {
	switch alpn {
	case "", "http/1.1":
		m.hsH1.Inc()
	case "h2":
		m.hsH2.Inc()
	default:
		m.handshakes.WithLabelValues(alpn).Inc()
	}
}
