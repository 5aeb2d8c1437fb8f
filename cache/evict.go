package cache

import (
	"bytes"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// ErrQuota means that new content does not fit under Options.MaxBytes even after eviction: what is stored is
// pinned, or being read or written, or the content alone is larger than the quota. It is wrapped with the
// numbers.
var ErrQuota = errors.New("cache: quota reached")

// Eviction keeps the cache under its quota (Options.MaxBytes) and the filesystem above its free-space floor
// (Options.MinFree), by least recent use, in the background: a round starts when the stored and in-flight
// bytes pass evictStart percent of the quota, and removes the least recently used objects that are not pinned
// until they are at evictTarget percent. Serving never waits for it; a fill that would pass the quota asks for
// a round and waits for it (at most QuotaWait), and gets ErrQuota if there is still no room.
const (
	evictStart  = 95
	evictTarget = 90
	// evictInterval is how often the eviction task checks the usage when nobody asks it to.
	evictInterval = 10 * time.Second
	// evictBatch bounds the candidates one scan of the index collects (about 100 bytes each); a round that
	// needs more scans again.
	evictBatch = 50_000
	// removeBatch is how many objects one index transaction removes.
	removeBatch = 1000
	// evictIdle is how many times as long as its last slice of work (a removal batch, scanSlice entries of a
	// scan of the index) a background round rests before the next while no writer waits for room: such a round
	// takes at most a tenth of one CPU's time from serving. A round that a writer waits for does not rest.
	evictIdle = 9
	// evictMaxRest bounds one rest.
	evictMaxRest = time.Second
	// scanSlice is how many index entries a paced scan reads between rests.
	scanSlice = 2000
)

// Reasons given to Options.OnRemove.
const (
	ReasonQuota   = "quota"
	ReasonMinFree = "min_free"
	ReasonPurge   = "purge"
	ReasonCorrupt = "corrupt"
)

// RemoveStats counts what a removal took away.
type RemoveStats struct {
	Objects int   // content objects
	Bytes   int64 // their sizes
	Tags    int   // tags that pointed at them
	Links   int   // repository links and referrers answers of them
}

func (s *RemoveStats) add(o RemoveStats) {
	s.Objects += o.Objects
	s.Bytes += o.Bytes
	s.Tags += o.Tags
	s.Links += o.Links
}

// quotaRoom reserves n bytes of the quota for a writer. When they do not fit, it wakes the eviction task and
// tries again after each batch the task removes, until the round it asked for ends (or QuotaWait passes);
// ErrQuota (wrapped) when there is still no room. A cache already over its quota (it was lowered) never grows:
// the writer waits until eviction has freed its n bytes, not until the whole cache is under the quota.
//
// held is what the writer already reserved: when held and n together are more than the quota no eviction can
// make room, so it is refused at once rather than after a round that evicted everything unpinned for nothing.
func (c *Cache) quotaRoom(n, held int64) error {
	if c.maxBytes <= 0 || n <= 0 {
		return nil
	}
	if held+n > c.maxBytes {
		return fmt.Errorf("%w: %d bytes do not fit in a quota of %d bytes", ErrQuota, held+n, c.maxBytes)
	}
	if err := c.waitCounted(); err != nil {
		return err
	}
	if c.reserve(n, c.maxBytes) {
		return nil
	}
	c.quotaMu.Lock()
	limit := max(c.maxBytes, c.bytes.Load()+c.inflight.Load())
	c.quotaMu.Unlock()
	c.asking.Add(n)
	defer c.asking.Add(-n)
	select {
	case c.askWake <- struct{}{}:
	default:
	}
	round := c.evictRound()
	timeout := time.NewTimer(c.quotaWait)
	defer timeout.Stop()
	for ended := false; !ended; {
		select {
		case <-round:
			ended = true
		case <-c.removed():
		case <-timeout.C:
			ended = true
		case <-c.stop:
			ended = true
		}
		if c.reserve(n, limit) {
			return nil
		}
	}
	stored, inflight := c.bytes.Load(), c.inflight.Load()
	msg := fmt.Sprintf("%d bytes more do not fit: %d bytes stored and %d being written, the quota is %d bytes", n, stored, inflight, c.maxBytes)
	if p := c.pinnedBytes.Load(); p > 0 {
		msg += fmt.Sprintf(" (%d bytes of it pinned)", p)
	}
	return fmt.Errorf("%w: %s", ErrQuota, msg)
}

// waitCounted waits (at most QuotaWait) until the usage counts every stored object: after a crash, until the
// repair has read the index, the count is short and no reservation can be judged.
func (c *Cache) waitCounted() error {
	select {
	case <-c.counted:
		return nil
	default:
	}
	t := time.NewTimer(c.quotaWait)
	defer t.Stop()
	select {
	case <-c.counted:
		return nil
	case <-t.C:
		return fmt.Errorf("%w: the stored bytes are still being counted after an unclean stop", ErrQuota)
	case <-c.stop:
		return errors.New("cache: closed")
	}
}

// removed returns a channel closed when the next removal batch has ended.
func (c *Cache) removed() <-chan struct{} {
	c.evictMu.Lock()
	defer c.evictMu.Unlock()
	return c.batchDone
}

// batchEnded wakes the writers waiting for a removal batch.
func (c *Cache) batchEnded() {
	c.evictMu.Lock()
	close(c.batchDone)
	c.batchDone = make(chan struct{})
	c.evictMu.Unlock()
}

// reserve counts n bytes in flight if the stored and in-flight bytes stay within limit.
func (c *Cache) reserve(n, limit int64) bool {
	c.quotaMu.Lock()
	defer c.quotaMu.Unlock()
	if c.inflight.Add(n)+c.bytes.Load() <= limit {
		return true
	}
	c.inflight.Add(-n)
	return false
}

// evictRound wakes the eviction task and returns a channel closed when a round that started after the call
// ended.
func (c *Cache) evictRound() <-chan struct{} {
	c.evictMu.Lock()
	done := c.roundDone
	c.evictMu.Unlock()
	select {
	case c.evictWake <- struct{}{}:
	default:
	}
	return done
}

// evictLoop runs eviction rounds every evictInterval and when asked, until stop is closed.
func (c *Cache) evictLoop(stop <-chan struct{}) {
	t := time.NewTicker(evictInterval)
	defer t.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-stop
		cancel()
	}()
	for {
		select {
		case <-t.C:
		case <-c.evictWake:
		case <-stop:
			c.endRound()
			return
		}
		c.evictOnce(ctx)
	}
}

