#!/usr/bin/env bash
# Boots a guest under stock QEMU 10 (Debian bookworm-backports) with
# vhost-user-mali as its virtio-gpu, in compat mode.
#
#   qemu-configs/run-stock-qemu.sh SOCKET KERNEL INITRD [EXTRA QEMU ARGS...]
#
# Start the daemon first (`vhost-user-mali --socket-path SOCKET`): QEMU is
# the socket's client. Guest RAM must be a shared memfd so the daemon can map
# it. TCG is used because the nested /dev/kvm of CI machines cannot boot a
# stock kernel; on a host with working KVM, replace `-accel tcg` with
# `-accel kvm`.
set -euo pipefail
if (($# < 3)); then
    sed -n '2,/^set -euo/{/^#/{s/^# \{0,1\}//;p}}' "${BASH_SOURCE[0]}"
    exit 2
fi
SOCKET=$1 KERNEL=$2 INITRD=$3
shift 3
QEMU=${QEMU:-qemu-system-x86_64}
MEM=${MEM:-1G}
exec "$QEMU" -accel tcg -m "$MEM" \
    -object "memory-backend-memfd,id=mem,size=$MEM,share=on" \
    -machine q35,memory-backend=mem \
    -chardev "socket,id=vgpu,path=$SOCKET" \
    -device vhost-user-gpu-pci,chardev=vgpu \
    -kernel "$KERNEL" -initrd "$INITRD" \
    -append "console=ttyS0" -nographic -no-reboot \
    "$@"
