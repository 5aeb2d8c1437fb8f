package rewrite

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	yaml2 "go.yaml.in/yaml/v2"
	yaml "gopkg.in/yaml.v3"

	"github.com/pullgate/pullgate/names"
)

var (
	// ErrUnsupported is wrapped by the error for input Rewrite can read but not rewrite in place: an image
	// written as a block scalar ("image: |-"), input that is not UTF-8, an imagePullSecrets that is not a
	// list, or a place where a pull secret cannot be written without re-formatting the document.
	ErrUnsupported = errors.New("cannot be rewritten in place")
	// ErrResolve is wrapped by the error for an image whose digest Options.Resolve could not give.
	ErrResolve = errors.New("resolving a digest")
)

// Options says what Rewrite does to each image. The zero value changes nothing.
type Options struct {
	// Prefix is the rule that writes each image through pullgate (see Prefix.Image); nil leaves images'
	// registries as written.
	Prefix *Prefix
	// PullSecret is the name of a Secret added as an imagePullSecrets entry to each pod spec with an image
	// that pulls through pullgate (its registry is Prefix's) once rewritten, unless the spec lists it
	// already; empty adds none. It must be a DNS subdomain name, as Kubernetes names Secrets.
	PullSecret string
	// Resolve returns the manifest digest ("sha256:...") of image, a reference through pullgate with a tag
	// and no digest; the digest is then added after the tag. It is called once per distinct reference, only
	// for images through pullgate (never for excluded ones). Nil pins nothing. Its error fails the Rewrite.
	Resolve func(ctx context.Context, image string) (digest string, err error)
}

// Change is one image scalar Rewrite changed.
type Change struct {
	// Document is the 1-based index of the document in the input, empty documents counted.
	Document int
	// Object is "Kind/name" (or "Kind") of the innermost object holding the image, or empty.
	Object string
	// Path is the field from the document's root, as "spec.template.spec.containers[0].image". For an image
	// under an anchor it is the first place the anchor is used as a container's image.
	Path string
	// From and To are the image as written and as rewritten.
	From, To string
}

// Report says what Rewrite changed.
type Report struct {
	// Images are the image scalars changed, in the order written. An anchored image used in several places
	// is changed, and listed, once.
	Images []Change
	// PullSecrets are the pod specs the pull secret was added to, as "document N (Kind/name) path".
	PullSecrets []string
}

// Rewrite copies the YAML stream r (JSON is YAML too) to w with the container images of every workload
// rewritten by o: each image is passed through o.Prefix, tags through pullgate are pinned with o.Resolve,
// and o.PullSecret is added to the pod specs that pull through pullgate. An image is what Images lists: the
// string "image" of each entry of a "containers", "initContainers" or "ephemeralContainers" list of
// mappings, wherever that list is (pod specs of Pods, workloads, CronJobs' job templates, PodTemplates, the
// items of a List, custom resources that embed a pod template).
//
// Every byte that is not a rewritten image or an added pull secret is copied as it was: comments, key
// order, indentation, quoting, document separators, documents without images. A changed image keeps its
// scalar's quoting style; a plain scalar is double-quoted when the new value would not read back as the
// same string. An image under an anchor ("image: &img nginx", used elsewhere as "*img" or through a merge
// key) is changed once, where the anchor is defined, and so is every other use of that anchor. Pull
// secrets are inserted as new lines with the mapping's own indentation (block style) or as a first entry
// (flow style and JSON, which stays JSON); an existing imagePullSecrets list gets the entry first.
//
// Rewrite reads all of r (at most l.MaxBytes) and writes nothing unless the whole stream was rewritten: an
// error leaves w untouched. Errors are those of Images (a *DocumentError naming the document, the object
// and the path), Prefix.Image's and Resolve's (wrapping ErrResolve), each in a *DocumentError, and
// ErrUnsupported. Before writing, the output is checked: Images of it must list exactly the input's images
// as rewritten, and rewriting it again must change nothing; a failure of that check is an error that says it
// is a bug, and nothing is written.
func (l Limits) Rewrite(ctx context.Context, r io.Reader, w io.Writer, o Options) (Report, error) {
	l = l.withDefaults()
	if o.PullSecret != "" && !isSecretName(o.PullSecret) {
		return Report{}, fmt.Errorf("pull secret %q: not a valid Secret name (lowercase letters, digits, '-' and '.', at most 253)", cut(o.PullSecret, maxShown))
	}
	data, err := io.ReadAll(io.LimitReader(r, l.MaxBytes+1))
	if err != nil {
		return Report{}, fmt.Errorf("reading: %w", err)
	}
	if int64(len(data)) > l.MaxBytes {
		return Report{}, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, l.MaxBytes)
	}
	rw, out, err := l.rewrite(ctx, data, o)
	if err != nil {
		return Report{}, err
	}
	if err := l.check(out, rw, o); err != nil {
		return Report{}, err
	}
	if _, err := w.Write(out); err != nil {
		return Report{}, fmt.Errorf("writing: %w", err)
	}
	return rw.report, nil
}

