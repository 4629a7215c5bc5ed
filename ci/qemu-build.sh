#!/usr/bin/env bash
# Builds QEMU with qemu-configs/0001-vhost-user-gpu-pass-context-init-and-
# resource-blob.patch, the QEMU that runs the GPU in full mode (CONTEXT_INIT
# and RESOURCE_BLOB passed from the daemon to the guest).
#
#   ci/qemu-build.sh [--force]
#
# The source is the upstream tarball of Debian's QEMU source package from
# bookworm-backports (qemu_VERSION+ds.orig.tar.xz), in the version of the
# installed qemu-system-x86, fetched through apt (a deb-src source for
# bookworm-backports is derived from the existing one when missing) and
# checked against the hash in apt's signed index. Debian's packaging tarball
# (debian/patches) is not used: the patch is written against upstream QEMU,
# and the build must not depend on more than the tarball.
#
# The build is minimal: x86_64-softmmu only (TCG, virtio, vhost-user,
# vhost-user-gpu-pci), no tools, docs, GUI, tests or firmware. Firmware
# (bios-256k.bin, ...) comes from the installed Debian QEMU packages: the
# binary searches /usr/share/qemu, /usr/share/seabios and /usr/lib/ipxe/qemu
# by itself (--firmwarepath).
#
# Cache: ci/cache/qemu/. The build is skipped when ci/cache/qemu/install
# holds a build whose stamp (source version and tarball hash, sha256 of the
# patch, sha256 of the configure options) is the current one; --force
# rebuilds anyway. Build dependencies are installed with apt when missing.
#
# Prints what it does on stderr, one line saying whether it built (and how
# long that took) or skipped, and the path of the patched
# qemu-system-x86_64 as the only line on stdout.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$ROOT/ci/out
CACHE=$ROOT/ci/cache/qemu
PATCH=$ROOT/qemu-configs/0001-vhost-user-gpu-pass-context-init-and-resource-blob.patch
INSTALL=$CACHE/install
QEMU_BIN=$INSTALL/bin/qemu-system-x86_64
STAMP_FILE=$INSTALL/build-stamp

# Where the binary looks for firmware: the Debian packages' folders
# (qemu-system-data, seabios, ipxe-qemu), as Debian's own build sets it.
FIRMWARE_PATH=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu

# Part of the stamp: changing an option rebuilds. --prefix and
# --with-pkgversion (the source version, already in the stamp) are added
# when configuring.
CONFIGURE_OPTS=(
    --target-list=x86_64-softmmu
    # Every optional feature off, then the ones the e2e boot needs on.
    --without-default-features
    --enable-tcg
    --enable-vhost-user
    --enable-pixman
    # Debian's python3, whose site packages hold meson (>= 1.5, from
    # bookworm-backports) and pycotap: nothing is downloaded.
    --python=/usr/bin/python3
    --disable-download
    --disable-docs
    --disable-install-blobs
    --disable-debug-info
    --disable-werror
    "--firmwarepath=$FIRMWARE_PATH"
)

# Build dependencies from bookworm, then from bookworm-backports (QEMU 10
# needs meson >= 1.5; bookworm has 1.0).
BUILD_DEPS=(build-essential patch xz-utils pkgconf ninja-build python3-venv
    libglib2.0-dev libpixman-1-dev zlib1g-dev)
BACKPORTS_BUILD_DEPS=(meson python3-pycotap)
MIN_MESON=1.5

FORCE=""

log() { printf 'qemu-build: %s\n' "$*" >&2; }
die() { printf 'qemu-build: error: %s\n' "$*" >&2; exit 1; }

# shellcheck source=ci/apt.sh
source "$ROOT/ci/apt.sh"

usage() {
    sed -n '2,/^set -euo/{/^#/{s/^# \{0,1\}//;p}}' "${BASH_SOURCE[0]}" >&2
    exit "${1:-0}"
}

