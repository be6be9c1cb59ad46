package tlsmeasure

import (
	"crypto/tls"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// loop is model (b): one goroutine locked to its thread relays pairs of
// non-blocking descriptors registered edge-triggered in its own epoll instance.
// A side with a tls.Conn is driven through its memConn. The loop's buffers are
// shared by all pairs; a pair keeps bytes of its own only when a write would block.
type loop struct {
	epfd, evfd int

	mu      sync.Mutex
	queue   []*pair
	closing bool

	sides []*side // by descriptor
	rbuf  []byte  // socket reads
	pbuf  []byte  // plaintext out of tls.Conn.Read
	obuf  []byte  // ciphertext out of tls.Conn.Write (lent to a memConn)

	sndbuf int // test option: SO_SNDBUF for the loop's descriptors (0: leave)
	pairs  *atomic.Int64
	done   chan struct{}
	stats  loopStats
}

type loopStats struct {
	blockedTLS   atomic.Int64 // ciphertext writes that hit EAGAIN
	blockedPlain atomic.Int64 // plaintext writes that hit EAGAIN
	resumed      atomic.Int64 // pending writes finished on EPOLLOUT
	wouldBlock   atomic.Int64 // tls.Conn.Read answers errWouldBlock
	held         atomic.Int64 // ciphertext kept because the other side was blocked
	leftover     atomic.Int64 // would-block with bytes still in memConn.in: must stay 0
}

// pair is a client socket and its upstream socket.
type pair struct {
	client, up *side
}

type side struct {
	fd       int
	peer     *side
	tc       *tls.Conn // nil: plaintext
	mc       *memConn
	pend     []byte // bytes for this socket that it did not take yet
	held     []byte // ciphertext from this socket tls.Conn has not taken yet
	tlsMore  bool   // tls.Conn may hold input not yet read out
	readable bool   // an EPOLLIN edge not yet drained to EAGAIN
	hup      bool   // the peer hung up: read to EAGAIN or EOF
	dead     bool
}

func newLoop(pairs *atomic.Int64) (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	evfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, err
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(evfd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(evfd)
		unix.Close(epfd)
		return nil, err
	}
	l := &loop{
		epfd: epfd, evfd: evfd,
		rbuf:  make([]byte, 64<<10),
		pbuf:  make([]byte, 32<<10),
		obuf:  make([]byte, 0, 64<<10),
		pairs: pairs,
		done:  make(chan struct{}),
	}
	return l, nil
}

func (l *loop) start() { go l.run() }

// add hands a pair to the loop (from any goroutine).
func (l *loop) add(p *pair) {
	l.mu.Lock()
	l.queue = append(l.queue, p)
	l.mu.Unlock()
	l.wake()
}

func (l *loop) wake() {
	one := [8]byte{1}
	for {
		_, err := unix.Write(l.evfd, one[:])
		if err != unix.EINTR {
			return
		}
	}
}

func (l *loop) stop() {
	l.mu.Lock()
	l.closing = true
	l.mu.Unlock()
	l.wake()
	<-l.done
}

func (l *loop) run() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer close(l.done)
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(l.epfd, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			panic(fmt.Sprintf("epoll_wait: %v", err))
		}
		woken := false
		for i := range n {
			e := &events[i]
			fd := int(e.Fd)
			if fd == l.evfd {
				woken = true
				continue
			}
			s := l.side(fd)
			if s == nil || s.dead {
				continue
			}
			if e.Events&unix.EPOLLOUT != 0 {
				l.writable(s)
			}
			if e.Events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 && !s.dead {
				s.readable = true
				if e.Events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
					s.hup = true
				}
				l.pump(s)
			}
		}
		// New pairs only after the batch, so that no event of this batch can
		// name a descriptor number a new pair reuses.
		if woken && l.drainQueue() {
			for fd, s := range l.sides {
				if s != nil && !s.dead && s.fd == fd {
					l.closePair(s)
				}
			}
			unix.Close(l.evfd)
			unix.Close(l.epfd)
			return
		}
	}
}

func (l *loop) side(fd int) *side {
	if fd < len(l.sides) {
		return l.sides[fd]
	}
	return nil
}

// drainQueue registers queued pairs; it reports whether the loop must stop.
func (l *loop) drainQueue() bool {
	var buf [8]byte
	_, _ = unix.Read(l.evfd, buf[:])
	l.mu.Lock()
	q, closing := l.queue, l.closing
	l.queue = nil
	l.mu.Unlock()
	for _, p := range q {
		for _, s := range []*side{p.client, p.up} {
			for s.fd >= len(l.sides) {
				l.sides = append(l.sides, make([]*side, len(l.sides)+64)...)
			}
			l.sides[s.fd] = s
			if l.sndbuf > 0 {
				_ = unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, l.sndbuf)
			}
			ev := unix.EpollEvent{
				Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET,
				Fd:     int32(s.fd),
			}
			if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, s.fd, &ev); err != nil {
				panic(fmt.Sprintf("epoll_ctl: %v", err))
			}
		}
		// Records tls.Conn may already hold from the handshake phase.
		if p.up.tc != nil && !p.up.dead {
			p.up.tlsMore = true
			l.pump(p.up)
		}
	}
	return closing
}

