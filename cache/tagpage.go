package cache

import (
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// TagPage returns at most n tags of one repository that sort after last (all of them from the first when last
// is empty), in lexical order, and whether more follow. Unlike Tags, it holds no more than one page in memory
// however many tags a repository has. n <= 0 returns none.
func (c *Cache) TagPage(upstream, repo, last string, n int) (tags []string, more bool, err error) {
	prefix, err := key(kindTag, upstream, repo)
	if err != nil {
		return nil, false, err
	}
	prefix = append(prefix, sep)
	start, err := key(kindTag, upstream, repo, last)
	if err != nil {
		return nil, false, err
	}
	tags = []string{}
	if n <= 0 {
		return tags, false, nil
	}
	err = c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Seek(start); it.Valid(); it.Next() {
			t := string(it.Item().Key()[len(prefix):])
			if last != "" && t <= last {
				continue
			}
			if len(tags) == n {
				more = true
				return nil
			}
			tags = append(tags, t)
		}
		return nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("cache: list tags: %w", err)
	}
	return tags, more, nil
}
