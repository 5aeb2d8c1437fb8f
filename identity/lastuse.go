package identity

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"
)

// LastUseFile is the name of the last-use file in pullgate's data directory.
const LastUseFile = "robots-last-use.json"

// LastUse is when each robot last authenticated, by robot name. The server records it and writes it to
// <data directory>/robots-last-use.json; `pullgate robot list` reads it. Times are kept to the second. A LastUse
// is a plain map: it is not safe for concurrent use.
type LastUse map[string]time.Time

// lastUseJSON is the file's form: {"robots":{"<name>":"<RFC 3339 time>"}}.
type lastUseJSON struct {
	Robots map[string]string `json:"robots"`
}

// ReadLastUse reads the last-use file at path. A missing file is an empty LastUse, not an error: no robot has
// been used yet.
func ReadLastUse(path string) (LastUse, error) {
	data, err := readLimited(path)
	if errors.Is(err, fs.ErrNotExist) {
		return LastUse{}, nil
	}
	if err != nil {
		return nil, err
	}
	var raw lastUseJSON
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("last-use file %s: %w", path, err)
	}
	l := make(LastUse, len(raw.Robots))
	for name, s := range raw.Robots {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			return nil, fmt.Errorf("last-use file %s: robot %q: %w", path, name, err)
		}
		l[name] = t
	}
	return l, nil
}

// Write writes l to path atomically (a temporary file renamed into place), readable by its owner only. Times
// are written in UTC to the second.
func (l LastUse) Write(path string) error {
	raw := lastUseJSON{Robots: make(map[string]string, len(l))}
	for name, t := range l {
		raw.Robots[name] = t.UTC().Format(time.RFC3339)
	}
	body, err := json.Marshal(raw)
	if err != nil {
		return err
	}
	if len(body)+1 > maxFileSize {
		return fmt.Errorf("last-use file %s: %d robots make %d bytes, more than the %d a reader accepts", path, len(l), len(body), maxFileSize)
	}
	return writeFileAtomic(filepath.Dir(path), filepath.Base(path), ".robots-last-use-", append(body, '\n'))
}
