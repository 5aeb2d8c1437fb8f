package main

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/pullgate/pullgate/identity"
	"github.com/pullgate/pullgate/names"
)

// robotUsage is the help of `pullgate robot`.
const robotUsage = `usage: pullgate robot <command> [flags]

Manages the robot accounts in the robots file: --file PATH, else PULLGATE_ROBOTS_FILE.

commands:
  create NAME --allow PATTERN [--expires 90d]  add a robot; prints its secret (once) and a Kubernetes pull Secret
  list                                        the robots with their expiry and last use (never a secret)
  rotate NAME [--grace 24h]                   a new secret; the old ones keep working for the grace period
  delete NAME                                 remove a robot
  disable NAME, enable NAME                   stop a robot without removing it, and start it again

Run 'pullgate robot <command> -h' for the flags of a command.
`

const (
	// maxRobotLifetimeDays bounds a lifetime in days (100 years), well below where a time.Duration overflows.
	maxRobotLifetimeDays = 36500
	// maxLiveSecrets is how many secrets a robot may have at once after a rotation: the new one and those in
	// their grace period. The server tries each hash when the robot logs in, so the number is kept small.
	maxLiveSecrets = 3
	// maxDescription bounds --description, which list prints on one line.
	maxDescription      = 1024
	robotUserPrefix     = "robot$"
	pullSecretPrefix    = "pullgate-robot-"
	robotDefaultAddr    = ":5443"
	robotDefaultDataDir = "./pullgate-data"
)

// robotOptions are what `pullgate robot` takes from its caller besides the command line. The zero value is what
// the command uses.
type robotOptions struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Cost is the bcrypt cost of new secrets; 0 means identity.DefaultCost. Only tests lower it.
	Cost int
}

// withDefaults fills in the zero fields that have a default.
func (o robotOptions) withDefaults() robotOptions {
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// robotUsageError is a mistake in the command line: the exit status is 2. A reported one has been printed
// already (by the flag package).
type robotUsageError struct {
	msg      string
	reported bool
}

// Error returns the message.
func (e *robotUsageError) Error() string { return e.msg }

// robotUsagef makes a robotUsageError.
func robotUsagef(format string, args ...any) error {
	return &robotUsageError{msg: fmt.Sprintf(format, args...)}
}

// runRobot is `pullgate robot`: args are the words after "robot". It returns the exit status: 0, 1 when the
// command failed, 2 for a mistake in the command line or the environment.
func runRobot(args []string, env map[string]string, stdout, stderr io.Writer, opts robotOptions) int {
	opts = opts.withDefaults()
	if len(args) == 0 {
		fmt.Fprint(stderr, robotUsage)
		return 2
	}
	type command func(c *robotCommand, now time.Time) error
	commands := map[string]command{
		"create":  robotCreate,
		"list":    robotList,
		"rotate":  robotRotate,
		"delete":  robotDelete,
		"disable": func(c *robotCommand, now time.Time) error { return robotSetDisabled(c, true) },
		"enable":  func(c *robotCommand, now time.Time) error { return robotSetDisabled(c, false) },
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, robotUsage)
		return 0
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "pullgate robot: unknown command %q\n\n%s", args[0], robotUsage)
		return 2
	}
	c := &robotCommand{name: args[0], args: args[1:], env: env, stdout: stdout, stderr: stderr, cost: opts.Cost}
	err := cmd(c, opts.Now())
	var ue *robotUsageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		if !ue.reported {
			fmt.Fprintf(stderr, "pullgate robot %s: %v\n", c.name, err)
		}
		return 2
	default:
		fmt.Fprintf(stderr, "pullgate robot %s: %v\n", c.name, err)
		return 1
	}
}

// robotCommand is one run of a robot subcommand: its command line and where it writes.
type robotCommand struct {
	name           string
	args           []string
	env            map[string]string
	stdout, stderr io.Writer
	cost           int

	fs   *flag.FlagSet
	file string
}

