// Package watch keeps a configuration file's parsed value current: the file is read again when it changes, and
// a version that does not parse keeps the last good one in force.
//
// It knows nothing of what the files mean; it only stats, reads and calls the parser it was given.
package watch

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Interval is how often, at most, a File looks at its file again.
const Interval = 2 * time.Second

// File is a file's parsed value, read again when the file changes. Current looks at the file (one stat) when
// Interval has passed since the last look, on the caller's goroutine, so that nothing runs in the background
// and a change is seen within Interval of the next use. It is safe for concurrent use.
type File[T any] struct {
	path     string
	parse    func([]byte) (T, error)
	now      func() time.Time
	onReload func(error)
	maxSize  int64

	value   atomic.Pointer[T]
	checked atomic.Int64 // unix nanoseconds of the last look

	mu   sync.Mutex // serialises reloads
	info os.FileInfo
	err  error // the last reload's error, kept while the file stays as it is
}

// Options configures Open. Each field's comment says what its zero value means.
type Options struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// OnReload hears of every reload after the first read: nil when the file was read, else why not (the last
	// good value stays in force). Nil means no hook.
	OnReload func(error)
	// MaxSize is the largest file read, in bytes; a larger one is an error. Zero means 16 MiB.
	MaxSize int64
}

// Open reads and parses path; an error here is the caller's to report (there is no last good value yet).
func Open[T any](path string, parse func([]byte) (T, error), o Options) (*File[T], error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxSize <= 0 {
		o.MaxSize = 16 << 20
	}
	f := &File[T]{path: path, parse: parse, now: o.Now, onReload: o.OnReload, maxSize: o.MaxSize}
	if err := f.load(); err != nil {
		return nil, err
	}
	f.checked.Store(o.Now().UnixNano())
	return f, nil
}

// Path is the file's path.
func (f *File[T]) Path() string { return f.path }

func (f *File[T]) load() error {
	info, err := os.Stat(f.path)
	if err != nil {
		return err
	}
	data, err := ReadLimited(f.path, f.maxSize)
	if err != nil {
		return err
	}
	v, err := f.parse(data)
	if err != nil {
		return err
	}
	f.value.Store(&v)
	f.info = info
	return nil
}

// Current returns the value in force, reading the file again first when it may have changed.
func (f *File[T]) Current() T {
	now := f.now()
	if now.UnixNano()-f.checked.Load() < int64(Interval) {
		return *f.value.Load()
	}
	if !f.mu.TryLock() {
		return *f.value.Load() // another caller is looking; this one uses what is in force
	}
	defer f.mu.Unlock()
	f.checked.Store(now.UnixNano())
	info, err := os.Stat(f.path)
	if err == nil && os.SameFile(info, f.info) && info.ModTime().Equal(f.info.ModTime()) && info.Size() == f.info.Size() {
		if f.err == nil {
			return *f.value.Load()
		}
		err = f.err // unchanged and still bad
	} else if err == nil {
		err = f.load()
	}
	f.err = err
	if f.onReload != nil {
		f.onReload(err)
	}
	return *f.value.Load()
}

// Err is the last reload's error: nil when the value in force is the file as it is now.
func (f *File[T]) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// ReadLimited reads the file at path, refusing one larger than max bytes.
func ReadLimited(path string, max int64) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	return data, nil
}
