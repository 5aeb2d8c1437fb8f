// Command bench measures pullgate beside distribution's pull-through cache (docker-registry in proxy mode, "the
// peer"), a bare reverse proxy with no cache and the plain upstream, on loopback, in one run, and prints one
// table.
//
// Run it from the module root: go run ./e2e/bench [-duration 4s]. It needs docker-registry (Debian's
// distribution 2.8) and builds ./cmd/pullgate. Each of the four paths (pullgate, the peer, the bare proxy and
// "direct" pulls) reaches the upstream through its own throttle and counting proxy, so that every path has the
// same extra hops. The throttles pace each connection that the path opens (the way registry CDNs limit each
// connection); they are unpaced except during the throttled cold pull.
package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/pullgate/pullgate/e2e"
)

var (
	duration  = flag.Duration("duration", 3*time.Second, "length of each load run")
	rounds    = flag.Int("rounds", 2, "load runs per target, interleaved between targets, added up")
	dataDir   = flag.String("data-dir", "", "pullgate's data directory (default: in the work directory)")
	conns     = flag.Int("conns", 64, "connections for the manifest runs")
	blobConns = flag.Int("blob-conns", 8, "connections for the blob runs")
	coldRuns  = flag.Int("cold-runs", 5, "cold pulls per target, interleaved between targets (the median is reported)")
	layerSize = flag.Int64("layer-size", 2<<20, "bytes of random data in each layer of the unthrottled cold 10-layer image")
	parallel  = flag.Int("parallel", 3, "blobs a cold pull fetches at once (containerd's default max_concurrent_downloads)")
	connRate  = flag.Int64("conn-rate", 20e6, "bytes/s each upstream connection gets in the throttled cold pull")
	slowN     = flag.Int("throttled-layers", 10, "layers of the image of the throttled cold pull")
	slowSize  = flag.Int64("throttled-layer-size", 5e6, "bytes in each layer of the image of the throttled cold pull")
	keep      = flag.Bool("keep", false, "keep the work directory")
)

