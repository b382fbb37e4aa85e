package server

import (
	"errors"
	"net/http"

	"github.com/berthhq/berth"
	"github.com/berthhq/berth/api"
)

// mountPools adds the pool routes (pool.go) to mux.
func (a *apiServer) mountPools(mux *http.ServeMux) {
	mux.Handle("GET /v1/pools", a.handle(a.listPools))
	mux.Handle("GET /v1/pools/{name}", a.handle(a.getPool))
	mux.Handle("PUT /v1/pools/{name}", a.handle(a.putPool))
	mux.Handle("DELETE /v1/pools/{name}", a.handle(a.deletePool))
}

func poolName(r *http.Request) (string, error) {
	name := r.PathValue("name")
	if err := berth.ValidatePoolName(name); err != nil {
		return "", badRequest("name", err.Error())
	}
	return name, nil
}

func (a *apiServer) listPools(w http.ResponseWriter, r *http.Request) error {
	ps, err := a.m.Pools(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.PoolList{Pools: ps})
	return nil
}

func (a *apiServer) getPool(w http.ResponseWriter, r *http.Request) error {
	name, err := poolName(r)
	if err != nil {
		return err
	}
	p, err := a.m.Pool(r.Context(), name)
	if err != nil {
		return poolNotFound(name, err)
	}
	writeJSON(w, http.StatusOK, p)
	return nil
}

func (a *apiServer) putPool(w http.ResponseWriter, r *http.Request) error {
	name, err := poolName(r)
	if err != nil {
		return err
	}
	var req api.PoolRequest
	if err := DecodeJSON(w, r, &req); err != nil {
		return err
	}
	if req.Spawn == nil {
		return badRequest("spawn", "is required: the template of the pool's backends")
	}
	p, err := a.m.PutPool(r.Context(), &berth.Pool{Name: name, Spawn: *req.Spawn, MinReady: req.MinReady, Max: req.Max, Schedule: req.Schedule})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, p)
	return nil
}

func (a *apiServer) deletePool(w http.ResponseWriter, r *http.Request) error {
	name, err := poolName(r)
	if err != nil {
		return err
	}
	if err := a.m.DeletePool(r.Context(), name); err != nil {
		return poolNotFound(name, err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func poolNotFound(name string, err error) error {
	if isNotFound(err) {
		return &HTTPError{Status: http.StatusNotFound, Code: api.CodeNotFound, Message: "pool " + name + " not found"}
	}
	return err
}

func isNotFound(err error) bool { return errors.Is(err, berth.ErrNotFound) }
