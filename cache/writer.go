package cache

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

var (
	errAborted      = errors.New("cache: write aborted")
	errWriterClosed = errors.New("cache: write after Commit or Abort")
	errReaderClosed = errors.New("cache: read after Close")
)

// Writer stores one object. It hashes what is written into a temp file; Commit makes the content visible only
// when it matches its digest. Every Writer must end with Commit or Abort, or its temp file stays until the next
// Open. Write, Commit and Abort may be called from different goroutines, but Write is meant for one filler;
// NewReader and the readers it returns are for any number of other goroutines.
type Writer struct {
	c         *Cache
	digest    v1.Hash
	mediaType string
	size      int64 // announced size, -1 when unknown
	tmp       string

	op    sync.Mutex // serializes Write, Commit and Abort; guards the fields below
	f     *os.File   // nil once the writer ended
	h     hash.Hash
	ended bool
	// reserved is the quota this writer holds (Options.MaxBytes): its announced size, or what it wrote; zero
	// once install counted its content as stored.
	reserved int64

	mu      sync.Mutex // guards the fields below, which readers watch
	written int64
	path    string // where the content is now: the temp file, then the final path
	done    bool   // committed
	// verified is set once the content matched its digest, before it is made durable: readers may then
	// deliver the last byte, and a later failure to store it does not make the bytes they have wrong.
	verified bool
	err      error // why the write failed or was aborted
	obj      Object
	changed  chan struct{} // closed and replaced on every change above
	// announced is how much of written readers were woken for; a pending timer wakes them for the rest.
	announced int64
	wake      *time.Timer
}

// NewWriter starts storing content that should hash to d. size is the announced size, or -1 when unknown.
// It returns ErrUnsupportedDigest for an algorithm other than sha256 and sha512, ErrFull (wrapped) when
// storing size bytes would leave less than the reserve free, and ErrQuota (wrapped) when they do not fit under
// the quota even after an eviction round; Write fails the same way for content of unknown size.
func (c *Cache) NewWriter(d v1.Hash, mediaType string, size int64) (*Writer, error) {
	if err := checkDigest(d); err != nil {
		return nil, err
	}
	if c.closed.Load() {
		return nil, errors.New("cache: closed")
	}
	if size < 0 {
		size = -1
	}
	if err := c.contentRoom(0, max(size, 0)); err != nil {
		return nil, err
	}
	if err := c.quotaRoom(size, 0); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(c.tmp, d.Algorithm+"-"+d.Hex[:16]+"-*")
	if err == nil {
		if err = f.Chmod(0o600); err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}
	if err != nil {
		c.unreserve(max(size, 0))
		return nil, fmt.Errorf("cache: %w", c.noSpace(err))
	}
	w := &Writer{
		c:         c,
		digest:    d,
		mediaType: mediaType,
		size:      size,
		tmp:       f.Name(),
		f:         f,
		h:         newHash(d.Algorithm),
		path:      f.Name(),
		changed:   make(chan struct{}),
		reserved:  max(size, 0),
	}
	c.mu.Lock()
	c.active[w.tmp] = struct{}{}
	c.mu.Unlock()
	return w, nil
}

// Write appends p to the content. Writing beyond an announced size fails with *SizeMismatchError and ends the
// writer, as does any other failure: readers then get the error.
func (w *Writer) Write(p []byte) (int, error) {
	w.op.Lock()
	defer w.op.Unlock()
	if w.ended {
		return 0, w.endErr(errWriterClosed)
	}
	if w.size >= 0 && w.written+int64(len(p)) > w.size {
		err := &SizeMismatchError{Digest: w.digest, Want: w.size, Got: w.written + int64(len(p))}
		w.fail(err)
		return 0, err
	}
	if err := w.c.contentRoom(int64(len(p)), 0); err != nil {
		w.fail(err)
		return 0, err
	}
	if w.size < 0 {
		if err := w.c.quotaRoom(int64(len(p)), w.reserved); err != nil {
			w.fail(err)
			return 0, err
		}
		w.reserved += int64(len(p))
	}
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	w.mu.Lock()
	w.written += int64(n)
	w.announce()
	w.mu.Unlock()
	if err != nil {
		err = fmt.Errorf("cache: write %s: %w", w.digest, w.c.noSpace(err))
		w.fail(err)
		return n, err
	}
	return n, nil
}

// Written returns the number of bytes written so far.
func (w *Writer) Written() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.written
}

// Commit verifies the size (when it was announced) and the digest, makes the file durable, moves it into place
// and indexes it; only then can Stat and Content see it. Bad content gives *SizeMismatchError or
// *DigestMismatchError and leaves nothing behind. When another writer already stored the same digest, Commit
// drops its own copy and returns the existing Object. Calling Commit again returns the same result.
func (w *Writer) Commit() (Object, error) {
	w.op.Lock()
	defer w.op.Unlock()
	if w.ended {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.err != nil {
			return Object{}, w.err
		}
		return w.obj, nil
	}
	if w.size >= 0 && w.written != w.size {
		err := &SizeMismatchError{Digest: w.digest, Want: w.size, Got: w.written}
		w.fail(err)
		return Object{}, err
	}
	if got := (v1.Hash{Algorithm: w.digest.Algorithm, Hex: hex.EncodeToString(w.h.Sum(nil))}); got != w.digest {
		err := &DigestMismatchError{Want: w.digest, Got: got, Size: w.written}
		w.fail(err)
		return Object{}, err
	}
	w.mu.Lock()
	w.verified = true
	w.broadcast()
	w.mu.Unlock()
	err := w.f.Sync()
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	w.f = nil
	if err != nil {
		err = fmt.Errorf("cache: %w", w.c.noSpace(err))
		w.fail(err)
		return Object{}, err
	}
	obj, err := w.c.install(w)
	if err != nil {
		w.fail(err)
		return Object{}, err
	}
	w.ended = true
	w.mu.Lock()
	w.done = true
	w.obj = obj
	w.broadcast()
	w.mu.Unlock()
	w.c.release(w.tmp, w.reserved)
	return obj, nil
}