// flags starts the subcommand's flag set with the flags every subcommand has.
func (c *robotCommand) flags(synopsis string) *flag.FlagSet {
	c.fs = flag.NewFlagSet("pullgate robot "+c.name, flag.ContinueOnError)
	c.fs.SetOutput(c.stderr)
	c.fs.Usage = func() {
		fmt.Fprintf(c.stderr, "usage: pullgate robot %s %s\n\nflags:\n", c.name, synopsis)
		c.fs.PrintDefaults()
	}
	c.fs.StringVar(&c.file, "file", "", "the robots file (default: $PULLGATE_ROBOTS_FILE)")
	return c.fs
}

// parse parses the flags, which may come before or after the positional arguments, and checks that there are
// exactly want of those. A "--" ends the flags.
func (c *robotCommand) parse(want int) ([]string, error) {
	var pos []string
	args := c.args
	for {
		if err := c.fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, &robotUsageError{msg: err.Error(), reported: true} // the flag package printed it
		}
		rest := c.fs.Args()
		if len(rest) == 0 {
			break
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	if len(pos) != want {
		c.fs.Usage()
		if want == 0 {
			return nil, robotUsagef("unexpected arguments %q", pos)
		}
		return nil, robotUsagef("want one robot NAME, got %q", pos)
	}
	return pos, nil
}

// robotsPath is the robots file: --file, else PULLGATE_ROBOTS_FILE.
func (c *robotCommand) robotsPath() (string, error) {
	if c.file != "" {
		return c.file, nil
	}
	if p := c.env["PULLGATE_ROBOTS_FILE"]; p != "" {
		return p, nil
	}
	return "", robotUsagef("which robots file? Pass --file PATH or set PULLGATE_ROBOTS_FILE")
}

// load reads the robots file. A missing file is an empty one when create is set, else an error.
func (c *robotCommand) load(create bool) (string, *identity.File, error) {
	path, err := c.robotsPath()
	if err != nil {
		return "", nil, err
	}
	f, err := identity.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if create {
			return path, &identity.File{}, nil
		}
		return "", nil, fmt.Errorf("robots file %s does not exist; 'pullgate robot create' makes it", path)
	}
	if err != nil {
		return "", nil, err
	}
	return path, f, nil
}

// loadRobot reads the robots file and finds the robot called name.
func (c *robotCommand) loadRobot(name string) (string, *identity.File, *identity.Robot, error) {
	path, f, err := c.load(false)
	if err != nil {
		return "", nil, nil, err
	}
	r := f.Robot(name)
	if r == nil {
		return "", nil, nil, fmt.Errorf("no robot %q in %s", name, path)
	}
	return path, f, r, nil
}

// commaListFlag is a repeatable flag whose values may also be comma-separated lists.
type commaListFlag []string

// String returns the values, comma-separated.
func (l *commaListFlag) String() string { return strings.Join(*l, ",") }

// Set adds the comma-separated values in v.
func (l *commaListFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			return fmt.Errorf("empty value in %q", v)
		}
		*l = append(*l, s)
	}
	return nil
}

// placement is where a robot's new secret goes: the registry hosts of the docker config and the Kubernetes
// namespace and service account. create and rotate share these flags.
type placement struct {
	servers        commaListFlag
	namespace      string
	serviceAccount string
	json           bool
}

// register adds the flags to set.
func (p *placement) register(set *flag.FlagSet) {
	set.Var(&p.servers, "server", "a registry host the pull Secret is for, repeatable (default: the first of PULLGATE_TLS_HOSTS with the port of PULLGATE_ADDR, else localhost:5443)")
	set.StringVar(&p.namespace, "namespace", "default", "the Kubernetes namespace of the pull Secret")
	set.StringVar(&p.serviceAccount, "service-account", "default", "the service account the printed kubectl patch attaches the Secret to")
	set.BoolVar(&p.json, "json", false, "print one JSON object instead of text and YAML")
}

