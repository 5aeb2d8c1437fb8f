package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/pullgate/pullgate/names"
)

// Node setup: `pullgate hosts-toml` writes containerd's certs.d files and `pullgate registries-conf` a
// containers-registries.conf(5) drop-in, so that a node's runtime pulls the listed registries' images from
// pullgate and from nowhere else. docs/design.md ("Node setup") says why the files look as they do.

const hostsTOMLUsage = `usage: pullgate hosts-toml --server https://HOST[:PORT] [--ca FILE] [--client-cert FILE --client-key FILE]
       [--dir DIR] [--node-dir DIR] [--dry-run] REGISTRY...

Writes DIR/REGISTRY/hosts.toml for each REGISTRY (docker.io, ghcr.io, ...), so that containerd (config_path
= DIR in its CRI registry configuration) pulls those registries' images from pullgate only: pullgate is both
the mirror host and the server, so a refusal (401, 403, a gate's 412) is never retried at the public registry,
and a pull secret's credentials never go there. containerd tells pullgate the registry in ?ns=.

--ca, --client-cert and --client-key are copied into each DIR/REGISTRY (the key with mode 0600) and named in the
files by their paths under --node-dir, the directory as containerd on the node sees it (a DaemonSet mounts the
node's /etc/containerd/certs.d somewhere else). Files are replaced atomically, and only when their bytes
change; running it again with the same arguments touches nothing. It prints what it wrote, or with --dry-run
every file it would write (never a key's contents).

flags:
`

const registriesConfUsage = `usage: pullgate registries-conf --server https://HOST[:PORT] [--ca FILE] [--file FILE] [--certs-dir DIR]
       [--dry-run] REGISTRY...

Writes a containers-registries.conf(5) drop-in (version 2) with one [[registry]] per REGISTRY whose location is
pullgate's path prefix (docker.io -> HOST:PORT/docker.io), so that CRI-O, podman, skopeo and buildah pull those
registries' images from pullgate only (no mirror is listed, so there is nothing to fall back to), and copies
--ca to CERTS-DIR/HOST:PORT/ca.crt (containers-certs.d(5)). A registry with a port cannot follow a path prefix,
so it is refused. Files are replaced atomically, and only when their bytes change.

flags:
`

const (
	// maxPEMFile caps what is read of a certificate or key file.
	maxPEMFile = 1 << 20
	// Names of the files copied next to each hosts.toml. They match none of the patterns containerd and Docker
	// read from a certs.d directory that has no hosts.toml (*.crt, *.cert, *.key), so that pullgate's CA is
	// never trusted for the public registry itself should a hosts.toml go missing.
	hostsCAName   = "pullgate-ca.pem"
	hostsCertName = "pullgate-client.pem"
	hostsKeyName  = "pullgate-client-key.pem"
)

// nodeFile is one file a node setup command writes.
type nodeFile struct {
	// path is where the file goes on this machine.
	path string
	mode fs.FileMode
	data []byte
	// secret keeps data off standard output in a dry run.
	secret bool
}

// pgServer is a validated --server: pullgate's registry API.
type pgServer struct {
	// url is "https://host[:port]", without a path.
	url string
	// host is "host[:port]" as written.
	host string
}

// parseServer checks --server: https, a host, no user, path, query or fragment.
func parseServer(s string) (pgServer, error) {
	if s == "" {
		return pgServer{}, errors.New("--server is required (https://HOST[:PORT], pullgate's registry API)")
	}
	u, err := url.Parse(s)
	if err != nil {
		return pgServer{}, fmt.Errorf("--server %q: %w", s, err)
	}
	switch {
	case u.Scheme != "https":
		return pgServer{}, fmt.Errorf("--server %q: want https://HOST[:PORT]; pullgate's API is served over TLS", s)
	case u.Host == "" || u.Hostname() == "":
		return pgServer{}, fmt.Errorf("--server %q: no host", s)
	case u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || (u.Path != "" && u.Path != "/"):
		return pgServer{}, fmt.Errorf("--server %q: want only https://HOST[:PORT], without a user, path, query or fragment", s)
	case strings.ContainsFunc(u.Host, isControlOrQuote):
		return pgServer{}, fmt.Errorf("--server %q: the host has characters a host cannot have", s)
	}
	host := strings.ToLower(u.Host)
	return pgServer{url: "https://" + host, host: host}, nil
}

