package proxy

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
)

// BenchmarkColdPull pulls the blobs of a fresh 10-layer image (2 MiB layers) four at a time, through pullgate
// and, for comparison, directly from the same upstream. Compare the two: go test -bench ColdPull ./proxy
func BenchmarkColdPull(b *testing.B) {
	for _, via := range []string{"pullgate", "direct"} {
		b.Run(via, func(b *testing.B) {
			e := newEnv(b)
			b.SetBytes(10 * 2 << 20)
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				repo := fmt.Sprintf("bench/img%d", i)
				var digests []string
				for l := range 10 {
					blob, d := layerBlob(b, 2<<20+i*16+l) // a distinct blob each time: always cold
					e.up.pushBlob(b, repo, blob, d)
					if err := e.cache.Link("local", repo, d); err != nil {
						b.Fatal(err)
					}
					digests = append(digests, d.String())
				}
				base, client := e.srv.URL+"/v2/local/", e.srv.Client()
				if via == "direct" {
					base, client = e.up.srv.URL+"/v2/", e.up.srv.Client()
				}
				b.StartTimer()
				pullBlobs(b, client, base, repo, digests)
			}
		})
	}
}

func pullBlobs(b *testing.B, c *http.Client, base, repo string, digests []string) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for _, d := range digests {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			resp, err := c.Get(base + repo + "/blobs/" + d)
			if err != nil {
				b.Error(err)
				return
			}
			n, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || n < 2<<20 {
				b.Errorf("%s: %d, %d bytes", d, resp.StatusCode, n)
			}
		}()
	}
	wg.Wait()
}
