package proxy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// tagsFault answers the upstream's tags/list requests with page, for page number p (0 first, from the last
// query parameter the previous page's Link set).
func tagsFault(page func(w http.ResponseWriter, p int)) fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if !strings.HasSuffix(r.URL.Path, "/tags/list") {
			return false
		}
		p := 0
		fmt.Sscanf(r.URL.Query().Get("last"), "p%d", &p)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Link", fmt.Sprintf(`</v2/team/big/tags/list?last=p%d>; rel="next"`, p+1))
		page(w, p)
		return true
	}
}

// TestTagsListBounded reads hostile upstream tag lists (endless pages, endless single pages, bloated pages):
// what pullgate reads stays within maxTags tags, maxTagListBytes bytes and maxTagPages requests, and the
// answer is the tags read, with the truncation in the pull log.
func TestTagsListBounded(t *testing.T) {
	const perPage = 5000
	pad := strings.Repeat("x", 1<<20)
	tests := []struct {
		name         string
		page         func(w http.ResponseWriter, p int)
		maxRequests  int
		wantTags     int // -1: any number up to maxTags
		wantTruncate bool
	}{
		{"endless pages of tags", func(w http.ResponseWriter, p int) {
			tags := make([]string, perPage)
			for i := range tags {
				tags[i] = fmt.Sprintf("p%d-%d", p, i)
			}
			_ = json.NewEncoder(w).Encode(tagList{Name: "team/big", Tags: tags})
		}, maxTags/perPage + 1, maxTags, true},
		{"endless pages of padding", func(w http.ResponseWriter, p int) {
			fmt.Fprintf(w, `{"name":%q,"tags":["p%d"]}`, pad, p)
		}, maxTagListBytes/len(pad) + 1, -1, true},
		{"one endless page of tags", func(w http.ResponseWriter, p int) {
			_, _ = fmt.Fprint(w, `{"name":"team/big","tags":["a"`)
			for i := 0; i < 10*maxTags; i++ { // stops early when pullgate stops reading
				if _, err := fmt.Fprintf(w, `,"t%d"`, i); err != nil {
					return
				}
			}
			_, _ = fmt.Fprint(w, `]}`)
		}, 1, maxTags, true},
		{"one endless name", func(w http.ResponseWriter, p int) {
			_, _ = fmt.Fprint(w, `{"name":"`)
			for range 4 * maxTagListBytes / len(pad) {
				if _, err := fmt.Fprint(w, pad); err != nil {
					return
				}
			}
			_, _ = fmt.Fprint(w, `","tags":[]}`)
		}, 1, 0, true},
		{"tags outside the grammar are dropped", func(w http.ResponseWriter, p int) {
			w.Header().Del("Link")
			fmt.Fprintf(w, `{"name":"team/big","tags":["ok",".dot","%s","sp ace","v1"]}`, strings.Repeat("l", maxTagLength+1))
		}, 1, 2, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			e.up.setFault(tagsFault(tt.page))
			resp, body := e.get("/v2/local/team/big/tags/list?n=2")
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if got := e.up.count("GET tags"); got > tt.maxRequests {
				t.Fatalf("%d upstream requests, want at most %d", got, tt.maxRequests)
			}
			l, ok := e.h.tagLists.get("local\x00team/big", e.clock.Now(), e.opts.TagTTL)
			if !ok {
				t.Fatal("the tag list read is not shared")
			}
			if len(l.tags) > maxTags || tt.wantTags >= 0 && len(l.tags) != tt.wantTags {
				t.Fatalf("%d tags kept, want %d (at most %d)", len(l.tags), tt.wantTags, maxTags)
			}
			if _, bytes := e.h.tagLists.len(); bytes > tagListLimits.bytes {
				t.Fatalf("tag lists hold %d bytes, the bound is %d", bytes, tagListLimits.bytes)
			}
			lines := e.logs.lines()
			truncated := lines[len(lines)-1]["event"] == "tags_truncated"
			if l.truncated != tt.wantTruncate || truncated != tt.wantTruncate {
				t.Fatalf("truncated %v, logged %v, want %v", l.truncated, truncated, tt.wantTruncate)
			}
		})
	}
}