// rewrite returns data rewritten, and the rewriter that did it (its report, and what it made of each image).
func (l Limits) rewrite(ctx context.Context, data []byte, o Options) (*rewriter, []byte, error) {
	if bytes.HasPrefix(data, []byte{0xfe, 0xff}) || bytes.HasPrefix(data, []byte{0xff, 0xfe}) {
		return nil, nil, fmt.Errorf("%w: the input is UTF-16; give it as UTF-8", ErrUnsupported)
	}
	// Images first: it refuses what kubectl refuses (alias bombs, mapping keys, invalid references) with the
	// same errors `pullgate images` gives.
	before, err := l.Images(bytes.NewReader(data))
	if err != nil {
		return nil, nil, err
	}
	rw := &rewriter{before: before,
		ctx: ctx, o: o, src: data, lines: lineStarts(data), maxDepth: l.MaxDepth,
		done: map[*yaml.Node]bool{}, expanded: map[*yaml.Node]bool{}, secretDone: map[*yaml.Node]bool{},
		mapped: map[string]string{}, resolved: map[string]string{},
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for rw.doc = 1; ; rw.doc++ {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil { // Images parsed it: only a difference between the two YAML libraries gets here
			return nil, nil, &DocumentError{Document: rw.doc, Err: errors.New(cut(err.Error(), maxMessage))}
		}
		rw.object, rw.path = "", rw.path[:0]
		if err := rw.walk(&n, 1); err != nil {
			return nil, nil, err
		}
	}
	out, err := splice(data, rw.edits)
	if err != nil {
		return nil, nil, err
	}
	return rw, out, nil
}

// check holds Rewrite's promise about its output: it parses, lists exactly the images it should (those of
// the input, each mapped as rewritten), and is a fixed point (rewriting it changes nothing, so no image was
// missed and no pull secret landed where it is not seen).
func (l Limits) check(out []byte, rw *rewriter, o Options) error {
	after, err := l.Images(bytes.NewReader(out))
	if err != nil {
		return fmt.Errorf("rewriting broke the stream (a bug: please report it): %w", err)
	}
	// The images Images lists in the input, each as rewritten, each once: an image the walk did not find, or
	// found where Images sees none, is a difference between the two readings.
	var want []string
	seen := map[string]bool{}
	for _, img := range rw.before {
		to, ok := rw.mapped[img]
		if !ok {
			return fmt.Errorf("rewriting missed the image %q (a bug: please report it)", cut(img, maxShown))
		}
		if !seen[to] {
			seen[to] = true
			want = append(want, to)
		}
	}
	if len(rw.before) != len(rw.order) {
		return fmt.Errorf("rewriting found %d images where Images lists %d (a bug: please report it)", len(rw.order), len(rw.before))
	}
	if !slices.Equal(after, want) {
		return fmt.Errorf("rewriting broke the stream (a bug: please report it): its images are %s, not %s", cut(fmt.Sprintf("%q", after), maxMessage), cut(fmt.Sprintf("%q", want), maxMessage))
	}
	if o.Resolve != nil {
		o.Resolve = func(context.Context, string) (string, error) {
			return "", errors.New("an image is still without a digest")
		}
	}
	_, again, err := l.rewrite(context.Background(), out, o)
	if err != nil {
		return fmt.Errorf("rewriting broke the stream (a bug: please report it): %w", err)
	}
	if !bytes.Equal(again, out) {
		return errors.New("rewriting broke the stream (a bug: please report it): rewriting the output changes it again")
	}
	return nil
}

// rewriter walks the yaml.v3 documents of one input and collects the edits to make to its bytes.
type rewriter struct {
	ctx      context.Context
	o        Options
	src      []byte
	lines    []int
	maxDepth int

	// done holds the image scalars already handled; expanded the alias targets already walked (so that an
	// alias bomb is walked once, not a billion times); secretDone the pod specs already given a pull secret.
	done, expanded, secretDone map[*yaml.Node]bool
	// before are the input's images as Images lists them.
	before []string
	// mapped is each image as written -> as rewritten; order the images as written, in the order first seen.
	mapped map[string]string
	order  []string
	// resolved is a reference through pullgate -> its digest.
	resolved map[string]string
	edits    []edit
	report   Report

	doc    int
	object string
	path   []string
}

// edit replaces src[start:end] with text; an insertion has start == end.
type edit struct {
	start, end int
	text       string
}

// walk visits n, at nesting depth depth (the document's root is at 1, as for Images), and everything in it.
func (rw *rewriter) walk(n *yaml.Node, depth int) error {
	if (n.Kind == yaml.MappingNode || n.Kind == yaml.SequenceNode) && depth > rw.maxDepth {
		return rw.errorf("%w: more than %d levels", ErrTooDeep, rw.maxDepth)
	}
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			if err := rw.walk(c, depth); err != nil {
				return err
			}
		}
	case yaml.AliasNode:
		if n.Alias == nil || rw.expanded[n.Alias] {
			return nil
		}
		rw.expanded[n.Alias] = true
		return rw.walk(n.Alias, depth)
	case yaml.MappingNode:
		fs := mappingFields(n)
		if o := nodeObjectName(fs); o != "" {
			defer func(outer string) { rw.object = outer }(rw.object)
			rw.object = o
		}
		spec := false
		for _, f := range fs {
			rw.path = append(rw.path, label(f.key.Value))
			if isStringScalar(f.key) && isContainerList(f.key.Value) {
				through, err := rw.containers(f.value)
				if err != nil {
					return err
				}
				spec = spec || through
			}
			if err := rw.walk(f.value, depth+1); err != nil {
				return err
			}
			rw.path = rw.path[:len(rw.path)-1]
		}
		if spec && rw.o.PullSecret != "" && !rw.secretDone[n] {
			rw.secretDone[n] = true
			if err := rw.addPullSecret(n, fs); err != nil {
				return err
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			rw.path = append(rw.path, "["+strconv.Itoa(i)+"]")
			if err := rw.walk(c, depth+1); err != nil {
				return err
			}
			rw.path = rw.path[:len(rw.path)-1]
		}
	}
	return nil
}

