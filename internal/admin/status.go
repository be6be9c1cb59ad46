package admin

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"time"
)

// The live status page: "/" serves a self-contained HTML page (no external
// assets) whose script polls "/status.json" every few seconds and renders it with
// textContent only, so nothing a client sends (application_name, statements)
// can become markup.

// Status is a snapshot of the proxy for the status page. It is built by the
// caller (cmd/proxy) from the pools and the server, so this package depends on
// neither.
type Status struct {
	Time time.Time `json:"time"`
	// Pools are the server-connection pools, by route (database, user).
	Pools []PoolStatus `json:"pools"`
	// Clients counts the logged-in clients by state (idle, waiting, active,
	// idle_in_transaction, idle_in_transaction_aborted).
	Clients map[string]int `json:"clients"`
	// Leaks are the clients idle inside a transaction, oldest first.
	Leaks []LeakStatus `json:"leaks"`
	// LeakThresholdSeconds is --leak-threshold (0: off).
	LeakThresholdSeconds float64 `json:"leak_threshold_seconds"`
}

// PoolStatus is one pool's server connections and queue.
type PoolStatus struct {
	Database       string  `json:"database"`
	User           string  `json:"user"`
	Size           int     `json:"size"`    // configured maximum
	Active         int     `json:"active"`  // held by a client
	Idle           int     `json:"idle"`    // idle in the pool
	Login          int     `json:"login"`   // being opened
	Pinned         int     `json:"pinned"`  // held by pinned clients
	Waiting        int     `json:"waiting"` // clients queued for one
	MaxWaitSeconds float64 `json:"max_wait_seconds"`
}

// LeakStatus is one client idle inside a transaction.
type LeakStatus struct {
	ID            uint32  `json:"id"` // the client's BackendKeyData pid
	Application   string  `json:"application"`
	User          string  `json:"user"`
	Database      string  `json:"database"`
	Client        string  `json:"client"` // address
	State         string  `json:"state"`
	LastStatement string  `json:"last_statement"`
	AgeSeconds    float64 `json:"age_seconds"`
	Suspect       bool    `json:"suspect"` // idle longer than the leak threshold
	ServerPID     uint32  `json:"server_pid"`
}

//go:embed status.html
var statusPage []byte

// statusCSP allows the page's own inline script and style (by hash) and fetches
// to the same origin, nothing else.
var statusCSP = "default-src 'none'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'" +
	"; script-src " + inlineHash(statusPage, "<script>", "</script>") +
	"; style-src " + inlineHash(statusPage, "<style>", "</style>")

// inlineHash is the CSP source of the first inline element between open and
// close in page.
func inlineHash(page []byte, open, close string) string {
	_, rest, ok := bytes.Cut(page, []byte(open))
	body, _, ok2 := bytes.Cut(rest, []byte(close))
	if !ok || !ok2 {
		return "'none'"
	}
	sum := sha256.Sum256(body)
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}

// registerStatus serves the page at "/" (exactly) and its data at
// "/status.json"; other unknown paths stay 404.
func registerStatus(mux *http.ServeMux, status func() Status) {
	if status == nil {
		return
	}
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Cache-Control", "no-store")
		h.Set("Content-Security-Policy", statusCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		_, _ = w.Write(statusPage)
	})
	mux.HandleFunc("GET /status.json", func(w http.ResponseWriter, _ *http.Request) {
		st := status()
		if st.Time.IsZero() {
			st.Time = time.Now()
		}
		if st.Pools == nil {
			st.Pools = []PoolStatus{}
		}
		if st.Leaks == nil {
			st.Leaks = []LeakStatus{}
		}
		if st.Clients == nil {
			st.Clients = map[string]int{}
		}
		b, err := json.Marshal(st) // escapes <, > and & as \u003c etc.
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(append(b, '\n'))
	})
}
