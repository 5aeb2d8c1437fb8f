// Command startbench measures how the cache's startup grows with the number of cached objects: for each N it
// fills a fresh directory with N small objects through the cache's own Writer, then measures, in a child
// process, the time of cache.Open and the child's peak RSS (VmHWM), once after a clean Close and once after the child
// that had the cache open was killed with SIGKILL (where Open returns at once and the repair runs in the
// background: its duration and the peak RSS including it are shown too). It prints one markdown table.
//
//	go run ./e2e/startbench -n 10000,100000,1000000 [-dir DIR] [-workers 8]
//
// Every commit fsyncs its file and directory, so filling a million objects on a disk is slow; -dir may name a
// tmpfs to fill faster (Open is then measured on the same tmpfs, with no cold-cache reads). The page cache is
// not dropped between runs.
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/pullgate/pullgate/cache"
)

// result is what a child reports on its stdout, as one JSON line.
type result struct {
	Open    time.Duration `json:"open"`
	Repair  time.Duration `json:"repair"` // until the background repair ended; 0 when none ran
	MaxRSS  int64         `json:"max_rss"`
	Objects int64         `json:"objects"`
	Err     string        `json:"err,omitempty"`
}

func main() {
	ns := flag.String("n", "10000,100000", "comma-separated numbers of objects")
	dir := flag.String("dir", os.TempDir(), "where to create the cache directories")
	workers := flag.Int("workers", 8, "goroutines filling the cache")
	keep := flag.Bool("keep", false, "keep the cache directories")
	child := flag.String("child", "", "internal: open the cache in this directory (open|hold mode)")
	mode := flag.String("mode", "open", "internal: open (measure and exit) or hold (open, then wait to be killed)")
	flag.Parse()
	if *child != "" {
		runChild(*child, *mode)
		return
	}
	var counts []int
	for _, s := range strings.Split(*ns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 0 {
			log.Fatalf("bad -n %q", s)
		}
		counts = append(counts, n)
	}
	fmt.Println("| objects | fill | Open after clean stop | peak RSS | Open after kill -9 | background repair | peak RSS (with repair) |")
	fmt.Println("|---:|---:|---:|---:|---:|---:|---:|")
	for _, n := range counts {
		d, err := os.MkdirTemp(*dir, "startbench-")
		if err != nil {
			log.Fatal(err)
		}
		fill, err := fillCache(d, n, *workers)
		if err != nil {
			log.Fatal(err)
		}
		clean, err := measure(d)
		if err != nil {
			log.Fatal(err)
		}
		if err := holdAndKill(d); err != nil {
			log.Fatal(err)
		}
		crashed, err := measure(d)
		if err != nil {
			log.Fatal(err)
		}
		if clean.Objects != int64(n) || crashed.Objects != int64(n) {
			log.Fatalf("objects after Open: %d (clean), %d (crash); want %d", clean.Objects, crashed.Objects, n)
		}
		fmt.Printf("| %d | %s | %s | %s | %s | %s | %s |\n", n, fill.Round(time.Millisecond),
			clean.Open.Round(time.Microsecond), mib(clean.MaxRSS), crashed.Open.Round(time.Microsecond),
			crashed.Repair.Round(time.Millisecond), mib(crashed.MaxRSS))
		if !*keep {
			if err := os.RemoveAll(d); err != nil {
				log.Fatal(err)
			}
		}
	}
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

// fillCache stores n distinct small objects in a new cache in dir and closes it cleanly.
func fillCache(dir string, n, workers int) (time.Duration, error) {
	start := time.Now()
	c, err := cache.Open(cache.Options{Dir: dir, Logger: quiet()})
	if err != nil {
		return 0, err
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				data := []byte("startbench object " + strconv.FormatInt(i, 10))
				sum := sha256.Sum256(data)
				d := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
				w, err := c.NewWriter(d, "application/octet-stream", int64(len(data)))
				if err == nil {
					_, err = w.Write(data)
					if err == nil {
						_, err = w.Commit()
					} else {
						w.Abort(err)
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		_ = c.Close()
		return 0, err
	}
	if err := c.Close(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// measure runs a child that opens the cache in dir and reports.
func measure(dir string) (result, error) {
	out, err := exec.Command(os.Args[0], "-child", dir, "-mode", "open").Output()
	if err != nil {
		return result{}, fmt.Errorf("child: %w", err)
	}
	var r result
	if err := json.Unmarshal(out, &r); err != nil {
		return result{}, fmt.Errorf("child said %q: %w", out, err)
	}
	if r.Err != "" {
		return result{}, errors.New(r.Err)
	}
	return r, nil
}

// holdAndKill runs a child that opens the cache in dir, and kills it with SIGKILL once it has.
func holdAndKill(dir string) error {
	cmd := exec.Command(os.Args[0], "-child", dir, "-mode", "hold")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if kerr := cmd.Process.Signal(syscall.SIGKILL); kerr != nil {
		return kerr
	}
	_ = cmd.Wait()
	if err != nil || strings.TrimSpace(line) != "open" {
		return fmt.Errorf("holding child said %q: %v", line, err)
	}
	return nil
}

func runChild(dir, mode string) {
	var r result
	start := time.Now()
	c, err := cache.Open(cache.Options{Dir: dir, Logger: quiet()})
	r.Open = time.Since(start)
	if err != nil {
		r.Err = err.Error()
		report(r)
		return
	}
	if mode == "hold" {
		fmt.Println("open")
		select {} // until killed
	}
	if c.Repairing() {
		for c.Repairing() {
			time.Sleep(time.Millisecond)
		}
		r.Repair = time.Since(start)
	}
	_, r.Objects = c.Usage()
	r.MaxRSS = peakRSS()
	if err := c.Close(); err != nil {
		r.Err = err.Error()
	}
	report(r)
}

// peakRSS returns the peak resident set of this process. It reads VmHWM, which belongs to this program's
// memory since exec, rather than getrusage's maxrss: Linux carries into maxrss the parent's resident set at the
// fork, which here is the memory of the process that filled the cache.
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return -1
			}
			return kb << 10
		}
	}
	return -1
}

func report(r result) {
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
