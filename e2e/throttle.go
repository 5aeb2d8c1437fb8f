package e2e

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// maxThrottleConns bounds the connections a Throttle carries at once; further ones are closed on accept.
const maxThrottleConns = 1024

// throttleChunk is the most a Throttle reads from the target before it paces and writes.
const throttleChunk = 32 << 10

// Throttle is a TCP proxy on loopback that paces, per accepted connection, the bytes going from its target back
// to the client, as registry CDNs limit each connection. The client-to-target direction is not paced. It does
// not look inside the stream (TLS passes through), so clients verify the target's own certificate, and every
// connection a client opens to the Throttle is one connection to the target.
type Throttle struct {
	// Addr is host:port; URL is https://Addr.
	Addr, URL string
	// BytesPerSecond is each connection's rate from the target to the client; zero or less means unpaced. It
	// may change at any time and applies to open connections from their next chunk on.
	BytesPerSecond atomic.Int64

	target string
	l      net.Listener
	slots  chan struct{}
	done   chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}

	epoch  atomic.Int64 // bumped by Reset
	active atomic.Int64 // connections that carried target bytes since the last Reset
}

// StartThrottle listens on a free loopback port and forwards every connection to target (host:port), pacing the
// answers at bytesPerSecond per connection (zero or less: unpaced).
func StartThrottle(target string, bytesPerSecond int64) (*Throttle, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	t := &Throttle{
		Addr:   l.Addr().String(),
		target: target,
		l:      l,
		slots:  make(chan struct{}, maxThrottleConns),
		done:   make(chan struct{}),
		conns:  map[net.Conn]struct{}{},
	}
	t.URL = "https://" + t.Addr
	t.BytesPerSecond.Store(bytesPerSecond)
	t.wg.Add(1)
	go t.accept()
	return t, nil
}

// ActiveConns returns how many connections carried bytes from the target to a client since the last Reset.
func (t *Throttle) ActiveConns() int { return int(t.active.Load()) }

// Reset zeroes ActiveConns.
func (t *Throttle) Reset() {
	t.epoch.Add(1)
	t.active.Store(0)
}

// Close stops accepting, closes every open connection and waits for their goroutines.
func (t *Throttle) Close() error {
	close(t.done)
	err := t.l.Close()
	t.mu.Lock()
	for c := range t.conns {
		_ = c.Close()
	}
	t.mu.Unlock()
	t.wg.Wait()
	return err
}

func (t *Throttle) accept() {
	defer t.wg.Done()
	for {
		c, err := t.l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		select {
		case t.slots <- struct{}{}:
		default:
			_ = c.Close() // over the bound
			continue
		}
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			defer func() { <-t.slots }()
			t.serve(c)
		}()
	}
}

// track adds c to the open connections, or closes it and says false when the Throttle is closing.
func (t *Throttle) track(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	select {
	case <-t.done:
		_ = c.Close()
		return false
	default:
	}
	t.conns[c] = struct{}{}
	return true
}

func (t *Throttle) untrack(c net.Conn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.conns, c)
	_ = c.Close()
}

func (t *Throttle) serve(client net.Conn) {
	if !t.track(client) {
		return
	}
	defer t.untrack(client)
	d := net.Dialer{Timeout: 10 * time.Second}
	up, err := d.Dial("tcp", t.target)
	if err != nil {
		return
	}
	if !t.track(up) {
		return
	}
	defer t.untrack(up)
	finished := make(chan struct{}, 2)
	go func() { // client -> target, unpaced
		buf := make([]byte, throttleChunk)
		copyConn(up, client, buf, nil)
		finished <- struct{}{}
	}()
	go func() { // target -> client, paced
		buf := make([]byte, throttleChunk)
		copyConn(client, up, buf, t.pacer())
		finished <- struct{}{}
	}()
	// Either direction ending ends the connection: loopback clients and servers here close, not half-close.
	select {
	case <-finished:
	case <-t.done:
	}
	_ = client.Close()
	_ = up.Close()
	<-finished
}

// pacer returns the function that copyConn calls before writing each chunk of n bytes from the target: it counts
// the connection as active once per Reset epoch and waits as the connection's token bucket says. It returns
// false when the Throttle is closing.
func (t *Throttle) pacer() func(n int) bool {
	var b bucket
	seen := int64(-1)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	return func(n int) bool {
		if e := t.epoch.Load(); e != seen {
			seen = e
			t.active.Add(1)
		}
		rate := t.BytesPerSecond.Load()
		if rate <= 0 {
			return true
		}
		wait := b.reserve(time.Now(), n, float64(rate))
		if wait <= 0 {
			return true
		}
		timer.Reset(wait) // pacing the stream, not waiting for something to happen
		select {
		case <-timer.C:
			return true
		case <-t.done:
			timer.Stop()
			return false
		}
	}
}

// copyConn copies src to dst through buf, calling pace (when not nil) before each write; it stops at the first
// error either side, or when pace says false.
func copyConn(dst, src net.Conn, buf []byte, pace func(n int) bool) {
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if pace != nil && !pace(n) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// bucket is a token bucket of bytes. Tokens accrue at the rate given to reserve, up to a burst of 10 ms of that
// rate (at least throttleChunk); a reservation beyond the tokens at hand leaves a debt that later accrual pays
// back. The zero bucket is full.
type bucket struct {
	tokens float64
	last   time.Time
}

// burst is the bucket's capacity at rate bytes per second.
func burst(rate float64) float64 { return max(rate/100, throttleChunk) }

// reserve takes n tokens at now, refilling at rate bytes per second since the last call, and returns how long
// the caller must wait before sending the n bytes (zero when the tokens were there).
func (b *bucket) reserve(now time.Time, n int, rate float64) time.Duration {
	capacity := burst(rate)
	if b.last.IsZero() {
		b.tokens = capacity
	} else if dt := now.Sub(b.last); dt > 0 {
		b.tokens = min(capacity, b.tokens+dt.Seconds()*rate)
	}
	b.last = now
	b.tokens -= float64(n)
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / rate * float64(time.Second))
}