// isControlOrQuote reports characters that have no place in a host or path written into the files.
func isControlOrQuote(r rune) bool { return r < 0x20 || r == 0x7f || r == '"' || r == '\\' }

// parseRegistries checks the registries and returns them deduplicated in order, any of Docker Hub's names as
// all of them (names.DockerHubHosts): an image may name Docker Hub by any of its hosts ("registry-1.docker.io/
// library/nginx"), and containerd and containers/image look that host up as written, so a host left out would
// be pulled from Docker Hub directly, around pullgate. pullgate knows every one of them as its Docker Hub
// upstream.
func parseRegistries(args []string) ([]string, error) {
	if len(args) == 0 {
		return nil, errors.New("name at least one registry (docker.io, ghcr.io, ...)")
	}
	var out []string
	for _, r := range args {
		regs := []string{r}
		if names.IsDockerHub(r) {
			regs = names.DockerHubHosts()
		}
		for _, r := range regs {
			if err := names.ValidateRegistry(r); err != nil {
				return nil, err
			}
			if !slices.Contains(out, r) {
				out = append(out, r)
			}
		}
	}
	return out, nil
}

// readPEMFile reads at most maxPEMFile bytes of a certificate or key file.
func readPEMFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxPEMFile+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(data) > maxPEMFile {
		return nil, fmt.Errorf("%s: larger than %d bytes; not a certificate file", name, maxPEMFile)
	}
	return data, nil
}

// certificatesPEM reads a file of PEM certificates and returns them re-encoded, so that nothing but
// certificates (a private key pasted into the same file, say) is ever copied onto nodes.
func certificatesPEM(name string) ([]byte, error) {
	data, err := readPEMFile(name)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			if bytes.Contains(rest, []byte("-----BEGIN")) {
				return nil, fmt.Errorf("%s: a PEM block does not decode", name)
			}
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%s: holds a %q PEM block; want only certificates", name, block.Type)
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if err := pem.Encode(&out, &pem.Block{Type: "CERTIFICATE", Bytes: block.Bytes}); err != nil {
			return nil, err
		}
	}
	if out.Len() == 0 {
		return nil, fmt.Errorf("%s: no PEM certificate", name)
	}
	return out.Bytes(), nil
}

// clientPair reads a client certificate and its key, checks that they belong together, and returns both
// re-encoded (the key as its one PEM block).
func clientPair(certFile, keyFile string) (certPEM, keyPEM []byte, err error) {
	if certFile == "" || keyFile == "" {
		return nil, nil, errors.New("--client-cert and --client-key go together")
	}
	if certPEM, err = certificatesPEM(certFile); err != nil {
		return nil, nil, fmt.Errorf("--client-cert: %w", err)
	}
	raw, err := readPEMFile(keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("--client-key: %w", err)
	}
	var key *pem.Block
	for rest := raw; key == nil; {
		var block *pem.Block
		if block, rest = pem.Decode(rest); block == nil {
			break
		}
		if strings.HasSuffix(block.Type, "PRIVATE KEY") {
			key = &pem.Block{Type: block.Type, Bytes: block.Bytes}
		}
	}
	if key == nil {
		return nil, nil, fmt.Errorf("--client-key: %s: no PEM private key", keyFile)
	}
	keyPEM = pem.EncodeToMemory(key)
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return nil, nil, fmt.Errorf("--client-cert %s and --client-key %s: %w", certFile, keyFile, err)
	}
	return certPEM, keyPEM, nil
}

// nodeDir checks a directory path that is written into the files.
func nodeDir(flagName, dir string) (string, error) {
	switch {
	case dir == "":
		return "", fmt.Errorf("%s is empty", flagName)
	case !strings.HasPrefix(dir, "/"):
		return "", fmt.Errorf("%s %q: want an absolute path, as the node's runtime reads it", flagName, dir)
	case strings.ContainsFunc(dir, isControlOrQuote):
		return "", fmt.Errorf("%s %q: control characters, quotes and backslashes are not allowed", flagName, dir)
	}
	return path.Clean(dir), nil
}