// endRound ends the current round for its waiters and opens the next.
func (c *Cache) endRound() {
	c.evictMu.Lock()
	close(c.roundDone)
	c.roundDone = make(chan struct{})
	c.evictMu.Unlock()
}

// evictOnce runs one round: it works out what must go, and removes it. Its waiters are those that asked before
// it started.
func (c *Cache) evictOnce(ctx context.Context) {
	c.evictMu.Lock()
	done := c.roundDone
	c.roundDone = make(chan struct{})
	c.evictMu.Unlock()
	defer close(done)

	select {
	case <-c.counted:
	default:
		return // the usage is still being counted after a crash: the next tick, or writer, asks again
	}
	need, reason := c.evictNeed()
	if need <= 0 {
		return
	}
	start := time.Now()
	p := c.newPacer()
	keep, pinned, err := c.pinned(ctx, p)
	if err != nil {
		c.log.Error("cache: eviction skipped: could not work out the pinned objects", "err", err)
		return
	}
	c.pinnedBytes.Store(pinned)
	if c.maxBytes > 0 && pinned > c.maxBytes*evictTarget/100 {
		c.log.Error("cache: pinned images take more than the quota allows; nothing pinned is evicted, and new content is refused once the quota is reached",
			"pinned_bytes", pinned, "max_bytes", c.maxBytes)
	}
	st, err := c.evict(ctx, need, keep, reason, p)
	if err != nil && ctx.Err() == nil {
		c.log.Error("cache: eviction stopped", "err", err)
	}
	if st.Objects > 0 || err != nil {
		c.log.Info("cache: evicted least recently used objects", "reason", reason, "objects", st.Objects, "bytes", st.Bytes,
			"tags", st.Tags, "links", st.Links, "wanted", need, "duration", time.Since(start).Round(time.Millisecond))
	}
	if st.Bytes < need {
		c.log.Warn("cache: eviction could not free enough: the rest is pinned or was used meanwhile", "freed", st.Bytes, "wanted", need)
	}
}