// nodeField is one key of a mapping and its value, aliases resolved.
type nodeField struct{ key, value *yaml.Node }

// mappingFields returns the fields of mapping n as Kubernetes reads them: its own keys in the order
// written, then those merge keys ("<<: *base") bring in that n does not have, the first merged mapping
// winning. Aliases are resolved.
func mappingFields(n *yaml.Node) []nodeField { return mergedFields(n, 0) }

// maxMerges bounds how deeply merge keys bring in mappings that have merge keys of their own.
const maxMerges = 32

// mergedFields is mappingFields for a mapping merged into another levels deep.
func mergedFields(n *yaml.Node, levels int) []nodeField {
	var own, merged []nodeField
	has := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], deref(n.Content[i+1])
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			var sources []*yaml.Node
			if v.Kind == yaml.SequenceNode {
				for _, s := range v.Content {
					sources = append(sources, deref(s))
				}
			} else {
				sources = []*yaml.Node{v}
			}
			for _, s := range sources {
				if s.Kind == yaml.MappingNode && levels < maxMerges {
					merged = append(merged, mergedFields(s, levels+1)...)
				}
			}
			continue
		}
		own = append(own, nodeField{key: k, value: v})
		if k.Kind == yaml.ScalarNode {
			has[k.Value] = true
		}
	}
	for _, f := range merged {
		if f.key.Kind == yaml.ScalarNode && !has[f.key.Value] {
			has[f.key.Value] = true
			own = append(own, f)
		}
	}
	return own
}

