package cli

import (
	"strconv"
	"strings"

	"github.com/sheepfs/sheepfs/errs"
)

// ParseSize parses a byte count: a number with an optional binary unit
// (K, M, G, T, P; "KiB", "KB" and "K" all mean 1024).
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := uint64(1)
	if t != "" {
		switch t[len(t)-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		case 'P':
			mult = 1 << 50
		}
		if mult > 1 {
			t = t[:len(t)-1]
		}
	}
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil {
		return 0, errs.E(errs.Invalid, "size %q: want a number with an optional unit K, M, G, T, P", s)
	}
	if n > ^uint64(0)/mult {
		return 0, errs.E(errs.Invalid, "size %q is too large", s)
	}
	return n * mult, nil
}