func main() {
	flag.Parse()
	log.SetFlags(log.Ltime)
	log.SetOutput(os.Stderr)
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

// target is one registry that clients pull from.
type target struct {
	name     string
	url      string             // https://host:port
	count    *e2e.CountingProxy // its path to the upstream
	throttle *e2e.Throttle      // in front of count: the connections the target opens to the upstream
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute) // the eviction rows take several minutes
	defer cancel()
	dir, err := os.MkdirTemp("", "pullgate-bench-")
	if err != nil {
		return err
	}
	if *keep {
		log.Printf("work directory %s", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	logDir := filepath.Join(dir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return err
	}
	root, err := e2e.ModuleRoot()
	if err != nil {
		return err
	}
	log.Printf("building pullgate")
	bin, err := e2e.BuildPullgate(ctx, root, dir)
	if err != nil {
		return err
	}
	ca, err := e2e.NewCA(dir)
	if err != nil {
		return err
	}
	certFile, keyFile, err := ca.Issue(dir, "loopback", e2e.LoopbackHosts()...)
	if err != nil {
		return err
	}
	rt := e2e.Transport(ca.Pool)

	log.Printf("starting the upstream, pullgate and the peer")
	up, err := e2e.StartRegistry(ctx, e2e.RegistryOptions{Name: "upstream", Dir: filepath.Join(dir, "upstream"), LogDir: logDir,
		CertFile: certFile, KeyFile: keyFile, CA: ca})
	if err != nil {
		return err
	}
	defer up.Kill()
	// One path to the upstream for each of pullgate, the peer, direct pulls and the bare proxy.
	var proxies [4]*e2e.CountingProxy
	var throttles [4]*e2e.Throttle
	for i := range proxies {
		if proxies[i], err = e2e.StartCountingProxy(up.URL, ca, certFile, keyFile); err != nil {
			return err
		}
		defer proxies[i].Close()
		if throttles[i], err = e2e.StartThrottle(proxies[i].Addr, 0); err != nil {
			return err
		}
		defer throttles[i].Close()
	}
	pgData := *dataDir
	if pgData == "" {
		pgData = filepath.Join(dir, "pullgate-data")
	}
	// Client identities are on: a robot may pull everything, and so may anonymous clients, so that one pullgate
	// answers both and the authenticated rows compare with the anonymous ones.
	robotsFile := filepath.Join(dir, "robots.yaml")
	robot, err := createRobot(ctx, bin, robotsFile)
	if err != nil {
		return err
	}
	pg, err := e2e.StartPullgate(ctx, e2e.PullgateOptions{Bin: bin, DataDir: pgData, LogDir: logDir,
		CertFile: certFile, KeyFile: keyFile, CA: ca, Upstreams: "local=" + throttles[0].URL, Default: "local",
		UpstreamCAFile: ca.CertFile, Env: []string{"PULLGATE_LOG_LEVEL=warn", "PULLGATE_ROBOTS_FILE=" + robotsFile,
			"PULLGATE_ANONYMOUS=local/**", "PULLGATE_TOKEN_TTL=1h"}})
	if err != nil {
		return err
	}
	defer func() {
		if err := pg.Stop(10 * time.Second); err != nil {
			log.Print(err)
		}
	}()
	gated, stopGated, err := startGated(ctx, bin, dir, logDir, up.URL, ca, certFile, keyFile, robotsFile)
	if err != nil {
		return err
	}
	defer stopGated()
	peer, err := e2e.StartRegistry(ctx, e2e.RegistryOptions{Name: "peer", Dir: filepath.Join(dir, "peer"), LogDir: logDir,
		CertFile: certFile, KeyFile: keyFile, CA: ca, ProxyRemoteURL: throttles[1].URL, ProxyCAFile: ca.CertFile})
	if err != nil {
		return err
	}
	defer peer.Kill()
	bareURL, stopBare, err := bareProxy(throttles[3].URL, ca.Pool, certFile, keyFile)
	if err != nil {
		return err
	}
	defer stopBare()
	pgT := target{name: "pullgate", url: pg.URL, count: proxies[0], throttle: throttles[0]}
	peerT := target{name: "peer", url: peer.URL, count: proxies[1], throttle: throttles[1]}
	directT := target{name: "direct", url: throttles[2].URL, count: proxies[2], throttle: throttles[2]}
	bareT := target{name: "bare proxy", url: bareURL, count: proxies[3], throttle: throttles[3]}

	log.Printf("filling the upstream")
	fix, err := e2e.Seed(ctx, up.Addr, e2e.SeedOptions{Transport: rt})
	if err != nil {
		return err
	}
	small, big := fix.Single, fix.Big
	bigLayer := big.Blobs[1]
	eb := evictBench{bin: bin, dir: dir, logDir: logDir, ca: ca, certFile: certFile, keyFile: keyFile, upURL: up.URL, upHost: up.Addr, rt: rt, warm: small}
	if *evictOnly {
		rows, err := evictRows(ctx, eb)
		if err != nil {
			return err
		}
		printTable(os.Stdout, rows)
		return nil
	}

	// The ceiling: the same 50 MB blob from a bare Go TLS file server.
	blobFile := filepath.Join(up.StorageDir, "docker/registry/v2/blobs/sha256", bigLayer.Hex[:2], bigLayer.Hex, "data")
	ceiling, stopCeiling, err := fileServer(blobFile, "application/octet-stream", certFile, keyFile)
	if err != nil {
		return err
	}
	defer stopCeiling()
	// The ceiling of a warm manifest by digest: the manifest's bytes from a bare Go TLS file server.
	manifestFile := filepath.Join(up.StorageDir, "docker/registry/v2/blobs/sha256", small.Digest.Hex[:2], small.Digest.Hex, "data")
	mCeiling, stopMCeiling, err := fileServer(manifestFile, string(small.MediaType), certFile, keyFile)
	if err != nil {
		return err
	}
	defer stopMCeiling()

	var rows []row
	tagPath := "/v2/" + small.Repo + "/manifests/" + small.Tag
	digestPath := "/v2/" + small.Repo + "/manifests/" + small.Digest.String()
	blobPath := "/v2/" + big.Repo + "/blobs/" + bigLayer.String()
	// The gated pullgate's first pull waits for the scan and stores the verdict; every later one judges it.
	for _, t := range []target{pgT, peerT, {name: "gated pullgate", url: gated.URL}} { // warm the caches, twice
		for range 2 {
			for _, p := range []string{tagPath, digestPath, blobPath} {
				if err := getOK(ctx, rt, t.url+p); err != nil {
					return fmt.Errorf("warming %s: %w", t.name, err)
				}
			}
		}
	}

	log.Printf("warm manifest by tag: %d connections, %d x %v each (pullgate, peer, gated pullgate)", *conns, *rounds, *duration)
	r := loadRounds(ctx, ca, *conns, *duration, plain(pgT.url+tagPath, peerT.url+tagPath, gated.URL+tagPath)...)
	a, b, g := r[0], r[1], r[2]
	rows = append(rows,
		row{fmt.Sprintf("warm manifest by tag, req/s (%d conns)", *conns), f0(a.rps()), f0(b.rps()), ratio(a.rps(), b.rps()), a.errNote() + b.errNote(), ">= 20x peer", meets(a.rps() >= 20*b.rps(), "x")},
		row{"warm manifest by tag, p99", ms(a.p99()), ms(b.p99()), ratio(float64(a.p99()), float64(b.p99())), "", "", ""},
		row{"warm manifest by tag, gated (stored verdict), req/s", f0(g.rps()), "", "",
			fmt.Sprintf("%sungated %s req/s; gated/ungated %s; p99 %s (ungated %s)", g.errNote(), f0(a.rps()), ratio(g.rps(), a.rps()), ms(g.p99()), ms(a.p99())),
			">= 0.9x ungated", meets(g.rps() >= 0.9*a.rps(), "x")})

	log.Printf("warm manifest by tag, authenticated: %d connections, %d x %v each (anonymous, bearer token, basic)", *conns, *rounds, *duration)
	token, err := fetchToken(ctx, rt, pgT.url, robot, small.Repo)
	if err != nil {
		return err
	}
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte(robot.Username+":"+robot.Secret))
	r = loadRounds(ctx, ca, *conns, *duration, endpoint{url: pgT.url + tagPath}, endpoint{url: pgT.url + tagPath, auth: "Bearer " + token},
		endpoint{url: pgT.url + tagPath, auth: basic})
	anon, bearer, basicR := r[0], r[1], r[2]
	rows = append(rows,
		row{"warm manifest by tag, robot with a token, req/s", f0(bearer.rps()), "", "", fmt.Sprintf("%sanonymous %s req/s; token/anonymous %s", anon.errNote()+bearer.errNote(), f0(anon.rps()), ratio(bearer.rps(), anon.rps())),
			">= 0.8x anonymous", meets(bearer.rps() >= 0.8*anon.rps(), "x")},
		row{"warm manifest by tag, robot with Basic, req/s", f0(basicR.rps()), "", "", fmt.Sprintf("%sbasic/anonymous %s", basicR.errNote(), ratio(basicR.rps(), anon.rps())),
			">= 0.8x anonymous", meets(basicR.rps() >= 0.8*anon.rps(), "x")})

	log.Printf("warm manifest by digest: %d connections, %d x %v each (pullgate, peer, Go file server)", *conns, *rounds, *duration)
	r = loadRounds(ctx, ca, *conns, *duration, plain(pgT.url+digestPath, peerT.url+digestPath, mCeiling+digestPath)...)
	a, b, c := r[0], r[1], r[2]
	rows = append(rows,
		row{fmt.Sprintf("warm manifest by digest, req/s (%d conns)", *conns), f0(a.rps()), f0(b.rps()), ratio(a.rps(), b.rps()),
			fmt.Sprintf("%sGo file server (same bytes) %s req/s; pullgate/ceiling %s", a.errNote()+b.errNote()+c.errNote(), f0(c.rps()), ratio(a.rps(), c.rps())),
			">= 0.9x ceiling", meets(a.rps() >= 0.9*c.rps(), "x")},
		row{"warm manifest by digest, p99", ms(a.p99()), ms(b.p99()), ratio(float64(a.p99()), float64(b.p99())), "Go file server " + ms(c.p99()), "", ""})

	log.Printf("warm 50 MB blob: %d connections, %d x %v each (pullgate, peer, Go file server)", *blobConns, *rounds, *duration)
	r = loadRounds(ctx, ca, *blobConns, *duration, plain(pgT.url+blobPath, peerT.url+blobPath, ceiling+blobPath)...)
	a, b, c = r[0], r[1], r[2]
	rows = append(rows,
		row{fmt.Sprintf("warm 50 MB blob, MB/s (%d conns)", *blobConns), f0(a.mbps()), f0(b.mbps()), ratio(a.mbps(), b.mbps()),
			fmt.Sprintf("Go file server %s MB/s; pullgate/ceiling %s", f0(c.mbps()), ratio(a.mbps(), c.mbps())), ">= 0.9x ceiling", meets(a.mbps() >= 0.9*c.mbps(), "x")},
		row{"warm 50 MB blob, p99 per GET", ms(a.p99()), ms(b.p99()), ratio(float64(a.p99()), float64(b.p99())), "Go file server " + ms(c.p99()), "", ""})

	coldTargets := []target{pgT, bareT, directT, peerT}
	log.Printf("cold pull of fresh 10-layer images, unthrottled (%d each)", *coldRuns)
	unthrottled, err := coldPulls(ctx, up.Addr, rt, coldTargets, "cold", func() *http.Transport { return e2e.Transport(ca.Pool) },
		func(uint64) (v1.Image, error) {
			return e2e.PlatformImage(10, *layerSize, v1.Platform{OS: "linux", Architecture: runtime.GOARCH})
		})
	if err != nil {
		return err
	}
	rows = append(rows, unthrottled.rows(fmt.Sprintf("cold pull, 10 layers x %s, unthrottled, median of %d", size(*layerSize), *coldRuns), "unthrottled cold pull", "<= 1.3x direct", 1.3)...)

	log.Printf("cold pull of fresh %d-layer images, %s per upstream connection (%d each)", *slowN, rate(*connRate), *coldRuns)
	for _, t := range coldTargets {
		t.throttle.BytesPerSecond.Store(*connRate)
	}
	throttled, err := coldPulls(ctx, up.Addr, rt, coldTargets, "slow", func() *http.Transport { return http1Transport(ca.Pool) },
		func(seed uint64) (v1.Image, error) { return e2e.LayeredImage(*slowN, *slowSize, seed) })
	for _, t := range coldTargets {
		t.throttle.BytesPerSecond.Store(0)
	}
	if err != nil {
		return err
	}
	rows = append(rows, throttled.rows(fmt.Sprintf("cold pull, %d layers x %s, %s per upstream connection, median of %d", *slowN, size(*slowSize), rate(*connRate), *coldRuns),
		"throttled cold pull", "<= 0.7x direct", 0.7)...)

	log.Printf("one client, one fresh 50 MB blob: time to first byte and total")
	var ttfb, whole [3]time.Duration
	for i, t := range []target{pgT, peerT, directT} {
		img, err := e2e.BigImage(50<<20, uint64(time.Now().UnixNano()))
		if err != nil {
			return err
		}
		im, err := e2e.PushImage(up.Addr, "bench/single-"+t.name, "v1", img, remote.WithContext(ctx), remote.WithTransport(rt))
		if err != nil {
			return err
		}
		if ttfb[i], whole[i], err = timedGet(ctx, ca, t.url+"/v2/"+im.Repo+"/blobs/"+im.Blobs[1].String()); err != nil {
			return fmt.Errorf("cold blob through %s: %w", t.name, err)
		}
	}
	rows = append(rows,
		row{"cold 50 MB blob, one client: first byte", ms(ttfb[0]), ms(ttfb[1]), ratio(float64(ttfb[0]), float64(ttfb[1])), "direct " + ms(ttfb[2]), "streams while filling", ""},
		row{"cold 50 MB blob, one client: whole blob", ms(whole[0]), ms(whole[1]), ratio(float64(whole[0]), float64(whole[1])),
			fmt.Sprintf("direct %s; pullgate/direct %s", ms(whole[2]), ratio(float64(whole[0]), float64(whole[2]))), "", ""})

	log.Printf("16 clients at once for one fresh 50 MB blob")
	var walls [2]time.Duration
	var gets [2]int
	for i, t := range []target{pgT, peerT} {
		img, err := e2e.BigImage(50<<20, uint64(time.Now().UnixNano()))
		if err != nil {
			return err
		}
		im, err := e2e.PushImage(up.Addr, "bench/herd-"+t.name, "v1", img, remote.WithContext(ctx), remote.WithTransport(rt))
		if err != nil {
			return err
		}
		path := "/v2/" + im.Repo + "/blobs/" + im.Blobs[1].String()
		t.count.Reset()
		walls[i], err = herd(ctx, ca, t.url+path, 16)
		if err != nil {
			return fmt.Errorf("16 clients through %s: %w", t.name, err)
		}
		gets[i] = t.count.Count("GET " + path)
	}
	rows = append(rows,
		row{"16 clients, one cold 50 MB blob: wall time", ms(walls[0]), ms(walls[1]), ratio(float64(walls[0]), float64(walls[1])), "", "", ""},
		row{"16 clients, one cold 50 MB blob: upstream GETs", fmt.Sprint(gets[0]), fmt.Sprint(gets[1]), "", "", "exactly 1", meets(gets[0] == 1, "x")})

	rssPG, err1 := e2e.PeakRSS(pg.Pid())
	rssPeer, err2 := e2e.PeakRSS(peer.Pid())
	if err1 != nil || err2 != nil {
		return fmt.Errorf("peak RSS: %v %v", err1, err2)
	}
	rows = append(rows, row{"peak RSS (VmHWM) after the blob runs", mib(rssPG), mib(rssPeer), ratio(float64(rssPG), float64(rssPeer)), "", "flat with blob size", ""})

	evict, err := evictRows(ctx, eb)
	if err != nil {
		return err
	}
	rows = append(rows, evict...)

	printTable(os.Stdout, rows)
	return nil
}

// row is one line of the table.
type row struct{ figure, pg, peer, ratio, reference, target, met string }

func printTable(w io.Writer, rows []row) {
	fmt.Fprintf(w, "\nMachine: %s, %d CPUs, %s RAM, %s, %s; docker-registry %s\n", cpuModel(), runtime.NumCPU(), memTotal(), kernel(), runtime.Version(), registryVersion())
	fmt.Fprintf(w, "Settings: warm load %d x %v per target (manifests %d conns, blobs %d conns); cold pulls: median of %d, interleaved, "+
		"manifest then %d blobs at a time; unthrottled: 10 layers x %s, HTTP/2 client; throttled: %d layers x %s, "+
		"%s per upstream connection (token bucket), HTTP/1.1 client\n\n",
		*rounds, *duration, *conns, *blobConns, *coldRuns, *parallel, size(*layerSize), *slowN, size(*slowSize), rate(*connRate))
	fmt.Fprintln(w, "| figure | pullgate | peer (distribution 2.8 proxy) | pullgate/peer | reference | target | met |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", r.figure, r.pg, r.peer, r.ratio, r.reference, r.target, r.met)
	}
	fmt.Fprintln(w)
}

