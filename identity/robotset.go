package identity

import (
	"fmt"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/pullgate/pullgate/names"
	"github.com/pullgate/pullgate/watch"
)

// robotSet is one reading of the robots file, with its patterns compiled.
type robotSet struct {
	robots  map[string]*robot
	clients []client
	// dummy is a bcrypt hash of nothing, at the cost the file's secrets use: a login as an unknown robot
	// compares against it, so that it takes as long as a wrong secret for a robot that exists.
	dummy []byte
}

type robot struct {
	Robot
	pull []names.Pattern
}

type client struct {
	Client
	subject names.Pattern
	pull    []names.Pattern
}

// usable reports whether the robot may authenticate at now.
func (r *robot) usable(now time.Time) bool {
	return r != nil && !r.Disabled && (r.Expires == nil || now.Before(*r.Expires))
}

// secret returns the robot's secret with id when it is still valid at now.
func (r *robot) secret(id string, now time.Time) *Secret {
	for i := range r.Secrets {
		s := &r.Secrets[i]
		if s.ID == id && (s.Expires == nil || now.Before(*s.Expires)) {
			return s
		}
	}
	return nil
}

func compileSet(f *File) (*robotSet, error) {
	set := &robotSet{robots: map[string]*robot{}}
	cost := DefaultCost
	for _, r := range f.Robots {
		pull, err := names.CompilePatterns(r.Pull)
		if err != nil {
			return nil, err
		}
		set.robots[r.Name] = &robot{Robot: r, pull: pull}
		for _, s := range r.Secrets {
			if c, err := bcrypt.Cost([]byte(s.Hash)); err == nil {
				cost = c
			}
		}
	}
	for _, c := range f.Clients {
		subject, err := names.CompilePattern(c.Subject)
		if err != nil {
			return nil, err
		}
		pull, err := names.CompilePatterns(c.Pull)
		if err != nil {
			return nil, err
		}
		set.clients = append(set.clients, client{Client: c, subject: subject, pull: pull})
	}
	dummy, err := bcrypt.GenerateFromPassword([]byte("pullgate"), cost)
	if err != nil {
		return nil, err
	}
	set.dummy = dummy
	return set, nil
}

// openRobotsFile reads the robots file and keeps it current (package watch): a robot that is disabled, rotated
// or deleted loses access within seconds, without a restart, and a file that cannot be read or parsed keeps
// the last good set in use.
func openRobotsFile(path string, now func() time.Time, onReload func(error)) (*watch.File[*robotSet], error) {
	parse := func(data []byte) (*robotSet, error) {
		f, err := ParseFile(data)
		if err != nil {
			return nil, fmt.Errorf("robots file %s: %w", path, err)
		}
		return compileSet(f)
	}
	return watch.Open(path, parse, watch.Options{Now: now, OnReload: onReload, MaxSize: maxFileSize})
}
