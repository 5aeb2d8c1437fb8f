package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/pullgate/pullgate/cache"
	"github.com/pullgate/pullgate/lifecycle"
)

// The cache lifecycle commands (pin, unpin, pins, purge, status) work on a running pullgate through its admin
// API when a server is named (--server or PULLGATE_SERVER), else on the stopped data directory of the
// PULLGATE_* configuration.

// adminTarget is where a lifecycle command acts: a running pullgate's admin API, or a data directory.
type adminTarget struct {
	client *pullgateClient // nil: the data directory
	env    map[string]string
}

func adminTargetOf(f *clientFlags, env map[string]string) (adminTarget, error) {
	if *f.server == "" && env["PULLGATE_SERVER"] == "" {
		return adminTarget{env: env}, nil
	}
	c, err := f.client(env)
	if err != nil {
		return adminTarget{}, err
	}
	return adminTarget{client: c, env: env}, nil
}

// openDataDir opens the cache of the PULLGATE_* configuration for a command, with the quota and pins serve
// would have. A data directory a running pullgate holds gives a clear error.
func openDataDir(env map[string]string) (*cache.Cache, nameResolver, config, error) {
	cfg, specs, err := loadConfig(env)
	if err != nil {
		return nil, nameResolver{}, cfg, err
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	c, err := cache.Open(cache.Options{Dir: cfg.DataDir, Logger: log, Reserve: cfg.CacheReserve,
		MaxBytes: cfg.limits.maxBytes, Pins: cfg.limits.pins})
	if err != nil {
		if strings.Contains(err.Error(), "lock") {
			return nil, nameResolver{}, cfg, fmt.Errorf("the data directory %s is in use, most likely by a running pullgate: stop it, or name it with --server (PULLGATE_SERVER) to act through its admin API", cfg.DataDir)
		}
		return nil, nameResolver{}, cfg, fmt.Errorf("opening the data directory %s: %w", cfg.DataDir, err)
	}
	return c, nameResolver{specs, cfg.DefaultUpstream}, cfg, nil
}

// admin sends one admin API request and decodes its JSON answer into out.
func (c *pullgateClient) admin(ctx context.Context, method, route string, query url.Values, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	resp, err := c.send(ctx, method, route, query, body, "application/json")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return decodeAdmin(resp, out)
}

// send sends a request to the admin API with the credentials; the caller closes the body.
func (c *pullgateClient) send(ctx context.Context, method, route string, query url.Values, body io.Reader, contentType string) (*http.Response, error) {
	u := *c.base
	u.Path, u.RawQuery = "/admin/v1/"+route, query.Encode()
	req, err := http.NewRequestWithContext(ctx, method, u.String(), body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	if c.username != "" {
		req.SetBasicAuth(c.username, c.password)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("asking pullgate: %w", err)
	}
	return resp, nil
}

// decodeAdmin reads an admin answer: its JSON into out, or its error.
func decodeAdmin(resp *http.Response, out any) error {
	limit := int64(maxErrorAnswer)
	if resp.StatusCode/100 == 2 {
		limit = 16 << 20
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return fmt.Errorf("reading pullgate's answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		a := &answer{status: resp.StatusCode, header: resp.Header, body: b}
		msg := a.message()
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
			msg += " (the admin API needs a robot with admin: true in PULLGATE_USERNAME and PULLGATE_PASSWORD)"
		}
		return errors.New(msg)
	}
	if int64(len(b)) > limit {
		return fmt.Errorf("pullgate's answer is larger than %d bytes", limit)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(b, out)
}

// runPin is `pullgate pin IMAGE...`, `pullgate unpin IMAGE...` and `pullgate pins`.
func runPin(cmd string, args []string, env map[string]string, stdout, stderr io.Writer) int {
	set := flag.NewFlagSet("pullgate "+cmd, flag.ContinueOnError)
	set.SetOutput(stderr)
	set.Usage = func() {
		fmt.Fprintf(stderr, `usage: pullgate pin IMAGE...     keep images (their index, every platform, every blob) from eviction
       pullgate unpin IMAGE...   stop keeping them
       pullgate pins             list the pins and what they hold

IMAGE is an image ("nginx:1.25", "ghcr.io/acme/app@sha256:…") or a pattern: a repository without a tag pins
every tag, and '*' (within a path element) and '**' (across elements) match repositories and tags
("ghcr.io/acme/**", "docker.io/library/nginx:1.*"). Pinning more than the cache quota holds is refused.
With --server (or PULLGATE_SERVER) through a running pullgate's admin API (PULLGATE_USERNAME and
PULLGATE_PASSWORD of an admin robot); else on the stopped data directory (PULLGATE_DATA_DIR).

`)
		set.PrintDefaults()
	}
	cf := addClientFlags(set)
	asJSON := set.Bool("json", false, "print the answer as JSON")
	if err := set.Parse(args); err != nil {
		return 2
	}
	images := set.Args()
	if (cmd == "pins") != (len(images) == 0) {
		set.Usage()
		return 2
	}
	t, err := adminTargetOf(cf, env)
	if err != nil {
		fmt.Fprintf(stderr, "pullgate %s: %v\n", cmd, err)
		return 2
	}
	ctx := context.Background()
	var st lifecycle.PinState
	if t.client != nil {
		err = t.client.admin(ctx, http.MethodGet, "pins", nil, nil, &st)
		for _, img := range images {
			if err != nil {
				break
			}
			if cmd == "pin" {
				err = t.client.admin(ctx, http.MethodPost, "pins", nil, map[string]string{"image": img}, &st)
			} else {
				err = t.client.admin(ctx, http.MethodDelete, "pins", url.Values{"image": {img}}, nil, &st)
			}
		}
	} else {
		var c *cache.Cache
		var r nameResolver
		c, r, _, err = openDataDir(env)
		if err == nil {
			st, err = lifecycle.Pins(ctx, c)
			for _, img := range images {
				if err != nil {
					break
				}
				if cmd == "pin" {
					st, err = lifecycle.AddPin(ctx, c, r.admin, img)
				} else {
					st, err = lifecycle.RemovePin(ctx, c, r.admin, img)
				}
			}
			if cerr := c.Close(); err == nil {
				err = cerr
			}
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "pullgate %s: %v\n", cmd, err)
		return 1
	}
	if *asJSON {
		return printJSON(stdout, stderr, st)
	}
	for _, p := range st.Pins {
		from := ""
		if p.Fixed {
			from = "  (PULLGATE_PIN)"
		}
		fmt.Fprintf(stdout, "%s%s\n", p.Pin, from)
	}
	quota := "no quota"
	if st.MaxBytes > 0 {
		quota = "quota " + formatBytes(st.MaxBytes)
	}
	fmt.Fprintf(stdout, "%d pins hold %d objects, %s cached (%s)\n", len(st.Pins), st.Objects, formatBytes(st.Bytes), quota)
	return 0
}

func printJSON(stdout, stderr io.Writer, v any) int {
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}

// runPurge is `pullgate purge`.
func runPurge(args []string, env map[string]string, stdout, stderr io.Writer) int {
	set := flag.NewFlagSet("pullgate purge", flag.ContinueOnError)
	set.SetOutput(stderr)
	set.Usage = func() {
		fmt.Fprintf(stderr, `usage: pullgate purge [IMAGE] [--repository PATTERN] [--upstream NAME] [--older-than AGE] [--yes]

Remove content from the cache. By default a dry run: it says what would go and how many bytes; --yes removes
it. IMAGE removes that image (its tag, or by digest its manifest) and what no other tag or repository holds;
--repository every tag of the repositories it matches ("docker.io/library/**") and the content only they hold;
--upstream everything of one upstream; --older-than (30d, 12h) what was not used for that long. Given
together, all must hold. Pinned content stays (pullgate unpin first). With --server (or PULLGATE_SERVER)
through a running pullgate's admin API, else on the stopped data directory.

`)
		set.PrintDefaults()
	}
	cf := addClientFlags(set)
	var req lifecycle.PurgeRequest
	set.StringVar(&req.Repository, "repository", "", "a repository or pattern, `<upstream>/<repository>`")
	set.StringVar(&req.Upstream, "upstream", "", "an upstream name")
	set.StringVar(&req.OlderThan, "older-than", "", "not used for this long: 30d, 12h")
	set.BoolVar(&req.Apply, "yes", false, "remove; without it nothing is removed")
	asJSON := set.Bool("json", false, "print the answer as JSON")
	if err := set.Parse(args); err != nil {
		return 2
	}
	switch set.NArg() {
	case 0:
	case 1:
		req.Image = set.Arg(0)
	default:
		set.Usage()
		return 2
	}
	if req.OlderThan != "" {
		if _, err := lifecycle.ParseAge(req.OlderThan); err != nil {
			fmt.Fprintf(stderr, "pullgate purge: %v\n", err)
			return 2
		}
	}
	if req.Image == "" && req.Repository == "" && req.Upstream == "" && req.OlderThan == "" {
		set.Usage()
		return 2
	}
	t, err := adminTargetOf(cf, env)
	if err != nil {
		fmt.Fprintf(stderr, "pullgate purge: %v\n", err)
		return 2
	}
	ctx := context.Background()
	var res lifecycle.PurgeResult
	if t.client != nil {
		err = t.client.admin(ctx, http.MethodPost, "purge", nil, req, &res)
	} else {
		var c *cache.Cache
		var r nameResolver
		if c, r, _, err = openDataDir(env); err == nil {
			res, err = lifecycle.Purge(ctx, c, r.admin, req, time.Now())
			if cerr := c.Close(); err == nil {
				err = cerr
			}
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "pullgate purge: %v\n", err)
		return 1
	}
	if *asJSON {
		return printJSON(stdout, stderr, res)
	}
	verb := "would remove"
	if res.Applied {
		verb = "removed"
	}
	fmt.Fprintf(stdout, "%s %d objects, %s", verb, res.Objects, formatBytes(res.Bytes))
	if len(res.Tags) > 0 {
		fmt.Fprintf(stdout, ", and the tags %s", strings.Join(res.Tags, ", "))
	}
	fmt.Fprintln(stdout)
	if res.Pinned > 0 {
		fmt.Fprintf(stdout, "%d pinned objects stay (pullgate unpin first)\n", res.Pinned)
	}
	if !res.Applied && res.Objects > 0 {
		fmt.Fprintln(stdout, "dry run: nothing removed; run again with --yes to remove")
	}
	return 0
}

// runStatus is `pullgate status IMAGE...`: how much of each image the cache holds.
func runStatus(args []string, env map[string]string, stdout, stderr io.Writer) int {
	set := flag.NewFlagSet("pullgate status", flag.ContinueOnError)
	set.SetOutput(stderr)
	set.Usage = func() {
		fmt.Fprintf(stderr, `usage: pullgate status IMAGE...

Say how much of each image the cache holds (every platform): complete, partly cached or not cached, and
whether it is pinned. Exit status 1 unless every image is complete. With --server (or PULLGATE_SERVER) through
a running pullgate's admin API, else on the stopped data directory.

`)
		set.PrintDefaults()
	}
	cf := addClientFlags(set)
	asJSON := set.Bool("json", false, "print the answer as JSON")
	if err := set.Parse(args); err != nil {
		return 2
	}
	if set.NArg() == 0 {
		set.Usage()
		return 2
	}
	t, err := adminTargetOf(cf, env)
	if err != nil {
		fmt.Fprintf(stderr, "pullgate status: %v\n", err)
		return 2
	}
	ctx := context.Background()
	var out struct {
		Images []lifecycle.ImageStatus `json:"images"`
	}
	if t.client != nil {
		err = t.client.admin(ctx, http.MethodGet, "images", url.Values{"image": set.Args()}, nil, &out)
	} else {
		var c *cache.Cache
		var r nameResolver
		if c, r, _, err = openDataDir(env); err == nil {
			for _, name := range set.Args() {
				var img lifecycle.Image
				if img, err = r.admin(name, false); err != nil {
					break
				}
				var st lifecycle.ImageStatus
				if st, err = lifecycle.Status(ctx, c, img); err != nil {
					break
				}
				out.Images = append(out.Images, st)
			}
			if cerr := c.Close(); err == nil {
				err = cerr
			}
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "pullgate status: %v\n", err)
		return 1
	}
	if *asJSON {
		if code := printJSON(stdout, stderr, out); code != 0 {
			return code
		}
	}
	status := 0
	for _, st := range out.Images {
		state := "complete"
		switch {
		case !st.Cached:
			state, status = "not cached", 1
		case !st.Complete:
			state, status = "partly cached", 1
		}
		if st.Pinned {
			state += ", pinned"
		}
		if !*asJSON {
			fmt.Fprintf(stdout, "%s: %s (%d objects, %s)\n", st.Image, state, st.Objects, formatBytes(st.Bytes))
			for _, m := range st.Missing {
				fmt.Fprintf(stdout, "  missing %s\n", m)
			}
		}
	}
	return status
}