// deref returns the node an alias stands for, or n.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 100; i++ {
		n = n.Alias
	}
	return n
}

// isStringScalar reports whether n is a scalar that reads as a string.
func isStringScalar(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str"
}

// readsAsString reports whether scalar n is a string as Images (and kubectl) read it: yaml.v3 reads YAML 1.2,
// where a plain "y", "no" or "on" is a string, but Kubernetes reads YAML 1.1, where it is a boolean (and so no
// image). A plain scalar is asked of the YAML library Images uses.
func readsAsString(n *yaml.Node) bool {
	switch {
	case n.Kind != yaml.ScalarNode:
		return false
	case n.Style&yaml.TaggedStyle != 0:
		return n.ShortTag() == "!!str"
	case n.Style != 0:
		return true // quoted, or a block scalar
	}
	var v any
	if err := yaml2.Unmarshal([]byte(n.Value), &v); err != nil {
		return false
	}
	s, ok := v.(string)
	return ok && s == n.Value
}

// nodeObjectName is objectName for a mapping's fields.
func nodeObjectName(fs []nodeField) string {
	var kind, name string
	for _, f := range fs {
		switch {
		case f.key.Value == "kind" && isStringScalar(f.value):
			kind = f.value.Value
		case f.key.Value == "metadata" && f.value.Kind == yaml.MappingNode:
			for _, m := range mappingFields(f.value) {
				if m.key.Value == "name" && isStringScalar(m.value) {
					name = m.value.Value
				}
			}
		}
	}
	if kind == "" {
		return ""
	}
	if name != "" {
		return kind + "/" + name
	}
	return kind
}

// containers rewrites the images of list, the value of a container list field, by the rule Images uses: an
// entry that is a mapping with a string "image". It reports whether any image of the list pulls through
// pullgate once rewritten.
func (rw *rewriter) containers(list *yaml.Node) (bool, error) {
	if list.Kind != yaml.SequenceNode {
		return false, nil
	}
	through := false
	for i, e := range list.Content {
		e = deref(e)
		if e.Kind != yaml.MappingNode {
			continue
		}
		for _, f := range mappingFields(e) {
			if f.key.Value != "image" || !isStringScalar(f.key) || !readsAsString(f.value) {
				continue
			}
			rw.path = append(rw.path, "["+strconv.Itoa(i)+"]", "image")
			t, err := rw.image(f.value)
			rw.path = rw.path[:len(rw.path)-2]
			if err != nil {
				return false, err
			}
			through = through || t
		}
	}
	return through, nil
}

// image rewrites the image scalar n (once, however often it is reached) and reports whether it pulls
// through pullgate once rewritten.
func (rw *rewriter) image(n *yaml.Node) (bool, error) {
	from := n.Value
	to, ok := rw.mapped[from]
	if !ok {
		var err error
		if to, err = rw.newImage(from); err != nil {
			return false, err
		}
		rw.order = append(rw.order, from)
		rw.mapped[from] = to
	}
	through := false
	if p := rw.o.Prefix; p != nil {
		ref, err := names.ParseReference(to)
		through = err == nil && ref.Registry == p.Registry() && !p.Excluded(ref)
	}
	if rw.done[n] || to == from {
		rw.done[n] = true
		return through, nil
	}
	rw.done[n] = true
	start, end, err := rw.scalarSpan(n)
	if err != nil {
		return false, err
	}
	rw.edits = append(rw.edits, edit{start: start, end: end, text: quoteLike(n, to)})
	rw.report.Images = append(rw.report.Images, Change{Document: rw.doc, Object: cut(rw.object, maxShown), Path: cut(rw.pathString(), maxShown), From: from, To: to})
	return through, nil
}

