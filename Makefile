# pgsidecar — see README.md.
GO      ?= go
BIN     := bin/proxy
# An execution count, not a duration: with a duration Go 1.26's fuzz coordinator
# can report "context deadline exceeded" at the deadline with no failing input
# (golang/go#75804, fixed in Go 1.27). 200000 runs take a few seconds per target.
FUZZTIME ?= 200000x

.PHONY: all build run dev test test-deploy test-short fuzz bench bench-go vet fmt clean
.PHONY: image image-binaries image-multiarch image-push

all: build

# Stamped into the binary (proxy --version, the startup log). Outside a git
# checkout both are empty and the binary falls back to Go's build information.
# Recursive (=): evaluated only by the targets that use them.
VERSION = $(shell git describe --tags --always --dirty 2>/dev/null)
COMMIT  = $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS = -X main.version=$(VERSION) -X main.commit=$(COMMIT)

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/proxy

## run: the proxy in front of a throwaway local PostgreSQL (prints the DATABASE_URL to use);
## ARGS are passed to it: make run ARGS='--pool-size 5 --admin-users postgres'.
run: build
	./$(BIN) dev $(ARGS)

dev: run

## test: everything CI runs: vet, race-enabled tests against a real PostgreSQL (the
## proxy's twice: plain server connections, then TLS ones), the
## Kubernetes/Prometheus/Grafana files (test-deploy), short fuzzing.
test: vet
	$(GO) test -race -count=1 -timeout 20m ./...
	PGSIDECAR_TEST_UPSTREAM_SSLMODE=verify-full $(GO) test -race -count=1 -timeout 20m ./internal/proxy/
	$(MAKE) test-deploy
	$(GO) test -count=1 -run '^(TestSteadyStateAllocs|TestIdleClientMemory|TestMemoryHugeMessages|TestMemoryPreparedFlood|TestLoopLargeStatementClassifiedOffLoop)$$' ./internal/proxy/
	$(MAKE) fuzz FUZZTIME=$(FUZZTIME)

## test-deploy: deploy/k8s (Kustomize component, PrometheusRule, Grafana dashboard),
## checked by the tests of its own Go module, deploy/k8s/go.mod, which keeps their
## heavy dependencies (k8s.io/api, Prometheus, Kustomize) out of the proxy's go.mod.
## The root ./... skips nested modules. promtool: Debian package prometheus.
test-deploy:
	@test -z "$$(gofmt -l deploy/k8s)" || { echo "gofmt needed:"; gofmt -l deploy/k8s; exit 1; }
	cd deploy/k8s && $(GO) vet ./...
	cd deploy/k8s && $(GO) test -race -count=1 -timeout 15m ./...

test-short:
	$(GO) test -count=1 ./...

fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzReadStartup$$' -fuzztime=$(FUZZTIME) ./internal/wire/
	$(GO) test -run='^$$' -fuzz='^FuzzMessageStream$$' -fuzztime=$(FUZZTIME) ./internal/wire/
	$(GO) test -run='^$$' -fuzz='^FuzzClassify$$' -fuzztime=$(FUZZTIME) ./internal/sqlscan/
	$(GO) test -run='^$$' -fuzz='^FuzzNormalize$$' -fuzztime=$(FUZZTIME) ./internal/sqlscan/
	$(GO) test -run='^$$' -fuzz='^FuzzExchange$$' -fuzztime=$(FUZZTIME) ./internal/auth/

vet:
	@test -z "$$(gofmt -l cmd internal)" || { echo "gofmt needed:"; gofmt -l cmd internal; exit 1; }
	$(GO) vet ./...

## bench: pgbench side by side: direct PostgreSQL, PgBouncer (if installed), pgsidecar.
## make bench ARGS=--quick (or QUICK=1) for a smoke run, ARGS=--idle for memory per
## idle client; ROUNDS=3, CLIENTS='8 64' etc. are passed on: scripts/bench.sh --help.
bench: build
	PROXY_BIN=$(BIN) scripts/bench.sh $(ARGS)

## bench-go: Go benchmarks of the hot path (allocations per op).
bench-go:
	$(GO) test -run='^$$' -bench=. -benchmem ./internal/wire/ ./internal/proxy/

