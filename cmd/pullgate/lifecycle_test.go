package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestLifecycleCommands runs pin, pins, unpin, purge and status against a running pullgate's admin API, and
// checks who may use them.
func TestLifecycleCommands(t *testing.T) {
	g := startGated(t, "severity: High\n", nil)
	nginx, _ := randomImage(t)
	redis, _ := randomImage(t)
	g.push(t, "library/nginx:1", nginx)
	g.push(t, "library/redis:7", redis)

	cmd := func(robot [2]string, args ...string) (int, string, string) {
		t.Helper()
		var out, errOut bytes.Buffer
		code := run(args, g.env(robot), &out, &errOut)
		return code, out.String(), errOut.String()
	}
	must := func(want int, has string, robot [2]string, args ...string) string {
		t.Helper()
		code, out, errOut := cmd(robot, args...)
		if code != want || !strings.Contains(out+errOut, has) {
			t.Fatalf("pullgate %s = %d\nstdout: %s\nstderr: %s\nwant %d and %q", strings.Join(args, " "), code, out, errOut, want, has)
		}
		return out
	}

	must(0, "seeded 2 of 2 images", g.ci, "seed", "--state", "", "nginx:1", "redis:7")
	// A client gets a blob's last byte once it is verified, a moment before it is stored: wait for that.
	deadline := time.Now().Add(10 * time.Second)
	for code, _, _ := cmd(g.ops, "status", "nginx:1", "redis:7"); code != 0 && time.Now().Before(deadline); code, _, _ = cmd(g.ops, "status", "nginx:1", "redis:7") {
		time.Sleep(20 * time.Millisecond) // polling with a deadline
	}
	must(0, "docker.io/library/nginx:1: complete", g.ops, "status", "nginx:1", "redis:7")
	must(1, "not cached", g.ops, "status", "nginx:2")

	// Only admins: anonymous clients are asked to log in, others refused.
	must(1, "admin: true", [2]string{}, "pins")
	must(1, "admin: true", g.ci, "pin", "nginx:1")

	must(0, "docker.io/library/nginx:1\n1 pins hold 3 objects", g.ops, "pin", "nginx:1")
	must(0, "docker.io/library/nginx:1", g.ops, "pins")

	// A dry run removes nothing; --yes does; pinned content stays.
	must(0, "would remove 3 objects", g.ops, "purge", "redis:7")
	must(0, "complete", g.ops, "status", "redis:7")
	must(0, "removed 3 objects", g.ops, "purge", "--yes", "redis:7")
	must(1, "redis:7: not cached", g.ops, "status", "redis:7")
	must(0, "3 pinned objects stay", g.ops, "purge", "--yes", "--upstream", "docker.io")
	must(0, "complete, pinned", g.ops, "status", "nginx:1")
	must(1, "no such pin", g.ops, "unpin", "nginx:2")
	must(0, "0 pins hold 0 objects", g.ops, "unpin", "nginx:1")
	must(0, "removed 3 objects", g.ops, "purge", "--yes", "--repository", "docker.io/library/*")
	must(1, "not cached", g.ops, "status", "nginx:1")

	// The data directory of a running pullgate is not opened behind its back.
	env := map[string]string{"PULLGATE_DATA_DIR": g.dataDir}
	var out, errOut bytes.Buffer
	if code := run([]string{"pins"}, env, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "--server") {
		t.Errorf("pins on a running pullgate's data dir = %d, %q", code, errOut.String())
	}
	// Usage mistakes.
	for _, args := range [][]string{{"purge"}, {"purge", "--older-than", "soon", "--yes"}, {"pin"}, {"pins", "x"}, {"status"}} {
		if code, _, _ := cmd(g.ops, args...); code != 2 {
			t.Errorf("pullgate %s = %d, want 2", strings.Join(args, " "), code)
		}
	}
}

// TestRemoteExportImport exports from one running pullgate's admin API and imports into another's, which then
// serves the image with its upstream gone.
func TestRemoteExportImport(t *testing.T) {
	a := startGated(t, "severity: High\n", nil)
	img, _ := randomImage(t)
	a.push(t, "library/app:1", img)
	run := func(g *gatedPullgate, robot [2]string, args ...string) (int, string) {
		t.Helper()
		var out, errOut bytes.Buffer
		code := run(args, g.env(robot), &out, &errOut)
		return code, out.String() + errOut.String()
	}
	if code, out := run(a, a.ci, "seed", "--state", "", "app:1"); code != 0 {
		t.Fatalf("seed: %d %s", code, out)
	}
	bundle := t.TempDir() + "/bundle.tar"
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, out := run(a, a.ops, "export", "app:1", "-o", bundle)
		if code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("export: %d %s", code, out)
		}
		time.Sleep(20 * time.Millisecond) // the last blob is stored a moment after seed read it
	}
	if code, out := run(a, a.ci, "export", "app:1", "-o", bundle+".2"); code != 1 || !strings.Contains(out, "admin: true") {
		t.Errorf("export by a robot without admin: %d %s", code, out)
	}

	b := startGated(t, "severity: High\n", nil)
	b.upstream.Close()
	if code, out := run(b, b.ops, "import", bundle); code != 0 || !strings.Contains(out, "1 of 1 images imported") {
		t.Fatalf("import: %d %s", code, out)
	}
	if code, out := run(b, b.ops, "status", "app:1"); code != 0 || !strings.Contains(out, "complete") {
		t.Errorf("status after import: %d %s", code, out)
	}
	if code, out := run(b, b.ci, "seed", "--state", "", "app:1"); code != 0 {
		t.Errorf("pulling the imported image with the upstream gone: %d %s", code, out)
	}
}
