package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/pullgate/pullgate/names"
)

const (
	// maxStateBytes bounds a seed state file: it is read up to this size, and a run stops recording in it
	// there. About 220,000 sha256 digests.
	maxStateBytes = 16 << 20
	// stateSyncEvery is how many records are written between two fsyncs of the state file.
	stateSyncEvery = 64
	// stateHeader starts the first line of a state file; the server's URL follows it.
	stateHeader = "# pullgate seed: blobs read in full from "
)

// seedState is what `pullgate seed` knows to be in pullgate already: the digests of the blobs it read in full,
// in this run and, with a state file, in earlier ones. The file is one digest per line after a header naming
// the server; it is only appended to (one write per line, fsynced every stateSyncEvery lines and at close),
// except that a file over half of maxStateBytes is compacted when it is opened. A line that is not a digest is
// ignored. The zero value is not usable: see openSeedState.
type seedState struct {
	path string

	mu       sync.Mutex
	have     map[string]bool
	f        *os.File // nil without a state file
	size     int64    // of the file, as written
	unsynced int      // records written since the last fsync
	full     bool     // the file reached maxStateBytes: nothing more is recorded in it
	err      error    // the first error writing the file
}

// openSeedState opens the state file at path for server (a URL), creating it and its directory when missing,
// and reads the digests it records. An empty path is no file: the state lasts the run. note says what was
// done about a file that was too large or had lines that are not digests; it is empty when there is nothing
// to say. A file recorded for another server is an error.
func openSeedState(path, server string) (s *seedState, note string, err error) {
	s = &seedState{path: path, have: map[string]bool{}}
	if path == "" {
		return s, "", nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, "", fmt.Errorf("state file: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, "", fmt.Errorf("state file: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	st, err := f.Stat()
	if err != nil {
		return nil, "", fmt.Errorf("state file: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, "", fmt.Errorf("state file %s is not a regular file", path)
	}
	digests, header, bad, err := readSeedState(f)
	if err != nil {
		return nil, "", fmt.Errorf("state file %s: %w", path, err)
	}
	if header == "" && st.Size() > 0 {
		// Not a file this command wrote: never rewrite or append to it.
		return nil, "", fmt.Errorf("%s is not a state file of pullgate seed (its first line is not %q...): give another --state", path, strings.TrimSpace(stateHeader))
	}
	if header != "" && header != server {
		return nil, "", fmt.Errorf("state file %s records the blobs of %s, not of %s: give another --state", path, header, server)
	}
	for _, d := range digests {
		s.have[d] = true
	}
	var notes []string
	if bad > 0 {
		notes = append(notes, fmt.Sprintf("ignored %d line(s) of the state file %s that are not digests", bad, path))
	}
	switch {
	case st.Size() > maxStateBytes/2:
		// Too large to keep growing: rewritten with the newest distinct digests that fit in a quarter of the
		// bound; the others are read again when they are seeded again.
		keep := compactDigests(digests, maxStateBytes/4-int64(len(stateHeader)+len(server)+1))
		if f, err = rewriteSeedState(f, path, server, keep); err != nil {
			return nil, "", err
		}
		if len(keep) < len(s.have) {
			notes = append(notes, fmt.Sprintf("the state file %s was too large: kept the newest %d of %d digests", path, len(keep), len(s.have)))
			s.have = map[string]bool{}
			for _, d := range keep {
				s.have[d] = true
			}
		}
	case st.Size() == 0:
		if _, err := io.WriteString(f, stateHeader+server+"\n"); err != nil {
			return nil, "", fmt.Errorf("state file: %w", err)
		}
	default:
		// A run that was killed may have left half a line: end it, so that the next record is a line.
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, st.Size()-1); err != nil {
			return nil, "", fmt.Errorf("state file: %w", err)
		}
		if last[0] != '\n' {
			if _, err := f.Write([]byte{'\n'}); err != nil {
				return nil, "", fmt.Errorf("state file: %w", err)
			}
		}
	}
	st, err = f.Stat()
	if err != nil {
		return nil, "", fmt.Errorf("state file: %w", err)
	}
	s.f, s.size = f, st.Size()
	return s, strings.Join(notes, "; "), nil
}

// readSeedState reads a state file up to maxStateBytes: the server its header names ("" without a header),
// the digests it records in order (repeats included), and how many other lines it has.
func readSeedState(r io.Reader) (digests []string, header string, bad int, err error) {
	br := bufio.NewReaderSize(io.LimitReader(r, maxStateBytes), 4096)
	first := true
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// No digest is this long: skip to the end of the line.
			bad++
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			if err == io.EOF {
				return digests, header, bad, nil
			}
			if err != nil {
				return nil, "", 0, err
			}
			first = false
			continue
		}
		if err != nil && err != io.EOF {
			return nil, "", 0, err
		}
		if len(line) > 0 {
			text := string(bytes.TrimSpace(line))
			switch {
			case first && strings.HasPrefix(text, stateHeader):
				header = strings.TrimPrefix(text, stateHeader)
			case text == "":
			default:
				if _, perr := names.ParseDigest(text); perr != nil || err == io.EOF {
					bad++ // not a digest, or the last line without its newline: a record cut short
				} else {
					digests = append(digests, text)
				}
			}
			first = false
		}
		if err == io.EOF {
			return digests, header, bad, nil
		}
	}
}

