package identity

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"
	"sigs.k8s.io/yaml"

	"github.com/pullgate/pullgate/names"
	"github.com/pullgate/pullgate/watch"
)

// File is the robots file (PULLGATE_ROBOTS_FILE): the robot accounts and the client-certificate mappings. It is
// YAML, so that it can be kept in a Kubernetes Secret and mounted; `pullgate robot` writes it. It holds no
// secret in clear: a robot's secrets are bcrypt hashes.
type File struct {
	Robots []Robot `json:"robots"`
	// Clients map client certificates (verified against PULLGATE_CLIENT_CA_FILE) to a robot or to permissions.
	Clients []Client `json:"clients,omitempty"`
}

// Robot is one robot account. Clients log in as "robot$<name>" (or "robot_<name>", or the configured prefix
// followed by the name).
type Robot struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// Pull holds patterns over "<upstream>/<repository>" that the robot may pull ("docker.io/library/**").
	Pull []string `json:"pull,omitempty"`
	// Admin marks a robot that may use pullgate's admin API.
	Admin bool `json:"admin,omitempty"`
	// Expires is when the robot stops working; nil means never.
	Expires  *time.Time `json:"expires,omitempty"`
	Disabled bool       `json:"disabled,omitempty"`
	Created  time.Time  `json:"created"`
	// Secrets are the robot's valid secrets: one, or two during a rotation's grace period.
	Secrets []Secret `json:"secrets"`
}

// Secret is one secret of a robot, stored as a bcrypt hash.
type Secret struct {
	// ID names the secret in the tokens it logged in for: a token dies with its secret.
	ID      string    `json:"id"`
	Hash    string    `json:"hash"`
	Created time.Time `json:"created"`
	// Expires is set when the secret was rotated out: the end of its grace period. Nil means it lives as
	// long as the robot.
	Expires *time.Time `json:"expires,omitempty"`
}

// Client maps a client certificate to an identity: to a robot (the certificate then acts as that robot), or
// to permissions of its own.
type Client struct {
	// Subject is a pattern over the certificate's subject common name and DNS names ("node-*.cluster.local").
	Subject string   `json:"subject"`
	Robot   string   `json:"robot,omitempty"`
	Pull    []string `json:"pull,omitempty"`
	Admin   bool     `json:"admin,omitempty"`
}

const (
	maxRobotName   = 64
	maxFileSize    = 4 << 20
	secretPrefix   = "pgr_"
	secretBytes    = 32
	secretIDBytes  = 8
	DefaultCost    = 11 // bcrypt cost of the secrets `pullgate robot` makes: about 0.1 s on one core
	fileHeaderNote = "# pullgate robot accounts (PULLGATE_ROBOTS_FILE), written by `pullgate robot`.\n" +
		"# Secrets are bcrypt hashes; the secrets themselves were shown once, when they were made.\n"
)

// ValidRobotName reports why name cannot be a robot's name, or nil: 1 to 64 characters of lowercase letters,
// digits, '.', '_' and '-', starting and ending with a letter or digit (so that it fits a Kubernetes Secret
// name).
func ValidRobotName(name string) error {
	if name == "" || len(name) > maxRobotName {
		return fmt.Errorf("robot name %q: must be 1 to %d characters", name, maxRobotName)
	}
	for i, c := range name {
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || i > 0 && (c == '.' || c == '_' || c == '-')
		if !ok {
			return fmt.Errorf("robot name %q: only lowercase letters, digits, '.', '_' and '-' (not first or last) are allowed", name)
		}
	}
	if last := name[len(name)-1]; last == '.' || last == '_' || last == '-' {
		return fmt.Errorf("robot name %q: only lowercase letters, digits, '.', '_' and '-' (not first or last) are allowed, as in Kubernetes names", name)
	}
	return nil
}

// ReadFile reads and validates the robots file at path.
func ReadFile(path string) (*File, error) {
	data, err := readLimited(path)
	if err != nil {
		return nil, err
	}
	f, err := ParseFile(data)
	if err != nil {
		return nil, fmt.Errorf("robots file %s: %w", path, err)
	}
	return f, nil
}

