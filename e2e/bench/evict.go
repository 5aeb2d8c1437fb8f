package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pullgate/pullgate/cache"
	"github.com/pullgate/pullgate/e2e"
)

var (
	evictOnly    = flag.Bool("evict-only", false, "measure only the eviction rows (a few minutes less)")
	evictObjects = flag.Int("evict-objects", 200_000, "objects in the cache of the eviction rows")
	evictSize    = flag.Int("evict-object-size", 1024, "bytes of each of those objects")
	evictRounds  = flag.Int("evict-rounds", 3, "rounds of the eviction rows (each copies the cache three times); medians are reported")
	evictLinks   = flag.Bool("evict-links", true, "link each object of the eviction rows to one of 100 repositories, as every object of a real cache is")
	evictWindow  = flag.Duration("evict-window", 2*time.Second, "length of each warm pull run of the eviction rows")
	evictConns   = flag.String("evict-conns", "1,4", "connections pulling the warm image in the eviction rows, one run (and row) per number, one after another in each start")
)

// evictBench is what the eviction rows need from the rest of the benchmark.
type evictBench struct {
	bin, dir, logDir  string
	ca                *e2e.CA
	certFile, keyFile string
	upURL, upHost     string // the upstream itself
	rt                http.RoundTripper
	warm              e2e.Image // an image of one manifest, pulled by digest
}

// evictRows measures eviction, in three parts, on copies of one data directory that holds the warm image
// (pulled through pullgate, so recently used) and -evict-objects objects of -evict-object-size bytes written
// through the cache package with a clock an hour back (the least recently used):
//
//   - throughput: Cache.Evict of half the bytes, objects removed per second;
//   - a warm pull by digest (manifest, config, layers) through a running pullgate while its eviction runs, against
//     the same pull from a pullgate under its quota (twice the content), interleaved rounds, the median pull; the
//     eviction is either a round from twice the quota (PULLGATE_MAX_BYTES half the content; a cold fill asks for
//     it, and waits for its room) or a background round nobody waits for (the content 97% of the quota);
//   - startup, exec to /readyz answering 200, of those two pullgates.
func evictRows(ctx context.Context, b evictBench) ([]row, error) {
	template := filepath.Join(b.dir, "evict-template")
	log.Printf("eviction: a cache of %d objects of %d bytes and the warm image", *evictObjects, *evictSize)
	total, fill, err := b.makeTemplate(ctx, template)
	if err != nil {
		return nil, err
	}
	conns, err := connCounts(*evictConns)
	if err != nil {
		return nil, err
	}
	var (
		rates                 []float64
		evicted               []int
		startUnder, startOver []time.Duration
		pullUnder, pullOver   = make([][]time.Duration, len(conns)), make([][]time.Duration, len(conns))
		pullBg                = make([][]time.Duration, len(conns))
		duringNotes, bgNotes  []string
	)
	for r := range *evictRounds {
		log.Printf("eviction round %d of %d", r+1, *evictRounds)
		n, d, err := evictOnce(ctx, template, filepath.Join(b.dir, fmt.Sprintf("evict-a-%d", r)), total/2)
		if err != nil {
			return nil, err
		}
		rates = append(rates, float64(n)/d.Seconds())
		evicted = append(evicted, n)
		// Rotate the order, so that no case always runs on a cooler machine.
		modes := []string{"under", "over", "background"}
		for i := range modes {
			mode := modes[(r+i)%len(modes)]
			st, pulls, note, err := b.servedRound(ctx, template, r, mode, total, conns)
			if err != nil {
				return nil, err
			}
			switch mode {
			case "over":
				startOver = append(startOver, st)
				duringNotes = append(duringNotes, note)
			case "under":
				startUnder = append(startUnder, st)
			default:
				bgNotes = append(bgNotes, note)
			}
			for j := range conns {
				switch mode {
				case "over":
					pullOver[j] = append(pullOver[j], pulls[j]...)
				case "under":
					pullUnder[j] = append(pullUnder[j], pulls[j]...)
				default:
					pullBg[j] = append(pullBg[j], pulls[j]...)
				}
			}
		}
	}
	rate := medianF(rates)
	su, so := median(startUnder), median(startOver)
	rows := []row{
		{fmt.Sprintf("eviction, objects/s (Cache.Evict of half of %d objects of %d B, linked: %v)", *evictObjects, *evictSize, *evictLinks), f0(rate), "", "",
			fmt.Sprintf("median of %d rounds: %s objects/s; %d objects evicted per round; the cache was written at %s objects/s (fsync each)",
				len(rates), strings.Join(mapF(rates, f0), ", "), medianInt(evicted), f0(fill)),
			">= 10000", meets(rate >= 10000, "x")},
	}
	// pullRows compares the pulls during one kind of eviction with those without, a row per number of
	// connections; the last row carries the rounds' notes.
	pullRows := func(what string, during [][]time.Duration, notes []string) {
		for j, n := range conns {
			pu, pd := median(pullUnder[j]), median(during[j])
			ref := fmt.Sprintf("without eviction %s; during/without %s; %d and %d pulls", ms(pu), ratio(float64(pd), float64(pu)), len(during[j]), len(pullUnder[j]))
			if j == len(conns)-1 {
				ref += "; " + strings.Join(notes, "; ")
			}
			rows = append(rows, row{fmt.Sprintf("warm pull by digest during %s, median pull (%d conns)", what, n), ms(pd), "", "", ref,
				"<= 1.1x without", meets(float64(pd) <= 1.1*float64(pu), "x")})
		}
	}
	pullRows("eviction of a cache at twice its quota (a cold fill asked)", pullOver, duringNotes)
	pullRows("background eviction (97% to 90% of the quota)", pullBg, bgNotes)
	return append(rows, row{"startup over the quota (to /readyz)", ms(so), "", "",
		fmt.Sprintf("under the quota %s; over/under %s; rounds over: %s, under: %s", ms(su), ratio(float64(so), float64(su)),
			strings.Join(mapD(startOver), ", "), strings.Join(mapD(startUnder), ", ")),
		"unchanged (<= 1.1x under)", meets(float64(so) <= 1.1*float64(su), "x")}), nil
}

