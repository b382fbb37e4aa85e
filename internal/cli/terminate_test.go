package cli

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/berthhq/berth/api"
)

func TestTerminate(t *testing.T) {
	var got *api.TerminateRequest
	url := fakeAPI(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/backends/bk_1/terminate" {
			t.Errorf("got %s %s", r.Method, r.URL.Path)
		}
		got = new(api.TerminateRequest)
		_ = json.NewDecoder(r.Body).Decode(got)
		w.WriteHeader(http.StatusAccepted)
	})
	for _, hard := range []bool{false, true} {
		args := []string{"terminate", "--api", url, "bk_1"}
		if hard {
			args = append(args, "--hard")
		}
		code, out, stderr := runCLI(t, args...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		if got == nil || got.Hard != hard {
			t.Errorf("request %+v, want hard=%v", got, hard)
		}
		if want := "Terminating bk_1. Follow it with: berth events bk_1\n"; out != want {
			t.Errorf("output %q, want %q", out, want)
		}
	}
	if code, _, _ := runCLI(t, "terminate", "--api", url); code != 2 {
		t.Errorf("no id: exit %d, want 2", code)
	}
}