// evictNeed returns how many bytes a round should free, and why.
func (c *Cache) evictNeed() (int64, string) {
	var need int64
	reason := ReasonQuota
	if c.maxBytes > 0 {
		used := c.bytes.Load() + c.inflight.Load() + c.asking.Load()
		if used > c.maxBytes*evictStart/100 || c.asking.Load() > 0 {
			need = used - c.maxBytes*evictTarget/100
		}
	}
	if c.minFree > 0 || c.minFreePercent > 0 {
		free, size, err := statfs(c.dir)
		if err != nil {
			c.log.Warn("cache: free space unknown", "err", err)
			return need, reason
		}
		want := max(c.minFree, int64(float64(size)*c.minFreePercent/100))
		if free < want {
			if n := want - free + want/20; n > need {
				need, reason = n, ReasonMinFree
			}
		}
	}
	return need, reason
}

// candidate is an object eviction may remove.
type candidate struct {
	d      v1.Hash
	size   int64
	at     time.Time // last use: the access time, else when it was stored
	stored time.Time
}

// newest is a max-heap of candidates by last use: the root is the most recently used, the first to drop when
// the rest already free enough.
type newest []candidate

func (h newest) Len() int           { return len(h) }
func (h newest) Less(i, j int) bool { return h[i].at.After(h[j].at) }
func (h newest) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *newest) Push(x any)        { *h = append(*h, x.(candidate)) }
func (h *newest) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// Evict removes least recently used objects that keep does not hold (nil keeps nothing) until need bytes are
// freed or nothing more can go, with their tags, repository links, referrers answers, verdicts and access
// times. An object used, or stored again, after it was chosen stays. It holds at most evictBatch candidates in
// memory, scanning the index again as long as more must go. It runs at full speed; the background rounds rest
// between slices of their work while no writer waits (see evictIdle).
func (c *Cache) Evict(ctx context.Context, need int64, keep func(v1.Hash) bool, reason string) (RemoveStats, error) {
	return c.evict(ctx, need, keep, reason, nil)
}

// evict is Evict at p's pace (nil: full speed).
func (c *Cache) evict(ctx context.Context, need int64, keep func(v1.Hash) bool, reason string, p *pacer) (RemoveStats, error) {
	var total RemoveStats
	c.flushAccess() // order by the latest noted times
	empty := 0      // passes in a row that removed nothing
	for total.Bytes < need {
		cands, err := c.oldest(ctx, need-total.Bytes, keep, p)
		if err != nil || len(cands) == 0 {
			return total, err
		}
		slices.SortFunc(cands, func(a, b candidate) int { return a.at.Compare(b.at) })
		// The references of a whole pass go in one scan of the index after its last batch: scanning after
		// each batch would cost a scan of every tag and link per thousand objects. Until then a tag may name
		// a removed manifest, which is served as a miss, as after a crash.
		gone := make(map[v1.Hash]struct{}, len(cands))
		before := total.Objects
		for len(cands) > 0 && total.Bytes < need && err == nil {
			n := min(len(cands), c.removeBatch)
			batch := cands[:n]
			cands = cands[n:]
			ds := make([]v1.Hash, len(batch))
			chosen := make(map[v1.Hash]candidate, len(batch))
			for i, cd := range batch {
				ds[i], chosen[cd.d] = cd.d, cd
			}
			var st RemoveStats
			workers := unlinkers
			if p != nil && c.asking.Load() == 0 {
				workers = 1 // a round nobody waits for takes one CPU at the most, and rests
			}
			st, err = c.removeObjects(ctx, ds, reason, gone, workers, func(o Object) bool {
				cd := chosen[o.Digest]
				return o.Stored.Equal(cd.stored) && !c.usedSince(o.Digest, cd.at)
			})
			total.add(st)
			if err == nil && len(cands) > 0 && total.Bytes < need {
				err = p.pause(ctx)
			}
		}
		// The objects are gone: their references go too, even when ctx ended meanwhile.
		tags, links, rerr := c.dropReferences(context.WithoutCancel(ctx), gone, p)
		total.Tags += tags
		total.Links += links
		if err = errors.Join(err, rerr); err != nil {
			return total, err
		}
		if empty++; total.Objects > before {
			empty = 0
		}
		if empty == 2 {
			// Twice every candidate was used (or stored again) since it was chosen: the next scan, which sees
			// the uses noted meanwhile, did not order them better, as when their uses never reached the index
			// (a dropped flush). Scanning on would choose the same ones for ever; the next round tries again.
			return total, nil
		}
	}
	return total, nil
}

