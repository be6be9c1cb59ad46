package pgtest

import (
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metrics are the samples of Prometheus metric families, by family name: what a
// registry gathers or a /metrics page shows.
type Metrics map[string][]*dto.Metric

// Gather gathers g, as the /metrics handler does; an error fails the test.
func Gather(t testing.TB, g prometheus.Gatherer) Metrics {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := Metrics{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf.GetMetric()
	}
	return out
}

// ParseMetrics parses a /metrics page in the Prometheus text format.
func ParseMetrics(text string) (Metrics, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		return nil, err
	}
	out := Metrics{}
	for name, mf := range mfs {
		out[name] = mf.GetMetric()
	}
	return out, nil
}

// ScrapeMetrics gets http://addr/metrics (see HTTPGet) and parses it; a status
// other than 200 is an error.
func ScrapeMetrics(addr string) (Metrics, error) {
	code, body := HTTPGet(addr, "/metrics")
	if code != 200 {
		return nil, fmt.Errorf("GET /metrics: %d %.200s", code, body)
	}
	ms, err := ParseMetrics(body)
	if err != nil {
		return nil, fmt.Errorf("parse /metrics: %w", err)
	}
	return ms, nil
}

// HasLabels reports whether m has every label of want, with its value.
func HasLabels(m *dto.Metric, want map[string]string) bool {
	for k, v := range want {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == k && l.GetValue() == v {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// Value sums the gauge, counter or untyped values of the series of name that
// have the labels of want (every series for nil); n is the number of series
// summed, 0 when there is none.
func (ms Metrics) Value(name string, want map[string]string) (sum float64, n int) {
	for _, m := range ms[name] {
		if !HasLabels(m, want) {
			continue
		}
		n++
		switch {
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Untyped != nil:
			sum += m.GetUntyped().GetValue()
		}
	}
	return sum, n
}

// Histogram merges the histograms of name that have the labels of want (every
// series for nil): sample count, sum, and the cumulative count of each classic
// bucket upper bound.
func (ms Metrics) Histogram(name string, want map[string]string) (count uint64, sum float64, buckets map[float64]uint64) {
	buckets = map[float64]uint64{}
	for _, m := range ms[name] {
		if !HasLabels(m, want) {
			continue
		}
		h := m.GetHistogram()
		count += h.GetSampleCount()
		sum += h.GetSampleSum()
		for _, b := range h.GetBucket() {
			buckets[b.GetUpperBound()] += b.GetCumulativeCount()
		}
	}
	return count, sum, buckets
}
