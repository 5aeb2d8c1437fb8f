package main

import (
	"errors"
	"net"
	"testing"
	"time"
)

// TestLimitListener holds the connection limit: with n open connections the next one is not accepted until
// one of them closes, and closing the listener ends an Accept that waits for a slot.
func TestLimitListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := limitListener(inner, 2)
	accepted := make(chan net.Conn, 4)
	acceptErr := make(chan error, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				acceptErr <- err
				return
			}
			accepted <- c
		}
	}()
	for range 4 {
		c, err := net.Dial("tcp", inner.Addr().String()) // the kernel completes the handshake; Accept decides
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	first, second := <-accepted, <-accepted
	select {
	case <-accepted:
		t.Fatal("a third connection was accepted while two were open")
	case <-time.After(100 * time.Millisecond): // nothing must happen: a short look is all a negative check can do
	}
	first.Close()
	first.Close() // a second Close must not free a second slot
	third := <-accepted
	select {
	case <-accepted:
		t.Fatal("a double Close freed two slots")
	case <-time.After(100 * time.Millisecond):
	}
	second.Close()
	fourth := <-accepted
	third.Close()
	fourth.Close()
	ln.Close()
	if err := <-acceptErr; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
}