// tomlString quotes s as a TOML basic string; s has no control characters, quotes or backslashes.
func tomlString(s string) string { return `"` + s + `"` }

// hostsTOMLOptions are the arguments of `pullgate hosts-toml`.
type hostsTOMLOptions struct {
	server pgServer
	// caPEM, certPEM and keyPEM are the files to copy; nil for none.
	caPEM, certPEM, keyPEM []byte
	// dir is where files are written; nodeDir the same directory as containerd sees it.
	dir, nodeDir string
	registries   []string
	// command is the command line that regenerates the files, for their header.
	command string
}

// hostsTOMLFiles returns the files `pullgate hosts-toml` writes: per registry the copied certificates and key
// first, then hosts.toml, so that containerd never reads a hosts.toml that names a file not yet there.
func hostsTOMLFiles(o hostsTOMLOptions) []nodeFile {
	var files []nodeFile
	for _, reg := range o.registries {
		local, onNode := filepath.Join(o.dir, reg), path.Join(o.nodeDir, reg)
		var b strings.Builder
		fmt.Fprintf(&b, "# Written by pullgate; regenerate it rather than edit it:\n#   %s\n", o.command)
		fmt.Fprintf(&b, "# containerd pulls %s images from pullgate only. server is pullgate too: containerd retries a\n", reg)
		b.WriteString("# refused or failed host at server, so any other server would get the pull and its credentials.\n")
		fmt.Fprintf(&b, "server = %s\n", tomlString(o.server.url))
		var settings strings.Builder
		if o.caPEM != nil {
			files = append(files, nodeFile{path: filepath.Join(local, hostsCAName), mode: 0o644, data: o.caPEM})
			fmt.Fprintf(&settings, "ca = %s\n", tomlString(path.Join(onNode, hostsCAName)))
		}
		if o.certPEM != nil {
			files = append(files,
				nodeFile{path: filepath.Join(local, hostsCertName), mode: 0o644, data: o.certPEM},
				nodeFile{path: filepath.Join(local, hostsKeyName), mode: 0o600, data: o.keyPEM, secret: true})
			fmt.Fprintf(&settings, "client = [[%s, %s]]\n",
				tomlString(path.Join(onNode, hostsCertName)), tomlString(path.Join(onNode, hostsKeyName)))
		}
		b.WriteString(settings.String())
		// containerd 1.6 ignores a hosts.toml without a [host] table and pulls from the registry itself.
		fmt.Fprintf(&b, "\n[host.%s]\n  capabilities = [\"pull\", \"resolve\"]\n", tomlString(o.server.url))
		for _, line := range strings.SplitAfter(settings.String(), "\n") {
			if line != "" {
				b.WriteString("  " + line)
			}
		}
		files = append(files, nodeFile{path: filepath.Join(local, "hosts.toml"), mode: 0o644, data: []byte(b.String())})
	}
	return files
}

// registriesConfOptions are the arguments of `pullgate registries-conf`.
type registriesConfOptions struct {
	server     pgServer
	caPEM      []byte // nil for none
	file       string
	certsDir   string
	registries []string
	command    string
}

// registriesConfFiles returns the files `pullgate registries-conf` writes: the CA first, then the drop-in.
func registriesConfFiles(o registriesConfOptions) ([]nodeFile, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by pullgate; regenerate it rather than edit it:\n#   %s\n", o.command)
	b.WriteString("# CRI-O, podman, skopeo and buildah pull these registries' images from pullgate's path prefix only:\n")
	b.WriteString("# no mirror is listed, so there is nowhere else to fall back to.\n")
	for _, reg := range o.registries {
		ref := names.Reference{Registry: reg, Repository: "x", Tag: names.DefaultTag}
		through, err := ref.Through(o.server.host)
		if err != nil {
			return nil, fmt.Errorf("registry %s through %s: %w", reg, o.server.host, err)
		}
		if through.Registry == reg {
			return nil, fmt.Errorf("registry %s is pullgate itself (--server); list the registries it serves", reg)
		}
		location := through.Registry + "/" + reg
		fmt.Fprintf(&b, "\n[[registry]]\nprefix = %s\nlocation = %s\n", tomlString(reg), tomlString(location))
	}
	var files []nodeFile
	if o.caPEM != nil {
		// The directory is named by host:port as the location writes it, which is how containers/image looks it up.
		files = append(files, nodeFile{path: filepath.Join(o.certsDir, o.server.host, "ca.crt"), mode: 0o644, data: o.caPEM})
	}
	return append(files, nodeFile{path: o.file, mode: 0o644, data: []byte(b.String())}), nil
}