func meets(ok bool, target string) string {
	if target == "" {
		return ""
	}
	if ok {
		return "yes"
	}
	return "NO"
}

// result is what one load run measured.
type result struct {
	n, errs   int
	bytes     int64
	elapsed   time.Duration
	latencies []time.Duration
	firstErr  string
}

func (r result) rps() float64  { return float64(r.n) / r.elapsed.Seconds() }
func (r result) mbps() float64 { return float64(r.bytes) / 1e6 / r.elapsed.Seconds() }
func (r result) p99() time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	return r.latencies[min(len(r.latencies)-1, len(r.latencies)*99/100)]
}
func (r result) errNote() string {
	if r.errs == 0 {
		return ""
	}
	return fmt.Sprintf("%d errors (%s) ", r.errs, r.firstErr)
}

// loadRounds runs load on each url in turn, -rounds times, and adds up each url's runs: interleaving spreads
// the noise of a shared machine over all of them.
func loadRounds(ctx context.Context, ca *e2e.CA, conns int, d time.Duration, urls ...endpoint) []result {
	total := make([]result, len(urls))
	for range *rounds {
		for i, u := range urls {
			r := load(ctx, ca, u, conns, d)
			t := &total[i]
			t.n, t.errs, t.bytes, t.elapsed = t.n+r.n, t.errs+r.errs, t.bytes+r.bytes, t.elapsed+r.elapsed
			t.latencies = append(t.latencies, r.latencies...)
			if t.firstErr == "" {
				t.firstErr = r.firstErr
			}
		}
	}
	for i := range total {
		slices.Sort(total[i].latencies)
	}
	return total
}

