package main

import (
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
)

// seedProgress shows how a seed run goes, image by image. Its methods may be called from any goroutine.
type seedProgress interface {
	// start says that the blobs of img are about to be read: blobs of them, bytes in all, skipped more
	// already in pullgate. The image's end is told to what it returns.
	start(img string, blobs int, bytes int64, skipped int) imageProgress
	// failed says that img failed before any of its blobs was read.
	failed(img string, err error)
	// close ends the display; nothing is called after it.
	close()
}

// imageProgress shows how one image goes.
type imageProgress interface {
	// read counts n more bytes read.
	read(n int64)
	// skip takes n bytes out of what is to be read: a blob another image read meanwhile.
	skip(n int64)
	// end says that the image is done: seeded when err is nil.
	end(err error)
}

// quietProgress shows nothing.
type quietProgress struct{}

func (quietProgress) start(string, int, int64, int) imageProgress { return quietImage{} }
func (quietProgress) failed(string, error)                        {}
func (quietProgress) close()                                      {}

type quietImage struct{}

func (quietImage) read(int64) {}
func (quietImage) skip(int64) {}
func (quietImage) end(error)  {}

// plainProgress writes one line when an image starts and one when it ends, for logs and pipes:
//
//	seeding IMAGE: N blobs, B bytes[; S blobs already seeded]
//	seeded IMAGE: B bytes in 1.2s
//	failed IMAGE: reason
type plainProgress struct {
	w   *lockedWriter
	now func() time.Time
}

func (p *plainProgress) start(img string, blobs int, bytes int64, skipped int) imageProgress {
	line := fmt.Sprintf("seeding %s: %s, %d bytes", img, plural(blobs, "blob"), bytes)
	if skipped > 0 {
		line += fmt.Sprintf("; %s already seeded", plural(skipped, "blob"))
	}
	p.w.printf("%s\n", line)
	return &plainImage{p: p, img: img, began: p.now()}
}

func (p *plainProgress) failed(img string, err error) {
	p.w.printf("failed %s: %s\n", img, oneLine(err.Error()))
}

func (p *plainProgress) close() {}

type plainImage struct {
	p     *plainProgress
	img   string
	began time.Time
	n     atomic.Int64
}

func (i *plainImage) read(n int64) { i.n.Add(n) }
func (i *plainImage) skip(int64)   {}

func (i *plainImage) end(err error) {
	if err != nil {
		i.p.failed(i.img, err)
		return
	}
	i.p.w.printf("seeded %s: %d bytes in %s\n", i.img, i.n.Load(), roundDuration(i.p.now().Sub(i.began)))
}

// barProgress draws, on a terminal, one bar per image (bytes read of its blobs' bytes) and a bar of the bytes
// of every image started so far.
type barProgress struct {
	p     *mpb.Progress
	total *mpb.Bar

	mu    sync.Mutex
	bytes int64 // the total bar's total
}

// newBarProgress draws on w, which should be a terminal; width zero means the terminal's.
func newBarProgress(w io.Writer, width int) *barProgress {
	opts := []mpb.ContainerOption{mpb.WithOutput(w), mpb.WithRefreshRate(200 * time.Millisecond), mpb.WithAutoRefresh()}
	if width > 0 {
		opts = append(opts, mpb.WithWidth(width))
	}
	p := mpb.New(opts...)
	total := p.AddBar(0,
		mpb.BarPriority(math.MaxInt), // below the images
		mpb.PrependDecorators(decor.Name("total", decor.WCSyncSpaceR)),
		mpb.AppendDecorators(decor.CountersKibiByte("% .1f / % .1f", decor.WCSyncSpace), decor.AverageSpeed(decor.SizeB1024(0), " % .1f")),
	)
	return &barProgress{p: p, total: total}
}

func (b *barProgress) start(img string, blobs int, bytes int64, skipped int) imageProgress {
	b.mu.Lock()
	b.bytes += bytes
	b.total.SetTotal(b.bytes, false)
	b.mu.Unlock()
	label := fmt.Sprintf("%s (%s)", oneLine(img), plural(blobs, "blob"))
	if skipped > 0 {
		label = fmt.Sprintf("%s (%s, %d already seeded)", oneLine(img), plural(blobs, "blob"), skipped)
	}
	bar := b.p.AddBar(bytes,
		mpb.PrependDecorators(decor.Name(label, decor.WCSyncSpaceR)),
		mpb.AppendDecorators(
			decor.CountersKibiByte("% .1f / % .1f", decor.WCSyncSpace),
			decor.OnAbort(decor.OnComplete(decor.Percentage(decor.WCSyncSpace), "done"), "failed"),
		),
	)
	return &barImage{b: b, img: img, bar: bar, total: bytes}
}

func (b *barProgress) failed(img string, err error) {
	fmt.Fprintf(b.p, "failed %s: %s\n", img, oneLine(err.Error()))
}

func (b *barProgress) close() {
	b.total.SetTotal(-1, true)
	b.p.Wait()
}

type barImage struct {
	b   *barProgress
	img string
	bar *mpb.Bar

	mu    sync.Mutex
	total int64
}

func (i *barImage) read(n int64) {
	i.bar.IncrInt64(n)
	i.b.total.IncrInt64(n)
}

func (i *barImage) skip(n int64) {
	i.mu.Lock()
	i.total -= n
	i.bar.SetTotal(i.total, false)
	i.mu.Unlock()
	i.b.mu.Lock()
	i.b.bytes -= n
	i.b.total.SetTotal(i.b.bytes, false)
	i.b.mu.Unlock()
}

func (i *barImage) end(err error) {
	if err != nil {
		i.bar.Abort(false)
		i.b.failed(i.img, err)
		return
	}
	i.bar.SetTotal(-1, true)
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
