package deploy_test

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"

	"github.com/pullgate/pullgate/metrics"
)

// recorder is a Registerer that registers on a Registry and remembers the collectors, so that the names of
// vectors without children (which Gather leaves out) can be read from their descriptions.
type recorder struct {
	*prometheus.Registry
	collectors []prometheus.Collector
}

func (r *recorder) Register(c prometheus.Collector) error {
	r.collectors = append(r.collectors, c)
	return r.Registry.Register(c)
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

var fqName = regexp.MustCompile(`^Desc\{fqName: "([^"]+)"`)

// exportedSeries returns every series name pullgate serve exports: its registry built as cmd/pullgate builds it
// (the Go and process collectors, then metrics.New with a cache usage function): a histogram as its _bucket, _sum
// and _count, a summary as its name, _sum and _count.
func exportedSeries(t *testing.T) map[string]bool {
	t.Helper()
	reg := &recorder{Registry: prometheus.NewRegistry()}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics.New(reg, func() (int64, int64) { return 0, 0 })

	kinds := map[string]dto.MetricType{}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		kinds[f.GetName()] = f.GetType()
	}
	// Vectors without children are not gathered: their names come from their descriptions, their kinds from
	// their types.
	for _, c := range reg.collectors {
		descs := make(chan *prometheus.Desc)
		go func() { c.Describe(descs); close(descs) }()
		for d := range descs {
			m := fqName.FindStringSubmatch(d.String())
			if m == nil {
				t.Fatalf("cannot read the name from %s", d)
			}
			if _, ok := kinds[m[1]]; ok {
				continue
			}
			switch c.(type) {
			case *prometheus.HistogramVec, prometheus.Histogram:
				kinds[m[1]] = dto.MetricType_HISTOGRAM
			case *prometheus.SummaryVec, prometheus.Summary:
				kinds[m[1]] = dto.MetricType_SUMMARY
			default:
				kinds[m[1]] = dto.MetricType_UNTYPED
			}
		}
	}
	series := map[string]bool{}
	for name, kind := range kinds {
		switch kind {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			// A histogram has no series of its own name.
			series[name+"_bucket"], series[name+"_sum"], series[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			series[name], series[name+"_sum"], series[name+"_count"] = true, true, true
		default:
			series[name] = true
		}
	}
	for _, want := range []string{"pullgate_requests_total", "pullgate_request_duration_seconds_bucket", "pullgate_cache_bytes", "go_goroutines"} {
		if !series[want] {
			t.Fatalf("the registry lacks %s: exportedSeries is broken", want)
		}
	}
	return series
}

var (
	promqlStrings   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promqlMatchers  = regexp.MustCompile(`\{[^{}]*\}`)
	promqlRanges    = regexp.MustCompile(`\[[^\]]*\]`)
	promqlGrouping  = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	promqlVariables = regexp.MustCompile(`\$\{?\w+(?::\w+)?\}?`)
	promqlWord      = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?`)
	promqlNumbers   = regexp.MustCompile(`\b\d[0-9A-Za-z_.]*`) // numbers and durations (5m, 1h30m)
)

// metricNames returns the metric names a PromQL expression selects: what is left once strings, label matchers,
// ranges, grouping clauses, Grafana variables, numbers, keywords and function names are taken out.
func metricNames(expr string) []string {
	e := promqlStrings.ReplaceAllString(expr, `""`)
	e = promqlVariables.ReplaceAllString(e, " ")
	e = promqlMatchers.ReplaceAllString(e, " ")
	e = promqlRanges.ReplaceAllString(e, " ")
	e = promqlGrouping.ReplaceAllString(e, " ")
	e = promqlNumbers.ReplaceAllString(e, " ")
	// PromQL's keywords and modifiers: words that are neither functions (followed by a parenthesis) nor metrics.
	keywords := []string{"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
		"offset", "bool", "inf", "nan", "atan2"}
	var names []string
	for _, m := range promqlWord.FindAllStringSubmatch(e, -1) {
		word := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(m[0]), "("))
		if m[1] != "" || slices.Contains(keywords, strings.ToLower(word)) {
			continue
		}
		names = append(names, word)
	}
	return names
}

// labelValues matches a Grafana variable query label_values(metric, label) or label_values(label).
var labelValues = regexp.MustCompile(`^label_values\(\s*(?:([A-Za-z_:][A-Za-z0-9_:]*(?:\{[^}]*\})?)\s*,\s*)?\w+\s*\)$`)

// dashboardQueries returns every PromQL expression of the dashboard, panel targets and variable queries, with
// where each is.
func dashboardQueries(t *testing.T, data []byte) map[string]string {
	t.Helper()
	type target struct {
		Expr string `json:"expr"`
	}
	type panel struct {
		Title   string   `json:"title"`
		Type    string   `json:"type"`
		Targets []target `json:"targets"`
		Panels  []panel  `json:"panels"`
	}
	var d struct {
		SchemaVersion int     `json:"schemaVersion"`
		Panels        []panel `json:"panels"`
		Templating    struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d: want a current dashboard (36 or later)", d.SchemaVersion)
	}
	queries := map[string]string{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			for i, tg := range p.Targets {
				queries[fmt.Sprintf("panel %q target %d", p.Title, i)] = tg.Expr
			}
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("panel %q has no queries", p.Title)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	var datasource bool
	for _, v := range d.Templating.List {
		if v.Type == "datasource" {
			datasource = true
		}
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			if err := json.Unmarshal(v.Query, &q.Query); err != nil {
				t.Fatalf("variable %s: %v", v.Name, err)
			}
		}
		m := labelValues.FindStringSubmatch(q.Query)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(metric, label)", v.Name, q.Query)
			continue
		}
		queries["variable "+v.Name] = m[1]
	}
	if !datasource {
		t.Error("the dashboard has no datasource variable")
	}
	return queries
}

// TestDashboardMetricsExist checks that every metric the Grafana dashboard queries is one pullgate exports.
func TestDashboardMetricsExist(t *testing.T) {
	data, err := os.ReadFile("dashboards/pullgate.json")
	if err != nil {
		t.Fatal(err)
	}
	series := exportedSeries(t)
	queries := dashboardQueries(t, data)
	if len(queries) < 20 {
		t.Fatalf("found %d queries in the dashboard", len(queries))
	}
	used := map[string]bool{}
	for where, q := range queries {
		names := metricNames(q)
		if len(names) == 0 && !strings.HasPrefix(where, "variable") {
			t.Errorf("%s: %q selects no metric", where, q)
		}
		for _, n := range names {
			used[n] = true
			if !series[n] {
				t.Errorf("%s: %q: pullgate exports no %s", where, q, n)
			}
		}
	}
	t.Logf("%d queries over %d metrics", len(queries), len(used))
}

// TestMetricNames checks the PromQL reading that TestDashboardMetricsExist relies on.
func TestMetricNames(t *testing.T) {
	tests := []struct {
		name, expr string
		want       []string
	}{
		{"plain", `pullgate_fills_in_flight`, []string{"pullgate_fills_in_flight"}},
		{"rate with matchers and range", `sum by (status, cache) (rate(pullgate_requests_total{job=~"$job",cache="hit"}[$__rate_interval]))`, []string{"pullgate_requests_total"}},
		{"quantile", `histogram_quantile(0.99, sum by (le, route) (rate(pullgate_request_duration_seconds_bucket[5m])))`, []string{"pullgate_request_duration_seconds_bucket"}},
		{"binary", `sum(rate(a_total[1m])) / on (job) group_left sum(rate(b_total[1m])) > 0.5`, []string{"a_total", "b_total"}},
		{"grouping after", `sum(rate(c_total[1m])) without (instance)`, []string{"c_total"}},
		{"string with braces", `count(d{x="a{b}"})`, []string{"d"}},
		{"function name alone", `time()`, nil},
		{"offset", `e offset 5m`, []string{"e"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := metricNames(tc.expr); !slices.Equal(got, tc.want) {
				t.Errorf("metricNames(%q) = %q, want %q", tc.expr, got, tc.want)
			}
		})
	}
}
