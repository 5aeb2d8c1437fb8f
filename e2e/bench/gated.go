package main

import (
	"context"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/pullgate/pullgate/e2e"
	"github.com/pullgate/pullgate/gate/scannertest"
)

// gatedPolicy is the policy of the gated pullgate: a verdict is needed for every image, and one with a High or
// Critical finding is refused. The fake scanner finds nothing, so every image passes once scanned.
const gatedPolicy = "severity: High\n"

// startGated starts a second pullgate like the first (the same robots, anonymous pulls of everything) with a
// gate policy and a fake Harbor scanner in this process, in front of the upstream at upURL through a counting
// proxy of its own. It returns the pullgate and a function that stops it, the scanner and the proxy.
func startGated(ctx context.Context, bin, dir, logDir, upURL string, ca *e2e.CA, certFile, keyFile, robotsFile string) (*e2e.Pullgate, func(), error) {
	count, err := e2e.StartCountingProxy(upURL, ca, certFile, keyFile)
	if err != nil {
		return nil, nil, err
	}
	scanner := scannertest.New(scannertest.Options{Transport: e2e.Transport(ca.Pool)})
	stop := func() {
		scanner.Close()
		count.Close()
	}
	scannerCA := filepath.Join(dir, "scanner-ca.crt")
	policy := filepath.Join(dir, "gate-policy.yaml")
	if err := e2e.WriteCertFile(scannerCA, scanner.Certificate()); err != nil {
		stop()
		return nil, nil, err
	}
	if err := os.WriteFile(policy, []byte(gatedPolicy), 0o644); err != nil {
		stop()
		return nil, nil, err
	}
	gate := e2e.GateOptions{PolicyFile: policy, ScannerURL: scanner.URL(), ScannerAPI: "harbor", ScannerCAFile: scannerCA}
	pg, err := e2e.StartPullgate(ctx, e2e.PullgateOptions{Bin: bin, Name: "pullgate-gated", DataDir: filepath.Join(dir, "pullgate-gated-data"),
		LogDir: logDir, CertFile: certFile, KeyFile: keyFile, CA: ca, Upstreams: "local=" + count.URL, Default: "local",
		UpstreamCAFile: ca.CertFile, Env: append([]string{"PULLGATE_LOG_LEVEL=warn", "PULLGATE_ROBOTS_FILE=" + robotsFile,
			"PULLGATE_ANONYMOUS=local/**", "PULLGATE_TOKEN_TTL=1h"}, gate.Env()...)})
	if err != nil {
		stop()
		return nil, nil, err
	}
	return pg, func() {
		if err := pg.Stop(10 * time.Second); err != nil {
			log.Print(err)
		}
		stop()
	}, nil
}
