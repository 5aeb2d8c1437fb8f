package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// IssueClient makes a client certificate (for TLS client authentication) with the common name cn and writes
// dir/cn.crt and dir/cn.key.
func (ca *CA) IssueClient(dir, cn string) (certFile, keyFile string, err error) {
	return ca.issue(dir, cn, x509.ExtKeyUsageClientAuth, nil)
}

// Robot is what `pullgate robot create --json` printed: a robot account, its secret (shown only then) and a
// ready image pull secret.
type Robot struct {
	Name string `json:"name"`
	// Username is what the robot logs in as: "robot$<name>".
	Username string `json:"username"`
	Secret   string `json:"secret"`
	// Servers are the registry hosts the pull secret is keyed by.
	Servers []string `json:"servers"`
	// Expires is when the robot stops working (RFC 3339), or nil for never.
	Expires    *string `json:"expires"`
	SecretName string  `json:"secretName"`
	Namespace  string  `json:"namespace"`
	// DockerConfigJSON is the pull secret's .dockerconfigjson.
	DockerConfigJSON json.RawMessage `json:"dockerconfigjson"`
}

// String names the robot and never its secret.
func (r Robot) String() string { return r.Username }

// GoString is String, so that %#v does not print the secret either.
func (r Robot) GoString() string { return r.String() }

// RobotOptions configures CreateRobot.
type RobotOptions struct {
	// Bin is the pullgate binary and File the robots file (PULLGATE_ROBOTS_FILE); both required.
	Bin, File string
	// Name is the robot's name; required.
	Name string
	// Allow are the patterns over "<upstream>/<repository>" the robot may pull; at least one.
	Allow []string
	// Servers key the pull secret (--server, repeated); empty means pullgate's default.
	Servers []string
	// Expires is --expires; empty means "1d".
	Expires string
}

// CreateRobot runs `pullgate robot create NAME --allow ... --expires ... --server ... --json`, exactly as an
// operator does, and returns what it printed.
func CreateRobot(ctx context.Context, o RobotOptions) (Robot, error) {
	if o.Bin == "" || o.File == "" || o.Name == "" || len(o.Allow) == 0 {
		return Robot{}, errors.New("CreateRobot needs Bin, File, Name and Allow")
	}
	if o.Expires == "" {
		o.Expires = "1d"
	}
	args := []string{"robot", "create", o.Name, "--expires", o.Expires, "--json"}
	for _, a := range o.Allow {
		args = append(args, "--allow", a)
	}
	for _, s := range o.Servers {
		args = append(args, "--server", s)
	}
	out, err := Run(ctx, time.Minute, []string{"PULLGATE_ROBOTS_FILE=" + o.File}, o.Bin, args...)
	if err != nil {
		return Robot{}, err // the secret is printed only on success, so the output holds none
	}
	var r Robot
	dec := json.NewDecoder(strings.NewReader(out))
	if err := dec.Decode(&r); err != nil {
		// The output may hold the secret: name only where decoding stopped.
		return Robot{}, fmt.Errorf("pullgate robot create --json printed no robot object: %v", jsonErrorPlace(err))
	}
	if dec.More() {
		return Robot{}, errors.New("pullgate robot create --json printed more than one JSON object")
	}
	if r.Name != o.Name || r.Secret == "" || len(r.DockerConfigJSON) == 0 {
		return Robot{}, fmt.Errorf("pullgate robot create --json: robot %q, a secret of %d bytes, a dockerconfigjson of %d bytes",
			r.Name, len(r.Secret), len(r.DockerConfigJSON))
	}
	return r, nil
}

// jsonErrorPlace describes a JSON decoding error without quoting the input.
func jsonErrorPlace(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("syntax error at byte %d", se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("field %q is not a %s", te.Field, te.Type)
	}
	return "not JSON"
}

// ClientMapping maps a client certificate's subject to a robot, or to patterns of its own, in the robots file.
type ClientMapping struct {
	Subject string
	Robot   string
	Pull    []string
}

// AddClientMappings appends a clients section with the mappings to the robots file (which `pullgate robot`
// wrote without one: the CLI has no command for certificates).
func AddClientMappings(robotsFile string, mappings ...ClientMapping) error {
	data, err := os.ReadFile(robotsFile)
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "clients:") {
			return fmt.Errorf("%s has a clients section already", robotsFile)
		}
	}
	var b strings.Builder
	if len(data) > 0 && !bytes.HasSuffix(data, []byte("\n")) {
		b.WriteString("\n")
	}
	b.WriteString("clients:\n")
	for _, m := range mappings {
		fmt.Fprintf(&b, "- subject: %q\n", m.Subject)
		if m.Robot != "" {
			fmt.Fprintf(&b, "  robot: %q\n", m.Robot)
		}
		if len(m.Pull) > 0 {
			b.WriteString("  pull:\n")
			for _, p := range m.Pull {
				fmt.Fprintf(&b, "  - %q\n", p)
			}
		}
	}
	f, err := os.OpenFile(robotsFile, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// PullLine is one line of pullgate's pull log, the fields the tests read.
type PullLine struct {
	Method     string `json:"method"`
	Path       string `json:"path"`
	Upstream   string `json:"upstream"`
	Repository string `json:"repository"`
	Identity   string `json:"identity"`
	Auth       string `json:"auth"`
	Status     int    `json:"status"`
	ErrorCode  string `json:"error_code"`
	UserAgent  string `json:"user_agent"`
}

// PullLines parses the pull log written so far; lines that are not JSON are skipped.
func (p *Pullgate) PullLines() []PullLine {
	var out []PullLine
	for _, l := range p.PullLog() {
		var pl PullLine
		if json.Unmarshal([]byte(l), &pl) == nil {
			out = append(out, pl)
		}
	}
	return out
}