// ParseFile parses and validates a robots file. Unknown fields are errors, so that a misspelt "disabled" never
// leaves a robot enabled.
func ParseFile(data []byte) (*File, error) {
	var f File
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, err
	}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return &f, nil
}

// Validate checks names, patterns and hashes, and that names and secret IDs are unique.
func (f *File) Validate() error {
	seen := map[string]bool{}
	ids := map[string]bool{}
	for _, r := range f.Robots {
		if err := ValidRobotName(r.Name); err != nil {
			return err
		}
		if seen[r.Name] {
			return fmt.Errorf("robot %q is listed twice", r.Name)
		}
		seen[r.Name] = true
		if _, err := names.CompilePatterns(r.Pull); err != nil {
			return fmt.Errorf("robot %q: %w", r.Name, err)
		}
		for _, s := range r.Secrets {
			if s.ID == "" || ids[s.ID] {
				return fmt.Errorf("robot %q: every secret needs an id of its own", r.Name)
			}
			ids[s.ID] = true
			if _, err := bcrypt.Cost([]byte(s.Hash)); err != nil {
				return fmt.Errorf("robot %q: secret %s: the hash is not a bcrypt hash (secrets are never stored in clear)", r.Name, s.ID)
			}
		}
	}
	for i, c := range f.Clients {
		if _, err := names.CompilePattern(c.Subject); err != nil {
			return fmt.Errorf("client %d: subject: %w", i, err)
		}
		if (c.Robot == "") == (len(c.Pull) == 0 && !c.Admin) {
			return fmt.Errorf("client %q: name either a robot or permissions (pull, admin), not both or neither", c.Subject)
		}
		if c.Robot != "" && !seen[c.Robot] {
			return fmt.Errorf("client %q: robot %q is not in the file", c.Subject, c.Robot)
		}
		if _, err := names.CompilePatterns(c.Pull); err != nil {
			return fmt.Errorf("client %q: %w", c.Subject, err)
		}
	}
	return nil
}

// Robot returns the robot called name, or nil.
func (f *File) Robot(name string) *Robot {
	for i := range f.Robots {
		if f.Robots[i].Name == name {
			return &f.Robots[i]
		}
	}
	return nil
}

// Write validates f and writes it to path atomically (a temporary file renamed into place), readable by its
// owner only.
func (f *File) Write(path string) error {
	if err := f.Validate(); err != nil {
		return err
	}
	body, err := yaml.Marshal(f)
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Dir(path), filepath.Base(path), ".robots-", append([]byte(fileHeaderNote), body...))
}

// NewSecret makes a random secret for a robot and its stored form, hashed with bcrypt at cost (DefaultCost
// when zero). The clear secret is returned to be shown once; only the Secret is kept.
func NewSecret(now time.Time, cost int) (clear string, s Secret, err error) {
	if cost == 0 {
		cost = DefaultCost
	}
	raw := make([]byte, secretBytes)
	id := make([]byte, secretIDBytes)
	if _, err := rand.Read(raw); err != nil {
		return "", Secret{}, err
	}
	if _, err := rand.Read(id); err != nil {
		return "", Secret{}, err
	}
	clear = secretPrefix + base64.RawURLEncoding.EncodeToString(raw)
	hash, err := bcrypt.GenerateFromPassword([]byte(clear), cost)
	if err != nil {
		return "", Secret{}, err
	}
	return clear, Secret{ID: hex.EncodeToString(id), Hash: string(hash), Created: now.UTC().Truncate(time.Second)}, nil
}

func readLimited(path string) ([]byte, error) { return watch.ReadLimited(path, maxFileSize) }

// loginName splits a login user name into the robot name, for the accepted prefixes ("robot$", "robot_" and
// prefix). ok is false for names that are not a robot's.
func loginName(user, prefix string) (name string, ok bool) {
	for _, p := range []string{prefix, "robot$", "robot_"} {
		if p != "" && strings.HasPrefix(user, p) {
			return user[len(p):], true
		}
	}
	return "", false
}
