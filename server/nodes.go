package server

import (
	"net/http"
	"time"

	"github.com/berthhq/berth/api"
)

// mountNodes serves the cluster's nodes: GET /v1/nodes, and POST
// /v1/nodes/{id}/drain and /undrain.
func (a *apiServer) mountNodes(mux *http.ServeMux) {
	mux.Handle("GET /v1/nodes", a.handle(a.nodes))
	mux.Handle("POST /v1/nodes/{id}/drain", a.handle(a.drain(true)))
	mux.Handle("POST /v1/nodes/{id}/undrain", a.handle(a.drain(false)))
}

func (a *apiServer) nodes(w http.ResponseWriter, r *http.Request) error {
	ns, err := a.m.Nodes(r.Context())
	if err != nil {
		return err
	}
	out := api.NodeList{Nodes: make([]api.Node, 0, len(ns))}
	now := time.Now()
	for _, n := range ns {
		out.Nodes = append(out.Nodes, api.Node{
			ID: n.ID, ProxyAddr: n.ProxyAddr, APIAddr: n.APIAddr, Runtimes: n.Runtimes, Capacity: n.Capacity,
			Drained: n.Drained, Live: n.Live, StartedAt: n.StartedAt, HeartbeatAt: n.HeartbeatAt,
			LeaseExpiresAt: n.LeaseExpiresAt,
			// Judged by this replica's clock against the database's: a hint
			// for people; placement and takeover use the database alone.
			Alive: n.LeaseExpiresAt.After(now),
		})
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (a *apiServer) drain(drained bool) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := a.m.SetDrained(r.Context(), r.PathValue("id"), drained); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}