// pacer spreads a background round over time: after each slice of its work it rests evictIdle times as long as
// the slice took (at most evictMaxRest), but not while a writer waits for room. A nil pacer never rests.
type pacer struct {
	c     *Cache
	since time.Time // when the current slice began
	n     int       // index entries read in it
}

// newPacer returns a pacer whose first slice begins now.
func (c *Cache) newPacer() *pacer {
	return &pacer{c: c, since: time.Now()}
}

// pause ends a slice of work: it rests, then begins the next slice.
func (p *pacer) pause(ctx context.Context) error {
	if p == nil {
		return nil
	}
	var err error
	var rest time.Duration
	if p.c.asking.Load() == 0 {
		rest = min(evictIdle*time.Since(p.since), evictMaxRest)
		t := time.NewTimer(rest)
		select {
		case <-t.C:
		case <-p.c.askWake: // a writer asks: go on at once (a stale signal only shortens one rest)
		case <-p.c.stop: // closing: finish at full speed (what must follow a removal runs on)
		case <-ctx.Done():
			err = ctx.Err()
		}
		t.Stop()
	}
	if p.c.rested != nil {
		p.c.rested(rest)
	}
	p.since, p.n = time.Now(), 0
	return err
}

// step counts one index entry a scan read, pausing after every scanSlice of them.
func (p *pacer) step(ctx context.Context) error {
	if p == nil {
		return nil
	}
	if p.n++; p.n < scanSlice {
		return nil
	}
	return p.pause(ctx)
}

// usedSince reports whether Touch noted a use of d after t.
func (c *Cache) usedSince(d v1.Hash, t time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	last, ok := c.touched[d]
	return ok && last.After(t)
}

// oldest scans the index for the least recently used objects not kept whose sizes add up to need, at most
// evictBatch of them, at p's pace.
func (c *Cache) oldest(ctx context.Context, need int64, keep func(v1.Hash) bool, p *pacer) ([]candidate, error) {
	h := &newest{}
	var sum int64
	err := c.Walk(ctx, func(o Object, accessed time.Time) error {
		if err := p.step(ctx); err != nil {
			return err
		}
		if keep != nil && keep(o.Digest) {
			return nil
		}
		at := accessed
		if at.IsZero() || at.Before(o.Stored) {
			at = o.Stored
		}
		cd := candidate{d: o.Digest, size: o.Size, at: at, stored: o.Stored}
		if h.Len() > 0 && sum-(*h)[0].size >= need && !cd.at.Before((*h)[0].at) {
			return nil // newer than every candidate, which already free enough
		}
		heap.Push(h, cd)
		sum += cd.size
		for h.Len() > 1 && (sum-(*h)[0].size >= need || h.Len() > evictBatch) {
			sum -= heap.Pop(h).(candidate).size
		}
		return nil
	})
	return *h, err
}

// Walk calls fn for every stored object with the access time Touch last noted for it (zero when none),
// streaming over the index: it holds one object at a time. It stops with fn's error, or ctx's.
func (c *Cache) Walk(ctx context.Context, fn func(o Object, accessed time.Time) error) error {
	c.mu.Lock()
	noted := make(map[v1.Hash]time.Time, len(c.pending))
	for d, t := range c.pending {
		noted[d] = t
	}
	c.mu.Unlock()
	return c.db.View(func(txn *badger.Txn) error {
		acc := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{kindAccess, sep}, PrefetchValues: true, PrefetchSize: 100})
		defer acc.Close()
		acc.Rewind()
		return c.scanObjects(txn, func(o Object) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			var at time.Time
			want := accessKey(o.Digest)
			for acc.Valid() && bytes.Compare(acc.Item().Key(), want) < 0 {
				acc.Next()
			}
			if acc.Valid() && bytes.Equal(acc.Item().Key(), want) {
				if err := acc.Item().Value(func(v []byte) (err error) { at, err = decodeTime(v); return err }); err != nil {
					return err
				}
			}
			if t, ok := noted[o.Digest]; ok && t.After(at) {
				at = t
			}
			return fn(o, at)
		})
	})
}

