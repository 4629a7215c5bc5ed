# shellcheck shell=bash
# apt helpers shared by ci/guest-build.sh and ci/qemu-build.sh; sourced, not
# run. The sourcing script defines log() and die() and sets OUT (where
# apt.log goes).
#
# The Debian archive is never named here: the bookworm-backports sources
# (binary and source packages) are derived from whatever apt source already
# serves bookworm on the machine.

export DEBIAN_FRONTEND=noninteractive

# Prints "URI<TAB>Signed-By" of the first apt source of type $1 (deb or
# deb-src) that serves suite $2, and fails when there is none. deb822
# (*.sources) files are read first, one-line sources.list files second.
apt_source_for() {
    local type=$1 suite=$2 f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        # Paragraph mode: one record per stanza.
        awk -v want_type="$type" -v want_suite="$suite" 'BEGIN { RS = ""; FS = "\n" }
        {
            uri = ""; suites = ""; key = ""; types = ""; enabled = "yes"
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^URIs:/)      { uri = $i;     sub(/^URIs:[ \t]*/, "", uri) }
                if ($i ~ /^Suites:/)    { suites = $i;  sub(/^Suites:[ \t]*/, "", suites) }
                if ($i ~ /^Signed-By:/) { key = $i;     sub(/^Signed-By:[ \t]*/, "", key) }
                if ($i ~ /^Types:/)     { types = $i;   sub(/^Types:[ \t]*/, "", types) }
                if ($i ~ /^Enabled:/)   { enabled = $i; sub(/^Enabled:[ \t]*/, "", enabled) }
            }
            if (enabled != "no" && (" " types " ") ~ (" " want_type " ") &&
                (" " suites " ") ~ ("[ \t]" want_suite "[ \t]")) {
                split(uri, u, /[ \t]+/)
                print u[1] "\t" key
                exit
            }
        }' "$f"
    done | head -n 1 | grep . && return 0

    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        # "TYPE [options] URI SUITE component..."
        sed -E -n "s/^${type}[ \t]+(\[[^]]*\][ \t]+)?([^ \t]+)[ \t]+${suite}[ \t].*/\2\t/p" "$f"
    done | head -n 1 | grep .
}

# Runs an apt command with its chatter sent to $OUT/apt.log, shown only
# when the command fails.
apt_quiet() {
    mkdir -p "$OUT"
    if ! "$@" >>"$OUT/apt.log" 2>&1; then
        tail -n 20 "$OUT/apt.log" >&2
        die "'$*' failed (full log: $OUT/apt.log)"
    fi
}

# Installed version of a package, empty when it is not installed.
installed_version() {
    { dpkg-query -W -f '${db:Status-Status} ${Version}\n' "$1" 2>/dev/null || true; } |
        awk '$1 == "installed" { print $2 }'
}

# Writes a deb822 source of type $1 for suite $2 into file $3, on the
# archive and with the keyring of the line "URI<TAB>Signed-By" in $4, then
# refreshes apt's lists.
add_apt_source() {
    local type=$1 suite=$2 file=$3 line=$4 uri key
    uri=${line%%$'\t'*}
    key=${line#*$'\t'}
    log "adding apt source '$type $suite' from $uri ($file)"
    {
        printf 'Types: %s\nURIs: %s\nSuites: %s\nComponents: main\n' "$type" "$uri" "$suite"
        if [[ -n $key ]]; then
            printf 'Signed-By: %s\n' "$key"
        fi
    } >"$file"
    apt_quiet apt-get update
}

# Adds bookworm-backports (binary packages), derived from the bookworm
# source, unless apt already has it.
ensure_backports_source() {
    apt_source_for deb bookworm-backports >/dev/null && return
    local line
    line=$(apt_source_for deb bookworm) ||
        die "no apt source for bookworm found to derive bookworm-backports from"
    add_apt_source deb bookworm-backports \
        /etc/apt/sources.list.d/bookworm-backports.sources "$line"
}

# Adds the source packages of bookworm-backports (deb-src), derived from
# its binary source, unless apt already has them.
ensure_backports_src_source() {
    ensure_backports_source
    apt_source_for deb-src bookworm-backports >/dev/null && return
    local line
    line=$(apt_source_for deb bookworm-backports) ||
        die "no apt source for bookworm-backports found"
    add_apt_source deb-src bookworm-backports \
        /etc/apt/sources.list.d/bookworm-backports-src.sources "$line"
}

# Installs QEMU 10 (qemu-system-x86) from bookworm-backports unless a QEMU
# >= 10 is installed: vhost-user-gpu under TCG needs it, and bookworm itself
# has 7.2.
ensure_stock_qemu() {
    local qv
    qv=$(installed_version qemu-system-x86)
    if [[ -z $qv ]] || ! dpkg --compare-versions "$qv" ge 1:10; then
        ensure_backports_source
        log "installing qemu-system-x86 from bookworm-backports"
        apt_quiet apt-get install -y --no-install-recommends -t bookworm-backports qemu-system-x86
    fi
}