// compactDigests returns the newest distinct digests of list (the last ones written) whose lines fit in
// budget bytes, oldest first.
func compactDigests(list []string, budget int64) []string {
	seen := map[string]bool{}
	var keep []string
	for i := len(list) - 1; i >= 0; i-- {
		d := list[i]
		if seen[d] {
			continue
		}
		if budget -= int64(len(d) + 1); budget < 0 {
			break
		}
		seen[d] = true
		keep = append(keep, d)
	}
	for i, j := 0, len(keep)-1; i < j; i, j = i+1, j-1 {
		keep[i], keep[j] = keep[j], keep[i]
	}
	return keep
}

// rewriteSeedState replaces the state file f at path with one of the header and digests, written to a
// temporary file that is renamed over it, and returns the new file, open for appending.
func rewriteSeedState(f *os.File, path, server string, digests []string) (*os.File, error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*.tmp")
	if err != nil {
		return nil, fmt.Errorf("state file: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename, there is nothing to remove
	w := bufio.NewWriter(tmp)
	w.WriteString(stateHeader + server + "\n")
	for _, d := range digests {
		w.WriteString(d + "\n")
	}
	err = w.Flush()
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return nil, fmt.Errorf("state file: rewriting %s: %w", path, err)
	}
	f.Close()
	nf, err := os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state file: %w", err)
	}
	return nf, nil
}

// has reports whether the blob digest was read in full, in this run or a recorded one.
func (s *seedState) has(digest string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.have[digest]
}

// record notes that the blob digest was read in full (and verified), and appends it to the file.
func (s *seedState) record(digest string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.have[digest] {
		return
	}
	s.have[digest] = true
	if s.f == nil || s.full || s.err != nil {
		return
	}
	line := digest + "\n"
	if s.size+int64(len(line)) > maxStateBytes {
		s.full = true
		return
	}
	n, err := io.WriteString(s.f, line)
	s.size += int64(n)
	if err != nil {
		s.err = err
		return
	}
	if s.unsynced++; s.unsynced >= stateSyncEvery {
		s.unsynced = 0
		if err := s.f.Sync(); err != nil {
			s.err = err
		}
	}
}

// close fsyncs and closes the file. Its error is the first of writing the file; note says that the file was
// full, when it was.
func (s *seedState) close() (note string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return "", nil
	}
	err = s.err
	if serr := s.f.Sync(); err == nil {
		err = serr
	}
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
	s.f = nil
	if s.full {
		note = fmt.Sprintf("the state file %s reached %d bytes: some blobs were not recorded (the next run compacts it)", s.path, maxStateBytes)
	}
	if err != nil {
		return note, fmt.Errorf("state file %s: %w", s.path, err)
	}
	return note, nil
}

// remove removes the state file after a run that seeded every image it was given: nothing is left to resume.
// The next run reads every blob again, which pullgate answers from its cache, and so marks them as recently
// used; a state file kept would skip, for ever, a blob that pullgate has evicted since.
func (s *seedState) remove() error {
	if s.path == "" {
		return nil
	}
	if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("state file: %w", err)
	}
	return nil
}
