#!/usr/bin/env bash
# Build everything the end-to-end boot test needs on the guest side:
#
#   * host tools: QEMU 10 (bookworm-backports), busybox-static, cpio, kmod,
#     binutils;
#   * Debian's 6.1 kernel, downloaded as a .deb and unpacked under ci/cache/
#     (never installed into /boot);
#   * the static guest programs: the probe (src/bin/mali-guest-probe.rs)
#     and the test suite (src/bin/mali-guest-tests.rs);
#   * a gzip'd newc initramfs with busybox, the virtio-gpu module chain, the
#     guest programs and ci/guest-init.sh as /init, which runs the probe and
#     the tests and powers the guest off.
#
# Outputs (ci/out/):
#   initramfs.cpio.gz   the initramfs
#   guest.env           KERNEL=, INITRD=, KVER= for ci/e2e.sh to source
#
# The script is idempotent: packages are installed only when missing, the
# kernel is downloaded and unpacked once per version, and the initramfs is
# rebuilt only when one of its inputs changed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=$ROOT/ci/cache
OUT=$ROOT/ci/out
GUEST_TARGET_DIR=$ROOT/target-guest
RUST_TARGET=x86_64-unknown-linux-gnu
PROBE=$GUEST_TARGET_DIR/$RUST_TARGET/release/mali-guest-probe
TESTS=$GUEST_TARGET_DIR/$RUST_TARGET/release/mali-guest-tests

# virtio-gpu, the PCI transport and everything they depend on, in load order.
# check_module_order verifies against the kernel's own dependency data that
# each module comes after the modules it needs.
MODULES=(
    virtio_ring
    virtio
    virtio_pci_modern_dev
    virtio_pci_legacy_dev
    virtio_pci
    drm
    drm_kms_helper
    drm_shmem_helper
    virtio_dma_buf
    virtio-gpu
)

log() { printf 'guest-build: %s\n' "$*" >&2; }
die() { printf 'guest-build: error: %s\n' "$*" >&2; exit 1; }

# --- host packages ----------------------------------------------------------

# shellcheck source=ci/apt.sh
source "$ROOT/ci/apt.sh"

ensure_packages() {
    local missing=() p
    for p in busybox-static cpio kmod binutils; do
        [[ -n $(installed_version "$p") ]] || missing+=("$p")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt_quiet apt-get install -y --no-install-recommends "${missing[@]}"
    fi

    ensure_stock_qemu
}

# --- kernel -------------------------------------------------------------------

# Downloads (once) and unpacks (once) the newest 6.1 kernel apt knows about.
# Sets KVER and KROOT. Falls back to the newest cached kernel when apt has
# nothing to offer (no network, stale lists).
ensure_kernel() {
    local pkg deb_dir=$CACHE/debs
    pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$' |
        awk '{ print $1 }' | sort -V | tail -n 1)

    if [[ -z $pkg ]]; then
        KVER=$(find "$CACHE/kernel" -mindepth 1 -maxdepth 1 -type d -name '6.1.0-*' \
            -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)
        [[ -n $KVER ]] || die "apt offers no linux-image-6.1.0-*-amd64-unsigned and nothing is cached"
        log "apt offers no 6.1 kernel; using cached $KVER"
        KROOT=$CACHE/kernel/$KVER
        return
    fi

    KVER=${pkg#linux-image-}
    KVER=${KVER%-unsigned}
    KROOT=$CACHE/kernel/$KVER

    if [[ -f $KROOT/.unpacked ]]; then
        return
    fi

    # The exact file name apt would download, without downloading it.
    local deb
    deb=$(apt-get download --print-uris "$pkg" | awk '{ print $2 }')
    [[ -n $deb ]] || die "apt-get cannot locate $pkg"
    mkdir -p "$deb_dir"
    if [[ ! -f $deb_dir/$deb ]]; then
        log "downloading $pkg"
        # apt downloads into the current directory.
        (cd "$deb_dir" && apt_quiet apt-get download "$pkg")
        [[ -f $deb_dir/$deb ]] || die "download of $pkg failed"
    fi

    log "unpacking $deb"
    rm -rf "$KROOT" "$KROOT.tmp"
    mkdir -p "$KROOT.tmp"
    dpkg-deb -x "$deb_dir/$deb" "$KROOT.tmp"
    depmod -b "$KROOT.tmp" "$KVER"
    touch "$KROOT.tmp/.unpacked"
    mv "$KROOT.tmp" "$KROOT"
}

