package cache

import (
	"github.com/dgraph-io/badger/v4"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// SetMediaType records mediaType as the media type of the stored object d, replacing what was recorded. It
// returns ErrNotFound when d is not stored. It is how content stored without a type (a blob fill, or an
// imported bundle, whose tar says nothing of types) is described as the manifest its bytes are: the caller
// derives the type from the content, since a manifest is served with its stored type.
func (c *Cache) SetMediaType(d v1.Hash, mediaType string) error {
	if err := checkDigest(d); err != nil {
		return err
	}
	l := c.lock(d)
	l.Lock()
	defer l.Unlock()
	o, err := c.Stat(d)
	if err != nil {
		return err
	}
	if o.MediaType == mediaType {
		return nil
	}
	o.MediaType = mediaType
	return c.set(badger.NewEntry(objectKey(d), encodeObject(o)))
}
