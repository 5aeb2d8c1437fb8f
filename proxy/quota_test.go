package proxy

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// A fill that does not fit under the cache quota, even after eviction, is answered 503 naming the quota; what
// is cached is still served, and nothing of the refused blob is kept.
func TestQuotaRefusesWhatDoesNotFit(t *testing.T) {
	e := newEnvWithRegistry(t, nil)
	e.stop()
	e.cacheOpts.MaxBytes = 64 << 10
	e.cacheOpts.QuotaWait = 5 * time.Second
	e.start()

	small := randomImage(t, 1) // 1 KiB layer
	e.up.push(t, "app:small", small)
	if _, err := remote.Image(e.ref("app:small"), e.remoteOpts()...); err != nil {
		t.Fatal(err)
	}
	l, err := small.Layers()
	if err != nil {
		t.Fatal(err)
	}
	ld, _ := l[0].Digest()
	if resp, _ := e.get("/v2/app/blobs/" + ld.String()); resp.StatusCode != http.StatusOK {
		t.Fatalf("small layer: %s", resp.Status)
	}

	big, d := layerBlob(t, 100<<10)
	e.up.pushBlob(t, "app", big, d)
	resp, body := e.get("/v2/app/blobs/" + d.String())
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("a blob over the quota: %s, Retry-After %q; want 503 with Retry-After", resp.Status, resp.Header.Get("Retry-After"))
	}
	if oe := ociError(t, body); oe.Code != codeUnavailable || !strings.Contains(oe.Message, "PULLGATE_MAX_BYTES") {
		t.Errorf("error = %+v, want UNAVAILABLE naming the quota", oe)
	}
	if _, err := e.cache.Stat(d); err == nil {
		t.Error("the refused blob is stored")
	}
	waitFor(t, "the refused fill's temp file to go", func() bool { _, temp := e.storedFiles(); return len(temp) == 0 })
	if resp, _ := e.get("/v2/app/blobs/" + ld.String()); resp.StatusCode != http.StatusOK {
		t.Errorf("cached layer after the refusal: %s", resp.Status)
	}
}
