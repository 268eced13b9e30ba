# Shared by scripts/up, scripts/down, scripts/test and the benchmarks.
# Settings (environment overrides, so several clusters can live side by side):
#   SHEEP_NODES  number of sheep daemons (default 3)
#   SHEEP_PORT   data port of the first; node i uses SHEEP_PORT+10*i, and
#                each node also uses the next two ports (gossip, raft)
#   SHEEP_DATA   data root; node i keeps its data in $SHEEP_DATA/node$i
#   SHEEP_MNT    mount point of sheepfs
#   SHEEP_COPIES copies when formatting a new cluster (default min(3, nodes))
#   SHEEP_KEY_FILE    the cluster key (default $SHEEP_DATA/cluster.key, made by
#                scripts/up when missing); every sheep and sheepfs the scripts
#                run uses it
#   SHEEP_GOMAXPROCS  GOMAXPROCS of each sheep and of sheepfs (default: the
#                machine's cores shared among the nodes+1 processes, at least
#                1; on one machine, Go runtimes that each think they own every
#                core spin and steal CPU from each other)
#   SHEEPFS_GOMAXPROCS  GOMAXPROCS of sheepfs (default SHEEP_GOMAXPROCS, and
#                at least 8: its goroutines wait in system calls (FUSE,
#                the daemon's socket, the local copies on disk), and one
#                that waits holds its P; docs/ARCHITECTURE.md, Processes on
#                one machine)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SHEEP_NODES=${SHEEP_NODES:-3}
SHEEP_PORT=${SHEEP_PORT:-7000}
SHEEP_DATA=${SHEEP_DATA:-/var/lib/sheepfs-local}
SHEEP_MNT=${SHEEP_MNT:-/mnt/sheep}
SHEEP_KEY_FILE=${SHEEP_KEY_FILE:-$SHEEP_DATA/cluster.key}
export SHEEP_KEY_FILE
SHEEP_COPIES=${SHEEP_COPIES:-$(( SHEEP_NODES < 3 ? SHEEP_NODES : 3 ))}
SHEEP_GOMAXPROCS=${SHEEP_GOMAXPROCS:-$(( $(nproc) / (SHEEP_NODES + 1) > 1 ? $(nproc) / (SHEEP_NODES + 1) : 1 ))}
SHEEPFS_GOMAXPROCS=${SHEEPFS_GOMAXPROCS:-$(( SHEEP_GOMAXPROCS > 8 ? SHEEP_GOMAXPROCS : 8 ))}
BIN=$ROOT/bin

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# need_pkgs CMD:PKG ... installs the Debian package of each missing command.
need_pkgs() {
	local missing=()
	for pair in "$@"; do
		command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	say "installing ${missing[*]} ..."
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
		apt-get update -qq >/dev/null 2>&1 || true
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
	fi
}

# need_go makes sure a Go toolchain is usable (Debian's golang-go fetches the
# version go.mod asks for through the module proxy).
need_go() {
	if ! command -v go >/dev/null 2>&1; then
		[ -x /usr/local/go/bin/go ] && export PATH=/usr/local/go/bin:$PATH
	fi
	if ! command -v go >/dev/null 2>&1; then
		need_pkgs go:golang-go
	fi
	export GOTOOLCHAIN=${GOTOOLCHAIN:-auto}
}

build() {
	need_go
	say "building sheep and sheepfs into $BIN ..."
	(cd "$ROOT" && CGO_ENABLED=0 go build -buildvcs=auto -o "$BIN/" ./cmd/sheep ./cmd/sheepfs) || die "build failed"
}

node_port() { echo $(( SHEEP_PORT + 10 * $1 )); }

# mounted DIR: something is mounted at DIR, by /proc/self/mountinfo (not
# by looking at DIR, which waits on a mount whose sheepfs died while its
# holder keeps it).
mounted() {
	local abs=$1
	[ "${abs#/}" != "$abs" ] || abs=$PWD/$abs
	awk -v d="$abs" '$5 == d { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# alive PIDFILE NAME: the pid in PIDFILE runs a command containing NAME.
alive() {
	local pid
	[ -f "$1" ] || return 1
	pid=$(cat "$1" 2>/dev/null) || return 1
	[ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2"
}
