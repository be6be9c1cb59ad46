# pgsidecar — see README.md.
GO      ?= go
BIN     := bin/proxy
# An execution count, not a duration: with a duration Go 1.26's fuzz coordinator
# can report "context deadline exceeded" at the deadline with no failing input
# (golang/go#75804, fixed in Go 1.27). 200000 runs take a few seconds per target.
FUZZTIME ?= 200000x

.PHONY: all build run dev test test-short fuzz bench bench-go vet fmt clean

all: build

# Stamped into the binary (proxy --version, the startup log). Outside a git
# checkout both are empty and the binary falls back to Go's build information.
# Recursive (=): evaluated only by the targets that use them.
VERSION = $(shell git describe --tags --always --dirty 2>/dev/null)
COMMIT  = $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS = -X main.version=$(VERSION) -X main.commit=$(COMMIT)

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/proxy

## run: the proxy in front of a throwaway local PostgreSQL (prints the DATABASE_URL to use).
run: build
	./$(BIN) dev

dev: run

## test: everything CI runs: vet, race-enabled tests against a real PostgreSQL, short fuzzing.
test: vet
	$(GO) test -race -count=1 -timeout 20m ./...
	$(GO) test -count=1 -run '^(TestSteadyStateAllocs|TestIdleClientMemory|TestMemoryHugeMessages|TestMemoryPreparedFlood)$$' ./internal/proxy/
	$(MAKE) fuzz FUZZTIME=$(FUZZTIME)

test-short:
	$(GO) test -count=1 ./...

fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzReadStartup$$' -fuzztime=$(FUZZTIME) ./internal/wire/
	$(GO) test -run='^$$' -fuzz='^FuzzMessageStream$$' -fuzztime=$(FUZZTIME) ./internal/wire/
	$(GO) test -run='^$$' -fuzz='^FuzzClassify$$' -fuzztime=$(FUZZTIME) ./internal/wire/

vet:
	@test -z "$$(gofmt -l cmd internal)" || { echo "gofmt needed:"; gofmt -l cmd internal; exit 1; }
	$(GO) vet ./...

## bench: pgbench side by side: direct PostgreSQL, PgBouncer (if installed), pgsidecar.
bench: build
	PROXY_BIN=$(BIN) scripts/bench.sh

## bench-go: Go benchmarks of the hot path (allocations per op).
bench-go:
	$(GO) test -run='^$$' -bench=. -benchmem ./internal/wire/ ./internal/proxy/

clean:
	rm -rf bin
