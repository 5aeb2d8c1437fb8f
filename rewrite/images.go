package rewrite

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	yaml "go.yaml.in/yaml/v2"

	"github.com/pullgate/pullgate/names"
)

const (
	// DefaultMaxBytes is the largest input Images reads when Limits.MaxBytes is zero: 64 MiB.
	DefaultMaxBytes = 64 << 20
	// DefaultMaxDepth is how deeply mappings and sequences may nest in a document when Limits.MaxDepth is
	// zero.
	DefaultMaxDepth = 100
)

var (
	// ErrTooLarge is wrapped by the error for input longer than Limits.MaxBytes.
	ErrTooLarge = errors.New("input too large")
	// ErrTooDeep is wrapped by the error for a document nested deeper than Limits.MaxDepth.
	ErrTooDeep = errors.New("document nested too deeply")
)

// Limits bounds what Images and Rewrite read. The zero value is the defaults.
type Limits struct {
	// MaxBytes is the most input read, in bytes; zero means DefaultMaxBytes. Longer input is refused whole
	// with an error wrapping ErrTooLarge.
	MaxBytes int64
	// MaxDepth is how many mappings and sequences may nest in one document, the document's own counted;
	// zero means DefaultMaxDepth. A deeper document is an error wrapping ErrTooDeep.
	MaxDepth int
}

func (l Limits) withDefaults() Limits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	if l.MaxDepth <= 0 {
		l.MaxDepth = DefaultMaxDepth
	}
	return l
}

// DocumentError is an error in one document of the input: YAML that does not parse, nesting beyond
// Limits.MaxDepth, or an image that is not a valid reference.
type DocumentError struct {
	// Document is the document's 1-based index in the input, empty documents counted.
	Document int
	// Object is "Kind/name" (or "Kind") of the innermost object the error is in, or empty when not known.
	Object string
	// Path is the field from the document's root, as "spec.template.spec.containers[0].image", or empty.
	Path string
	// Err is what is wrong. For an invalid image it wraps names.ErrNameInvalid, names.ErrTagInvalid or
	// names.ErrDigestInvalid; for a parse error it is the YAML library's message (which names the line), cut
	// to a few hundred bytes.
	Err error
}

// Error returns "document N (Kind/name) path: reason", leaving out what is not known.
func (e *DocumentError) Error() string {
	var b strings.Builder
	b.WriteString("document ")
	b.WriteString(strconv.Itoa(e.Document))
	if e.Object != "" {
		b.WriteString(" (" + e.Object + ")")
	}
	if e.Path != "" {
		b.WriteString(" " + e.Path)
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	return b.String()
}

// Unwrap returns Err.
func (e *DocumentError) Unwrap() error { return e.Err }

// Images returns the container images in r with the default Limits; see Limits.Images.
func Images(r io.Reader) ([]string, error) {
	return Limits{}.Images(r)
}

// Images returns every container image reference in r, a stream of YAML documents separated by "---" (JSON is
// YAML too), each once, in the order first seen, as written. An image is the string "image" of an object in a
// "containers", "initContainers" or "ephemeralContainers" list, wherever that list is: pod specs of Pods,
// workloads, CronJobs' job templates, PodTemplates, the items of a List and custom resources that embed a pod
// template alike.
//
// Documents are read as kubectl reads them, anchors and merge keys ("<<: *base") resolved. "First seen" is the
// order written; the keys a merge key brings into a mapping come after the mapping's own, sorted.
//
// Empty and comment-only documents are skipped. Input beyond l.MaxBytes is refused before any of it is
// parsed. Every other error is a *DocumentError: a document that does not parse (the error names the line),
// one nested deeper than l.MaxDepth, or an image that names.ParseReference refuses (the error says where it
// is). Nothing is returned with an error.
func (l Limits) Images(r io.Reader) ([]string, error) {
	l = l.withDefaults()
	data, err := io.ReadAll(io.LimitReader(r, l.MaxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading: %w", err)
	}
	if int64(len(data)) > l.MaxBytes {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, l.MaxBytes)
	}
	w := walker{maxDepth: l.MaxDepth, seen: map[string]bool{}}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for w.doc = 1; ; w.doc++ {
		var d document
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			return w.images, nil
		}
		if err != nil {
			// The YAML library's messages can repeat a whole key ("invalid map key: ..."): cut it.
			return nil, &DocumentError{Document: w.doc, Err: errors.New(cut(err.Error(), maxMessage))}
		}
		w.object, w.path = "", w.path[:0]
		if err := w.walk(d.value, d.written, 1); err != nil {
			return nil, err
		}
	}
}