// connCounts reads -evict-conns: positive numbers separated by commas.
func connCounts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 || n > 256 {
			return nil, fmt.Errorf("-evict-conns: %q is not a number of connections from 1 to 256", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// makeTemplate makes the data directory the eviction rows copy: the warm image pulled through pullgate, then
// the old objects written through the cache package. It returns the bytes stored and the objects written per
// second.
func (b evictBench) makeTemplate(ctx context.Context, dir string) (int64, float64, error) {
	pg, err := b.start(ctx, dir, "pullgate-evict-template", "0")
	if err != nil {
		return 0, 0, err
	}
	client := &http.Client{Transport: e2e.Transport(b.ca.Pool), Timeout: time.Minute}
	err = warmPull(ctx, client, pg.URL, b.warm)
	client.CloseIdleConnections()
	if stopErr := pg.Stop(10 * time.Second); err == nil {
		err = stopErr
	}
	if err != nil {
		return 0, 0, fmt.Errorf("eviction: the warm image: %w", err)
	}
	past := time.Now().Add(-time.Hour)
	c, err := cache.Open(cache.Options{Dir: dir, Now: func() time.Time { return past },
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	if err := fillCache(ctx, c, *evictObjects, *evictSize, *evictLinks); err != nil {
		c.Close()
		return 0, 0, err
	}
	rate := float64(*evictObjects) / time.Since(start).Seconds()
	bytes, _ := c.Usage()
	return bytes, rate, c.Close()
}

// fillCache writes n objects of size bytes (a counter, then random bytes) to c, two at a time, and with link
// links each to one of 100 repositories of the upstream "local".
func fillCache(ctx context.Context, c *cache.Cache, n, size int, link bool) error {
	const workers = 2
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			buf := make([]byte, max(size, 8))
			for i := w; i < n; i += workers {
				if err := ctx.Err(); err != nil {
					errs <- err
					return
				}
				if _, err := rand.Read(buf[8:]); err != nil {
					errs <- err
					return
				}
				binary.BigEndian.PutUint64(buf, uint64(i))
				sum := sha256.Sum256(buf)
				wr, err := c.NewWriter(v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}, "", int64(len(buf)))
				if err != nil {
					errs <- err
					return
				}
				if _, err := wr.Write(buf); err != nil {
					errs <- err
					return
				}
				obj, err := wr.Commit()
				if err != nil {
					errs <- err
					return
				}
				if link {
					if err := c.Link("local", fmt.Sprintf("bench/filler-%d", i%100), obj.Digest); err != nil {
						errs <- err
						return
					}
				}
			}
			errs <- nil
		}()
	}
	var first error
	for range workers {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// copyDir copies the data directory src to dst (cp -a: modes kept), removing what dst held. With linkBlobs,
// the content files are hard links to src's (they are never written in place; a removal unlinks only dst's
// name), which is quicker, but an eviction then frees no inode: only runs that evict nothing use it.
func copyDir(ctx context.Context, src, dst string, linkBlobs bool) error {
	if err := os.RemoveAll(dst); err != nil {
		return err
	}
	if err := os.Mkdir(dst, 0o700); err != nil {
		return err
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		args := []string{"-a"}
		if linkBlobs && e.Name() == "blobs" {
			args = []string{"-al"}
		}
		args = append(args, filepath.Join(src, e.Name()), filepath.Join(dst, e.Name()))
		if out, err := exec.CommandContext(ctx, "cp", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("cp %s: %w: %s", strings.Join(args, " "), err, out)
		}
	}
	// Write the copy out now, so that its writeback does not compete with what is measured next.
	syscall.Sync()
	return nil
}

// evictOnce copies template to dir, opens it with the cache package and evicts need bytes, timing the Evict
// call alone. It returns the objects removed and the time.
func evictOnce(ctx context.Context, template, dir string, need int64) (int, time.Duration, error) {
	if err := copyDir(ctx, template, dir, false); err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(dir)
	c, err := cache.Open(cache.Options{Dir: dir, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	st, err := c.Evict(ctx, need, nil, cache.ReasonQuota)
	d := time.Since(start)
	if cerr := c.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, 0, fmt.Errorf("eviction: Evict: %w", err)
	}
	if st.Bytes < need {
		return 0, 0, fmt.Errorf("eviction: Evict freed %d bytes of %d", st.Bytes, need)
	}
	return st.Objects, d, nil
}

// servedRound starts pullgate on a copy of template, with a quota of half the content (over) or twice it
// (under), and returns its startup time and the times of the warm pulls run for -evict-window from each number of
// connections in conns, one after another. Over the quota,
// a cold blob is asked for first, so that the fill asks the eviction task for a round at once; the note says
// how many objects were evicted during the pulls, and whether eviction was still running at their end.
//
// In mode "background" the content is 97% of the quota: no fill waits, and the round (from 95% down to 90%)
// starts at the eviction task's next tick; the pulls start once it has removed something.
func (b evictBench) servedRound(ctx context.Context, template string, r int, mode string, total int64, conns []int) (time.Duration, [][]time.Duration, string, error) {
	name, quota := mode, 2*total
	switch mode {
	case "over":
		quota = total / 2
	case "background":
		quota = total * 100 / 97
	}
	over := mode != "under" // eviction runs during the pulls
	dir := filepath.Join(b.dir, fmt.Sprintf("evict-%s-%d", name, r))
	if err := copyDir(ctx, template, dir, !over); err != nil {
		return 0, nil, "", err
	}
	defer os.RemoveAll(dir)
	metricsAddr, err := e2e.FreeAddr()
	if err != nil {
		return 0, nil, "", err
	}
	ready := make(chan time.Duration, 1)
	pollCtx, stopPoll := context.WithTimeout(ctx, time.Minute)
	defer stopPoll()
	start := time.Now()
	go func() { ready <- pollReady(pollCtx, "http://"+metricsAddr+"/readyz", start) }()
	pg, err := b.startAt(ctx, dir, "pullgate-evict-"+name, strconv.FormatInt(quota, 10), metricsAddr)
	if err != nil {
		return 0, nil, "", err
	}
	defer func() {
		if err := pg.Stop(30 * time.Second); err != nil {
			log.Print(err)
		}
	}()
	startup := <-ready
	if startup < 0 {
		return 0, nil, "", errors.New("eviction: /readyz never answered 200")
	}
	note := ""
	fillDone := make(chan string, 1)
	var before float64
	pullStart := time.Now()
	if over {
		if before, err = metricValue(ctx, pg, `pullgate_cache_evictions_total{reason="quota"}`); err != nil {
			return 0, nil, "", err
		}
		if mode == "over" {
			img, err := random.Image(1024, 1)
			if err != nil {
				return 0, nil, "", err
			}
			cold, err := e2e.PushImage(b.upHost, fmt.Sprintf("bench/evict-trigger-%d", r), "v1", img, remote.WithContext(ctx), remote.WithTransport(b.rt))
			if err != nil {
				return 0, nil, "", err
			}
			pullStart = time.Now()
			go func() { // the fill waits for eviction to make its room
				err := getOK(ctx, b.rt, pg.URL+"/v2/"+cold.Repo+"/blobs/"+cold.Blobs[1].String())
				outcome := "answered"
				if err != nil {
					outcome = "failed (" + err.Error() + ")"
				}
				fillDone <- fmt.Sprintf("the cold fill %s after %s", outcome, ms(time.Since(pullStart)))
			}()
		} else {
			deadline := time.Now().Add(30 * time.Second)
			for {
				v, err := metricValue(ctx, pg, `pullgate_cache_evictions_total{reason="quota"}`)
				if err != nil {
					return 0, nil, "", err
				}
				if v > before {
					break
				}
				if time.Now().After(deadline) {
					return 0, nil, "", errors.New("eviction: no background round started within 30 s")
				}
				time.Sleep(20 * time.Millisecond) // polling the metric, with a deadline
			}
			pullStart = time.Now()
		}
	}
	// Over the quota, watch the stored bytes: a round stops at 90% of the quota, removing 1000 objects at a
	// time, so eviction has ended once they are within one batch of it. Only pulls that ended before count. The
	// watch runs under the quota too (and never ends there), so that its scrapes of /metrics cost the pulls of
	// every mode the same.
	evictEnd := make(chan time.Time, 1)
	watchCtx, stopWatch := context.WithTimeout(ctx, time.Duration(len(conns))**evictWindow)
	defer stopWatch()
	go func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			if v, err := metricValue(watchCtx, pg, "pullgate_cache_bytes"); over && err == nil && v <= float64(quota)*0.9+float64(1000**evictSize) {
				evictEnd <- time.Now()
				return
			}
			select {
			case <-watchCtx.Done():
				close(evictEnd)
				return
			case <-tick.C:
			}
		}
	}()
	var timed [][]timedPull
	for _, n := range conns {
		t, err := warmPulls(ctx, b.ca, pg.URL, b.warm, n, *evictWindow)
		if err != nil {
			return 0, nil, "", err
		}
		timed = append(timed, t)
	}
	stopWatch()
	end, ended := <-evictEnd
	pulls := make([][]time.Duration, len(conns))
	counted := 0
	for j, ts := range timed {
		for _, p := range ts {
			if !ended || !p.end.After(end) {
				pulls[j] = append(pulls[j], p.took)
				counted++
			}
		}
	}
	if over {
		after, err := metricValue(ctx, pg, `pullgate_cache_evictions_total{reason="quota"}`)
		if err != nil {
			return 0, nil, "", err
		}
		switch {
		case ended:
			note = fmt.Sprintf("round %d: %.0f evicted in %s, %d pulls during it", r+1, after-before, ms(end.Sub(pullStart)), counted)
		default:
			note = fmt.Sprintf("round %d: %.0f evicted, still running after the pulls", r+1, after-before)
		}
		if mode == "over" {
			select {
			case f := <-fillDone:
				note += ", " + f
			default:
				note += ", the cold fill still waiting"
			}
		}
		if slices.ContainsFunc(pulls, func(p []time.Duration) bool { return len(p) == 0 }) {
			return 0, nil, "", fmt.Errorf("eviction: no pull ended during the eviction (%s); make -evict-objects larger", note)
		}
	}
	return startup, pulls, note, nil
}

// start starts pullgate on dir in front of the upstream with PULLGATE_MAX_BYTES=quota.
func (b evictBench) start(ctx context.Context, dir, name, quota string) (*e2e.Pullgate, error) {
	return b.startAt(ctx, dir, name, quota, "")
}

func (b evictBench) startAt(ctx context.Context, dir, name, quota, metricsAddr string) (*e2e.Pullgate, error) {
	return e2e.StartPullgate(ctx, e2e.PullgateOptions{Bin: b.bin, Name: name, DataDir: dir, LogDir: b.logDir, MetricsAddr: metricsAddr,
		CertFile: b.certFile, KeyFile: b.keyFile, CA: b.ca, Upstreams: "local=" + b.upURL, Default: "local", UpstreamCAFile: b.ca.CertFile,
		Env: []string{"PULLGATE_LOG_LEVEL=warn", "PULLGATE_MAX_BYTES=" + quota, "PULLGATE_MIN_FREE=0"}})
}

// pollReady GETs url every 2ms until it answers 200 and returns the time since start, or -1 when ctx ends.
func pollReady(ctx context.Context, url string, start time.Time) time.Duration {
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := e2e.HTTPStatus(ctx, client, url, http.StatusOK); err == nil {
			return time.Since(start)
		}
		select {
		case <-ctx.Done():
			return -1
		case <-tick.C:
		}
	}
}

// warmPull pulls im by digest through base: its manifest, then its config and layers.
func warmPull(ctx context.Context, client *http.Client, base string, im e2e.Image) error {
	if _, err := get(ctx, client, base+"/v2/"+im.Repo+"/manifests/"+im.Digest.String(), ""); err != nil {
		return fmt.Errorf("manifest %s: %w", im.Digest, err)
	}
	for _, d := range im.Blobs {
		if _, err := get(ctx, client, base+"/v2/"+im.Repo+"/blobs/"+d.String(), ""); err != nil {
			return fmt.Errorf("blob %s: %w", d, err)
		}
	}
	return nil
}

// timedPull is one warm pull: when it ended and how long it took.
type timedPull struct {
	end  time.Time
	took time.Duration
}

// warmPulls pulls im by digest from conns connections, one pull after another, for d, and returns each pull.
// Any failed pull is an error.
func warmPulls(ctx context.Context, ca *e2e.CA, base string, im e2e.Image, conns int, d time.Duration) ([]timedPull, error) {
	var mu sync.Mutex
	var times []timedPull
	var first error
	var wg sync.WaitGroup
	deadline := time.Now().Add(d)
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := e2e.Transport(ca.Pool)
			defer t.CloseIdleConnections()
			client := &http.Client{Transport: t, Timeout: time.Minute}
			var own []timedPull
			var err error
			for time.Now().Before(deadline) && ctx.Err() == nil {
				t0 := time.Now()
				if err = warmPull(ctx, client, base, im); err != nil {
					break
				}
				own = append(own, timedPull{end: time.Now(), took: time.Since(t0)})
			}
			mu.Lock()
			times = append(times, own...)
			if err != nil && first == nil {
				first = err
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if first != nil {
		return nil, fmt.Errorf("warm pull: %w", first)
	}
	return times, nil
}

// metricValue reads one sample (name with its labels, as /metrics writes it) from pullgate's metrics; a sample
// not written yet is zero.
func metricValue(ctx context.Context, pg *e2e.Pullgate, sample string) (float64, error) {
	text, err := pg.Metrics(ctx)
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, sample+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, nil
}

func medianF(fs []float64) float64 {
	if len(fs) == 0 {
		return 0
	}
	s := slices.Clone(fs)
	slices.Sort(s)
	return s[len(s)/2]
}

func medianInt(is []int) int {
	if len(is) == 0 {
		return 0
	}
	s := slices.Clone(is)
	slices.Sort(s)
	return s[len(s)/2]
}

func mapF(fs []float64, f func(float64) string) []string {
	out := make([]string, len(fs))
	for i, v := range fs {
		out[i] = f(v)
	}
	return out
}

func mapD(ds []time.Duration) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = ms(d)
	}
	return out
}
