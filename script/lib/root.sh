# Sourced by script/run and script/test (POSIX sh): what needs root is done as root, directly
# when we are root (a minimal Debian has no sudo), else through sudo.

# as_root COMMAND [ARG...]: run COMMAND as root; without root or sudo, say what needed root
# and fail.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -- "$@"
    else
        echo "$(basename "$0"): needs root for: $*; run it as root, or install sudo" >&2
        return 1
    fi
}

# rerun_as_root SCRIPT [ARG...]: return when we are root; else run SCRIPT again with its
# arguments through sudo (replacing this process), or, without sudo, say why and exit 1.
rerun_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        return 0
    fi
    if command -v sudo >/dev/null 2>&1; then
        echo "$(basename "$1"): running again as root, through sudo" >&2
        exec sudo -- "$@"
    fi
    echo "$(basename "$1"): needs root (apt-get, network namespaces): run it as root, or install sudo" >&2
    exit 1
}
