package gate

import (
	"errors"
	"time"
)

// RecordLister is what a Store offers to list every stored record. The cache's index is one.
type RecordLister interface {
	Verdicts(fn func(digest string, record []byte) error) error
}

// Listing is one stored verdict as judged now, for operators (`pullgate verdicts`).
type Listing struct {
	Digest     string    `json:"digest"`
	Upstream   string    `json:"upstream"`
	Repository string    `json:"repository"`
	Tag        string    `json:"tag,omitempty"`
	Verdict    Verdict   `json:"verdict"`
	Rule       string    `json:"rule"`
	Counts     string    `json:"counts"`
	Findings   int       `json:"findings"`
	Scanner    string    `json:"scanner"`
	ScannedAt  time.Time `json:"scanned_at"`
	Message    string    `json:"message,omitempty"`
}

// ErrNoListing is returned by List when the Store cannot list its records.
var ErrNoListing = errors.New("the verdict store cannot list its records")

// List calls fn with every stored verdict that keep accepts, judged under the policy in force now (a verdict
// whose policy asks for no scan any more is listed as pass). It stops at fn's first error and returns it.
func (g *Gate) List(keep func(upstream, repository, digest string) bool, fn func(Listing) error) error {
	lister, ok := g.o.Store.(RecordLister)
	if !ok {
		return ErrNoListing
	}
	pol := g.policy.Current()
	now := g.o.Now()
	return lister.Verdicts(func(digest string, b []byte) error {
		rec, err := DecodeRecord(b)
		if err != nil || !keep(rec.Upstream, rec.Repository, digest) {
			return nil
		}
		a := Artifact{Upstream: rec.Upstream, Repository: rec.Repository, Digest: digest}
		rule := pol.Rule(a.name())
		d := Decision{Verdict: VerdictPass, Rule: rule.Name}
		if rule.NeedsScan() {
			d = judge(rule, rec, a.ref(), now)
		}
		return fn(Listing{Digest: digest, Upstream: rec.Upstream, Repository: rec.Repository, Tag: rec.Tag,
			Verdict: d.Verdict, Rule: d.Rule, Counts: Counts(rec.Findings), Findings: len(rec.Findings),
			Scanner: rec.Scanner.String(), ScannedAt: rec.ScannedAt, Message: d.Message})
	})
}
