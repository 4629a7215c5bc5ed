#!/usr/bin/env bash
# Boots a guest under QEMU 10 with 0001-vhost-user-gpu-pass-context-init-
# and-resource-blob.patch, with vhost-user-mali as its virtio-gpu, in full
# mode (CONTEXT_INIT and RESOURCE_BLOB reach the guest).
#
#   qemu-configs/run-patched-qemu.sh SOCKET KERNEL INITRD [EXTRA QEMU ARGS...]
#
# The command line is run-stock-qemu.sh's; only the binary differs. It is
# $QEMU when set, otherwise the one ci/qemu-build.sh builds (or finds in its
# cache, ci/cache/qemu/): that needs root and apt on Debian 12, and takes
# about 4 minutes the first time.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if (($# < 3)); then
    sed -n '2,/^set -euo/{/^#/{s/^# \{0,1\}//;p}}' "${BASH_SOURCE[0]}"
    exit 2
fi
if [[ -z ${QEMU:-} ]]; then
    QEMU=$("$HERE/../ci/qemu-build.sh")
fi
export QEMU
exec "$HERE/run-stock-qemu.sh" "$@"
