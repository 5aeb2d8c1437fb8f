package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestRoundTrip(t *testing.T) {
	data := randomBytes(t, 100_000)
	tests := []struct {
		name      string
		data      []byte
		digest    v1.Hash
		mediaType string
		size      int64
		chunk     int
	}{
		{name: "sha256 known size", data: data, digest: sha256Of(data), mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", size: int64(len(data)), chunk: 4096},
		{name: "sha256 unknown size", data: data, digest: sha256Of(data), size: -1, chunk: 1000},
		{name: "sha512", data: data, digest: sha512Of(data), mediaType: "application/octet-stream", size: int64(len(data)), chunk: len(data)},
		{name: "empty", data: []byte{}, digest: sha256Of(nil), size: 0, chunk: 1},
		{name: "one byte", data: []byte{'x'}, digest: sha256Of([]byte{'x'}), size: 1, chunk: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			c := open(t, t.TempDir(), clk.Now)
			if _, err := c.Stat(tt.digest); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Stat before write: %v, want ErrNotFound", err)
			}
			if _, _, err := c.Content(tt.digest); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Content before write: %v, want ErrNotFound", err)
			}
			w, err := c.NewWriter(tt.digest, tt.mediaType, tt.size)
			if err != nil {
				t.Fatal(err)
			}
			for rest := tt.data; len(rest) > 0; {
				n := min(tt.chunk, len(rest))
				if _, err := w.Write(rest[:n]); err != nil {
					t.Fatal(err)
				}
				rest = rest[n:]
				if _, err := c.Stat(tt.digest); !errors.Is(err, ErrNotFound) {
					t.Fatalf("Stat while writing: %v, want ErrNotFound", err)
				}
			}
			if w.Written() != int64(len(tt.data)) {
				t.Errorf("Written = %d, want %d", w.Written(), len(tt.data))
			}
			obj, err := w.Commit()
			if err != nil {
				t.Fatal(err)
			}
			want := Object{Digest: tt.digest, Size: int64(len(tt.data)), MediaType: tt.mediaType, Stored: clk.Now()}
			if !obj.Stored.Equal(want.Stored) || obj.Digest != want.Digest || obj.Size != want.Size || obj.MediaType != want.MediaType {
				t.Errorf("Commit = %+v, want %+v", obj, want)
			}
			again, err := w.Commit()
			if err != nil || again != obj {
				t.Errorf("second Commit = %+v, %v; want the same object", again, err)
			}
			st, err := c.Stat(tt.digest)
			if err != nil || !st.Stored.Equal(want.Stored) || st.Size != want.Size || st.MediaType != want.MediaType {
				t.Errorf("Stat = %+v, %v; want %+v", st, err, want)
			}
			f, co, err := c.Content(tt.digest)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(f)
			f.Close()
			if err != nil || !bytes.Equal(got, tt.data) || co.Size != int64(len(tt.data)) {
				t.Errorf("Content: %d bytes (object %+v), err %v; want the %d bytes written", len(got), co, err, len(tt.data))
			}
			fi, err := os.Stat(c.Path(tt.digest))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("file mode %v, want 0600 (content may have been fetched with credentials)", fi.Mode().Perm())
			}
			if n := tempFiles(t, c); len(n) != 0 {
				t.Errorf("temp files left: %v", n)
			}
			if b, o := c.Usage(); b != int64(len(tt.data)) || o != 1 {
				t.Errorf("Usage = %d bytes, %d objects; want %d, 1", b, o, len(tt.data))
			}
		})
	}
}

func TestPath(t *testing.T) {
	dir := t.TempDir()
	c := open(t, dir, nil)
	d := sha256Of([]byte("x"))
	want := dir + "/blobs/sha256/" + d.Hex[:2] + "/" + d.Hex
	if got := c.Path(d); got != want {
		t.Errorf("Path = %q, want %q", got, want)
	}
	for _, bad := range []v1.Hash{{}, {Algorithm: "sha256", Hex: "../../etc"}, {Algorithm: "md5", Hex: "00"}} {
		if got := c.Path(bad); got != "" {
			t.Errorf("Path(%q) = %q, want empty", bad, got)
		}
	}
}

