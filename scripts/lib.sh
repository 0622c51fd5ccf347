# shellcheck shell=bash
# Small bash helpers shared by the scripts in this folder. Source it; it
# defines functions only and changes no shell options.

# Messages go to stderr so that a command's stdout stays machine-readable
# (e.g. `scripts/stack env`).
log() { printf '%s: %s\n' "${LOG_PREFIX:-stack}" "$*" >&2; }
die() { printf '%s: error: %s\n' "${LOG_PREFIX:-stack}" "$*" >&2; exit 1; }

# port_open HOST PORT — true if something accepts TCP connections there.
# Uses bash's /dev/tcp so that no client (nc, curl, ...) is needed; `timeout`
# guards against a filtered address that never answers.
port_open() {
    # shellcheck disable=SC2016 # $1/$2 are the inner shell's arguments
    timeout 1 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# pid_alive PID — true if the process exists and is not a zombie. A daemon
# we killed may stay a zombie when its parent (our long gone shell's
# successor, often PID 1 of a container) does not reap children; `kill -0`
# alone would call it alive forever.
pid_alive() {
    local pid=$1 state
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $state != Z && $state != X ]]
}

# pid_cmdline PID — the process's argv joined by spaces ('' if gone).
pid_cmdline() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; }

# short_hash STRING — 12 hex chars, stable, for per-checkout temp names.
short_hash() { printf '%s' "$1" | sha256sum | cut -c1-12; }

# apt_install PKG... — install Debian packages non-interactively.
# Runs `apt-get update` once per script run first (fresh images have empty
# package lists). Waits for another apt/dpkg (e.g. a background
# `apt-get update`) instead of failing on its lock. Output goes to
# $APT_LOG (default /dev/stderr) so the caller's stdout stays clean.
APT_UPDATED=${APT_UPDATED:-0}
apt_install() {
    if [[ $EUID -ne 0 ]]; then
        die "missing system packages: $*; install them once with: sudo apt-get install -y $*"
    fi
    command -v apt-get >/dev/null || die "missing packages ($*) and no apt-get on this machine"
    export DEBIAN_FRONTEND=noninteractive
    if [[ $APT_UPDATED != 1 ]]; then
        log "apt-get update"
        _apt_retry apt-get update
        APT_UPDATED=1
    fi
    log "apt-get install $* (output: ${APT_LOG:-stderr})"
    _apt_retry apt-get install -y --no-install-recommends "$@"
}

_apt_retry() {
    local out=${APT_LOG:-/dev/stderr} waited=0
    while true; do
        # DPkg::Lock::Timeout makes apt wait for the dpkg lock itself; the
        # loop also covers the package-lists lock held by a running update.
        if "$1" -o DPkg::Lock::Timeout=120 "${@:2}" >>"$out" 2>&1; then
            return 0
        fi
        if ((waited < 600)) && [[ $out != /dev/stderr ]] &&
            tail -n 5 "$out" | grep -qiE 'could not get lock|unable to (acquire|lock)|is another process using it'; then
            log "apt is busy (another apt/dpkg holds its lock); waiting..."
            sleep 5
            waited=$((waited + 5))
            continue
        fi
        die "'$*' failed; see ${out}"
    done
}