// writeNodeFiles writes files in order, each atomically and only when its bytes or mode differ, and says what
// it did on out. In a dry run it prints each file instead (a secret one by size only).
func writeNodeFiles(files []nodeFile, dryRun bool, out io.Writer) error {
	for _, f := range files {
		if dryRun {
			fmt.Fprintf(out, "# ---- %s (mode %#o)\n", f.path, f.mode)
			if f.secret {
				fmt.Fprintf(out, "# (a private key, %d bytes, not shown)\n", len(f.data))
				continue
			}
			if _, err := out.Write(f.data); err != nil {
				return err
			}
			continue
		}
		changed, err := writeFileAtomic(f.path, f.data, f.mode)
		if err != nil {
			return err
		}
		if changed {
			fmt.Fprintf(out, "wrote %s\n", f.path)
		} else {
			fmt.Fprintf(out, "unchanged %s\n", f.path)
		}
	}
	return nil
}

// writeFileAtomic makes name a regular file holding data with mode perm, unless it already is one: it
// writes a temporary file in the same directory, syncs it and renames it over name (replacing a symbolic link
// itself, never writing through it), then syncs the directory. It reports whether it wrote.
func writeFileAtomic(name string, data []byte, perm fs.FileMode) (bool, error) {
	if st, err := os.Lstat(name); err == nil && st.Mode().IsRegular() && st.Mode().Perm() == perm && st.Size() == int64(len(data)) {
		if old, err := os.ReadFile(name); err == nil && bytes.Equal(old, data) {
			return false, nil
		}
	}
	dir := filepath.Dir(name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(name)+".tmp-*")
	if err != nil {
		return false, err
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(perm); err != nil {
		return false, err
	}
	if _, err := tmp.Write(data); err != nil {
		return false, err
	}
	if err := tmp.Sync(); err != nil {
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		return false, err
	}
	done = true
	if d, err := os.Open(dir); err == nil {
		err = d.Sync()
		d.Close()
		if err != nil {
			return true, fmt.Errorf("syncing %s: %w", dir, err)
		}
	}
	return true, nil
}

// commandLine is the canonical command line that regenerates the files, for their header.
func commandLine(parts ...string) string {
	var out []string
	for _, p := range parts {
		if p == "" || strings.ContainsAny(p, " \t'\"$`\\*?[]#~;&|<>(){}!") {
			p = "'" + strings.ReplaceAll(p, "'", `'\''`) + "'"
		}
		out = append(out, p)
	}
	return strings.Join(out, " ")
}

// parseNodeSetup parses what hosts-toml and registries-conf take alike: the flags of set among args (the rest
// are the registries) and pullgate's --server (the flag's value, read once parsed). code is -1 when all is
// well, else the exit status (0 for --help); a mistake is written to stderr after name.
func parseNodeSetup(name string, set *flag.FlagSet, args []string, server *string, stderr io.Writer) (pgServer, []string, int) {
	regs, err := parseInterspersed(set, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return pgServer{}, nil, 0
		}
		return pgServer{}, nil, 2
	}
	srv, err := parseServer(*server)
	if err == nil {
		var registries []string
		if registries, err = parseRegistries(regs); err == nil {
			return srv, registries, -1
		}
	}
	fmt.Fprintf(stderr, "%s: %v\n", name, err)
	return pgServer{}, nil, 2
}

