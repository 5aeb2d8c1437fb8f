package proxy

import (
	"net/http"
	"testing"

	"github.com/pullgate/pullgate/identity"
)

// denyAdmin is an AdminAuthorizer that grants the admin API to nobody.
type denyAdmin struct{}

func (denyAdmin) Admin(identity.Principal) bool { return false }

// TestAdminRoutesHiddenFromNonAdmins: a client without the admin permission gets the same answer for every
// admin API path and method, so that it cannot tell which routes exist (or which methods they take) from it.
func TestAdminRoutesHiddenFromNonAdmins(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.Admin = denyAdmin{} })
	want := e.do(http.MethodGet, "/admin/v1/no-such-route")
	want.Body.Close()
	for _, tc := range []struct{ name, method, path string }{
		{"existing route, wrong method", http.MethodPost, "/admin/v1/verdicts"},
		{"import with GET", http.MethodGet, "/admin/v1/import"},
		{"purge with DELETE", http.MethodDelete, "/admin/v1/purge"},
		{"unknown route, POST", http.MethodPost, "/admin/v1/no-such-route"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := e.do(tc.method, tc.path)
			resp.Body.Close()
			if resp.StatusCode != want.StatusCode {
				t.Errorf("anonymous %s %s: status %d; an unknown admin route answers %d", tc.method, tc.path, resp.StatusCode, want.StatusCode)
			}
		})
	}
}