// document is one YAML document decoded twice. value is what Kubernetes reads, decoded as sigs.k8s.io/yaml
// (and so kubectl) decodes it: mappings are map[any]any, with merge keys ("<<: *base") resolved. written is
// the same document with mappings as yaml.MapSlice, which keeps keys in the order written but, in the YAML
// library used, drops what merge keys bring in: it only orders the keys of value, never adds to them.
type document struct {
	value   any
	written any
}

// UnmarshalYAML decodes the document both ways. A document the first way refuses is an error; the second way
// cannot refuse what the first accepts, and if it did the keys would only be walked in sorted order.
func (d *document) UnmarshalYAML(unmarshal func(any) error) error {
	if err := unmarshal(&d.value); err != nil {
		return err
	}
	var n ordered
	if unmarshal(&n) == nil {
		d.written = n.v
	}
	return nil
}

// ordered is a YAML value decoded so that mappings keep their order: a mapping is a yaml.MapSlice (and so is
// every mapping inside it), a sequence a []any, a scalar what the YAML library makes of it. A sequence is
// tried first because a sequence of {key, value} mappings would decode into a MapSlice.
type ordered struct{ v any }

// UnmarshalYAML decodes one value of any kind into n.
func (n *ordered) UnmarshalYAML(unmarshal func(any) error) error {
	var seq []ordered
	if err := unmarshal(&seq); err == nil {
		vs := make([]any, len(seq))
		for i, e := range seq {
			vs[i] = e.v
		}
		n.v = vs
		return nil
	}
	var m yaml.MapSlice
	if err := unmarshal(&m); err == nil {
		n.v = m
		return nil
	}
	return unmarshal(&n.v)
}

// walker collects the images of one input, document by document.
type walker struct {
	maxDepth int
	seen     map[string]bool
	images   []string
	// doc is the 1-based index of the document being walked.
	doc int
	// object is "Kind/name" of the innermost object being walked, for errors.
	object string
	// path is the field path from the document's root to the value being walked, for errors: keys, and
	// indexes as "[i]".
	path []string
}

// walk visits v, at nesting depth depth, and everything in it. written is v as written (see document), or
// nil when not known; it orders the keys of v's mappings.
func (w *walker) walk(v, written any, depth int) error {
	switch v := v.(type) {
	case map[any]any:
		if depth > w.maxDepth {
			return w.errorf("%w: more than %d levels", ErrTooDeep, w.maxDepth)
		}
		if o := objectName(v); o != "" {
			defer func(outer string) { w.object = outer }(w.object)
			w.object = o
		}
		for _, f := range fields(v, written) {
			w.path = append(w.path, f.label)
			if key, ok := f.key.(string); ok && isContainerList(key) {
				if err := w.containers(f.value); err != nil {
					return err
				}
			}
			if err := w.walk(f.value, f.written, depth+1); err != nil {
				return err
			}
			w.path = w.path[:len(w.path)-1]
		}
	case []any:
		if depth > w.maxDepth {
			return w.errorf("%w: more than %d levels", ErrTooDeep, w.maxDepth)
		}
		ws, _ := written.([]any)
		if len(ws) != len(v) {
			ws = nil
		}
		for i, e := range v {
			var we any
			if ws != nil {
				we = ws[i]
			}
			w.path = append(w.path, "["+strconv.Itoa(i)+"]")
			if err := w.walk(e, we, depth+1); err != nil {
				return err
			}
			w.path = w.path[:len(w.path)-1]
		}
	}
	return nil
}