// load sends GET url from conns connections (one transport each) as fast as answers come, for d.
func load(ctx context.Context, ca *e2e.CA, ep endpoint, conns int, d time.Duration) result {
	var mu sync.Mutex
	var total result
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := e2e.Transport(ca.Pool)
			defer t.CloseIdleConnections()
			client := &http.Client{Transport: t, Timeout: time.Minute}
			var r result
			for time.Now().Before(deadline) && ctx.Err() == nil {
				t0 := time.Now()
				n, err := get(ctx, client, ep.url, ep.auth)
				if err != nil {
					r.errs++
					if r.firstErr == "" {
						r.firstErr = err.Error()
					}
					continue
				}
				r.latencies = append(r.latencies, time.Since(t0))
				r.n++
				r.bytes += n
			}
			mu.Lock()
			total.n += r.n
			total.errs += r.errs
			total.bytes += r.bytes
			total.latencies = append(total.latencies, r.latencies...)
			if total.firstErr == "" {
				total.firstErr = r.firstErr
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	total.elapsed = time.Since(start)
	slices.Sort(total.latencies)
	return total
}

// robotCredentials is what `pullgate robot create --json` prints, in part.
type robotCredentials struct {
	Username string `json:"username"`
	Secret   string `json:"secret"`
}

// createRobot makes a robot that may pull everything from the upstream "local", with the real CLI.
func createRobot(ctx context.Context, bin, robotsFile string) (robotCredentials, error) {
	out, err := e2e.Run(ctx, time.Minute, []string{"PULLGATE_ROBOTS_FILE=" + robotsFile}, bin, "robot", "create", "bench",
		"--allow", "local/**", "--expires", "1d", "--json")
	if err != nil {
		return robotCredentials{}, err
	}
	var c robotCredentials
	if err := json.Unmarshal([]byte(out), &c); err != nil || c.Secret == "" {
		return robotCredentials{}, fmt.Errorf("pullgate robot create: %v: %q", err, out)
	}
	return c, nil
}

// fetchToken logs the robot in at pullgate's token service for pulls of repo.
func fetchToken(ctx context.Context, rt http.RoundTripper, base string, c robotCredentials, repo string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/token?service=pullgate&scope=repository:"+repo+":pull", nil)
	if err != nil {
		return "", err
	}
	req.SetBasicAuth(c.Username, c.Secret)
	resp, err := (&http.Client{Transport: rt, Timeout: time.Minute}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var t struct {
		Token string `json:"token"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&t); err != nil || resp.StatusCode != http.StatusOK || t.Token == "" {
		return "", fmt.Errorf("token: %s, %v", resp.Status, err)
	}
	return t.Token, nil
}

// endpoint is a URL to load, with the Authorization to send (empty: none).
type endpoint struct{ url, auth string }

func plain(urls ...string) []endpoint {
	eps := make([]endpoint, len(urls))
	for i, u := range urls {
		eps[i] = endpoint{url: u}
	}
	return eps
}

func get(ctx context.Context, client *http.Client, url, auth string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, "+
		"application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return n, err
	}
	if resp.StatusCode != http.StatusOK {
		return n, fmt.Errorf("%s", resp.Status)
	}
	return n, nil
}

func getOK(ctx context.Context, rt http.RoundTripper, url string) error {
	_, err := get(ctx, &http.Client{Transport: rt, Timeout: time.Minute}, url, "")
	return err
}

// coldSet is what one kind of cold pull measured, per target name, in the order the targets were given.
type coldSet struct {
	names []string
	times map[string][]time.Duration
	reqs  map[string]string // requests that reached the upstream in the last run
	conns map[string]int    // upstream connections that carried answers in the last run
}

// coldPulls pulls a fresh image through each target, -cold-runs times, interleaved between the targets. Each
// image is made by makeImage (from a seed), pushed to the upstream at upHost as bench/<prefix>-<target>-<run>,
// and pulled with a fresh transport from newTransport.
func coldPulls(ctx context.Context, upHost string, rt http.RoundTripper, targets []target, prefix string,
	newTransport func() *http.Transport, makeImage func(seed uint64) (v1.Image, error)) (coldSet, error) {
	s := coldSet{times: map[string][]time.Duration{}, reqs: map[string]string{}, conns: map[string]int{}}
	for _, t := range targets {
		s.names = append(s.names, t.name)
	}
	for i := range *coldRuns {
		for _, t := range targets {
			img, err := makeImage(uint64(time.Now().UnixNano()))
			if err != nil {
				return s, err
			}
			repo := fmt.Sprintf("bench/%s-%s-%d", prefix, strings.ReplaceAll(t.name, " ", "-"), i)
			im, err := e2e.PushImage(upHost, repo, "v1", img, remote.WithContext(ctx), remote.WithTransport(rt))
			if err != nil {
				return s, err
			}
			t.count.Reset()
			t.throttle.Reset()
			d, err := coldPull(ctx, newTransport(), t.url, im)
			if err != nil {
				return s, fmt.Errorf("cold pull through %s: %w", t.name, err)
			}
			s.times[t.name] = append(s.times[t.name], d)
			s.reqs[t.name] = upstreamRequests(t.count)
			s.conns[t.name] = t.throttle.ActiveConns()
		}
	}
	return s, nil
}

// rows are the table rows of s: the times under the figure what, then the upstream requests and connections
// under short; goal is pullgate's goal as a factor of direct.
func (s coldSet) rows(what, short, target string, goal float64) []row {
	m := func(name string) time.Duration { return median(s.times[name]) }
	pg, peer, bare, direct := m("pullgate"), m("peer"), m("bare proxy"), m("direct")
	return []row{
		{what, ms(pg), ms(peer), ratio(float64(pg), float64(peer)),
			fmt.Sprintf("direct %s, bare proxy %s; pullgate/direct %s, pullgate/bare proxy %s", ms(direct), ms(bare),
				ratio(float64(pg), float64(direct)), ratio(float64(pg), float64(bare))),
			target, meets(float64(pg) <= goal*float64(direct), "x")},
		{short + ": requests that reached the upstream (last run)", s.reqs["pullgate"], s.reqs["peer"], "",
			"direct " + s.reqs["direct"] + ", bare proxy " + s.reqs["bare proxy"], "", ""},
		{short + ": upstream connections that carried answers (last run)", fmt.Sprint(s.conns["pullgate"]), fmt.Sprint(s.conns["peer"]), "",
			fmt.Sprintf("direct %d, bare proxy %d", s.conns["direct"], s.conns["bare proxy"]), "", ""},
	}
}

// coldPull pulls im's manifest, then its config and layers, -parallel at a time (containerd's
// max_concurrent_downloads), through t (fresh, closed at the end), and returns the wall time.
func coldPull(ctx context.Context, t *http.Transport, base string, im e2e.Image) (time.Duration, error) {
	defer t.CloseIdleConnections()
	client := &http.Client{Transport: t, Timeout: 2 * time.Minute}
	start := time.Now()
	if _, err := get(ctx, client, base+"/v2/"+im.Repo+"/manifests/"+im.Tag, ""); err != nil {
		return 0, err
	}
	sem := make(chan struct{}, max(1, *parallel))
	errs := make(chan error, len(im.Blobs))
	for _, b := range im.Blobs {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			_, err := get(ctx, client, base+"/v2/"+im.Repo+"/blobs/"+b.String(), "")
			errs <- err
		}()
	}
	var first error
	for range im.Blobs {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return 0, first
	}
	return time.Since(start), nil
}

// timedGet GETs url on a fresh connection and returns the time to the first body byte and to the last.
func timedGet(ctx context.Context, ca *e2e.CA, url string) (first, whole time.Duration, err error) {
	t := e2e.Transport(ca.Pool)
	defer t.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	resp, err := (&http.Client{Transport: t, Timeout: 2 * time.Minute}).Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("%s", resp.Status)
	}
	buf := make([]byte, 1)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		return 0, 0, err
	}
	first = time.Since(start)
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return 0, 0, err
	}
	return first, time.Since(start), nil
}

// herd has n clients, each on its own connection, GET url at once, and returns the time until the last one has
// the whole body.
func herd(ctx context.Context, ca *e2e.CA, url string, n int) (time.Duration, error) {
	clients := make([]*http.Client, n)
	for i := range clients {
		clients[i] = &http.Client{Transport: e2e.Transport(ca.Pool), Timeout: 2 * time.Minute}
	}
	start := time.Now()
	errs := make(chan error, n)
	for _, c := range clients {
		go func() {
			_, err := get(ctx, c, url, "")
			errs <- err
		}()
	}
	var first error
	for range n {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return time.Since(start), first
}

// fileServer serves file as contentType at every path over TLS (HTTP/2) with http.ServeContent, and returns its
// URL.
func fileServer(file, contentType, certFile, keyFile string) (string, func(), error) {
	if _, err := os.Stat(file); err != nil {
		return "", nil, err
	}
	return serveTLS(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(file)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", contentType)
		http.ServeContent(w, r, "", fi.ModTime(), f)
	}), certFile, keyFile)
}

// upstreamRequests summarizes the requests a counting proxy saw: "12 (GET blobs 11, HEAD manifests 1)".
func upstreamRequests(p *e2e.CountingProxy) string {
	var parts []string
	total := 0
	for k, v := range p.Counts() {
		method, rest, _ := strings.Cut(k, " ")
		if method == "UA" || strings.HasPrefix(rest, "/") {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %d", k, v))
		total += v
	}
	slices.Sort(parts)
	return fmt.Sprintf("%d (%s)", total, strings.Join(parts, ", "))
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// size is n bytes in MiB when a whole number of them, else in MB.
func size(n int64) string {
	if n >= 1<<20 && n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%g MB", float64(n)/1e6)
}

func rate(bps int64) string { return fmt.Sprintf("%g MB/s", float64(bps)/1e6) }

func f0(v float64) string { return fmt.Sprintf("%.0f", v) }
func ms(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000)
}
func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }
func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

func memTotal() string {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return "?"
	}
	var kb int64
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
		}
	}
	return fmt.Sprintf("%.0f GiB", float64(kb)/(1<<20))
}

func kernel() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "linux"
	}
	return "Linux " + strings.TrimSpace(string(b))
}

func registryVersion() string {
	out, err := e2e.Run(context.Background(), 10*time.Second, nil, e2e.RegistryBinary, "--version")
	if err != nil {
		return "?"
	}
	f := strings.Fields(out)
	return f[len(f)-1]
}