// TestTagsListShared reads a repository's tag list once per TagTTL, however many clients ask at once.
func TestTagsListShared(t *testing.T) {
	e := newEnv(t)
	img := randomImage(t, 1)
	for _, tag := range []string{"a", "b"} {
		e.up.push(t, "team/shared:"+tag, img)
	}
	get := func() string {
		resp, body := e.get("/v2/local/team/shared/tags/list")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		return string(body)
	}

	// Concurrent requests while the upstream is slow: one upstream request.
	release := make(chan struct{})
	e.up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		if strings.HasSuffix(r.URL.Path, "/tags/list") {
			<-release
		}
		return false
	})
	var wg sync.WaitGroup
	bodies := make([]string, 8)
	for i := range bodies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, body := e.get("/v2/local/team/shared/tags/list")
			if resp.StatusCode != http.StatusOK {
				t.Errorf("status %d: %s", resp.StatusCode, body)
			}
			bodies[i] = string(body)
		}()
	}
	waitFor(t, "the upstream tags request", func() bool { return e.up.count("GET tags") >= 1 })
	close(release)
	wg.Wait()
	for _, b := range bodies {
		if !strings.Contains(b, `"tags":["a","b"]`) {
			t.Fatalf("tags %s", b)
		}
	}
	if got := e.up.count("GET tags"); got != 1 {
		t.Fatalf("%d upstream tags requests for concurrent clients, want 1", got)
	}

	// Within the TTL: no upstream request, even for a tag pushed since.
	e.up.push(t, "team/shared:c", img)
	e.clock.advance(e.opts.TagTTL - 1)
	if b := get(); !strings.Contains(b, `"tags":["a","b"]`) || e.up.count("GET tags") != 1 {
		t.Fatalf("within the TTL: %s, %d upstream requests", b, e.up.count("GET tags"))
	}
	if got := e.logs.lines(); got[len(got)-1]["cache"] != "hit" {
		t.Fatalf("pull log cache %v, want hit", got[len(got)-1]["cache"])
	}
	// After the TTL: read again.
	e.clock.advance(1)
	if b := get(); !strings.Contains(b, `"tags":["a","b","c"]`) || e.up.count("GET tags") != 2 {
		t.Fatalf("after the TTL: %s, %d upstream requests", b, e.up.count("GET tags"))
	}
	// After the TTL with the upstream down: the tags pullgate has cached.
	if r, _ := e.get("/v2/local/team/shared/manifests/b"); r.StatusCode != http.StatusOK {
		t.Fatal(r.Status)
	}
	e.up.setFault(func(w http.ResponseWriter, r *http.Request) bool {
		w.WriteHeader(http.StatusServiceUnavailable)
		return true
	})
	e.clock.advance(e.opts.TagTTL)
	if b := get(); !strings.Contains(b, `"tags":["b"]`) {
		t.Fatalf("upstream down: %s", b)
	}
	if got := e.logs.lines(); got[len(got)-1]["cache"] != "stale" {
		t.Fatalf("pull log cache %v, want stale", got[len(got)-1]["cache"])
	}
}

// TestAnswerCacheBounds holds the in-memory answers within their entry and byte bounds and their TTL.
func TestAnswerCacheBounds(t *testing.T) {
	var c answerCache[int]
	e := &clock{}
	lim := answerLimits{entries: 3, bytes: 100}
	tests := []struct {
		name        string
		put         func()
		wantEntries int
		wantBytes   int64
		present     []string
	}{
		{"up to the entry bound", func() {
			for _, k := range []string{"a", "b", "c", "d"} {
				c.put(k, 1, 9, e.Now(), lim) // 10 bytes with the key
			}
		}, 3, 30, []string{"b", "c", "d"}},
		{"byte bound evicts the least recently used", func() {
			c.get("b", e.Now(), 1) // b is now the most recently used
			c.put("e", 1, 79, e.Now(), lim)
		}, 3, 100, []string{"b", "d", "e"}},
		{"one more byte evicts", func() {
			c.put("f", 1, 0, e.Now(), lim)
		}, 3, 91, []string{"d", "e", "f"}},
		{"an answer over the byte bound is not kept, and replaces", func() {
			c.put("d", 1, 100, e.Now(), lim)
		}, 2, 81, []string{"e", "f"}},
		{"the key counts", func() {
			c.put(strings.Repeat("k", 95), 1, 10, e.Now(), lim)
		}, 2, 81, []string{"e", "f"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.put()
			for _, k := range tt.present {
				if _, ok := c.get(k, e.Now(), 1); !ok {
					t.Fatalf("%s evicted", k)
				}
			}
			if n, b := c.len(); n != tt.wantEntries || b != tt.wantBytes {
				t.Fatalf("%d entries, %d bytes; want %d, %d", n, b, tt.wantEntries, tt.wantBytes)
			}
		})
	}
	e.advance(1)
	for _, k := range []string{"e", "f"} {
		if _, ok := c.get(k, e.Now(), 1); ok {
			t.Fatalf("%s served past its TTL", k)
		}
	}
	if n, b := c.len(); n != 0 || b != 0 {
		t.Fatalf("expired answer kept: %d entries, %d bytes", n, b)
	}
}