// newImage returns image as Options want it: through the prefix, and pinned.
func (rw *rewriter) newImage(image string) (string, error) {
	to := image
	if p := rw.o.Prefix; p != nil {
		out, _, err := p.Image(image)
		if err != nil {
			return "", rw.errorf("%w", err)
		}
		to = out
	}
	if rw.o.Resolve == nil || rw.o.Prefix == nil {
		return to, nil
	}
	ref, err := names.ParseReference(to)
	if err != nil {
		return "", rw.errorf("%w", err)
	}
	if ref.Digest != (names.Reference{}).Digest || ref.Registry != rw.o.Prefix.Registry() || rw.o.Prefix.Excluded(ref) {
		return to, nil
	}
	digest, ok := rw.resolved[to]
	if !ok {
		if err := rw.ctx.Err(); err != nil {
			return "", err
		}
		d, err := rw.o.Resolve(rw.ctx, to)
		if err != nil {
			return "", rw.errorf("%w of %s: %w", ErrResolve, to, err)
		}
		if _, err := names.ParseReference(to + "@" + d); err != nil {
			return "", rw.errorf("%w of %s: %q is no digest", ErrResolve, to, cut(d, maxShown))
		}
		digest = d
		rw.resolved[to] = d
	}
	return to + "@" + digest, nil
}

// scalarSpan returns where the text of scalar n is in src: after its anchor and tag, quotes included.
func (rw *rewriter) scalarSpan(n *yaml.Node) (int, int, error) {
	o, err := rw.offset(n.Line, n.Column)
	if err != nil {
		return 0, 0, err
	}
	o = skipProperties(rw.src, o)
	src := rw.src
	switch {
	case n.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0:
		return 0, 0, rw.errorf("%w: the image is a block scalar (| or >); write it on one line", ErrUnsupported)
	case n.Style&yaml.DoubleQuotedStyle != 0:
		if o >= len(src) || src[o] != '"' {
			break
		}
		for i := o + 1; i < len(src); i++ {
			switch src[i] {
			case '\\':
				i++
			case '"':
				return o, i + 1, nil
			}
		}
	case n.Style&yaml.SingleQuotedStyle != 0:
		if o >= len(src) || src[o] != '\'' {
			break
		}
		for i := o + 1; i < len(src); i++ {
			if src[i] == '\'' {
				if i+1 < len(src) && src[i+1] == '\'' {
					i++
					continue
				}
				return o, i + 1, nil
			}
		}
	default:
		if bytes.HasPrefix(src[o:], []byte(n.Value)) {
			return o, o + len(n.Value), nil
		}
	}
	return 0, 0, rw.errorf("%w: the image %q is not where the YAML parser says (line %d, column %d)", ErrUnsupported, cut(n.Value, maxShown), n.Line, n.Column)
}

// skipProperties returns o moved past an anchor ("&a"), a tag ("!!str", "!<...>") and the blanks, line
// breaks and comments after them, as they may stand before a node's content.
func skipProperties(src []byte, o int) int {
	for o < len(src) && (src[o] == '&' || src[o] == '!') {
		if src[o] == '!' && o+1 < len(src) && src[o+1] == '<' {
			for o < len(src) && src[o] != '>' {
				o++
			}
		}
		for o < len(src) && !isBlankOrBreak(src[o]) && !strings.ContainsRune(",[]{}", rune(src[o])) {
			o++
		}
		for o < len(src) {
			switch {
			case isBlankOrBreak(src[o]):
				o++
				continue
			case src[o] == '#':
				for o < len(src) && src[o] != '\n' && src[o] != '\r' {
					o++
				}
				continue
			}
			break
		}
	}
	return o
}

func isBlankOrBreak(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// quoteLike returns value written in the style of scalar n: in the same quotes, or plain when it reads back
// as the same string, else double-quoted.
func quoteLike(n *yaml.Node, value string) string {
	switch {
	case n.Style&yaml.SingleQuotedStyle != 0:
		return "'" + strings.ReplaceAll(value, "'", "''") + "'"
	case n.Style&yaml.DoubleQuotedStyle != 0 || !plainSafe(value):
		return doubleQuoted(value)
	}
	return value
}

// doubleQuoted returns s as a YAML double-quoted scalar that is also a JSON string.
func doubleQuoted(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, "\\u%04x", r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// plainSafe reports whether s, written as a plain scalar, reads back as the string s, in a block or a flow
// collection alike: its characters are those of image references, none of them a flow indicator.
func plainSafe(s string) bool {
	if s == "" || strings.HasSuffix(s, ":") {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._/:@+-", r)) {
			return false
		}
	}
	if strings.ContainsRune("-?:", rune(s[0])) {
		return false
	}
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(s), &n); err != nil || len(n.Content) != 1 {
		return false
	}
	c := n.Content[0]
	return c.Kind == yaml.ScalarNode && c.ShortTag() == "!!str" && c.Value == s && c.Style == 0
}

