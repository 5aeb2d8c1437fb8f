package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullgate/pullgate/gate"
	"github.com/pullgate/pullgate/names"
)

const verdictsUsage = `usage: pullgate verdicts [flags] [IMAGE]

Lists the verdicts a running pullgate keeps, judged under the policy in force now, through its admin API:
every verdict, or those IMAGE names:

  nginx, docker.io/library/nginx   one repository (Docker Hub short names as in image references)
  'docker.io/library/*'            a pattern over <upstream>/<repository>: '*' within a path element, '**'
                                   across elements, '?' one character
  ghcr.io/o/app@sha256:...         one manifest of a repository
  sha256:...                       one manifest, in whichever repository it was scanned

A tag narrows nothing: verdicts are kept by manifest digest (and the platform manifests of an index are
pulled by digest), so nginx:1.25 lists every verdict of docker.io/library/nginx.

The admin API takes an admin robot's credentials (robots file: admin: true), given as PULLGATE_USERNAME
("robot$ops") and PULLGATE_PASSWORD; the password is never printed. --server and --ca-file (and
PULLGATE_SERVER, PULLGATE_CA_FILE) are as for 'pullgate scan'.

Output: a table, sorted by repository and digest, with columns DIGEST (shortened), REPOSITORY
(<upstream>/<repository>), TAG (the one it was scanned under, "-" for none), VERDICT, FINDINGS (counts by
severity), SCANNER, SCANNED (UTC) and MESSAGE (why it is blocked). With --json, one JSON object per verdict,
as the admin API answers them. pullgate answers at most 10000 verdicts; a note on standard error says when
there were more.

Exit status: 0 when the verdicts were listed (whatever they are), 1 when pullgate could not be asked or
refused, 2 for a usage mistake.

flags:
`

// maxVerdictsAnswer bounds the admin API's answer: 10000 verdicts with long messages.
const maxVerdictsAnswer = 64 << 20

// runVerdicts is `pullgate verdicts [flags] [IMAGE]`.
func runVerdicts(args []string, env map[string]string, stdout, stderr io.Writer) int {
	set := commandFlags("pullgate verdicts", verdictsUsage, stderr)
	cf := addClientFlags(set)
	asJSON := set.Bool("json", false, "print one JSON object per verdict")
	if err := set.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if set.NArg() > 1 {
		fmt.Fprintf(stderr, "pullgate verdicts: one IMAGE at most, got %d\n", set.NArg())
		return 2
	}
	client, err := cf.client(env)
	if err != nil {
		fmt.Fprintf(stderr, "pullgate verdicts: %v\n", err)
		return 2
	}
	query := url.Values{}
	if set.NArg() == 1 {
		var note string
		if query, note, err = client.verdictFilter(set.Arg(0)); err != nil {
			fmt.Fprintf(stderr, "pullgate verdicts: %v\n", err)
			return 2
		}
		if note != "" {
			fmt.Fprintf(stderr, "pullgate verdicts: %s\n", note)
		}
	}
	var ans struct {
		Verdicts  []gate.Listing `json:"verdicts"`
		Truncated bool           `json:"truncated"`
	}
	if err := client.verdicts(context.Background(), query, &ans); err != nil {
		fmt.Fprintf(stderr, "pullgate verdicts: %v\n", err)
		return 1
	}
	slices.SortStableFunc(ans.Verdicts, func(a, b gate.Listing) int {
		return cmp.Or(cmp.Compare(a.Upstream+"/"+a.Repository, b.Upstream+"/"+b.Repository), cmp.Compare(a.Digest, b.Digest))
	})
	w := bufio.NewWriter(stdout)
	if *asJSON {
		for _, l := range ans.Verdicts {
			b, _ := json.Marshal(l)
			w.Write(append(b, '\n'))
		}
	} else {
		printVerdicts(w, ans.Verdicts)
	}
	if err := w.Flush(); err != nil {
		fmt.Fprintf(stderr, "pullgate verdicts: writing: %v\n", err)
		return 1
	}
	if ans.Truncated {
		fmt.Fprintf(stderr, "pullgate verdicts: pullgate listed only the first %d verdicts; name an IMAGE to see the others\n", len(ans.Verdicts))
	}
	return 0
}