// pump moves what s has to read to its peer, until s would block or the peer's
// socket stops taking bytes (then the peer's EPOLLOUT resumes it).
func (l *loop) pump(s *side) {
	d := s.peer
	if s.tc != nil && (len(s.held) > 0 || s.tlsMore) && len(d.pend) == 0 {
		held := s.held
		s.held = nil
		if !l.decrypt(s, held) {
			return
		}
	}
	for s.readable && !s.dead && len(d.pend) == 0 && len(s.held) == 0 {
		n, err := unix.Read(s.fd, l.rbuf)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			s.readable = false
			return
		}
		if err != nil || n == 0 {
			l.closePair(s)
			return
		}
		data := l.rbuf[:n]
		switch {
		case s.tc != nil:
			if !l.decrypt(s, data) {
				return
			}
		case d.tc != nil:
			l.encrypt(d, data)
		default:
			l.send(d, data)
		}
		// A short read drained the socket: with edge triggering, bytes that
		// arrive later are a new event. Not after a hang-up, whose edge is past.
		if n < len(l.rbuf) && !s.hup {
			s.readable = false
		}
	}
}

// decrypt feeds ciphertext read from s to its tls.Conn and sends the plaintext to
// the peer. It reports false when it stopped early: the pair died or the peer
// blocked (what tls.Conn did not take is then kept in s.held).
func (l *loop) decrypt(s *side, data []byte) bool {
	d := s.peer
	s.mc.in = data
	for {
		n, err := s.tc.Read(l.pbuf)
		if n > 0 {
			l.send(d, l.pbuf[:n])
		}
		if len(s.mc.out) > 0 && !s.dead { // tls.Conn answered something (KeyUpdate)
			out := s.mc.out
			s.mc.out = nil
			l.send(s, out)
		}
		if s.dead {
			return false
		}
		if err == errWouldBlock {
			if len(s.mc.in) != 0 {
				l.stats.leftover.Add(1)
			}
			l.stats.wouldBlock.Add(1)
			s.tlsMore = false
			s.mc.in = nil
			return true
		}
		if err != nil {
			l.closePair(s)
			return false
		}
		if len(d.pend) > 0 {
			if len(s.mc.in) > 0 {
				s.held = append([]byte(nil), s.mc.in...)
				l.stats.held.Add(1)
			}
			s.mc.in = nil
			s.tlsMore = true
			return false
		}
	}
}

// encrypt writes plaintext for TLS side d through its tls.Conn and sends the
// records it produced.
func (l *loop) encrypt(d *side, data []byte) {
	d.mc.out = l.obuf[:0]
	_, err := d.tc.Write(data)
	out := d.mc.out
	d.mc.out = nil
	if err != nil {
		l.closePair(d)
		return
	}
	l.send(d, out)
	l.obuf = out[:0]
}

// send writes b to d's socket; what it does not take is copied to d.pend and
// written on EPOLLOUT.
func (l *loop) send(d *side, b []byte) {
	if d.dead {
		return
	}
	if len(d.pend) > 0 {
		d.pend = append(d.pend, b...)
		return
	}
	for len(b) > 0 {
		n, err := unix.Write(d.fd, b)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			d.pend = append([]byte(nil), b...)
			if d.tc != nil {
				l.stats.blockedTLS.Add(1)
			} else {
				l.stats.blockedPlain.Add(1)
			}
			return
		}
		if err != nil {
			l.closePair(d)
			return
		}
		b = b[n:]
	}
}

// writable writes d's pending bytes and, once they are all out, resumes its peer.
func (l *loop) writable(d *side) {
	if len(d.pend) == 0 {
		return
	}
	for len(d.pend) > 0 {
		n, err := unix.Write(d.fd, d.pend)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return
		}
		if err != nil {
			l.closePair(d)
			return
		}
		d.pend = d.pend[n:]
	}
	d.pend = nil
	l.stats.resumed.Add(1)
	if s := d.peer; !s.dead && (s.readable || s.tlsMore || len(s.held) > 0) {
		l.pump(s)
	}
}

func (l *loop) closePair(s *side) {
	if s.dead {
		return
	}
	for _, x := range []*side{s, s.peer} {
		x.dead = true
		if x.fd < len(l.sides) && l.sides[x.fd] == x {
			l.sides[x.fd] = nil
		}
		unix.Close(x.fd) // also leaves the epoll set
		if x.mc != nil {
			x.mc.fd = -1
		}
		x.pend, x.held = nil, nil
	}
	l.pairs.Add(-1)
}

// newLoopPair makes the sides of a pair whose handshake (if any) is done; it owns
// the descriptors.
func newLoopPair(clientFD, upFD int, tc *tls.Conn, mc *memConn) (*pair, error) {
	if clientFD < 0 || upFD < 0 {
		return nil, errors.New("bad descriptor")
	}
	c := &side{fd: clientFD}
	u := &side{fd: upFD, tc: tc, mc: mc}
	c.peer, u.peer = u, c
	return &pair{client: c, up: u}, nil
}