// addPullSecret adds Options.PullSecret to the pod spec n, whose fields are fs, unless it lists it.
func (rw *rewriter) addPullSecret(n *yaml.Node, fs []nodeField) error {
	name := rw.o.PullSecret
	entryJSON := `{"name": ` + doubleQuoted(name) + `}`
	place := fmt.Sprintf("document %d", rw.doc)
	if rw.object != "" {
		place += " (" + cut(rw.object, maxShown) + ")"
	}
	if p := rw.pathString(); p != "" {
		place += " " + cut(p, maxShown)
	}
	for _, f := range fs {
		if f.key.Value != "imagePullSecrets" {
			continue
		}
		list := f.value
		if list.Kind != yaml.SequenceNode {
			return rw.errorf("%w: imagePullSecrets is not a list", ErrUnsupported)
		}
		for _, e := range list.Content {
			for _, ef := range mappingFields(deref(e)) {
				if ef.key.Value == "name" && ef.value.Kind == yaml.ScalarNode && ef.value.Value == name {
					return nil
				}
			}
		}
		var err error
		if list.Style&yaml.FlowStyle != 0 {
			err = rw.insertFlow(list, entryJSON)
		} else {
			err = rw.insertBlock(list.Content[0], "- name: "+name, true)
		}
		if err != nil {
			return err
		}
		rw.report.PullSecrets = append(rw.report.PullSecrets, place)
		return nil
	}
	var err error
	if n.Style&yaml.FlowStyle != 0 {
		err = rw.insertFlow(n, `"imagePullSecrets": [`+entryJSON+`]`)
	} else {
		err = rw.insertBlock(n.Content[0], "imagePullSecrets:\n  - name: "+name, false)
	}
	if err != nil {
		return err
	}
	rw.report.PullSecrets = append(rw.report.PullSecrets, place)
	return nil
}

// insertFlow inserts entry as the first entry of the flow collection c: before its first entry, on a line
// of its own when that entry starts its line, or right after the opening bracket of an empty collection.
func (rw *rewriter) insertFlow(c *yaml.Node, entry string) error {
	if len(c.Content) == 0 {
		o, err := rw.offset(c.Line, c.Column)
		if err != nil {
			return err
		}
		o = skipProperties(rw.src, o)
		if o >= len(rw.src) || (rw.src[o] != '[' && rw.src[o] != '{') {
			return rw.errorf("%w: no bracket at line %d, column %d", ErrUnsupported, c.Line, c.Column)
		}
		rw.edits = append(rw.edits, edit{start: o + 1, end: o + 1, text: entry})
		return nil
	}
	first := c.Content[0]
	o, err := rw.offset(first.Line, first.Column)
	if err != nil {
		return err
	}
	ls := rw.lines[first.Line-1]
	if prefix := rw.src[ls:o]; len(bytes.TrimLeft(prefix, " \t")) == 0 {
		rw.edits = append(rw.edits, edit{start: o, end: o, text: entry + "," + rw.lineBreak(first.Line) + string(prefix)})
	} else {
		rw.edits = append(rw.edits, edit{start: o, end: o, text: entry + ", "})
	}
	return nil
}

// insertBlock inserts text (lines separated by "\n") before first, the first key of a block mapping or the
// first entry of a block sequence (item), with first's indentation. When first's line starts with other
// tokens ("- " of an enclosing list, or the dash of item), the text goes after them, and first moves to a
// line of its own at the same column.
func (rw *rewriter) insertBlock(first *yaml.Node, text string, item bool) error {
	o, err := rw.offset(first.Line, first.Column)
	if err != nil {
		return err
	}
	ls := rw.lines[first.Line-1]
	br := rw.lineBreak(first.Line)
	if item {
		// first is the content of an entry: its dash is before it on its line.
		d := o - 1
		for d > ls && (rw.src[d] == ' ' || rw.src[d] == '\t') {
			d--
		}
		if d < ls || rw.src[d] != '-' {
			return rw.errorf("%w: the imagePullSecrets list is not written one entry per line", ErrUnsupported)
		}
		o = d
	}
	indent := utf8.RuneCount(rw.src[ls:o])
	lines := strings.Split(text, "\n")
	if prefix := rw.src[ls:o]; len(bytes.Trim(prefix, " ")) == 0 {
		var b strings.Builder
		for _, l := range lines {
			b.Write(prefix)
			b.WriteString(l)
			b.WriteString(br)
		}
		rw.edits = append(rw.edits, edit{start: ls, end: ls, text: b.String()})
		return nil
	}
	pad := strings.Repeat(" ", indent)
	var b strings.Builder
	for i, l := range lines {
		if i > 0 {
			b.WriteString(pad)
		}
		b.WriteString(l)
		b.WriteString(br)
	}
	b.WriteString(pad)
	rw.edits = append(rw.edits, edit{start: o, end: o, text: b.String()})
	return nil
}

