// Package cache keeps registry content on disk, addressed by digest, with a badger index of objects, tags,
// repository links and access times.
//
// It knows nothing about HTTP, upstream registries or clients: an "upstream" here is only a name that scopes
// tags and repository links. Every byte it keeps was hashed while it was written and renamed into place only
// when the digest matched; a crash leaves temp files, which Open removes.
package cache

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// ErrNotFound is the only error that means "not cached". Any other error from the cache is a fault.
var ErrNotFound = errors.New("not found in cache")

// ErrUnsupportedDigest is returned for digest algorithms the cache cannot verify (only sha256 and sha512).
var ErrUnsupportedDigest = errors.New("unsupported digest algorithm")

// DigestMismatchError says that content did not hash to the digest it was written under.
type DigestMismatchError struct {
	Want v1.Hash
	Got  v1.Hash
	Size int64 // bytes actually written
}

func (e *DigestMismatchError) Error() string {
	return fmt.Sprintf("digest mismatch: want %s, content hashes to %s (%d bytes)", e.Want, e.Got, e.Size)
}

// SizeMismatchError says that content was not the size it was announced to be.
type SizeMismatchError struct {
	Digest    v1.Hash
	Want, Got int64
}

func (e *SizeMismatchError) Error() string {
	return fmt.Sprintf("size mismatch for %s: want %d bytes, got %d", e.Digest, e.Want, e.Got)
}

// Options configures Open. The zero value of every field but Dir is usable.
type Options struct {
	// Dir is the data directory. Content lives in Dir/blobs/<alg>/<first two hex>/<hex>, temp files in
	// Dir/tmp, the badger index in Dir/index, the disk-space ballast in Dir/reserve, and the mark of a clean
	// stop in Dir/clean. The cache's files are readable by their owner only. Required.
	Dir string
	// Reserve is the free space, in bytes, kept on the filesystem of Dir: a new fill is refused with ErrFull
	// when it would leave less, index writes when less than half of it would be left, and a ballast file of
	// half of it is kept to be given back to the index when the disk is full. Zero means DefaultReserve
	// (64 MiB) or an eighth of the filesystem's size, whichever is smaller; negative turns the free-space
	// checks and the ballast off.
	Reserve int64
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives repair and maintenance messages; nil means slog.Default().
	Logger *slog.Logger

	// MaxBytes is the quota of stored content, in bytes: least recently used objects that are not pinned are
	// evicted in the background to keep under it, and new content that does not fit after eviction is refused
	// with ErrQuota. Zero means no quota.
	MaxBytes int64
	// MinFree is the free space, in bytes, eviction keeps on the filesystem of Dir (unlike Reserve, it
	// evicts to get there rather than refusing content). Zero means none.
	MinFree int64
	// MinFreePercent is MinFree as a percentage of the filesystem's size; the larger of the two counts. Zero
	// means none.
	MinFreePercent float64
	// QuotaWait is how long new content that would pass MaxBytes waits for an eviction round before it is
	// refused. Zero means 15 seconds.
	QuotaWait time.Duration
	// Pins are pins from the configuration, in force besides those AddPin adds; nil means none.
	Pins []Pin
	// OnRemove is called after objects were removed (evicted, purged or found corrupt) with the reason
	// (ReasonQuota, ReasonMinFree, ReasonPurge, ReasonCorrupt), how many and their bytes; nil means nothing is
	// called.
	OnRemove func(reason string, objects int, bytes int64)

	// removeBatch overrides removeBatch, for tests; zero is removeBatch.
	removeBatch int
}

// Object describes one stored piece of content.
type Object struct {
	Digest    v1.Hash
	Size      int64
	MediaType string // as the upstream announced it; empty for blobs when unknown
	Stored    time.Time
}

// TagEntry is what the index knows about one tag of one repository.
type TagEntry struct {
	Digest    v1.Hash
	MediaType string
	Size      int64
	Fetched   time.Time // when the upstream last confirmed this digest for the tag
}

// Fault is one problem Verify found.
type Fault struct {
	Digest  string // may be empty when the problem is a stray file
	Path    string
	Problem string
}

func (f Fault) String() string { return fmt.Sprintf("%s %s: %s", f.Digest, f.Path, f.Problem) }
