package proxy

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/pullgate/pullgate/gate"
	"github.com/pullgate/pullgate/identity"
	"github.com/pullgate/pullgate/names"
)

// AdminAuthorizer decides who may use the admin API. *identity.Service is the implementation.
type AdminAuthorizer interface {
	Admin(p identity.Principal) bool
}

// VerdictLister lists the gate's stored verdicts. *gate.Gate is the implementation.
type VerdictLister interface {
	List(keep func(upstream, repository, digest string) bool, fn func(gate.Listing) error) error
}

// adminPrefix is where the admin API lives, beside /v2/ on the same TLS listener.
const adminPrefix = "/admin/v1/"

// maxListing bounds one listing answer.
const maxListing = 10_000

// authorizeAdmin lets only admin identities use the admin API: anonymous clients are challenged for Basic
// credentials, other identities are refused.
func (h *Handler) authorizeAdmin(r *http.Request, req *request) error {
	if h.opts.Admin == nil {
		return errorf(codeNotFound, "pullgate's admin API needs client identities (PULLGATE_ROBOTS_FILE with an admin robot)")
	}
	if h.opts.Admin.Admin(req.identity) {
		return nil
	}
	if req.identity.Method == identity.MethodAnonymous {
		return h.authError(r, req, identity.ErrUnauthenticated)
	}
	return h.authError(r, req, identity.ErrDenied)
}

// serveAdmin answers the admin API: GET /admin/v1/verdicts[?repository=<upstream>/<repository or
// pattern>][&digest=<digest>] lists stored verdicts judged under the policy in force; the cache routes are in
// admincache.go.
func (h *Handler) serveAdmin(w *recorder, r *http.Request, req *request) error {
	if err := checkAdminMethod(req.name, r.Method); err != nil {
		return err
	}
	if req.name == "verdicts" {
		return h.serveVerdicts(w, r)
	}
	if _, ok := adminMethods[req.name]; ok && h.opts.Resolve == nil {
		return lifecycleOff()
	}
	switch req.name {
	case "pins":
		return h.servePins(w, r)
	case "purge":
		return h.servePurge(w, r)
	case "images":
		return h.serveImages(w, r)
	case "export":
		return h.serveExport(w, r)
	case "import":
		return h.serveImport(w, r)
	}
	return errorf(codeNotFound, "no such admin API route: %s%s", adminPrefix, req.name)
}

type verdictsAnswer struct {
	Verdicts  []gate.Listing `json:"verdicts"`
	Truncated bool           `json:"truncated,omitempty"`
}

var errListFull = errors.New("listing full")

func (h *Handler) serveVerdicts(w *recorder, r *http.Request) error {
	if h.opts.Verdicts == nil {
		return errorf(codeNotFound, "pullgate has no gate: PULLGATE_GATE_POLICY is not set")
	}
	q := r.URL.Query()
	repo, digest := q.Get("repository"), q.Get("digest")
	var pattern names.Pattern
	if repo != "" {
		p, err := names.CompilePattern(repo)
		if err != nil {
			return errorf(codeNameInvalid, "repository: %v", err)
		}
		pattern = p
	}
	if digest != "" {
		if _, err := parseDigest(digest); err != nil {
			return err
		}
	}
	keep := func(up, rp, d string) bool {
		return (repo == "" || pattern.Match(up+"/"+rp)) && (digest == "" || d == digest)
	}
	ans := verdictsAnswer{Verdicts: []gate.Listing{}}
	err := h.opts.Verdicts.List(keep, func(l gate.Listing) error {
		if len(ans.Verdicts) == maxListing {
			ans.Truncated = true
			return errListFull
		}
		ans.Verdicts = append(ans.Verdicts, l)
		return nil
	})
	if err != nil && !errors.Is(err, errListFull) {
		return err
	}
	body, err := json.Marshal(ans)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(body)
	}
	return nil
}

// adminRoute parses an admin API path; ok is false for paths outside it.
func adminRoute(path string) (name string, ok bool) {
	name, ok = strings.CutPrefix(path, adminPrefix)
	return name, ok
}