// printVerdicts writes the table.
func printVerdicts(w io.Writer, ls []gate.Listing) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DIGEST\tREPOSITORY\tTAG\tVERDICT\tFINDINGS\tSCANNER\tSCANNED\tMESSAGE")
	for _, l := range ls {
		scanned := "-"
		if !l.ScannedAt.IsZero() {
			scanned = l.ScannedAt.UTC().Format(time.RFC3339)
		}
		fields := []string{shortDigest(l.Digest), l.Upstream + "/" + l.Repository, cmp.Or(l.Tag, "-"), string(l.Verdict),
			cmp.Or(l.Counts, "-"), cmp.Or(l.Scanner, "-"), scanned, l.Message}
		for i, f := range fields {
			fields[i] = strings.ReplaceAll(oneLine(f), "\t", " ")
		}
		fmt.Fprintln(tw, strings.Join(fields, "\t"))
	}
	_ = tw.Flush()
}

// shortDigest is "sha256:" and the first 12 hex digits, as docker prints image IDs.
func shortDigest(d string) string {
	alg, hex, ok := strings.Cut(d, ":")
	if !ok || len(hex) <= 12 {
		return d
	}
	return alg + ":" + hex[:12]
}

// verdictFilter reads IMAGE into the admin API's query (repository, digest). note, when not empty, says what
// of IMAGE does not narrow the listing.
func (c *pullgateClient) verdictFilter(s string) (q url.Values, note string, err error) {
	q = url.Values{}
	if d, err := names.ParseDigest(s); err == nil {
		q.Set("digest", d.String())
		return q, "", nil
	}
	if strings.ContainsAny(s, "*?") {
		p, err := c.repositoryPattern(s)
		if err != nil {
			return nil, "", err
		}
		q.Set("repository", p)
		return q, "", nil
	}
	ref, err := names.ParseReference(s)
	if err != nil {
		return nil, "", err
	}
	repo := c.repository(ref)
	q.Set("repository", repo)
	if ref.Digest != (v1.Hash{}) {
		q.Set("digest", ref.Digest.String())
	}
	name, _, _ := strings.Cut(s, "@")
	if strings.Contains(name[strings.LastIndexByte(name, '/')+1:], ":") && ref.Digest == (v1.Hash{}) {
		note = fmt.Sprintf("verdicts are kept by manifest digest, not by tag: listing every verdict of %s", repo)
	}
	return q, note, nil
}

// repositoryPattern reads a pattern over repositories as image references are written: its first element
// names a registry (or pullgate itself) as in a reference, else it is a Docker Hub repository, "library/"
// included for a one-element pattern without "**".
func (c *pullgateClient) repositoryPattern(s string) (string, error) {
	first, rest, ok := strings.Cut(s, "/")
	registry := ""
	if ok {
		// The first element names a registry when a reference would read it as one.
		if ref, err := names.ParseReference(first + "/x/y"); err == nil && ref.Repository == "x/y" {
			registry = ref.Registry
		}
	}
	if registry == "" {
		registry, rest = names.DefaultRegistry, s
	}
	if strings.ContainsAny(rest, ":@") {
		return "", fmt.Errorf("pattern %q: a pattern names repositories, without a tag or digest", s)
	}
	if registry == names.DefaultRegistry && !strings.Contains(rest, "/") && !strings.Contains(rest, "**") {
		rest = "library/" + rest
	}
	p := registry + "/" + rest
	if registry == c.base.Host {
		p = rest
	}
	if _, err := names.CompilePattern(p); err != nil {
		return "", err
	}
	return p, nil
}

// verdicts asks the admin API for the verdicts query selects and decodes the answer into v.
func (c *pullgateClient) verdicts(ctx context.Context, query url.Values, v any) error {
	a, err := c.get(ctx, "/admin/v1/verdicts", query.Encode(), "application/json", maxVerdictsAnswer)
	if err != nil {
		return err
	}
	switch a.status {
	case http.StatusOK:
	case http.StatusUnauthorized:
		hint := "set PULLGATE_USERNAME and PULLGATE_PASSWORD to an admin robot's credentials"
		if c.username != "" {
			hint = "the credentials in PULLGATE_USERNAME and PULLGATE_PASSWORD were not accepted"
		}
		return fmt.Errorf("pullgate answered 401 (%s): the admin API needs an admin robot's credentials: %s", oneLine(a.message()), hint)
	case http.StatusForbidden:
		return fmt.Errorf("pullgate answered 403 (%s): %s is not an admin robot (robots file: admin: true)", oneLine(a.message()), oneLine(c.username))
	default:
		return fmt.Errorf("pullgate answered %d: %s", a.status, oneLine(a.message()))
	}
	if err := json.Unmarshal(a.body, v); err != nil {
		return fmt.Errorf("pullgate's verdict listing does not parse: %w", err)
	}
	return nil
}