// check validates the flags and fills in the default server from env.
func (p *placement) check(env map[string]string) error {
	if err := validKubeLabel(p.namespace); err != nil {
		return robotUsagef("--namespace: %v", err)
	}
	if err := validKubeName(p.serviceAccount); err != nil {
		return robotUsagef("--service-account: %v", err)
	}
	for _, s := range p.servers {
		if strings.IndexFunc(s, func(r rune) bool { return r <= ' ' || r >= 0x7f }) >= 0 {
			return robotUsagef("--server %q: a registry host is printable ASCII without spaces", s)
		}
	}
	if len(p.servers) == 0 {
		s, err := defaultServer(env)
		if err != nil {
			return err
		}
		p.servers = commaListFlag{s}
	}
	var unique commaListFlag
	for _, s := range p.servers {
		if !slices.Contains(unique, s) {
			unique = append(unique, s)
		}
	}
	p.servers = unique
	return nil
}

// defaultServer is the registry host clients reach pullgate by: the first PULLGATE_TLS_HOSTS entry that is not
// a wildcard (else localhost), with the port of PULLGATE_ADDR unless that is 443.
func defaultServer(env map[string]string) (string, error) {
	addr := env["PULLGATE_ADDR"]
	if addr == "" {
		addr = robotDefaultAddr
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return "", robotUsagef("PULLGATE_ADDR %q is not a host:port address; pass --server HOST", addr)
	}
	return publicHost(strings.Split(env["PULLGATE_TLS_HOSTS"], ","), addr), nil
}