// field is one key of a mapping, its value, and its value as written when known. label is the key as a path
// shows it.
type field struct {
	key, value, written any
	label               string
}

// fields returns the keys of m in the order written, when written is m as written, then the rest (those merge
// keys brought in) sorted, so that the order never depends on the map's.
func fields(m map[any]any, written any) []field {
	fs := make([]field, 0, len(m))
	done := make(map[any]bool, len(m))
	if ws, ok := written.(yaml.MapSlice); ok {
		for _, it := range ws {
			switch it.Key.(type) {
			case yaml.MapSlice, []any:
				continue // not a key of m: the first decoding refuses it
			}
			v, ok := m[it.Key]
			if !ok || done[it.Key] {
				continue
			}
			done[it.Key] = true
			fs = append(fs, field{key: it.Key, value: v, written: it.Value, label: label(it.Key)})
		}
	}
	rest := len(fs)
	for k, v := range m {
		if !done[k] {
			fs = append(fs, field{key: k, value: v, label: label(k)})
		}
	}
	slices.SortFunc(fs[rest:], func(a, b field) int {
		if c := strings.Compare(a.label, b.label); c != 0 {
			return c
		}
		return strings.Compare(fmt.Sprintf("%T", a.key), fmt.Sprintf("%T", b.key))
	})
	return fs
}

// label returns a key as a path shows it.
func label(k any) string {
	if s, ok := k.(string); ok {
		return s
	}
	return fmt.Sprint(k)
}

// containers records the images of v, the value of a container list field, when it is a list of objects; an
// entry without a string "image" is passed over.
func (w *walker) containers(v any) error {
	list, ok := v.([]any)
	if !ok {
		return nil
	}
	for i, e := range list {
		c, ok := e.(map[any]any)
		if !ok {
			continue
		}
		image, ok := c["image"].(string)
		if !ok || w.seen[image] {
			continue
		}
		if _, err := names.ParseReference(image); err != nil {
			w.path = append(w.path, "["+strconv.Itoa(i)+"]", "image")
			return w.errorf("%w", err)
		}
		w.seen[image] = true
		w.images = append(w.images, image)
	}
	return nil
}

// errorf returns a *DocumentError for where the walk is.
func (w *walker) errorf(format string, args ...any) error {
	var p strings.Builder
	for _, s := range w.path {
		if p.Len() > 0 && !strings.HasPrefix(s, "[") {
			p.WriteByte('.')
		}
		p.WriteString(s)
	}
	return &DocumentError{Document: w.doc, Object: cut(w.object, maxShown), Path: cut(p.String(), maxShown), Err: fmt.Errorf(format, args...)}
}

// maxShown and maxMessage are how many bytes of a name or path, and of the YAML library's message, an error
// repeats: enough to find the place, not enough to let a hostile key fill a terminal.
const (
	maxShown   = 200
	maxMessage = 500
)

// cut returns s, shortened to n bytes with "..." when longer.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// isContainerList reports whether key is a pod spec field that holds containers, each an object with an
// "image".
func isContainerList(key string) bool {
	switch key {
	case "containers", "initContainers", "ephemeralContainers":
		return true
	}
	return false
}

// objectName returns "Kind/name" (or "Kind") when m is a Kubernetes object, that is has a string "kind".
func objectName(m map[any]any) string {
	kind, ok := m["kind"].(string)
	if !ok || kind == "" {
		return ""
	}
	if meta, ok := m["metadata"].(map[any]any); ok {
		if name, ok := meta["name"].(string); ok && name != "" {
			return kind + "/" + name
		}
	}
	return kind
}