// Remove removes the objects ds (those stored) with their tags, repository links, referrers answers, verdicts
// and access times; reason is passed to Options.OnRemove. Readers that opened an object before keep reading it;
// the next request for it is a miss.
func (c *Cache) Remove(ctx context.Context, ds []v1.Hash, reason string) (RemoveStats, error) {
	var total RemoveStats
	gone := make(map[v1.Hash]struct{}, len(ds))
	var err error
	for len(ds) > 0 && err == nil {
		n := min(len(ds), c.removeBatch)
		var st RemoveStats
		st, err = c.removeObjects(ctx, ds[:n], reason, gone, unlinkers, nil)
		total.add(st)
		ds = ds[n:]
	}
	if len(gone) > 0 {
		tags, links, rerr := c.dropReferences(context.WithoutCancel(ctx), gone, nil)
		total.Tags += tags
		total.Links += links
		err = errors.Join(err, rerr)
	}
	return total, err
}

// remove removes at most removeBatch objects of ds for which still (nil: always) holds, then what refers to
// them.
func (c *Cache) remove(ctx context.Context, ds []v1.Hash, reason string, still func(Object) bool) (RemoveStats, error) {
	gone := make(map[v1.Hash]struct{}, len(ds))
	st, err := c.removeObjects(ctx, ds, reason, gone, unlinkers, still)
	if err != nil || len(gone) == 0 {
		return st, err
	}
	st.Tags, st.Links, err = c.dropReferences(context.WithoutCancel(ctx), gone, nil)
	return st, err
}

// removeObjects removes at most c.removeBatch objects of ds for which still (nil: always) holds, with their
// verdicts and access times, and adds their digests to gone; what refers to them (dropReferences) is the
// caller's. It takes the digests' locks in order, so that no install runs in between: the index entries go
// first, in one transaction, then the files (a crash in between leaves files without entries, which the next
// Open removes). Writers waiting for room try again when it returns.
func (c *Cache) removeObjects(ctx context.Context, ds []v1.Hash, reason string, gone map[v1.Hash]struct{}, workers int, still func(Object) bool) (RemoveStats, error) {
	var st RemoveStats
	defer c.batchEnded()
	if err := ctx.Err(); err != nil {
		return st, err
	}
	stripes := make([]int, 0, len(ds))
	for _, d := range ds {
		if checkDigest(d) != nil {
			return st, fmt.Errorf("cache: remove: invalid digest %q", d.String())
		}
		stripes = append(stripes, int(unhex(d.Hex[0])<<4|unhex(d.Hex[1])))
	}
	slices.Sort(stripes)
	stripes = slices.Compact(stripes)
	for _, s := range stripes {
		c.locks[s].Lock()
	}
	unlock := func() {
		for _, s := range stripes {
			c.locks[s].Unlock()
		}
	}
	var removed []Object
	if err := c.indexRoom(); err != nil {
		// Removing is how room is made: write the deletions anyway (the ballast is there for this).
		c.log.Warn("cache: removing objects on a full disk", "err", err)
	}
	err := c.db.Update(func(txn *badger.Txn) error {
		removed = removed[:0]
		for _, d := range ds {
			item, err := txn.Get(objectKey(d))
			if errors.Is(err, badger.ErrKeyNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			var o Object
			if err := item.Value(func(v []byte) (err error) { o, err = decodeObject(d, v); return err }); err != nil {
				return err
			}
			if still != nil && !still(o) {
				continue
			}
			if err := txn.Delete(objectKey(d)); err != nil {
				return err
			}
			// The access time and the verdict only when there is one: a deletion is a write (a tombstone
			// that compaction carries), a look-up of a missing key is a bloom filter's answer.
			for _, k := range [][]byte{accessKey(d), verdictKey(d)} {
				if _, err := txn.Get(k); errors.Is(err, badger.ErrKeyNotFound) {
					continue
				} else if err != nil {
					return err
				}
				if err := txn.Delete(k); err != nil {
					return err
				}
			}
			removed = append(removed, o)
		}
		return nil
	})
	if err != nil {
		unlock()
		return st, fmt.Errorf("cache: remove: write index: %w", err)
	}
	c.unlinkAll(removed, workers)
	for _, o := range removed {
		c.bytes.Add(-o.Size)
		c.objects.Add(-1)
		st.Objects++
		st.Bytes += o.Size
		gone[o.Digest] = struct{}{}
	}
	unlock()
	c.mu.Lock()
	for _, o := range removed {
		delete(c.touched, o.Digest)
		delete(c.pending, o.Digest)
	}
	c.mu.Unlock()
	if c.onRemove != nil && st.Objects > 0 {
		c.onRemove(reason, st.Objects, st.Bytes)
	}
	return st, nil
}

// unlinkers is how many files removeObjects unlinks at once (but one in a background round nobody waits for):
// an unlink waits on the filesystem's journal and directory locks as much as on a CPU.
const unlinkers = 4

// unlinkAll removes the files of objs, workers at a time. A file that cannot be removed is logged; the next
// start removes it (it has no index entry).
func (c *Cache) unlinkAll(objs []Object, workers int) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, len(objs)) {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(len(objs)); i = next.Add(1) - 1 {
				p := c.Path(objs[i].Digest)
				if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
					c.log.Error("cache: remove content file; the next start removes it", "path", p, "err", err)
				}
			}
		})
	}
	wg.Wait()
}