## Container image (README.md, "Container image"): FROM scratch with the static
## binary and the host's CA bundle. Nothing is pulled: the binaries are
## cross-compiled here into bin/image, the Containerfile's build context.
# podman when installed, else docker.
CONTAINER_ENGINE ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || echo docker)
# Global flags of the engine, before its subcommand (e.g. --runtime runc).
CONTAINER_ENGINE_FLAGS ?=
ENGINE    = $(CONTAINER_ENGINE) $(CONTAINER_ENGINE_FLAGS)
IMAGE     ?= ghcr.io/pgsidecar/pgsidecar
# git describe as a valid tag (+ and / replaced); "dev" outside a git checkout.
TAG       ?= $(or $(subst +,-,$(subst /,-,$(IMAGE_VERSION))),dev)
IMAGE_REF  = $(IMAGE):$(TAG)
# More tags for the same image; EXTRA_TAGS= for none.
EXTRA_TAGS ?= latest
# make image: one platform, this machine's; make image-multiarch and
# make image-binaries: PLATFORMS.
PLATFORM  ?= linux/$(shell $(GO) env GOARCH)
PLATFORMS ?= linux/amd64,linux/arm64
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt
IMAGE_SOURCE   ?= https://github.com/pgsidecar/pgsidecar
# SPDX; the repository has no LICENSE file yet.
IMAGE_LICENSES ?= NOASSERTION
# DWARF and the symbol table are of no use in a scratch image (stack traces
# keep their function names without them): about 5 MB less.
IMAGE_STRIP ?= -s -w
# VERSION and COMMIT once per make run, so that the binary, the labels and the
# tag agree even if the tree turns dirty meanwhile.
IMAGE_VERSION = $(eval IMAGE_VERSION := $(VERSION))$(IMAGE_VERSION)
IMAGE_COMMIT  = $(eval IMAGE_COMMIT := $(COMMIT))$(IMAGE_COMMIT)
IMAGE_PLATFORMS = $(PLATFORMS)
image: IMAGE_PLATFORMS = $(PLATFORM)
# podman: no intermediate image per instruction (they would pile up as <none>).
IMAGE_BUILD = build -f Containerfile $(if $(filter podman,$(notdir $(CONTAINER_ENGINE))),--layers=false) \
	--build-arg VERSION=$(or $(IMAGE_VERSION),dev) --build-arg COMMIT=$(or $(IMAGE_COMMIT),unknown) \
	--build-arg SOURCE=$(IMAGE_SOURCE) --build-arg LICENSES=$(IMAGE_LICENSES)
comma := ,

## image-binaries: bin/image/<os>_<arch>/pgsidecar for each of PLATFORMS and the CA bundle.
image-binaries:
	@test -s $(CA_BUNDLE) || { echo "make: no CA bundle at $(CA_BUNDLE): apt-get install ca-certificates (or set CA_BUNDLE=)" >&2; exit 1; }
	@mkdir -p bin/image && install -m 0644 $(CA_BUNDLE) bin/image/ca-certificates.crt
	@set -e; for p in $(subst $(comma), ,$(IMAGE_PLATFORMS)); do \
		os=$${p%%/*}; arch=$${p#*/}; arch=$${arch%%/*}; \
		echo "GOOS=$$os GOARCH=$$arch CGO_ENABLED=0 $(GO) build -trimpath -o bin/image/$${os}_$$arch/pgsidecar ./cmd/proxy"; \
		GOOS=$$os GOARCH=$$arch CGO_ENABLED=0 $(GO) build -trimpath \
			-ldflags "$(IMAGE_STRIP) -X main.version=$(IMAGE_VERSION) -X main.commit=$(IMAGE_COMMIT)" \
			-o bin/image/$${os}_$$arch/pgsidecar ./cmd/proxy; \
		chmod 0755 bin/image/$${os}_$$arch/pgsidecar; \
	done

## image: $(IMAGE):$(TAG) and $(IMAGE):latest for this machine's platform, with podman or docker.
image: image-binaries
	@command -v $(CONTAINER_ENGINE) >/dev/null || { echo "make: $(CONTAINER_ENGINE) not found: install podman (or docker), or set CONTAINER_ENGINE=" >&2; exit 1; }
	$(ENGINE) $(IMAGE_BUILD) --platform $(PLATFORM) -t $(IMAGE_REF) $(foreach t,$(EXTRA_TAGS),-t $(IMAGE):$(t)) .
	@echo "built $(IMAGE_REF) ($$($(ENGINE) image inspect --format '{{.Size}}' $(IMAGE_REF)) bytes)"

## image-push: push what make image built.
image-push:
	$(ENGINE) push $(IMAGE_REF)
	$(foreach t,$(EXTRA_TAGS),$(ENGINE) push $(IMAGE):$(t) &&) true

## image-multiarch: one manifest list for PLATFORMS; PUSH=1 pushes it (docker buildx cannot keep it locally).
image-multiarch: image-binaries
ifeq ($(notdir $(CONTAINER_ENGINE)),docker)
	$(ENGINE) buildx $(IMAGE_BUILD) --platform $(PLATFORMS) -t $(IMAGE_REF) $(foreach t,$(EXTRA_TAGS),-t $(IMAGE):$(t)) $(if $(PUSH),--push) .
else
	-@$(ENGINE) manifest rm $(IMAGE_REF) >/dev/null 2>&1 || $(ENGINE) rmi $(IMAGE_REF) >/dev/null 2>&1
	$(ENGINE) $(IMAGE_BUILD) --platform $(PLATFORMS) --manifest $(IMAGE_REF) .
	$(if $(PUSH),$(foreach t,$(TAG) $(EXTRA_TAGS),$(ENGINE) manifest push --all $(IMAGE_REF) docker://$(IMAGE):$(t) &&) true)
endif

clean:
	rm -rf bin