func TestBadContent(t *testing.T) {
	good := randomBytes(t, 10_000)
	other := randomBytes(t, 10_000)
	tests := []struct {
		name     string
		size     int64
		write    []byte
		writeErr bool // the Write itself fails
		check    func(t *testing.T, err error)
	}{
		{name: "digest mismatch", size: int64(len(other)), write: other, check: func(t *testing.T, err error) {
			var e *DigestMismatchError
			if !errors.As(err, &e) || e.Want != sha256Of(good) || e.Got != sha256Of(other) || e.Size != int64(len(other)) {
				t.Errorf("err = %v, want *DigestMismatchError with the right hashes", err)
			}
		}},
		{name: "digest mismatch unknown size", size: -1, write: other, check: func(t *testing.T, err error) {
			var e *DigestMismatchError
			if !errors.As(err, &e) {
				t.Errorf("err = %v, want *DigestMismatchError", err)
			}
		}},
		{name: "too short", size: int64(len(good)), write: good[:len(good)-1], check: func(t *testing.T, err error) {
			var e *SizeMismatchError
			if !errors.As(err, &e) || e.Want != int64(len(good)) || e.Got != int64(len(good)-1) {
				t.Errorf("err = %v, want *SizeMismatchError want %d got %d", err, len(good), len(good)-1)
			}
		}},
		{name: "too long", size: int64(len(good)) - 1, write: good, writeErr: true, check: func(t *testing.T, err error) {
			var e *SizeMismatchError
			if !errors.As(err, &e) || e.Want != int64(len(good))-1 {
				t.Errorf("err = %v, want *SizeMismatchError", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := open(t, t.TempDir(), nil)
			d := sha256Of(good)
			w, err := c.NewWriter(d, "", tt.size)
			if err != nil {
				t.Fatal(err)
			}
			r := w.NewReader(context.Background())
			res := readAll(r)
			_, werr := w.Write(tt.write)
			if tt.writeErr {
				tt.check(t, werr)
			} else if werr != nil {
				t.Fatalf("Write: %v", werr)
			}
			_, cerr := w.Commit()
			tt.check(t, cerr)

			got := waitResult(t, res)
			tt.check(t, got.err)
			if len(got.data) >= len(tt.write) {
				t.Errorf("reader got all %d bytes of bad content", len(got.data))
			}
			if _, err := io.ReadAll(w.NewReader(context.Background())); err == nil {
				t.Error("reader created after the failure read without error")
			}
			if _, err := c.Stat(d); !errors.Is(err, ErrNotFound) {
				t.Errorf("Stat = %v, want ErrNotFound", err)
			}
			if _, err := os.Stat(c.Path(d)); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("content file exists after bad content: %v", err)
			}
			if n := tempFiles(t, c); len(n) != 0 {
				t.Errorf("temp files left: %v", n)
			}
			if b, o := c.Usage(); b != 0 || o != 0 {
				t.Errorf("Usage = %d, %d; want 0, 0", b, o)
			}
			if _, err := w.Write([]byte("more")); err == nil {
				t.Error("Write after a failed Commit succeeded")
			}
			faults, err := c.Verify(context.Background())
			if err != nil || len(faults) != 0 {
				t.Errorf("Verify = %v, %v; want no faults", faults, err)
			}
		})
	}
}

func TestDigestValidation(t *testing.T) {
	c := open(t, t.TempDir(), nil)
	tests := []struct {
		name        string
		d           v1.Hash
		unsupported bool
	}{
		{name: "md5", d: v1.Hash{Algorithm: "md5", Hex: "d41d8cd98f00b204e9800998ecf8427e"}, unsupported: true},
		{name: "sha384", d: v1.Hash{Algorithm: "sha384", Hex: "38b060a751ac96384cd9327eb1b1e36a21fdb71114be07434c0cc7bf63f6e1da274edebfe76f65fbd51ad2f14898b95b"}, unsupported: true},
		{name: "empty", d: v1.Hash{}, unsupported: true},
		{name: "short hex", d: v1.Hash{Algorithm: "sha256", Hex: "abcd"}},
		{name: "uppercase hex", d: v1.Hash{Algorithm: "sha256", Hex: "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"}},
		{name: "path trick", d: v1.Hash{Algorithm: "sha256", Hex: "../../../../../../../../../../../../../../../../../../../etc/pass"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.NewWriter(tt.d, "", -1)
			if err == nil {
				t.Fatal("NewWriter accepted the digest")
			}
			if errors.Is(err, ErrUnsupportedDigest) != tt.unsupported {
				t.Errorf("NewWriter err = %v; ErrUnsupportedDigest: %v, want %v", err, errors.Is(err, ErrUnsupportedDigest), tt.unsupported)
			}
			if _, err := c.Stat(tt.d); err == nil || errors.Is(err, ErrNotFound) {
				t.Errorf("Stat err = %v, want a non-miss error", err)
			}
			if err := c.Link("up", "repo", tt.d); err == nil {
				t.Error("Link accepted the digest")
			}
			if err := c.SetTag("up", "repo", "t", TagEntry{Digest: tt.d}); err == nil {
				t.Error("SetTag accepted the digest")
			}
		})
	}
}

func TestReadersAtAnyTime(t *testing.T) {
	data := randomBytes(t, 1<<20)
	d := sha256Of(data)
	c := open(t, t.TempDir(), nil)
	w, err := c.NewWriter(d, "", int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var results []<-chan readResult
	results = append(results, readAll(w.NewReader(ctx))) // before the first write
	half := len(data) / 2
	if _, err := w.Write(data[:half]); err != nil {
		t.Fatal(err)
	}
	results = append(results, readAll(w.NewReader(ctx))) // mid-way
	if _, err := w.Write(data[half:]); err != nil {
		t.Fatal(err)
	}
	results = append(results, readAll(w.NewReader(ctx))) // everything written, not committed
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	results = append(results, readAll(w.NewReader(ctx))) // after Commit: reads the committed file
	for i, ch := range results {
		r := waitResult(t, ch)
		if r.err != nil || !bytes.Equal(r.data, data) {
			t.Errorf("reader %d: %d bytes, err %v; want the %d bytes written", i, len(r.data), r.err, len(data))
		}
	}
}

func TestReaderWithholdsLastByte(t *testing.T) {
	data := randomBytes(t, 5000)
	c := open(t, t.TempDir(), nil)
	w, err := c.NewWriter(sha256Of(data), "", -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	r := w.NewReader(context.Background())
	defer r.Close()
	head := make([]byte, len(data)-1)
	if _, err := io.ReadFull(r, head); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(head, data[:len(data)-1]) {
		t.Fatal("reader returned wrong bytes")
	}
	last := make(chan readResult, 1)
	go func() {
		b := make([]byte, 10)
		n, err := r.Read(b)
		last <- readResult{b[:n], err}
	}()
	select {
	case got := <-last:
		t.Fatalf("reader returned %q, %v before Commit; the last byte must wait for the digest check", got.data, got.err)
	case <-time.After(100 * time.Millisecond):
	}
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	got := waitResult(t, last)
	if got.err != nil || !bytes.Equal(got.data, data[len(data)-1:]) {
		t.Fatalf("after Commit the reader returned %q, %v; want the last byte", got.data, got.err)
	}
	if n, err := r.Read(make([]byte, 10)); n != 0 || err != io.EOF {
		t.Errorf("Read at end = %d, %v; want 0, io.EOF", n, err)
	}
}

func TestReaderGetsAbortError(t *testing.T) {
	errUpstream := errors.New("upstream went away")
	tests := []struct {
		name  string
		abort error
		want  func(error) bool
	}{
		{name: "with error", abort: errUpstream, want: func(err error) bool { return errors.Is(err, errUpstream) }},
		{name: "nil error", abort: nil, want: func(err error) bool { return err != nil && err != io.EOF }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := randomBytes(t, 3000)
			c := open(t, t.TempDir(), nil)
			w, err := c.NewWriter(sha256Of(data), "", int64(len(data)))
			if err != nil {
				t.Fatal(err)
			}
			res := readAll(w.NewReader(context.Background()))
			if _, err := w.Write(data[:1000]); err != nil {
				t.Fatal(err)
			}
			w.Abort(tt.abort)
			w.Abort(errors.New("second abort is ignored"))
			got := waitResult(t, res)
			if !tt.want(got.err) {
				t.Errorf("reader err = %v", got.err)
			}
			if _, err := io.ReadAll(w.NewReader(context.Background())); !tt.want(err) {
				t.Errorf("late reader err = %v", err)
			}
			if _, err := w.Commit(); !tt.want(err) {
				t.Errorf("Commit after Abort = %v, want the abort error", err)
			}
			if n := tempFiles(t, c); len(n) != 0 {
				t.Errorf("temp files left: %v", n)
			}
			if _, err := c.Stat(sha256Of(data)); !errors.Is(err, ErrNotFound) {
				t.Errorf("Stat = %v, want ErrNotFound", err)
			}
		})
	}
}

func TestAbortAfterCommit(t *testing.T) {
	data := []byte("committed")
	c := open(t, t.TempDir(), nil)
	w, err := c.NewWriter(sha256Of(data), "", -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	w.Abort(errors.New("too late"))
	w.Abort(nil)
	if _, err := c.Stat(sha256Of(data)); err != nil {
		t.Errorf("Stat after Abort following Commit: %v", err)
	}
	r := waitResult(t, readAll(w.NewReader(context.Background())))
	if r.err != nil || !bytes.Equal(r.data, data) {
		t.Errorf("reader after Commit and Abort = %q, %v", r.data, r.err)
	}
	if _, err := w.Write([]byte("x")); err == nil {
		t.Error("Write after Commit succeeded")
	}
}

func TestReaderContextCancel(t *testing.T) {
	data := randomBytes(t, 100)
	c := open(t, t.TempDir(), nil)
	w, err := c.NewWriter(sha256Of(data), "", -1)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort(nil)
	if _, err := w.Write(data[:50]); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := w.NewReader(ctx)
	other := w.NewReader(context.Background())
	defer other.Close()
	res := readAll(r)
	cancel()
	got := waitResult(t, res)
	if !errors.Is(got.err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", got.err)
	}
	// The fill and the other readers go on.
	if _, err := w.Write(data[50:]); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(other)
	if err != nil || !bytes.Equal(b, data) {
		t.Errorf("other reader: %d bytes, %v", len(b), err)
	}
}

func TestReaderClose(t *testing.T) {
	data := []byte("abc")
	c := open(t, t.TempDir(), nil)
	w, err := c.NewWriter(sha256Of(data), "", -1)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort(nil)
	r := w.NewReader(context.Background())
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := r.Read(make([]byte, 1)); err == nil {
		t.Error("Read after Close succeeded")
	}
}

func TestManyReadersOneWriter(t *testing.T) {
	const readers = 20
	data := randomBytes(t, 4<<20)
	d := sha256Of(data)
	c := open(t, t.TempDir(), nil)
	w, err := c.NewWriter(d, "", int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var results []<-chan readResult
	start := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-start
		// Uneven chunks, like a network body.
		for rest, i := data, 0; len(rest) > 0; i++ {
			n := min(len(rest), 1+(i*7919)%65536)
			if _, err := w.Write(rest[:n]); err != nil {
				t.Error(err)
				return
			}
			rest = rest[n:]
		}
		if _, err := w.Commit(); err != nil {
			t.Error(err)
		}
	}()
	for i := range readers {
		results = append(results, readAll(w.NewReader(ctx)))
		if i == readers/2 {
			close(start) // half the readers join while the fill runs
		}
	}
	for i, ch := range results {
		r := waitResult(t, ch)
		if r.err != nil || !bytes.Equal(r.data, data) {
			t.Errorf("reader %d: %d bytes, err %v", i, len(r.data), r.err)
		}
	}
	wg.Wait()
}

func TestConcurrentWritersOfOneDigest(t *testing.T) {
	const writers = 8
	data := randomBytes(t, 256<<10)
	d := sha256Of(data)
	c := open(t, t.TempDir(), nil)
	var wg sync.WaitGroup
	objs := make([]Object, writers)
	errs := make([]error, writers)
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w, err := c.NewWriter(d, "application/octet-stream", int64(len(data)))
			if err != nil {
				errs[i] = err
				return
			}
			r := w.NewReader(context.Background())
			defer r.Close()
			for rest := data; len(rest) > 0; rest = rest[min(len(rest), 10000):] {
				if _, err := w.Write(rest[:min(len(rest), 10000)]); err != nil {
					errs[i] = err
					return
				}
			}
			objs[i], errs[i] = w.Commit()
			if errs[i] == nil {
				if b, err := io.ReadAll(r); err != nil || !bytes.Equal(b, data) {
					t.Errorf("writer %d reader: %d bytes, %v", i, len(b), err)
				}
			}
		}()
	}
	wg.Wait()
	for i := range writers {
		if errs[i] != nil || objs[i].Digest != d || objs[i].Size != int64(len(data)) {
			t.Errorf("writer %d: %+v, %v", i, objs[i], errs[i])
		}
	}
	if b, o := c.Usage(); b != int64(len(data)) || o != 1 {
		t.Errorf("Usage = %d, %d; want %d, 1", b, o, len(data))
	}
	if n := tempFiles(t, c); len(n) != 0 {
		t.Errorf("temp files left: %v", n)
	}
	faults, err := c.Verify(context.Background())
	if err != nil || len(faults) != 0 {
		t.Errorf("Verify = %v, %v", faults, err)
	}
}

func TestCommitRestoresVanishedFile(t *testing.T) {
	data := randomBytes(t, 1234)
	d := sha256Of(data)
	c := open(t, t.TempDir(), nil)
	put(t, c, data)
	if err := os.Remove(c.Path(d)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Content(d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Content of a vanished file = %v, want ErrNotFound", err)
	}
	if _, err := c.Stat(d); !errors.Is(err, ErrNotFound) {
		t.Errorf("Stat after the vanished file was seen = %v, want ErrNotFound", err)
	}
	if b, o := c.Usage(); b != 0 || o != 0 {
		t.Errorf("Usage = %d, %d; want 0, 0", b, o)
	}
	put(t, c, data)
	f, _, err := c.Content(d)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if b, o := c.Usage(); b != int64(len(data)) || o != 1 {
		t.Errorf("Usage = %d, %d; want %d, 1", b, o, len(data))
	}
}

func TestSecondWriterKeepsMediaType(t *testing.T) {
	data := []byte(`{"schemaVersion":2}`)
	d := sha256Of(data)
	c := open(t, t.TempDir(), nil)
	w, err := c.NewWriter(d, "", -1)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	w2, err := c.NewWriter(d, "application/vnd.oci.image.manifest.v1+json", -1)
	if err != nil {
		t.Fatal(err)
	}
	w2.Write(data)
	obj, err := w2.Commit()
	if err != nil || obj.MediaType != "application/vnd.oci.image.manifest.v1+json" {
		t.Errorf("second Commit = %+v, %v; want the media type filled in", obj, err)
	}
	if b, o := c.Usage(); b != int64(len(data)) || o != 1 {
		t.Errorf("Usage = %d, %d; want %d, 1", b, o, len(data))
	}
}