// robotCreate is `pullgate robot create`: it adds a robot with one secret, making the robots file if it is
// missing, and prints the secret.
func robotCreate(c *robotCommand, now time.Time) error {
	set := c.flags("NAME --allow PATTERN [--allow PATTERN]... [--expires 90d] [flags]")
	var allow commaListFlag
	var p placement
	set.Var(&allow, "allow", `a pattern over "<upstream>/<repository>" the robot may pull, repeatable or comma-separated ("docker.io/library/**")`)
	expires := set.String("expires", "90d", "when the robot stops working: a lifetime (90d, 720h), a date (2027-03-01, 00:00 UTC), an RFC 3339 time, or never")
	description := set.String("description", "", "what the robot is for")
	admin := set.Bool("admin", false, "the robot may use pullgate's admin API")
	p.register(set)
	pos, err := c.parse(1)
	if err != nil {
		return err
	}
	name := pos[0]
	if err := identity.ValidRobotName(name); err != nil {
		return robotUsagef("%v", err)
	}
	if len(allow) == 0 && !*admin {
		return robotUsagef("--allow PATTERN is required (or --admin): which repositories may robot %q pull?", name)
	}
	for _, a := range allow {
		if err := validPullPattern(a); err != nil {
			return robotUsagef("--allow: %v", err)
		}
	}
	exp, err := parseExpires(*expires, now)
	if err != nil {
		return robotUsagef("--expires: %v", err)
	}
	if len(*description) > maxDescription || strings.IndexFunc(*description, isControlRune) >= 0 {
		return robotUsagef("--description: at most %d bytes on one line, without control characters", maxDescription)
	}
	if err := p.check(c.env); err != nil {
		return err
	}
	path, f, err := c.load(true)
	if err != nil {
		return err
	}
	if f.Robot(name) != nil {
		return fmt.Errorf("robot %q exists; use rotate to give it a new secret", name)
	}
	if other := secretNameTakenBy(f, name); other != "" {
		return fmt.Errorf("robot %q has the pull Secret name %s already: choose a name that differs in more than '.', '_' and '-'", other, pullSecretName(name))
	}
	clear, s, err := identity.NewSecret(now, c.cost)
	if err != nil {
		return err
	}
	f.Robots = append(f.Robots, identity.Robot{
		Name:        name,
		Description: *description,
		Pull:        []string(allow),
		Admin:       *admin,
		Expires:     exp,
		Created:     now.UTC().Truncate(time.Second),
		Secrets:     []identity.Secret{s},
	})
	if err := f.Write(path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return printIssued(c.stdout, issued{robot: name, secret: clear, expires: exp, placement: p,
		headline: fmt.Sprintf("Robot %q created%s.", name, expiryPhrase(exp))})
}

// robotRotate is `pullgate robot rotate`: it gives a robot a new secret, ends the older ones after the grace
// period, and prints the new secret.
func robotRotate(c *robotCommand, now time.Time) error {
	set := c.flags("NAME [--grace 24h] [flags]")
	var p placement
	grace := set.String("grace", "24h", "how long the robot's older secrets keep working (24h, 2d; 0 ends them now)")
	expires := set.String("expires", "", "a new expiry for the robot, as for create (default: unchanged)")
	p.register(set)
	pos, err := c.parse(1)
	if err != nil {
		return err
	}
	name := pos[0]
	g, err := parseLifetime(*grace)
	if err != nil {
		return robotUsagef("--grace: %v", err)
	}
	if g < 0 {
		return robotUsagef("--grace %s: must not be negative", *grace)
	}
	var newExp *time.Time
	if *expires != "" {
		if newExp, err = parseExpires(*expires, now); err != nil {
			return robotUsagef("--expires: %v", err)
		}
	}
	if err := p.check(c.env); err != nil {
		return err
	}
	path, f, r, err := c.loadRobot(name)
	if err != nil {
		return err
	}
	if *expires != "" {
		r.Expires = newExp
	}
	r.Secrets = rotatedOut(r.Secrets, now, g)
	if len(r.Secrets)+1 > maxLiveSecrets {
		return fmt.Errorf("robot %q has %d secrets in their grace period (the next ends at %s); a robot has at most %d: wait, or rotate with --grace 0",
			name, len(r.Secrets), utcRFC3339(*earliestExpiry(r.Secrets)), maxLiveSecrets)
	}
	clear, s, err := identity.NewSecret(now, c.cost)
	if err != nil {
		return err
	}
	r.Secrets = append(r.Secrets, s)
	if err := f.Write(path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if r.Disabled {
		fmt.Fprintf(c.stderr, "note: robot %q is disabled; its secrets work once 'pullgate robot enable %s' runs\n", name, name)
	}
	if r.Expires != nil && !r.Expires.After(now) {
		fmt.Fprintf(c.stderr, "note: robot %q expired at %s; rotate with --expires to extend it\n", name, utcRFC3339(*r.Expires))
	}
	headline := fmt.Sprintf("Robot %q has a new secret; its older secrets stop working now.", name)
	if len(r.Secrets) > 1 {
		headline = fmt.Sprintf("Robot %q has a new secret; its older secrets keep working until %s.", name, utcRFC3339(*latestExpiry(r.Secrets[:len(r.Secrets)-1])))
	}
	return printIssued(c.stdout, issued{robot: name, secret: clear, expires: r.Expires, placement: p, headline: headline})
}

// rotatedOut is what is left of a robot's secrets when a new one is added at now: those already past their
// expiry are dropped, and every other ends at now+grace, or earlier if it was to end earlier already (a rotation
// never lengthens the life of an older secret). A grace of zero drops them all.
func rotatedOut(secrets []identity.Secret, now time.Time, grace time.Duration) []identity.Secret {
	if grace == 0 {
		return nil
	}
	end := now.Add(grace).UTC().Truncate(time.Second)
	var kept []identity.Secret
	for _, s := range secrets {
		if s.Expires != nil && !s.Expires.After(now) {
			continue
		}
		if s.Expires == nil || s.Expires.After(end) {
			e := end
			s.Expires = &e
		}
		kept = append(kept, s)
	}
	return kept
}

// robotDelete is `pullgate robot delete`. A robot that client certificates are mapped to is not deleted: the
// mappings would be left pointing at nothing.
func robotDelete(c *robotCommand, _ time.Time) error {
	c.flags("NAME")
	pos, err := c.parse(1)
	if err != nil {
		return err
	}
	name := pos[0]
	path, f, _, err := c.loadRobot(name)
	if err != nil {
		return err
	}
	var subjects []string
	for _, cl := range f.Clients {
		if cl.Robot == name {
			subjects = append(subjects, cl.Subject)
		}
	}
	if len(subjects) > 0 {
		return fmt.Errorf("client certificates %q act as robot %q: remove them from %s first", subjects, name, path)
	}
	f.Robots = slices.DeleteFunc(f.Robots, func(r identity.Robot) bool { return r.Name == name })
	if err := f.Write(path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if other := secretNameTakenBy(f, name); other != "" {
		// A hand-written file can have two robots with one Secret name: the Secret may be the other's.
		fmt.Fprintf(c.stdout, "Robot %q deleted. Its pull Secret %s has the name of robot %q's too.\n", name, pullSecretName(name), other)
		return nil
	}
	fmt.Fprintf(c.stdout, "Robot %q deleted. Its pull Secret is of no use now: kubectl delete secret %s -n NAMESPACE\n", name, pullSecretName(name))
	return nil
}

// robotSetDisabled is `pullgate robot disable` and `enable`.
func robotSetDisabled(c *robotCommand, disabled bool) error {
	c.flags("NAME")
	pos, err := c.parse(1)
	if err != nil {
		return err
	}
	name := pos[0]
	path, f, r, err := c.loadRobot(name)
	if err != nil {
		return err
	}
	state := map[bool]string{true: "disabled", false: "enabled"}[disabled]
	if r.Disabled == disabled {
		fmt.Fprintf(c.stdout, "Robot %q is already %s.\n", name, state)
		return nil
	}
	r.Disabled = disabled
	if err := f.Write(path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	fmt.Fprintf(c.stdout, "Robot %q %s.\n", name, state)
	return nil
}

// robotListEntry is one robot as `robot list --json` shows it: everything but its secrets.
type robotListEntry struct {
	Name        string   `json:"name"`
	Description string   `json:"description,omitempty"`
	Pull        []string `json:"pull"`
	Admin       bool     `json:"admin"`
	Created     string   `json:"created"`
	// Expires is the robot's expiry (RFC 3339), null for never; Expired says it is past.
	Expires  *string `json:"expires"`
	Expired  bool    `json:"expired"`
	Disabled bool    `json:"disabled"`
	// Secrets counts the secrets that still work; GraceUntil is when the last older one of them stops, if any.
	Secrets    int     `json:"secrets"`
	GraceUntil *string `json:"graceUntil"`
	// LastUse is when the robot last authenticated, null for never (or not known).
	LastUse *string `json:"lastUse"`
}

// robotList is `pullgate robot list`: every robot without its secrets, with when it last authenticated (from
// the last-use file in PULLGATE_DATA_DIR), as a table or as JSON.
func robotList(c *robotCommand, now time.Time) error {
	set := c.flags("[--json]")
	asJSON := set.Bool("json", false, `print {"robots":[...]} as JSON`)
	if _, err := c.parse(0); err != nil {
		return err
	}
	_, f, err := c.load(false)
	if err != nil {
		return err
	}
	dataDir := c.env["PULLGATE_DATA_DIR"]
	if dataDir == "" {
		dataDir = robotDefaultDataDir
	}
	lastUse, err := identity.ReadLastUse(filepath.Join(dataDir, identity.LastUseFile))
	lastUseKnown := err == nil
	if err != nil {
		fmt.Fprintf(c.stderr, "warning: last use unknown: %v\n", err)
	}
	robots := slices.Clone(f.Robots)
	slices.SortFunc(robots, func(a, b identity.Robot) int { return strings.Compare(a.Name, b.Name) })
	entries := make([]robotListEntry, 0, len(robots))
	for _, r := range robots {
		e := robotListEntry{Name: r.Name, Description: r.Description, Pull: r.Pull, Admin: r.Admin,
			Created: utcRFC3339(r.Created), Disabled: r.Disabled}
		if e.Pull == nil {
			e.Pull = []string{}
		}
		if r.Expires != nil {
			e.Expires = optionalRFC3339(r.Expires)
			e.Expired = !r.Expires.After(now)
		}
		var older []identity.Secret
		for _, s := range r.Secrets {
			if s.Expires == nil || s.Expires.After(now) {
				e.Secrets++
				if s.Expires != nil {
					older = append(older, s)
				}
			}
		}
		if len(older) > 0 {
			e.GraceUntil = optionalRFC3339(latestExpiry(older))
		}
		// A last use before the robot was created was an earlier robot of the same name.
		if t, ok := lastUse[r.Name]; ok && !t.Before(r.Created) {
			e.LastUse = optionalRFC3339(&t)
		}
		entries = append(entries, e)
	}
	if *asJSON {
		enc := json.NewEncoder(c.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Robots []robotListEntry `json:"robots"`
		}{entries})
	}
	if len(entries) == 0 {
		fmt.Fprintln(c.stderr, "no robots")
		return nil
	}
	yes := map[bool]string{true: "yes", false: "no"}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tPULL\tADMIN\tCREATED\tEXPIRES\tDISABLED\tSECRETS\tLAST USE\tDESCRIPTION")
	for _, e := range entries {
		pull := strings.Join(e.Pull, ",")
		if pull == "" {
			pull = "-"
		}
		expires := "never"
		if e.Expires != nil {
			expires = *e.Expires
			if e.Expired {
				expires = "EXPIRED " + expires
			}
		}
		secrets := strconv.Itoa(e.Secrets)
		if e.GraceUntil != nil {
			secrets += " (older until " + *e.GraceUntil + ")"
		}
		last := "never"
		switch {
		case e.LastUse != nil:
			last = *e.LastUse
		case !lastUseKnown:
			last = "unknown"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", tableCell(e.Name), tableCell(pull), yes[e.Admin], e.Created,
			expires, yes[e.Disabled], secrets, last, tableCell(e.Description))
	}
	return tw.Flush()
}

// issued is a secret just made for a robot and what create and rotate print with it.
type issued struct {
	robot     string
	secret    string
	expires   *time.Time
	placement placement
	headline  string
}

// dockerConfig is the content of a kubernetes.io/dockerconfigjson Secret, field for field as
// `kubectl create secret docker-registry` writes it.
type dockerConfig struct {
	Auths map[string]dockerConfigEntry `json:"auths"`
}

// dockerConfigEntry is one registry's credentials in a dockerConfig.
type dockerConfigEntry struct {
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	Email    string `json:"email,omitempty"`
	Auth     string `json:"auth,omitempty"`
}

// newDockerConfig is the docker config that logs in to each of servers as user.
func newDockerConfig(servers []string, user, password string) dockerConfig {
	c := dockerConfig{Auths: map[string]dockerConfigEntry{}}
	for _, s := range servers {
		c.Auths[s] = dockerConfigEntry{Username: user, Password: password,
			Auth: base64.StdEncoding.EncodeToString([]byte(user + ":" + password))}
	}
	return c
}

// pullSecret is a Kubernetes Secret of type kubernetes.io/dockerconfigjson.
type pullSecret struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   pullSecretMeta    `json:"metadata"`
	Type       string            `json:"type"`
	Data       map[string][]byte `json:"data"`
}

// pullSecretMeta is a pullSecret's metadata.
type pullSecretMeta struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
}

// pullSecretManifest is the YAML of robot's pull Secret in namespace, holding cfg.
func pullSecretManifest(robot, namespace string, cfg dockerConfig) ([]byte, error) {
	body, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	return yaml.Marshal(pullSecret{
		APIVersion: "v1",
		Kind:       "Secret",
		Metadata:   pullSecretMeta{Name: pullSecretName(robot), Namespace: namespace},
		Type:       "kubernetes.io/dockerconfigjson",
		Data:       map[string][]byte{".dockerconfigjson": body},
	})
}

// secretNameTakenBy returns the robot in f other than name whose pull Secret has the same name as name's, or "".
func secretNameTakenBy(f *identity.File, name string) string {
	for _, r := range f.Robots {
		if r.Name != name && pullSecretName(r.Name) == pullSecretName(name) {
			return r.Name
		}
	}
	return ""
}

// pullSecretName is the name of a robot's Kubernetes pull Secret.
func pullSecretName(robot string) string {
	return pullSecretPrefix + strings.NewReplacer("_", "-", ".", "-").Replace(robot)
}

// printIssued prints a new secret: as one JSON object, or as text with the pull Secret's YAML and the kubectl
// command that attaches it to a service account.
func printIssued(w io.Writer, is issued) error {
	user := robotUserPrefix + is.robot
	cfg := newDockerConfig(is.placement.servers, user, is.secret)
	if is.placement.json {
		return json.NewEncoder(w).Encode(struct {
			Name             string       `json:"name"`
			Username         string       `json:"username"`
			Secret           string       `json:"secret"`
			Expires          *string      `json:"expires"`
			Servers          []string     `json:"servers"`
			SecretName       string       `json:"secretName"`
			Namespace        string       `json:"namespace"`
			DockerConfigJSON dockerConfig `json:"dockerconfigjson"`
		}{is.robot, user, is.secret, optionalRFC3339(is.expires), is.placement.servers, pullSecretName(is.robot), is.placement.namespace, cfg})
	}
	manifest, err := pullSecretManifest(is.robot, is.placement.namespace, cfg)
	if err != nil {
		return err
	}
	name, ns, sa := pullSecretName(is.robot), is.placement.namespace, is.placement.serviceAccount
	var b strings.Builder
	fmt.Fprintf(&b, "%s The secret is shown only now: pullgate keeps only a bcrypt hash of it.\n", is.headline)
	fmt.Fprintf(&b, "username: %s\nsecret: %s\n---\n%s\n", user, is.secret, manifest)
	fmt.Fprintf(&b, "# Apply the Secret above (kubectl apply -f FILE), then attach it to service account %q so that its pods pull with it.\n", sa)
	fmt.Fprintf(&b, "# kubectl patch replaces the service account's whole imagePullSecrets list. To add to a list it has already:\n")
	fmt.Fprintf(&b, "#   kubectl patch serviceaccount %s -n %s --type=json -p '[{\"op\":\"add\",\"path\":\"/imagePullSecrets/-\",\"value\":{\"name\":\"%s\"}}]'\n", sa, ns, name)
	fmt.Fprintf(&b, "kubectl patch serviceaccount %s -n %s -p '{\"imagePullSecrets\":[{\"name\":\"%s\"}]}'\n", sa, ns, name)
	fmt.Fprintf(&b, "# containerd mirror mode: the kubelet sends a pull secret's credentials by the image's own registry, not\n")
	fmt.Fprintf(&b, "# the mirror's, so the Secret must also be keyed by that registry: add --server docker.io (and one --server\n")
	fmt.Fprintf(&b, "# for every other registry pullgate mirrors).\n")
	_, err = io.WriteString(w, b.String())
	return err
}

// parseExpires parses --expires: "never" (nil), a lifetime from now (90d, 720h), a date (2027-03-01, the start
// of that day in UTC) or an RFC 3339 time. The result is in UTC to the second, and after now.
func parseExpires(s string, now time.Time) (*time.Time, error) {
	if s == "never" {
		return nil, nil
	}
	var t time.Time
	if d, err := time.Parse(time.DateOnly, s); err == nil {
		t = d
	} else if d, err := time.Parse(time.RFC3339, s); err == nil {
		t = d
	} else if d, err := parseLifetime(s); err == nil {
		if d <= 0 {
			return nil, fmt.Errorf("%q: a lifetime must be positive", s)
		}
		t = now.Add(d)
	} else if strings.HasSuffix(s, "d") {
		return nil, err // what is wrong with the days
	} else {
		return nil, fmt.Errorf("%q: want a lifetime (90d, 720h), a date (2027-03-01), an RFC 3339 time or never", s)
	}
	t = t.UTC().Truncate(time.Second)
	if !t.After(now) {
		return nil, fmt.Errorf("%s is not in the future", s)
	}
	return &t, nil
}

// parseLifetime parses a duration: whole days ("90d") or a Go duration ("720h", "1h30m").
func parseLifetime(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 0 || strings.HasPrefix(days, "+") {
			return 0, fmt.Errorf("%q is not a whole number of days", s)
		}
		if n > maxRobotLifetimeDays {
			return 0, fmt.Errorf("%q: at most %d days (or never)", s, maxRobotLifetimeDays)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	return time.ParseDuration(s)
}

// validPullPattern checks an --allow pattern. Besides compiling, it must be able to match a name: every
// "<upstream>/<repository>" has a '/', which only "**" and '/' itself match.
func validPullPattern(p string) error {
	if _, err := names.CompilePattern(p); err != nil {
		return err
	}
	if !strings.Contains(p, "/") && !strings.Contains(p, "**") {
		return fmt.Errorf("pattern %q matches nothing: patterns are over \"<upstream>/<repository>\", as in docker.io/library/nginx or ghcr.io/acme/**", p)
	}
	return nil
}

// validKubeLabel checks a Kubernetes namespace name (an RFC 1123 label).
func validKubeLabel(s string) error {
	if len(s) == 0 || len(s) > 63 {
		return fmt.Errorf("%q: must be 1 to 63 characters", s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (c != '-' || i == 0 || i == len(s)-1) {
			return fmt.Errorf("%q: lowercase letters, digits and '-' (not first or last), as Kubernetes names are", s)
		}
	}
	return nil
}

// validKubeName checks a Kubernetes object name such as a service account's (an RFC 1123 subdomain).
func validKubeName(s string) error {
	if len(s) == 0 || len(s) > 253 {
		return fmt.Errorf("%q: must be 1 to 253 characters", s)
	}
	for _, label := range strings.Split(s, ".") {
		if err := validKubeLabel(label); err != nil {
			return fmt.Errorf("%q: dot-separated labels of lowercase letters, digits and '-', as Kubernetes names are", s)
		}
	}
	return nil
}

// earliestExpiry is the earliest end among secrets, or nil if none has one.
func earliestExpiry(secrets []identity.Secret) *time.Time {
	var e *time.Time
	for _, s := range secrets {
		if s.Expires != nil && (e == nil || s.Expires.Before(*e)) {
			e = s.Expires
		}
	}
	return e
}

// latestExpiry is the latest end among secrets, or nil if none has one.
func latestExpiry(secrets []identity.Secret) *time.Time {
	var e *time.Time
	for _, s := range secrets {
		if s.Expires != nil && (e == nil || s.Expires.After(*e)) {
			e = s.Expires
		}
	}
	return e
}

// expiryPhrase says when a robot expires, to follow "Robot "x" created".
func expiryPhrase(exp *time.Time) string {
	if exp == nil {
		return "; it never expires"
	}
	return "; it expires at " + utcRFC3339(*exp)
}

// utcRFC3339 is how robot commands show a time: RFC 3339 in UTC.
func utcRFC3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// optionalRFC3339 is utcRFC3339 of *t, or nil (JSON null) for nil.
func optionalRFC3339(t *time.Time) *string {
	if t == nil {
		return nil
	}
	s := utcRFC3339(*t)
	return &s
}

// isControlRune reports whether r is an ASCII control character.
func isControlRune(r rune) bool { return r < ' ' || r == 0x7f }

// tableCell replaces control characters, which a hand-edited robots file may hold, so that a table cell stays
// one cell.
func tableCell(s string) string {
	return strings.Map(func(r rune) rune {
		if isControlRune(r) {
			return '?'
		}
		return r
	}, s)
}