# Path of a module's .ko file inside the unpacked kernel.
module_file() {
    modinfo -b "$KROOT" -k "$KVER" -F filename "$1"
}

# Fails unless every module of MODULES comes after all its dependencies
# (which also proves that MODULES holds their whole dependency closure).
check_module_order() {
    local -A seen=()
    local m dep deps
    for m in "${MODULES[@]}"; do
        deps=$(modinfo -b "$KROOT" -k "$KVER" -F depends "$m")
        for dep in ${deps//,/ }; do
            dep=${dep//-/_}
            [[ -n ${seen[$dep]:-} ]] || die "module $m needs $dep, which is not loaded before it"
        done
        seen[${m//-/_}]=1
    done
}

# --- guest programs -----------------------------------------------------------

build_guest_programs() {
    log "building mali-guest-probe and mali-guest-tests (static)"
    (
        cd "$ROOT"
        RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=$GUEST_TARGET_DIR \
            cargo build --quiet --release --target "$RUST_TARGET" \
            --bin mali-guest-probe --bin mali-guest-tests
    )
    # A dynamically linked binary would fail in the initramfs with a
    # confusing "not found": refuse it here instead.
    local bin
    for bin in "$PROBE" "$TESTS"; do
        if readelf -l "$bin" | grep -q 'INTERP'; then
            die "$bin is not statically linked"
        fi
    done
}

# --- initramfs ----------------------------------------------------------------

# Stages and packs the initramfs when an input changed.
build_initramfs() {
    local stage=$OUT/initramfs.d image=$OUT/initramfs.cpio.gz
    local busybox=/bin/busybox init=$ROOT/ci/guest-init.sh
    local m

    mkdir -p "$OUT"

    # Everything that goes into the image, by content.
    local stamp inputs=("$busybox" "$PROBE" "$TESTS" "$init")
    for m in "${MODULES[@]}"; do inputs+=("$(module_file "$m")"); done
    stamp=$(
        {
            sha256sum "${inputs[@]}"
            printf '%s\n' "${MODULES[@]}"
        } | sha256sum | cut -d' ' -f1
    )
    if [[ -f $image && -f $image.stamp && $(<"$image.stamp") == "$stamp" ]]; then
        log "initramfs up to date"
        return
    fi

    log "building initramfs for $KVER"
    rm -rf "$stage"
    mkdir -p "$stage"/{bin,dev,etc,proc,sys,lib/modules}
    install -m 755 "$busybox" "$stage/bin/busybox"
    local applet
    for applet in $("$busybox" --list); do
        [[ $applet == busybox ]] || ln -s busybox "$stage/bin/$applet"
    done
    install -m 755 "$init" "$stage/init"
    # Debug info is of no use in the guest and triples the image size.
    strip -o "$stage/bin/mali-guest-probe" "$PROBE"
    strip -o "$stage/bin/mali-guest-tests" "$TESTS"

    # /init loads the modules in this order.
    printf '%s\n' "${MODULES[@]}" >"$stage/etc/modules.order"
    local src
    for m in "${MODULES[@]}"; do
        src=$(module_file "$m")
        case $src in
            *.ko) cp "$src" "$stage/lib/modules/$m.ko" ;;
            *.ko.xz) xz -dc "$src" >"$stage/lib/modules/$m.ko" ;;
            *.ko.zst) zstd -q -dc "$src" >"$stage/lib/modules/$m.ko" ;;
            *) die "unexpected module file $src" ;;
        esac
    done

    # The kernel opens /dev/console for /init before devtmpfs is mounted.
    mknod -m 600 "$stage/dev/console" c 5 1

    (
        cd "$stage"
        find . -mindepth 1 | LC_ALL=C sort |
            cpio --quiet -o -H newc --reproducible -R 0:0
    ) | gzip -9 -n >"$image.tmp"
    mv "$image.tmp" "$image"
    printf '%s\n' "$stamp" >"$image.stamp"
}

main() {
    [[ $(id -u) == 0 ]] || die "must run as root (apt, depmod)"
    ensure_packages
    ensure_kernel
    check_module_order
    build_guest_programs
    build_initramfs

    local kernel=$KROOT/boot/vmlinuz-$KVER
    [[ -f $kernel ]] || die "kernel image $kernel missing"
    cat >"$OUT/guest.env" <<EOF
KVER=$KVER
KERNEL=$kernel
INITRD=$OUT/initramfs.cpio.gz
EOF
    log "ready: kernel $KVER, initramfs $OUT/initramfs.cpio.gz"
}

main "$@"
