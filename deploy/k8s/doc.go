// Package k8s holds pgsidecar's Kubernetes deliverables (sidecar manifest
// example, Grafana dashboard, PrometheusRule alerts); it has no code, only a test
// that checks those files against the metrics and flags the proxy really has.
//
// Nothing imports it.
package k8s