// runHostsTOML is `pullgate hosts-toml`.
func runHostsTOML(args []string, stdout, stderr io.Writer) int {
	set := commandFlags("pullgate hosts-toml", hostsTOMLUsage, stderr)
	server := set.String("server", "", "pullgate's registry API, https://HOST[:PORT] (required)")
	ca := set.String("ca", "", "PEM file of the CA that signed pullgate's certificate; empty: the node's system roots")
	clientCert := set.String("client-cert", "", "PEM client certificate the node presents to pullgate (with --client-key)")
	clientKey := set.String("client-key", "", "PEM private key of --client-cert; copied with mode 0600")
	dir := set.String("dir", "/etc/containerd/certs.d", "directory to write into (containerd's config_path)")
	nodeDirFlag := set.String("node-dir", "", "the same directory as containerd on the node sees it, for the paths inside the files (default: --dir)")
	dryRun := set.Bool("dry-run", false, "print every file instead of writing it")
	srv, registries, code := parseNodeSetup("pullgate hosts-toml", set, args, server, stderr)
	if code >= 0 {
		return code
	}
	o := hostsTOMLOptions{dir: *dir, server: srv, registries: registries}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "pullgate hosts-toml: %v\n", err)
		return 2
	}
	var err error
	if *dir == "" {
		return fail(errors.New("--dir is empty"))
	}
	if *nodeDirFlag == "" {
		abs, err := filepath.Abs(*dir)
		if err != nil {
			return fail(err)
		}
		*nodeDirFlag = filepath.ToSlash(abs)
	}
	if o.nodeDir, err = nodeDir("--node-dir", *nodeDirFlag); err != nil {
		return fail(err)
	}
	cmd := []string{"pullgate", "hosts-toml", "--server", o.server.url}
	if *ca != "" {
		if o.caPEM, err = certificatesPEM(*ca); err != nil {
			return fail(fmt.Errorf("--ca: %w", err))
		}
		cmd = append(cmd, "--ca", *ca)
	}
	if *clientCert != "" || *clientKey != "" {
		if o.certPEM, o.keyPEM, err = clientPair(*clientCert, *clientKey); err != nil {
			return fail(err)
		}
		cmd = append(cmd, "--client-cert", *clientCert, "--client-key", *clientKey)
	}
	cmd = append(cmd, "--dir", *dir)
	if o.nodeDir != path.Clean(filepath.ToSlash(*dir)) {
		cmd = append(cmd, "--node-dir", o.nodeDir)
	}
	o.command = commandLine(append(cmd, o.registries...)...)
	if err := writeNodeFiles(hostsTOMLFiles(o), *dryRun, stdout); err != nil {
		fmt.Fprintf(stderr, "pullgate hosts-toml: %v\n", err)
		return 1
	}
	return 0
}

// runRegistriesConf is `pullgate registries-conf`.
func runRegistriesConf(args []string, stdout, stderr io.Writer) int {
	set := commandFlags("pullgate registries-conf", registriesConfUsage, stderr)
	server := set.String("server", "", "pullgate's registry API, https://HOST[:PORT] (required)")
	ca := set.String("ca", "", "PEM file of the CA that signed pullgate's certificate; empty: the system roots")
	file := set.String("file", "/etc/containers/registries.conf.d/50-pullgate.conf", "the drop-in to write")
	certsDir := set.String("certs-dir", "/etc/containers/certs.d", "containers-certs.d(5) directory for the CA")
	dryRun := set.Bool("dry-run", false, "print every file instead of writing it")
	srv, registries, code := parseNodeSetup("pullgate registries-conf", set, args, server, stderr)
	if code >= 0 {
		return code
	}
	o := registriesConfOptions{file: *file, certsDir: *certsDir, server: srv, registries: registries}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "pullgate registries-conf: %v\n", err)
		return 2
	}
	var err error
	if *file == "" || *certsDir == "" {
		return fail(errors.New("--file and --certs-dir must not be empty"))
	}
	cmd := []string{"pullgate", "registries-conf", "--server", o.server.url}
	if *ca != "" {
		if o.caPEM, err = certificatesPEM(*ca); err != nil {
			return fail(fmt.Errorf("--ca: %w", err))
		}
		cmd = append(cmd, "--ca", *ca, "--certs-dir", *certsDir)
	}
	o.command = commandLine(append(append(cmd, "--file", *file), o.registries...)...)
	files, err := registriesConfFiles(o)
	if err != nil {
		return fail(err)
	}
	if err := writeNodeFiles(files, *dryRun, stdout); err != nil {
		fmt.Fprintf(stderr, "pullgate registries-conf: %v\n", err)
		return 1
	}
	return 0
}
