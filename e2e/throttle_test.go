package e2e

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

func TestBucketReserve(t *testing.T) {
	t0 := time.Unix(1000, 0)
	const rate = 1e6 // burst 32 KiB (throttleChunk), as rate/100 is smaller
	type step struct {
		at   time.Duration // since t0
		n    int
		want time.Duration
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"a new bucket is full", []step{{0, throttleChunk, 0}}},
		{"beyond the burst waits for the debt", []step{{0, throttleChunk, 0}, {0, 1000, time.Millisecond}}},
		{"the debt is paid by time", []step{{0, throttleChunk, 0}, {0, 1000, time.Millisecond}, {time.Millisecond, 1000, time.Millisecond}}},
		{"idle time refills only up to the burst", []step{{0, throttleChunk, 0}, {time.Hour, 2 * throttleChunk, time.Duration(throttleChunk) * time.Microsecond}}},
		{"the long-run rate is the rate", []step{{0, throttleChunk, 0}, {0, 500_000, 500 * time.Millisecond}, {500 * time.Millisecond, 500_000, 500 * time.Millisecond}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bucket
			for i, s := range tt.steps {
				if got := b.reserve(t0.Add(s.at), s.n, rate); got != s.want {
					t.Fatalf("step %d: reserve(%v, %d) = %v, want %v", i, s.at, s.n, got, s.want)
				}
			}
		})
	}
}

func TestThrottleForwards(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var req [1]byte // one byte asks for the payload
				if _, err := io.ReadFull(c, req[:]); err == nil {
					_, _ = c.Write(payload)
				}
			}()
		}
	}()
	th, err := StartThrottle(l.Addr().String(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer th.Close()

	tests := []struct {
		name string
		rate int64
	}{
		{"unpaced", 0},
		{"paced", 1 << 30}, // fast enough for a test, slow enough to go through the bucket
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			th.Reset()
			th.BytesPerSecond.Store(tt.rate)
			c, err := net.Dial("tcp", th.Addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte{1}); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, payload) {
				t.Fatalf("got %d bytes, want the %d-byte payload", len(got), len(payload))
			}
			if n := th.ActiveConns(); n != 1 {
				t.Fatalf("ActiveConns = %d, want 1", n)
			}
		})
	}
}
