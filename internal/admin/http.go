package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// Probes tells the health endpoints how the process is doing.
type Probes struct {
	// Started reports whether startup finished (listener bound).
	Started func() bool
	// Ready returns nil when the proxy should receive traffic, else the reason.
	Ready func() error
}

// NewHandler returns the HTTP handler of --http-listen: /livez (the process
// serves HTTP), /startupz, /readyz and /metrics when metrics is not nil. The
// status page is not there: it shows clients and their statements, and has a
// listener of its own (NewStatusHandler).
func NewHandler(p Probes, metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /startupz", func(w http.ResponseWriter, _ *http.Request) {
		if p.Started != nil && !p.Started() {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if p.Ready != nil {
			if err := p.Ready(); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})
	if metrics != nil {
		mux.Handle("GET /metrics", metrics)
	}
	return mux
}

// NewStatusHandler returns the HTTP handler of --status-listen: the live
// status page at "/" and its data at "/status.json", from status.
func NewStatusHandler(status func() Status) http.Handler {
	mux := http.NewServeMux()
	registerStatus(mux, status)
	return mux
}

// Server is an HTTP server: the one on --http-listen or on --status-listen.
type Server struct {
	srv *http.Server
	ln  net.Listener
	log *slog.Logger
}

// Listen binds addr and returns a server ready to Serve.
func Listen(addr string, h http.Handler, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin: listen %s: %w", addr, err)
	}
	return &Server{
		srv: &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second},
		ln:  ln,
		log: log,
	}, nil
}

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves until Shutdown; it returns nil after a Shutdown.
func (s *Server) Serve() error {
	err := s.srv.Serve(s.ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops the server gracefully.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// Close stops the server now, closing every connection.
func (s *Server) Close() error { return s.srv.Close() }
