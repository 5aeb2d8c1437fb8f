package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// byteUnits are the suffixes parseBytes reads: binary (KiB) and decimal (KB, and K, M, G, T as binary, as
// Kubernetes quantities read "Gi"; the short forms are what people type).
var byteUnits = []struct {
	suffix string
	factor float64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40},
	{"B", 1},
}

// parseBytes reads a size such as "200GiB", "500MB", "1.5TiB" or "1048576" (bytes).
func parseBytes(s string) (int64, error) {
	s = strings.TrimSpace(s)
	num, factor := s, 1.0
	for _, u := range byteUnits {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, factor = strings.TrimSpace(n), u.factor
			break
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) || f*factor > math.MaxInt64/2 {
		return 0, fmt.Errorf("%q is not a size such as 200GiB, 500MB or 1048576", s)
	}
	return int64(f * factor), nil
}

// formatBytes writes a size for people: "1.5 GiB".
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// parseFree reads PULLGATE_MIN_FREE: a size, or a percentage of the filesystem ("10%").
func parseFree(s string) (bytes int64, percent float64, err error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, 0, nil
	}
	if p, ok := strings.CutSuffix(s, "%"); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || f < 0 || f >= 100 {
			return 0, 0, fmt.Errorf("%q is not a percentage from 0 to below 100", s)
		}
		return 0, f, nil
	}
	b, err := parseBytes(s)
	return b, 0, err
}
