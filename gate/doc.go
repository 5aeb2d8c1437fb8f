// Package gate decides whether a manifest may be served: by the vulnerability verdict a scanner gave for its
// digest, judged under the policy in force, and by the signatures the policy asks for.
//
// It does not know HTTP routing, the cache's layout or how upstreams are reached: verdicts are kept through a
// Store, signatures are fetched through a SignatureSource, and scanners are asked through a Scanner. It never
// imports proxy, cache or upstream.
package gate
