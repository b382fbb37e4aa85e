package connqueue

import (
	"errors"
	"net"
	"testing"
)

func TestQueue(t *testing.T) {
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
	q := New(addr)
	if q.Addr() != addr {
		t.Fatalf("Addr %v, want %v", q.Addr(), addr)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	got := make(chan net.Conn)
	go func() {
		c, err := q.Accept()
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	if !q.Put(a) {
		t.Fatal("Put on an open queue reported closed")
	}
	if c := <-got; c != a {
		t.Fatalf("Accept gave %v, want the connection Put gave", c)
	}
	q.Close()
	q.Close() // twice is fine
	if q.Put(b) {
		t.Fatal("Put on a closed queue reported taken")
	}
	if _, err := q.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
}
