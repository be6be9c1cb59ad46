// Package k8s holds pgsidecar's Kubernetes deliverables: the Kustomize component
// that adds the proxy as a native sidecar to a Deployment
// (kustomize/components/pgsidecar), an example overlay (kustomize/example) and its
// rendered output (sidecar-example.yaml), the PrometheusRule alerts
// (prometheus-rules.yaml, unit-tested by prometheus-rules.test.yaml) and the Grafana
// dashboard (grafana/pgsidecar-dashboard.json).
//
// It is a Go module of its own (github.com/pgsidecar/pgsidecar/deploy/k8s) so that
// the libraries its tests check those files with (k8s.io/api, the Prometheus
// Operator's types, Prometheus's PromQL parser and rule loader, Kustomize, the
// Grafana Foundation SDK) never enter the proxy's own go.mod. It has no code, only
// tests (README.md says which tool checks what); run them with make test, or
//
//	cd deploy/k8s && go test ./...
//
// Nothing imports it.
package k8s
