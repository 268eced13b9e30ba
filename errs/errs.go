// Package errs is the error vocabulary of sheepfs: every error that crosses a
// package, process or wire boundary carries a Kind, and callers match kinds
// with errors.Is / Is, never by message. fs/ maps kinds to errno in one table.
package errs

import (
	"errors"
	"fmt"
)

// Kind classifies an error. Kinds travel on the wire as one byte, so values
// must never be renumbered.
type Kind uint8

// The kinds. Other is the zero value: an error we know nothing about.
const (
	Other       Kind = iota // unclassified
	Invalid                 // malformed request, bad name, size or offset
	NotFound                // no such VDI, snapshot, object or node
	Exists                  // the name is taken, the cluster is already formatted
	Busy                    // locked by someone else, open for writing
	StaleEpoch              // the sender's epoch is older than the receiver's
	ReadOnly                // write to a snapshot or to a minority partition
	NoSpace                 // a disk is full
	IO                      // a disk or peer failed
	NotReady                // cluster not formatted, no quorum, no leader yet
	Unsupported             // the operation is not supported
	TooLarge                // the request or result exceeds a limit
	Closed                  // the connection or node is shutting down
	Denied                  // not authorized: wrong key, or not allowed to this role
	Corrupt                 // stored data failed its checksum, or a copy is damaged
	Lost                    // acknowledged writes may be gone: a replica's machine restarted before they were flushed
	maxKind
)

var kindNames = [...]string{
	Other:       "error",
	Invalid:     "invalid argument",
	NotFound:    "not found",
	Exists:      "already exists",
	Busy:        "busy",
	StaleEpoch:  "stale epoch",
	ReadOnly:    "read-only",
	NoSpace:     "no space left",
	IO:          "I/O error",
	NotReady:    "cluster not ready",
	Unsupported: "not supported",
	TooLarge:    "too large",
	Closed:      "closed",
	Denied:      "not authorized",
	Corrupt:     "data corrupt",
	Lost:        "writes lost",
}

func (k Kind) String() string {
	if k < maxKind {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Valid reports whether k is a known kind (used when decoding the wire).
func (k Kind) Valid() bool { return k < maxKind }

// Error is an error with a kind. Msg says what failed, with enough context
// for a person; Err is the cause, if any.
type Error struct {
	Kind Kind
	Msg  string
	Err  error
}

func (e *Error) Error() string {
	switch {
	case e.Msg == "" && e.Err == nil:
		return e.Kind.String()
	case e.Err == nil:
		return e.Msg + ": " + e.Kind.String()
	case e.Msg == "":
		return e.Err.Error()
	default:
		return e.Msg + ": " + e.Err.Error()
	}
}

func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, errs.NotFound) style matching work: a Kind is an
// error target.
func (e *Error) Is(target error) bool {
	if k, ok := target.(Kind); ok {
		return e.Kind == k
	}
	return false
}

// Error lets a Kind be used as an errors.Is target.
func (k Kind) Error() string { return k.String() }

// E returns an error of kind k with a formatted message. A %w verb in the
// format wraps the cause as with fmt.Errorf.
func E(k Kind, format string, args ...any) error {
	err := fmt.Errorf(format, args...)
	if u := errors.Unwrap(err); u != nil {
		msg := err.Error()
		if s := u.Error(); len(msg) > len(s)+2 && msg[len(msg)-len(s)-2:] == ": "+s {
			msg = msg[:len(msg)-len(s)-2]
		}
		return &Error{Kind: k, Msg: msg, Err: u}
	}
	return &Error{Kind: k, Msg: err.Error()}
}

// KindOf returns the kind of the first error in err's chain that has one,
// or Other.
func KindOf(err error) Kind {
	if err == nil {
		return Other
	}
	var e *Error
	for cur := err; cur != nil; {
		if errors.As(cur, &e) {
			if e.Kind != Other {
				return e.Kind
			}
			cur = e.Err
			continue
		}
		break
	}
	var k Kind
	if errors.As(err, &k) {
		return k
	}
	return Other
}

// Is reports whether err has kind k anywhere in its chain.
func Is(err error, k Kind) bool { return KindOf(err) == k }
