package cache

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// ErrFull means that the filesystem of the data directory has too little free space: new content is refused
// (and, closer to the edge, index writes too) while what is cached is still served. It is wrapped with the
// free space and the reserve.
var ErrFull = errors.New("cache: no space left on device")

// DefaultReserve is the most free space the cache keeps on its filesystem when Options.Reserve is zero.
const DefaultReserve = 64 << 20

const (
	// spaceInterval is how long a free-space reading is trusted; it is also re-read after the cache itself
	// wrote a fraction (1/spaceDrift) of the reserve since.
	spaceInterval = time.Second
	spaceDrift    = 8
	// autoReserveShare: with Options.Reserve zero, the reserve is at most this share of the filesystem.
	autoReserveShare = 8
	// indexWriteCost is what one index write is counted as against the free space: badger's write-ahead log,
	// memtable and compactions take a multiple of the key and value.
	indexWriteCost = 256
)

// space watches the free space of the data directory's filesystem and keeps a ballast file there: the ballast
// (half the reserve, real bytes) is given back when the disk is nearly full, so that the index always has room
// to open, to flush its memtables and to compact, which it cannot survive without (badger maps its files, and a
// write into a mapped page of a full tmpfs kills the process with SIGBUS).
//
// Content needs the whole reserve free; index writes need half of it.
type space struct {
	dir     string
	ballast string
	limit   int64 // the configured reserve; <= 0: no checks, no ballast
	auto    bool  // the reserve is min(limit, filesystem size / autoReserveShare)
	now     func() time.Time
	log     *slog.Logger

	reserve atomic.Int64 // the reserve in force

	mu   sync.Mutex
	free int64     // at the last reading
	used int64     // counted writes since the last reading
	at   time.Time // of the last reading; zero forces a reading

	filling atomic.Bool // a ballast is being written
}

func newSpace(dir string, reserve int64, now func() time.Time, log *slog.Logger) *space {
	s := &space{dir: dir, ballast: filepath.Join(dir, "reserve"), limit: reserve, now: now, log: log}
	if reserve == 0 {
		s.limit, s.auto = DefaultReserve, true
	}
	s.reserve.Store(s.limit)
	return s
}

// statfs returns the bytes available to the cache on the filesystem of dir, and the filesystem's size.
func statfs(dir string) (free, size int64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, fmt.Errorf("cache: statfs %s: %w", dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), int64(st.Blocks) * int64(st.Bsize), nil
}

// take counts n bytes about to be written and returns ErrFull (wrapped) when less would be left after them
// than the reserve and ahead more bytes (for index writes: half the reserve). It reads the free space again when
// the last reading is old or the cache wrote much since. more says that a reading found room for the ballast.
func (s *space) take(n, ahead int64, index bool) (more bool, err error) {
	if s.limit <= 0 {
		return false, nil
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.at.IsZero() || now.Sub(s.at) >= spaceInterval || now.Before(s.at) || s.used >= s.reserve.Load()/spaceDrift {
		if more, err = s.read(now); err != nil {
			return false, err
		}
	}
	reserve := s.reserve.Load()
	floor := reserve + ahead
	if index {
		floor = reserve / 2
	}
	if s.free-s.used-n < floor {
		return more, fmt.Errorf("%w: %d bytes free on the filesystem of %s, %d needed (reserve %d)", ErrFull, s.free-s.used, s.dir, floor+n, reserve)
	}
	s.used += n
	return more, nil
}

// refresh reads the free space now (giving the ballast back if the disk is nearly full) and says whether there
// is room for the ballast.
func (s *space) refresh() (more bool, err error) {
	if s.limit <= 0 {
		return false, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.read(s.now())
}

// read reads the free space; when the disk is nearly full, it gives the ballast back. s.mu is held.
func (s *space) read(now time.Time) (more bool, err error) {
	free, size, err := statfs(s.dir)
	if err != nil {
		return false, err
	}
	reserve := s.reserve.Load()
	if s.auto {
		reserve = min(s.limit, size/autoReserveShare)
		s.reserve.Store(reserve)
	}
	s.free, s.used, s.at = free, 0, now
	if free < reserve/2 {
		if freed := s.release(); freed > 0 {
			s.log.Warn("cache: disk nearly full: gave the index the ballast", "free", free, "ballast", freed, "reserve", reserve)
			s.free += freed
		}
	}
	return s.free >= 2*reserve, nil
}

// stale makes the next take read the free space again, after a write failed for want of space.
func (s *space) stale() {
	s.mu.Lock()
	s.at = time.Time{}
	s.mu.Unlock()
}

// release removes the ballast and returns its size, 0 when there was none.
func (s *space) release() int64 {
	if s.limit <= 0 || s.filling.Load() {
		return 0
	}
	fi, err := os.Stat(s.ballast)
	if err != nil {
		return 0
	}
	if err := os.Remove(s.ballast); err != nil {
		return 0
	}
	return fi.Size()
}

// ballastSize is the size of the ballast file.
func (s *space) ballastSize() int64 { return s.reserve.Load() / 2 }

// hasBallast reports whether a complete ballast file is in place.
func (s *space) hasBallast() bool {
	fi, err := os.Stat(s.ballast)
	return err == nil && fi.Mode().IsRegular() && fi.Size() == s.ballastSize()
}

// fillBallast writes the ballast file with real bytes (so that tmpfs allocates them) unless it is in place or
// another fill runs. On failure it removes what it wrote.
func (s *space) fillBallast() error {
	if s.limit <= 0 || !s.filling.CompareAndSwap(false, true) {
		return nil
	}
	defer s.filling.Store(false)
	if s.hasBallast() {
		return nil
	}
	err := writeZeros(s.ballast, s.ballastSize())
	if err != nil {
		if rerr := os.Remove(s.ballast); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
		return fmt.Errorf("cache: write ballast %s: %w", s.ballast, err)
	}
	s.stale()
	return nil
}

func writeZeros(path string, n int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := f.Write(buf[:k]); err != nil {
			_ = f.Close()
			return err
		}
		n -= k
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// contentRoom counts n bytes of content about to be written; it returns ErrFull (wrapped) when less than the
// reserve and ahead more bytes would be left. When the disk has room again it starts refilling the ballast in
// the background.
func (c *Cache) contentRoom(n, ahead int64) error {
	more, err := c.space.take(n, ahead, false)
	if more {
		c.refillBallast()
	}
	return err
}

// indexRoom counts one index write; it returns ErrFull (wrapped) when less than half the reserve would be left.
func (c *Cache) indexRoom() error {
	more, err := c.space.take(indexWriteCost, 0, true)
	if more {
		c.refillBallast()
	}
	return err
}

// refillBallast writes the ballast in a background task (at most one, waited for by Close) if it is missing.
func (c *Cache) refillBallast() {
	if c.space.limit <= 0 || c.space.filling.Load() || c.space.hasBallast() {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return
	}
	c.bg.Go(func() {
		if err := c.space.fillBallast(); err != nil {
			c.log.Warn("cache: could not write the disk-space ballast", "err", err)
		}
	})
}

// update runs fn in an index transaction if there is room for an index write.
func (c *Cache) update(fn func(txn *badger.Txn) error) error {
	if err := c.indexRoom(); err != nil {
		return err
	}
	if err := c.db.Update(fn); err != nil {
		return fmt.Errorf("cache: write index: %w", err)
	}
	return nil
}

// noSpace turns a write error for want of space into ErrFull, and makes the next check read the free space.
func (c *Cache) noSpace(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		c.space.stale()
		return fmt.Errorf("%w: %w", ErrFull, err)
	}
	return err
}
