package proxy

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/pullgate/pullgate/cache"
	"github.com/pullgate/pullgate/lifecycle"
)

// The admin API's cache routes, for `pullgate pin`, `purge`, `seed --status`, `export` and `import` on a
// running pullgate:
//
//	GET    /admin/v1/pins                 the pins in force and what they hold
//	POST   /admin/v1/pins    {"image":…}  pin an image or pattern
//	DELETE /admin/v1/pins?image=…         unpin
//	POST   /admin/v1/purge   {…}          lifecycle.PurgeRequest: a dry run unless "apply" is true
//	GET    /admin/v1/images?image=…       how much of each image is cached
//	GET    /admin/v1/export?image=…       an OCI image layout archive of the images
//	POST   /admin/v1/import  <tar>        load an OCI image layout archive, verifying every blob

// maxAdminRequest bounds the JSON body of an admin request.
const maxAdminRequest = 64 << 10

// maxAdminImages bounds the images of one images or export request.
const maxAdminImages = 1000

// adminMethods are the methods each admin route answers.
var adminMethods = map[string][]string{
	"verdicts": {http.MethodGet, http.MethodHead},
	"pins":     {http.MethodGet, http.MethodHead, http.MethodPost, http.MethodDelete},
	"purge":    {http.MethodPost},
	"images":   {http.MethodGet, http.MethodHead},
	"export":   {http.MethodGet},
	"import":   {http.MethodPost},
}

// checkAdminMethod refuses a method the admin route does not answer.
func checkAdminMethod(name, method string) error {
	ms, ok := adminMethods[name]
	if !ok {
		return nil // answered 404 by serveAdmin
	}
	for _, m := range ms {
		if m == method {
			return nil
		}
	}
	return &apiError{code: codeUnsupported, message: fmt.Sprintf("admin API route %s%s answers %v, not %s", adminPrefix, name, ms, method)}
}

// lifecycleOff is the error of the cache routes when Options.Resolve is nil.
func lifecycleOff() error {
	return errorf(codeNotFound, "this pullgate does not offer the admin API's cache routes")
}

func (h *Handler) resolveImage(name string) (lifecycle.Image, error) {
	img, err := h.opts.Resolve(name, false)
	if err != nil {
		return img, errorf(codeNameInvalid, "%v", err)
	}
	return img, nil
}

func (h *Handler) servePins(w *recorder, r *http.Request) error {
	var (
		st  lifecycle.PinState
		err error
	)
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		st, err = lifecycle.Pins(r.Context(), h.opts.Cache)
	case http.MethodPost:
		var body struct {
			Image string `json:"image"`
		}
		if err := readAdminJSON(r, &body); err != nil {
			return err
		}
		st, err = lifecycle.AddPin(r.Context(), h.opts.Cache, h.opts.Resolve, body.Image)
	case http.MethodDelete:
		st, err = lifecycle.RemovePin(r.Context(), h.opts.Cache, h.opts.Resolve, r.URL.Query().Get("image"))
	}
	switch {
	case errors.Is(err, lifecycle.ErrPinsOverQuota):
		return &apiError{code: codeDenied, status: http.StatusConflict, message: err.Error()}
	case errors.Is(err, lifecycle.ErrNoSuchPin):
		return errorf(codeNotFound, "%v", err)
	case err != nil && !errors.Is(err, cache.ErrFull):
		return &apiError{code: codeNameInvalid, message: err.Error(), cause: err}
	case err != nil:
		return err
	}
	return writeAdminJSON(w, r, st)
}

func (h *Handler) servePurge(w *recorder, r *http.Request) error {
	var req lifecycle.PurgeRequest
	if err := readAdminJSON(r, &req); err != nil {
		return err
	}
	res, err := lifecycle.Purge(r.Context(), h.opts.Cache, h.opts.Resolve, req, h.opts.Now())
	if errors.Is(err, cache.ErrNotFound) {
		return errorf(codeNotFound, "%v", err)
	}
	if err != nil {
		return &apiError{code: codeNameInvalid, message: err.Error(), cause: err}
	}
	if res.Applied {
		h.opts.Log.Info("admin: purged", "request", req, "objects", res.Objects, "bytes", res.Bytes)
	}
	return writeAdminJSON(w, r, res)
}

func (h *Handler) serveImages(w *recorder, r *http.Request) error {
	imgs, err := h.adminImages(r)
	if err != nil {
		return err
	}
	out := struct {
		Images []lifecycle.ImageStatus `json:"images"`
	}{Images: []lifecycle.ImageStatus{}}
	for _, img := range imgs {
		st, err := lifecycle.Status(r.Context(), h.opts.Cache, img)
		if err != nil {
			return err
		}
		out.Images = append(out.Images, st)
	}
	return writeAdminJSON(w, r, out)
}

