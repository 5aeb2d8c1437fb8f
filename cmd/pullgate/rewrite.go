package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pullgate/pullgate/rewrite"
)

const rewriteUsage = `usage: pullgate rewrite --registry HOST[:PORT] [--exclude GLOB]... [--pull-secret NAME] [--pin-digests] [FILE...]

Rewrites the container images of Kubernetes manifests (YAML or JSON, as helm template writes them) to pull
through pullgate's path prefix: with --registry pullgate.example.com, nginx:1.25 becomes
pullgate.example.com/docker.io/library/nginx:1.25. Every image of every workload is rewritten: Pods,
Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs, CronJobs, ReplicationControllers, PodTemplates, the
items of a List, and custom resources with a pod template (any "containers", "initContainers" or
"ephemeralContainers" list of objects with an "image"). Digests are kept; images already on pullgate and
excluded ones stay as written, so running it twice changes nothing. Everything else is copied byte for byte:
comments, key order, quoting, documents without images.

Standard input is read when no FILE is given and for a FILE of "-"; the result goes to standard output. As a
helm post-renderer (helm 3.10 or later):

  helm install shop ./chart --post-renderer pullgate --post-renderer-args rewrite \
    --post-renderer-args --registry=pullgate.example.com

On any error nothing is written to standard output, the error (naming the document, the object and the
field) goes to standard error, and the exit status is 1 (2 for a usage mistake).

With --pin-digests, each tag through pullgate is resolved to its manifest's digest by asking pullgate (a HEAD
of the rewritten reference over TLS) and written as pullgate.example.com/docker.io/library/nginx:1.25@sha256:...
Who asks:
  --ca-file, PULLGATE_CA_FILE   the CA of pullgate's certificate (PEM); default: the CA pullgate makes in its
                                data directory, $PULLGATE_DATA_DIR/tls/ca.crt, when that file exists, else the
                                system's roots
  PULLGATE_USERNAME, PULLGATE_PASSWORD
                                a robot's login ("robot$ci") and secret, sent as Basic credentials over TLS;
                                set both or neither

flags:
`

// rewriteOptions are what `pullgate rewrite` takes from its caller besides the command line. The zero value
// is what the command uses.
type rewriteOptions struct {
	// Timeout bounds all digest look-ups together; zero means 5 minutes.
	Timeout time.Duration
}

// multiFlag is a flag that may be given more than once.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

// runRewrite is `pullgate rewrite`: Kubernetes manifests with their images rewritten through pullgate.
func runRewrite(args []string, env map[string]string, stdin io.Reader, stdout, stderr io.Writer, o rewriteOptions) int {
	set := commandFlags("pullgate rewrite", rewriteUsage, stderr)
	registry := set.String("registry", "", "pullgate's host[:port] as image references name it (required)")
	var exclude multiFlag
	set.Var(&exclude, "exclude", `leave images whose "registry/repository" matches this glob as written (repeatable; e.g. "registry.k8s.io/**")`)
	pullSecret := set.String("pull-secret", "", "add this Secret to the imagePullSecrets of each pod spec that pulls through pullgate")
	pin := set.Bool("pin-digests", false, "resolve tags to digests through pullgate and write both")
	caFile := set.String("ca-file", "", "the CA of pullgate's certificate, PEM, for --pin-digests (env PULLGATE_CA_FILE)")
	if err := set.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *registry == "" {
		fmt.Fprintln(stderr, "pullgate rewrite: --registry is required (pullgate's host[:port], as in pullgate.example.com/docker.io/library/nginx)")
		return 2
	}
	prefix, err := rewrite.NewPrefix(*registry, exclude)
	if err != nil {
		fmt.Fprintf(stderr, "pullgate rewrite: %v\n", err)
		return 2
	}
	ro := rewrite.Options{Prefix: prefix, PullSecret: *pullSecret}
	if *pin {
		resolve, err := digestResolver(*caFile, env)
		if err != nil {
			fmt.Fprintf(stderr, "pullgate rewrite: %v\n", err)
			return 2
		}
		ro.Resolve = resolve
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmp.Or(o.Timeout, 5*time.Minute))
	defer cancel()
	files := set.Args()
	if len(files) == 0 {
		files = []string{"-"}
	}
	var out bytes.Buffer
	for i, file := range files {
		if i > 0 {
			if out.Len() > 0 && !bytes.HasSuffix(out.Bytes(), []byte("\n")) {
				out.WriteByte('\n')
			}
			out.WriteString("---\n")
		}
		if err := rewriteFile(ctx, file, stdin, &out, ro); err != nil {
			fmt.Fprintf(stderr, "pullgate rewrite: %v\n", err)
			return 1
		}
	}
	if _, err := stdout.Write(out.Bytes()); err != nil {
		fmt.Fprintf(stderr, "pullgate rewrite: writing: %v\n", err)
		return 1
	}
	return 0
}

// rewriteFile rewrites the file called name (stdin for "-") onto out. Errors name the file.
func rewriteFile(ctx context.Context, name string, stdin io.Reader, out *bytes.Buffer, o rewrite.Options) error {
	in, label := stdin, "standard input"
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		in, label = f, name
	}
	if _, err := (rewrite.Limits{}).Rewrite(ctx, in, out, o); err != nil {
		return fmt.Errorf("%s: %w", label, err)
	}
	return nil
}

// digestResolver returns the function that asks pullgate for a reference's manifest digest: a HEAD of the
// manifest with go-containerregistry, over TLS checked with pullgate's CA, with the robot's credentials from
// the environment when set.
func digestResolver(caFile string, env map[string]string) (func(context.Context, string) (string, error), error) {
	username, password := env["PULLGATE_USERNAME"], env["PULLGATE_PASSWORD"]
	if (username == "") != (password == "") {
		return nil, errors.New("PULLGATE_USERNAME and PULLGATE_PASSWORD go together: set both or neither")
	}
	pool, err := serverRoots(caFile, env)
	if err != nil {
		return nil, err
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	t.MaxResponseHeaderBytes = 1 << 20
	// Only https: go-containerregistry would fall back to plain http for a registry named by a loopback or
	// private address, and the robot's credentials must never travel in clear.
	rt := httpsOnly{t}
	auth := authn.Anonymous
	if username != "" {
		auth = &authn.Basic{Username: username, Password: password}
	}
	return func(ctx context.Context, image string) (string, error) {
		ref, err := name.NewTag(image, name.StrictValidation)
		if err != nil {
			return "", err
		}
		desc, err := remote.Head(ref, remote.WithContext(ctx), remote.WithTransport(rt), remote.WithAuth(auth))
		if err != nil {
			return "", err
		}
		return desc.Digest.String(), nil
	}, nil
}

// httpsOnly refuses every request that is not https.
type httpsOnly struct{ next http.RoundTripper }

// RoundTrip sends req when it is https.
func (h httpsOnly) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "https" {
		return nil, fmt.Errorf("refusing %s://%s: pullgate is asked only over TLS", req.URL.Scheme, req.URL.Host)
	}
	return h.next.RoundTrip(req)
}