// lineBreak returns the line break that ends line (1-based): "\r\n" where the input uses it, else "\n".
func (rw *rewriter) lineBreak(line int) string {
	if line < len(rw.lines) {
		if e := rw.lines[line]; e >= 2 && rw.src[e-2] == '\r' && rw.src[e-1] == '\n' {
			return "\r\n"
		}
	}
	return "\n"
}

// offset returns the byte offset in src of the YAML parser's 1-based line and column (a column counts
// characters, not bytes).
func (rw *rewriter) offset(line, column int) (int, error) {
	if line < 1 || line > len(rw.lines) || column < 1 {
		return 0, rw.errorf("%w: line %d, column %d is not in the input", ErrUnsupported, line, column)
	}
	o := rw.lines[line-1]
	for range column - 1 {
		if o >= len(rw.src) {
			return 0, rw.errorf("%w: line %d, column %d is not in the input", ErrUnsupported, line, column)
		}
		_, size := utf8.DecodeRune(rw.src[o:])
		o += size
	}
	return o, nil
}

// lineStarts returns the byte offset of the start of each line of src, as the YAML parser counts lines: a
// byte order mark at the start is no character, and "\r\n", "\r", "\n", U+0085, U+2028 and U+2029 end lines.
func lineStarts(src []byte) []int {
	start := 0
	if bytes.HasPrefix(src, []byte("\ufeff")) {
		start = 3
	}
	lines := []int{start}
	for i := start; i < len(src); {
		switch {
		case src[i] == '\r' && i+1 < len(src) && src[i+1] == '\n':
			i += 2
		case src[i] == '\r' || src[i] == '\n':
			i++
		case bytes.HasPrefix(src[i:], []byte("\u0085")):
			i += 2
		case bytes.HasPrefix(src[i:], []byte("\u2028")) || bytes.HasPrefix(src[i:], []byte("\u2029")):
			i += 3
		default:
			i++
			continue
		}
		lines = append(lines, i)
	}
	return lines
}

// splice returns src with edits applied. Edits must not overlap; insertions at one offset keep their order.
func splice(src []byte, edits []edit) ([]byte, error) {
	slices.SortStableFunc(edits, func(a, b edit) int { return a.start - b.start })
	var out bytes.Buffer
	out.Grow(len(src) + 64*len(edits))
	at := 0
	for _, e := range edits {
		if e.start < at || e.end < e.start || e.end > len(src) {
			return nil, fmt.Errorf("%w: two changes overlap at byte %d (a bug: please report it)", ErrUnsupported, e.start)
		}
		out.Write(src[at:e.start])
		out.WriteString(e.text)
		at = e.end
	}
	out.Write(src[at:])
	return out.Bytes(), nil
}

// pathString returns the walk's path as "a.b[0].c".
func (rw *rewriter) pathString() string {
	var p strings.Builder
	for _, s := range rw.path {
		if p.Len() > 0 && !strings.HasPrefix(s, "[") {
			p.WriteByte('.')
		}
		p.WriteString(s)
	}
	return p.String()
}

// errorf returns a *DocumentError for where the walk is.
func (rw *rewriter) errorf(format string, args ...any) error {
	return &DocumentError{Document: rw.doc, Object: cut(rw.object, maxShown), Path: cut(rw.pathString(), maxShown), Err: fmt.Errorf(format, args...)}
}

// isSecretName reports whether s can name a Secret: a DNS subdomain name, dot-separated labels of lowercase
// letters, digits and '-' that start and end with a letter or digit, 253 bytes at most.
func isSecretName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