// Abort ends the writer without storing anything: the temp file is removed and readers get err (a generic
// error when err is nil). It does nothing after Commit or a previous Abort.
func (w *Writer) Abort(err error) {
	w.op.Lock()
	defer w.op.Unlock()
	if w.ended {
		return
	}
	if err == nil {
		err = errAborted
	}
	w.fail(err)
}

// fail ends the writer with err. w.op is held.
func (w *Writer) fail(err error) {
	w.ended = true
	if w.f != nil {
		_ = w.f.Close()
		w.f = nil
	}
	w.mu.Lock()
	if rerr := os.Remove(w.tmp); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		w.c.log.Error("cache: remove temp file", "path", w.tmp, "err", rerr)
	}
	w.err = err
	w.broadcast()
	w.mu.Unlock()
	w.c.release(w.tmp, w.reserved)
}

// endErr returns why the writer ended, or def when it was committed.
func (w *Writer) endErr(def error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	return def
}

// move runs fn, which moves the content file to path, so that no reader opens the old path after it is gone.
func (w *Writer) move(path string, fn func() error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := fn(); err != nil {
		return err
	}
	w.path = path
	return nil
}

// Readers are woken for new bytes once wakeBytes have accumulated, or wakeDelay after the first of them: one
// wake-up per TLS record (16 KiB) from the upstream costs the streaming clients more than it gains them.
const (
	wakeBytes = 128 << 10
	wakeDelay = 2 * time.Millisecond
)

// announce wakes readers for newly written bytes, batched by wakeBytes and wakeDelay. w.mu is held.
func (w *Writer) announce() {
	if w.written-w.announced >= wakeBytes {
		w.broadcast()
		return
	}
	if w.wake == nil {
		w.wake = time.AfterFunc(wakeDelay, func() {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.wake = nil
			if w.written > w.announced {
				w.broadcast()
			}
		})
	}
}

// broadcast wakes every waiting reader. w.mu is held.
func (w *Writer) broadcast() {
	w.announced = w.written
	close(w.changed)
	w.changed = make(chan struct{})
}

// release forgets a temp file name once its writer ended, and gives back the quota it held (committed
// content is counted as stored by then).
func (c *Cache) release(tmp string, reserved int64) {
	c.mu.Lock()
	delete(c.active, tmp)
	c.mu.Unlock()
	c.unreserve(reserved)
}

// unreserve gives back quota reserved by quotaRoom.
func (c *Cache) unreserve(n int64) {
	if c.maxBytes > 0 && n > 0 {
		c.inflight.Add(-n)
	}
}

// NewReader returns a reader of the content as it is being written, for clients waiting on the same fill. It
// can be created at any time, also after Commit. It blocks for more bytes until they are written, the writer
// ends, or ctx is done. It withholds the last byte written until Commit has verified the digest, so a reader
// never sees a complete body of unverified content: if the writer fails or is aborted, Read returns that error
// (a *DigestMismatchError, a *SizeMismatchError or the Abort error). Once Commit has verified the digest (before
// it fsyncs, so that clients do not wait for the disk) it returns the rest and io.EOF. The caller closes it.
//
// The reader keeps ctx, against the usual rule, because io.Reader has no place for one.
func (w *Writer) NewReader(ctx context.Context) io.ReadCloser {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return errReader{w.err}
	}
	// Opened under w.mu, so that the file cannot move in between; the descriptor survives the rename.
	f, err := os.Open(w.path)
	if err != nil {
		return errReader{fmt.Errorf("cache: %w", err)}
	}
	return &reader{w: w, ctx: ctx, f: f}
}

type reader struct {
	w   *Writer
	ctx context.Context
	f   *os.File // nil after Close
	off int64
}

func (r *reader) Read(p []byte) (int, error) {
	if r.f == nil {
		return 0, errReaderClosed
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if err := r.ctx.Err(); err != nil {
			return 0, err
		}
		w := r.w
		w.mu.Lock()
		written, done, verified, err, changed := w.written, w.done, w.verified, w.err, w.changed
		w.mu.Unlock()
		if err != nil && !verified {
			return 0, err
		}
		complete := done || verified
		limit := written
		if !complete {
			limit-- // the last byte waits for the digest check
		}
		if r.off < limit {
			n, err := r.f.ReadAt(p[:min(int64(len(p)), limit-r.off)], r.off)
			r.off += int64(n)
			if n > 0 {
				return n, nil
			}
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF // the file is shorter than what was written to it
			}
			return 0, fmt.Errorf("cache: read %s: %w", w.digest, err)
		}
		if complete {
			return 0, io.EOF
		}
		select {
		case <-changed:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
	}
}

func (r *reader) Close() error {
	if r.f == nil {
		return nil
	}
	err := r.f.Close()
	r.f = nil
	return err
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }
func (r errReader) Close() error             { return nil }