// adminImages reads the image query parameters.
func (h *Handler) adminImages(r *http.Request) ([]lifecycle.Image, error) {
	names := r.URL.Query()["image"]
	if len(names) == 0 || len(names) > maxAdminImages {
		return nil, errorf(codeNameInvalid, "give from 1 to %d images as image= parameters", maxAdminImages)
	}
	var imgs []lifecycle.Image
	for _, n := range names {
		img, err := h.resolveImage(n)
		if err != nil {
			return nil, err
		}
		imgs = append(imgs, img)
	}
	return imgs, nil
}

func (h *Handler) serveExport(w *recorder, r *http.Request) error {
	imgs, err := h.adminImages(r)
	if err != nil {
		return err
	}
	// Export checks every image before it writes a byte, so that its refusal is still an error answer.
	pw := &lazyHeader{w: w}
	st, err := lifecycle.Export(r.Context(), pw, h.opts.Cache, imgs)
	if err != nil && !pw.started {
		if errors.Is(err, lifecycle.ErrIncomplete) {
			return errorf(codeNotFound, "%v", err)
		}
		return err
	}
	if err != nil {
		// Too late for an error answer: cut the stream, so that the client sees a broken archive, not a short
		// one it might take for whole.
		h.opts.Log.Error("admin: export failed after it began; the archive is cut", "error", err)
		panic(http.ErrAbortHandler)
	}
	h.opts.Log.Info("admin: exported", "images", len(st.Images), "objects", st.Objects, "bytes", st.Bytes)
	return nil
}

// lazyHeader sends the archive's headers with its first byte.
type lazyHeader struct {
	w       *recorder
	started bool
}

func (l *lazyHeader) Write(p []byte) (int, error) {
	if !l.started {
		l.started = true
		l.w.Header().Set("Content-Type", "application/x-tar")
		l.w.WriteHeader(http.StatusOK)
	}
	return l.w.Write(p)
}

func (h *Handler) serveImport(w *recorder, r *http.Request) error {
	st, err := lifecycle.Import(r.Context(), r.Body, h.opts.Cache, lifecycle.ImportOptions{
		Resolve:   func(name string) (lifecycle.Image, error) { return h.opts.Resolve(name, false) },
		Immutable: func(_, _, tag string) bool { return h.opts.Policy.immutable(tag) },
		Now:       h.opts.Now,
		Logger:    h.opts.Log,
	})
	out := importAnswer{Objects: st.Objects, Bytes: st.Bytes, Unnamed: st.Unnamed, Images: []importedImage{}}
	for _, im := range st.Images {
		ii := importedImage{Image: im.Name, Digest: im.Digest.String(), Objects: im.Objects, Bytes: im.Bytes}
		if im.Err != nil {
			ii.Error = im.Err.Error()
		}
		out.Images = append(out.Images, ii)
	}
	for _, ro := range st.Refused {
		out.Refused = append(out.Refused, fmt.Sprintf("%s: %v", ro.Digest, ro.Err))
	}
	if err != nil {
		out.Error = err.Error()
	}
	h.opts.Log.Info("admin: imported", "images", len(st.Images), "objects", st.Objects, "bytes", st.Bytes, "refused", len(st.Refused), "error", err)
	if err != nil && len(st.Images) == 0 {
		if errors.Is(err, lifecycle.ErrBadBundle) {
			return &apiError{code: codeManifestInvalid, message: err.Error(), cause: err}
		}
		return err
	}
	return writeAdminJSON(w, r, out)
}

// importAnswer is the JSON answer of an import; Error is set when some image was not imported.
type importAnswer struct {
	Images  []importedImage `json:"images"`
	Objects int             `json:"objects"`
	Bytes   int64           `json:"bytes"`
	Unnamed int             `json:"unnamed,omitempty"`
	Refused []string        `json:"refused,omitempty"`
	Error   string          `json:"error,omitempty"`
}

type importedImage struct {
	Image   string `json:"image"`
	Digest  string `json:"digest,omitempty"`
	Objects int    `json:"objects"`
	Bytes   int64  `json:"bytes"`
	Error   string `json:"error,omitempty"`
}

func readAdminJSON(r *http.Request, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxAdminRequest+1))
	if err != nil {
		return err
	}
	if len(body) > maxAdminRequest {
		return errorf(codeSizeInvalid, "admin request body over %d bytes", maxAdminRequest)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return errorf(codeNameInvalid, "admin request body: %v", err)
	}
	return nil
}

func writeAdminJSON(w *recorder, r *http.Request, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
	return nil
}
