#!/bin/sh
# /init of the end-to-end test initramfs (built by ci/guest-build.sh), run
# by busybox sh as PID 1 in the guest.
#
# It loads the virtio-gpu module chain listed in /etc/modules.order, waits
# for the render node, prints the kernel lines about the device, runs
# mali-guest-probe and then mali-guest-tests, and powers the guest off. The
# host side (ci/e2e.sh) reads the console for these markers:
#
#   GUEST-START kernel VERSION
#   GUEST-MODULES loaded in N ms
#   GUEST-ERROR ...             (setup problems)
#   GUEST-DMESG ...             (selected kernel log lines)
#   PROBE PASS|FAIL ...         (from mali-guest-probe)
#   probe: N passed, M failed
#   TEST PASS|FAIL ...          (from mali-guest-tests)
#   guest-tests: N passed, M failed
#   GUEST-TESTS rc=N            (the test suite's exit status)
#   GUEST-DONE rc=N             (the probe's exit status)
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

echo "GUEST-START kernel $(uname -r)"

uptime_ms() { awk '{ print int($1 * 1000) }' /proc/uptime; }

# virtio-gpu probes the device inside insmod, so this also times the
# driver's first exchanges with the device (features, config, display
# info, capsets).
t0=$(uptime_ms)
while read -r module; do
    insmod "/lib/modules/$module.ko" || echo "GUEST-ERROR insmod $module failed"
done </etc/modules.order
echo "GUEST-MODULES loaded in $(($(uptime_ms) - t0)) ms"

# devtmpfs creates the node right after the driver registers it; allow a
# few seconds in case that lags.
i=0
while [ ! -e /dev/dri/renderD128 ] && [ $i -lt 50 ]; do
    sleep 0.1
    i=$((i + 1))
done
[ -e /dev/dri/renderD128 ] || echo "GUEST-ERROR no /dev/dri/renderD128 after $((i * 100)) ms"

# The kernel lines about the device, and any kernel warning.
dmesg | grep -E 'virtio_gpu|virtio-pci|\[drm|WARNING:|BUG:|Oops|Call Trace' |
    sed 's/^/GUEST-DMESG /'

/bin/mali-guest-probe
probe_rc=$?

# The suite runs even when a probe check failed: its cases say more.
/bin/mali-guest-tests
echo "GUEST-TESTS rc=$?"
echo "GUEST-DONE rc=$probe_rc"

poweroff -f
