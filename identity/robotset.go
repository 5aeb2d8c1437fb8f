package identity

import (
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/pullgate/pullgate/names"
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

// robotsFile is the robots file, read again when it changes (checked at most every checkInterval, when an
// identity is looked up), so that a robot that is disabled, rotated or deleted loses access without a restart.
// A file that cannot be read or parsed keeps the last good set in use.
type robotsFile struct {
	path     string
	now      func() time.Time
	onReload func(error)

	set     atomic.Pointer[robotSet]
	checked atomic.Int64 // unix nanoseconds of the last check

	mu   sync.Mutex // serialises reloads
	info os.FileInfo
	err  error
}

const checkInterval = 2 * time.Second

func openRobotsFile(path string, now func() time.Time, onReload func(error)) (*robotsFile, error) {
	rf := &robotsFile{path: path, now: now, onReload: onReload}
	if err := rf.load(); err != nil {
		return nil, err
	}
	rf.checked.Store(now().UnixNano())
	return rf, nil
}

func (rf *robotsFile) load() error {
	info, err := os.Stat(rf.path)
	if err != nil {
		return err
	}
	f, err := ReadFile(rf.path)
	if err != nil {
		return err
	}
	set, err := compileSet(f)
	if err != nil {
		return err
	}
	rf.set.Store(set)
	rf.info = info
	return nil
}

// current returns the robots in force, reading the file again first when it may have changed.
func (rf *robotsFile) current() *robotSet {
	now := rf.now()
	if now.UnixNano()-rf.checked.Load() < int64(checkInterval) {
		return rf.set.Load()
	}
	if !rf.mu.TryLock() {
		return rf.set.Load() // another request is reloading; this one uses what is in force
	}
	defer rf.mu.Unlock()
	rf.checked.Store(now.UnixNano())
	info, err := os.Stat(rf.path)
	if err == nil && os.SameFile(info, rf.info) && info.ModTime().Equal(rf.info.ModTime()) && info.Size() == rf.info.Size() {
		if rf.err == nil {
			return rf.set.Load()
		}
		err = rf.err // unchanged and still bad
	} else if err == nil {
		err = rf.load()
	}
	rf.err = err
	if rf.onReload != nil {
		rf.onReload(err)
	}
	return rf.set.Load()
}