// dropReferences removes the tags that point at the digests of gone, the repository links and referrers
// answers of them: one scan of each key kind, at p's pace. A tag pointed elsewhere meanwhile stays.
func (c *Cache) dropReferences(ctx context.Context, gone map[v1.Hash]struct{}, p *pacer) (tags, links int, err error) {
	type tagKey struct{ k, v []byte }
	var tagKeys []tagKey
	var linkKeys [][]byte
	err = c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{kindTag, sep}, PrefetchValues: true, PrefetchSize: 100})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := p.step(ctx); err != nil {
				return err
			}
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			var e TagEntry
			if decodeTag(v, &e) != nil {
				continue
			}
			if _, ok := gone[e.Digest]; ok {
				tagKeys = append(tagKeys, tagKey{it.Item().KeyCopy(nil), v})
			}
		}
		for _, kind := range []byte{kindLink, kindReferrers} {
			it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{kind, sep}})
			for it.Rewind(); it.Valid(); it.Next() {
				if err := p.step(ctx); err != nil {
					it.Close()
					return err
				}
				k := it.Item().Key()
				i := bytes.LastIndexByte(k, sep)
				d, err := v1.NewHash(string(k[i+1:]))
				if err != nil {
					continue
				}
				if _, ok := gone[d]; ok {
					linkKeys = append(linkKeys, it.Item().KeyCopy(nil))
				}
			}
			it.Close()
		}
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("cache: remove references: %w", err)
	}
	for chunk := range slices.Chunk(tagKeys, c.removeBatch) {
		err := c.db.Update(func(txn *badger.Txn) error {
			for _, t := range chunk {
				item, err := txn.Get(t.k)
				if errors.Is(err, badger.ErrKeyNotFound) {
					continue
				}
				if err != nil {
					return err
				}
				if cur, err := item.ValueCopy(nil); err != nil || !bytes.Equal(cur, t.v) {
					continue // pointed elsewhere meanwhile
				}
				if err := txn.Delete(t.k); err != nil {
					return err
				}
				tags++
			}
			return nil
		})
		if err != nil {
			return tags, links, fmt.Errorf("cache: remove tags: %w", err)
		}
	}
	wb := c.db.NewWriteBatch()
	for _, k := range linkKeys {
		if err := wb.Delete(k); err != nil {
			wb.Cancel()
			return tags, links, fmt.Errorf("cache: remove links: %w", err)
		}
		links++
	}
	if err := wb.Flush(); err != nil {
		return tags, 0, fmt.Errorf("cache: remove links: %w", err)
	}
	return tags, links, nil
}

// MaxBytes returns the quota, Options.MaxBytes; 0 when there is none.
func (c *Cache) MaxBytes() int64 { return c.maxBytes }
