package identity

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func bearerRequest(tok string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/v2/", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	return r
}

const artifact = "sha256:0000000000000000000000000000000000000000000000000000000000000001"

func TestScanToken(t *testing.T) {
	f := newFixture(t, Options{Anonymous: patterns(t, "docker.io/library/**")}, Robot{Name: "ci", Pull: []string{"**"}})
	tok, err := f.svc.ScanToken("docker.io", "library/nginx", artifact, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	p, err := f.svc.Authenticate(bearerRequest(tok))
	if err != nil || p.Method != MethodScanner || p.Artifact != artifact {
		t.Fatalf("scanner token: %+v %v", p, err)
	}
	ctx := context.Background()
	if err := f.svc.Authorize(ctx, p, "docker.io", "library/nginx"); err != nil {
		t.Fatalf("its repository: %v", err)
	}
	for _, repo := range []string{"library/redis", "other/nginx"} {
		// Even where anonymous clients may pull, a scanner token is for its one repository.
		if err := f.svc.Authorize(ctx, p, "docker.io", repo); !errors.Is(err, ErrDenied) {
			t.Fatalf("%s with a scanner token for library/nginx: %v, want ErrDenied", repo, err)
		}
	}
	if f.svc.Admin(p) {
		t.Fatal("a scanner token has admin rights")
	}
	if _, err := f.svc.ScanToken("docker.io", "library/nginx", "latest", time.Minute); err == nil {
		t.Fatal("a scan token for a tag was signed")
	}
	f.clock.add(3 * time.Minute)
	if _, err := f.svc.Authenticate(bearerRequest(tok)); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("an expired scanner token: %v", err)
	}
}

func TestOpenModeKnowsOnlyScanners(t *testing.T) {
	f := newFixture(t, Options{Open: true}, Robot{Name: "ci", Pull: []string{"ghcr.io/**"}})
	tok, err := f.svc.ScanToken("docker.io", "library/nginx", artifact, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tests := []struct {
		name   string
		header string
		method Method
	}{
		{"no credentials", "", MethodAnonymous},
		{"wrong Basic credentials are not checked", "Basic cm9ib3QkY2k6d3Jvbmc=", MethodAnonymous},
		{"a token that is not pullgate's", "Bearer abc.def.ghi", MethodAnonymous},
		{"a scanner token", "Bearer " + tok, MethodScanner},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/v2/", nil)
			if tt.header != "" {
				r.Header.Set("Authorization", tt.header)
			}
			p, err := f.svc.Authenticate(r)
			if err != nil || p.Method != tt.method {
				t.Fatalf("principal %+v, %v; want %s", p, err, tt.method)
			}
			if tt.method == MethodAnonymous {
				if err := f.svc.Authorize(ctx, p, "quay.io", "any/thing"); err != nil {
					t.Fatalf("open mode refused an anonymous client: %v", err)
				}
			}
		})
	}
}

func TestAdmin(t *testing.T) {
	f := newFixture(t, Options{}, Robot{Name: "ops", Admin: true}, Robot{Name: "ci", Pull: []string{"**"}})
	ops, err := f.login("robot$ops", f.secrets["ops"])
	if err != nil {
		t.Fatal(err)
	}
	ci, err := f.login("robot$ci", f.secrets["ci"])
	if err != nil {
		t.Fatal(err)
	}
	if !f.svc.Admin(ops) || f.svc.Admin(ci) || f.svc.Admin(Anonymous()) {
		t.Fatalf("Admin: ops %v, ci %v, anonymous %v", f.svc.Admin(ops), f.svc.Admin(ci), f.svc.Admin(Anonymous()))
	}
	g, err := f.svc.Issue(ops, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := f.svc.Authenticate(bearerRequest(g.Token)); err != nil || f.svc.Admin(p) {
		t.Fatalf("a token of the admin robot carries admin rights (%v)", err)
	}
	f.change(func(file *File) { file.Robots[0].Disabled = true })
	if f.svc.Admin(ops) {
		t.Fatal("a disabled admin robot is still admin")
	}
}
