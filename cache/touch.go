package cache

import "time"

// pruneTouched makes room in the touched map: it forgets the digests recorded touchInterval ago or more (Touch
// would write them again anyway), and every digest if that frees less than a quarter of the limit. c.mu is held.
func (c *Cache) pruneTouched(now time.Time) {
	for d, t := range c.touched {
		if now.Sub(t) >= touchInterval || now.Before(t) {
			delete(c.touched, d)
		}
	}
	if len(c.touched) > c.touchLimit*3/4 {
		clear(c.touched)
	}
}
