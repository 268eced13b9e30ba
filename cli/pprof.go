package cli

import (
	"net"
	"net/http"
	_ "net/http/pprof" // registers the profile handlers on the default mux

	"github.com/sheepfs/sheepfs/errs"
)

// servePprof serves Go's profiles on addr, if addr is not empty.
func servePprof(addr string) error {
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return errs.E(errs.Invalid, "pprof listener on %s: %w", addr, err)
	}
	go http.Serve(ln, nil)
	return nil
}