# Microseconds since the epoch, and a duration in seconds with 1 decimal.
now_us() { echo "${EPOCHREALTIME//[!0-9]/}"; }
secs() { printf '%d.%d' $(($1 / 1000000)) $(($1 % 1000000 / 100000)); }

ensure_build_deps() {
    local missing=() p
    for p in "${BUILD_DEPS[@]}"; do
        [[ -n $(installed_version "$p") ]] || missing+=("$p")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt_quiet apt-get install -y --no-install-recommends "${missing[@]}"
    fi
    missing=()
    for p in "${BACKPORTS_BUILD_DEPS[@]}"; do
        [[ -n $(installed_version "$p") ]] || missing+=("$p")
    done
    local mv
    mv=$(installed_version meson)
    if [[ -n $mv ]] && ! dpkg --compare-versions "$mv" ge "$MIN_MESON"; then
        missing+=(meson)
    fi
    if ((${#missing[@]})); then
        ensure_backports_source
        log "installing ${missing[*]} from bookworm-backports"
        apt_quiet apt-get install -y --no-install-recommends -t bookworm-backports "${missing[@]}"
    fi
}

# Sets SRC_VERSION, ORIG_URI, ORIG_FILE and ORIG_HASH ("SHA256:...") for the
# QEMU source package matching the installed qemu-system-x86, from apt's
# source index (nothing is downloaded).
find_source() {
    local installed uris
    installed=$(installed_version qemu-system-x86)
    [[ -n $installed ]] || die "qemu-system-x86 is not installed"
    # From /: apt leaves out files that are already in the current folder.
    if uris=$(cd / && apt-get source --print-uris "qemu=$installed" 2>/dev/null); then
        SRC_VERSION=$installed
    else
        # The index moved on: take its newest version if it is the same
        # major release (its firmware needs are those of the installed one).
        SRC_VERSION=$(apt-cache showsrc qemu 2>/dev/null |
            sed -n 's/^Version: //p' | sort -V | tail -n 1)
        [[ -n $SRC_VERSION ]] || die "apt knows no qemu source package (apt-get update?)"
        if [[ ${SRC_VERSION%%.*} != "${installed%%.*}" ]]; then
            die "installed qemu-system-x86 $installed, but apt's sources have qemu $SRC_VERSION"
        fi
        log "source $installed not in apt's index; using $SRC_VERSION"
        uris=$(cd / && apt-get source --print-uris "qemu=$SRC_VERSION") ||
            die "apt-get source --print-uris qemu=$SRC_VERSION failed"
    fi
    # Lines: 'URI' FILE SIZE SHA256:HASH
    local line
    line=$(grep -E "^'[^']+' qemu_[^ ]+\.orig\.tar\.[a-z0-9]+ " <<<"$uris" | head -n 1) ||
        die "no orig tarball in the qemu $SRC_VERSION source package"
    read -r ORIG_URI ORIG_FILE _ ORIG_HASH <<<"$line"
    ORIG_URI=${ORIG_URI//\'/}
    [[ $ORIG_HASH == SHA256:* ]] || die "no SHA256 for $ORIG_FILE in apt's index"
}

# The stamp of the build this script would make now.
build_stamp() {
    printf 'source qemu %s %s %s\n' "$SRC_VERSION" "$ORIG_FILE" "$ORIG_HASH"
    printf 'patch %s\n' "$(sha256sum <"$PATCH" | cut -d' ' -f1)"
    printf 'configure %s\n' "$(printf '%s\n' "${CONFIGURE_OPTS[@]}" | sha256sum | cut -d' ' -f1)"
}

# Downloads the orig tarball into the cache (once), checked by apt.
fetch_source() {
    local dest=$CACHE/$ORIG_FILE want
    want=${ORIG_HASH#SHA256:}
    if [[ -f $dest ]] && [[ $(sha256sum <"$dest" | cut -d' ' -f1) == "$want" ]]; then
        return
    fi
    log "downloading $ORIG_FILE"
    rm -f "$dest" "$dest.part"
    apt_quiet /usr/lib/apt/apt-helper download-file "$ORIG_URI" "$dest.part" "$ORIG_HASH"
    mv "$dest.part" "$dest"
}

build() {
    local work=$CACHE/work
    rm -rf "$work" "$INSTALL.tmp"
    mkdir -p "$work"
    log "unpacking $ORIG_FILE"
    tar -xf "$CACHE/$ORIG_FILE" -C "$work"
    local src
    src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'qemu-*' | head -n 1)
    [[ -n $src ]] || die "$ORIG_FILE holds no qemu-* folder"
    log "applying $(basename "$PATCH")"
    patch -d "$src" -p1 --batch --forward --quiet <"$PATCH" ||
        die "the patch does not apply to qemu $SRC_VERSION"
    # Debian's +ds tarball has no edk2 firmware images, but QEMU's build
    # unpacks them for x86_64-softmmu whenever bzip2 is installed, even
    # with --disable-install-blobs: turn that off.
    sed -i 's/^\( *unpack_edk2_blobs = \)bzip2\.found()$/\1false/' "$src/meson.build"
    grep -qx ' *unpack_edk2_blobs = false' "$src/meson.build" ||
        die "cannot turn off the edk2 unpacking in $src/meson.build"
    if grep -q 'unpack_edk2_blobs = bzip2' "$src/meson.build"; then
        die "cannot turn off the edk2 unpacking in $src/meson.build"
    fi

    local build_log=$CACHE/build.log
    log "configuring and building with $(nproc) jobs (log: $build_log)"
    mkdir -p "$src/build"
    if ! (
        cd "$src/build" &&
            ../configure --prefix="$INSTALL.tmp" "${CONFIGURE_OPTS[@]}" \
                --with-pkgversion="Debian $SRC_VERSION source + vhost-user-mali patch" &&
            make -j"$(nproc)" &&
            make install
    ) >"$build_log" 2>&1; then
        tail -n 30 "$build_log" >&2
        die "the QEMU build failed (full log: $build_log)"
    fi
    # The front end the patch is for must be in the binary.
    grep -q '^CONFIG_VHOST_USER_GPU=y' "$src/build/x86_64-softmmu-config-devices.mak" ||
        die "CONFIG_VHOST_USER_GPU is not set in the build"
    "$INSTALL.tmp/bin/qemu-system-x86_64" -device help 2>/dev/null |
        grep -q '"vhost-user-gpu-pci"' || die "the built QEMU has no vhost-user-gpu-pci device"

    build_stamp >"$INSTALL.tmp/build-stamp"
    rm -rf "$INSTALL"
    mv "$INSTALL.tmp" "$INSTALL"
    # The source and objects are of no further use (about 1 GB).
    rm -rf "$work"
}

main() {
    while (($#)); do
        case $1 in
            --force) FORCE=1; shift ;;
            -h | --help) usage 0 ;;
            *) printf 'qemu-build: unknown argument %s\n' "$1" >&2; usage 2 ;;
        esac
    done
    [[ $(id -u) == 0 ]] || die "must run as root (apt)"
    [[ -f $PATCH ]] || die "$PATCH is missing"
    mkdir -p "$CACHE" "$OUT"

    # One build at a time.
    exec 8>"$CACHE/.lock"
    flock 8

    ensure_stock_qemu
    ensure_backports_src_source
    find_source

    local stamp
    stamp=$(build_stamp)
    if [[ -z $FORCE && -x $QEMU_BIN && -f $STAMP_FILE && $(<"$STAMP_FILE") == "$stamp" ]]; then
        log "patched QEMU $SRC_VERSION is up to date in $INSTALL: build skipped"
        echo "$QEMU_BIN"
        return
    fi

    local t0
    t0=$(now_us)
    ensure_build_deps
    fetch_source
    build
    log "built patched QEMU $SRC_VERSION in $(secs $(($(now_us) - t0))) s (dependencies, download and build)"
    echo "$QEMU_BIN"
}

main "$@"
