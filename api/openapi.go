package api

import _ "embed"

// OpenAPI is the OpenAPI 3.1 description of the control API, served at
// GET /v1/openapi.json. The e2e suite checks every answer it gets from a
// real Berth against it, so it cannot drift from the code.
//
//go:embed openapi.json
var OpenAPI []byte
