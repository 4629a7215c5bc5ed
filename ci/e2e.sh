#!/usr/bin/env bash
# End-to-end boot test: a real QEMU (TCG) and Debian's 6.1 guest kernel
# against the vhost-user daemon, in compat mode (stock QEMU) and full mode
# (QEMU with qemu-configs/0001-*.patch).
#
#   ci/e2e.sh [--daemon PATH] [--boots N] [--modes LIST] [--timeout SECONDS]
#             [--qemu PATH] [--patched-qemu PATH] [--daemon-arg ARG]...
#
# The daemon is started once; the guest is then booted N times in a row
# against the same daemon, which proves that it serves a new connection
# after each QEMU exit. Boot n runs in the n-th mode of LIST (comma
# separated, `compat` or `full`), LIST repeating as often as needed; the
# default `compat,full` alternates, starting with compat:
#
#   compat  stock QEMU (--qemu, default qemu-system-x86_64 from PATH, QEMU 10
#           from bookworm-backports): the guest sees neither CONTEXT_INIT nor
#           RESOURCE_BLOB;
#   full    the patched QEMU (--patched-qemu, default: built or taken from
#           the cache by ci/qemu-build.sh): the guest sees both.
#
# Each boot runs the initramfs from ci/guest-build.sh, whose /init loads
# virtio-gpu, runs mali-guest-probe and mali-guest-tests and powers off.
# Each boot's `guest-tests:` summary is printed, and the summaries of all
# boots, labelled by mode, again at the end.
#
# A boot fails on: timeout, no GUEST-DONE marker or a non-zero probe status,
# any PROBE FAIL or TEST FAIL line, a missing or non-zero guest-tests
# summary, a mode other than the boot's (in the guest driver's `features:`
# lines, in the mode mali-guest-tests picked, or in the mode the daemon
# logged for the connection), vhost errors from QEMU, kernel errors about
# the device, or the daemon dying. The run also fails if the daemon log
# contains a panic or if the daemon does not exit promptly on SIGTERM at
# the end.
#
# Logs (ci/out/): daemon.log, console-N.log (guest serial console),
# qemu-N.log (QEMU's stderr).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$ROOT/ci/out

DAEMON=""
DAEMON_ARGS=()
BOOTS=2
MODES=compat,full
STOCK_QEMU="qemu-system-x86_64"
PATCHED_QEMU=""
BOOT_TIMEOUT=120
# How long to wait for the daemon's socket, in tenths of a second.
SOCKET_WAIT_TENTHS=100
# How long the daemon may take to exit after SIGTERM, in tenths of a second.
STOP_WAIT_TENTHS=50

# Job timeout of the daemon this script builds: short enough for the guest
# suite's job-timeout case (which accepts at most 2000 ms).
GUEST_JOB_TIMEOUT_MS=1000

GUEST_MEM=512M
# quiet keeps the console to warnings and errors; /init prints the kernel
# lines about the device itself. panic=-1 turns a guest panic into a reboot,
# which -no-reboot turns into a QEMU exit.
APPEND="console=ttyS0 quiet panic=-1"

# QEMU messages that mean the vhost-user device did not work, even though
# the guest may still boot (e.g. without shared guest memory).
VHOST_ERRORS='vhost_set_mem_table failed|Error start vhost dev|vhost.*(fail|error)|Failed to (read|write) msg|Failed to set msg fds|Unexpected end-of-file|vhost-user.*disconnect'
# Guest kernel lines that mean the driver or the device misbehaved.
KERNEL_ERRORS='\*ERROR\*|WARNING:|BUG:|Oops|Call Trace|Kernel panic|timed out waiting'
# The guest driver's feature lines (drivers/gpu/drm/virtio, Linux 6.1) in
# each mode. The device maps no host-visible memory in either.
declare -A WANT_FEATURES=(
    [compat]='features: +virgl +edid -resource_blob -host_visible; features: -context_init'
    [full]='features: +virgl +edid +resource_blob -host_visible; features: +context_init'
)
# Loading the modules takes well under a second under TCG. The driver waits
# up to 5 s for each answer the device does not give (display info, EDID,
# capsets), so a slow load means the device left it waiting.
MAX_MODULE_LOAD_MS=4000

usage() {
    sed -n '2,/^set -euo/{/^#/{s/^# \{0,1\}//;p}}' "${BASH_SOURCE[0]}"
    exit "${1:-0}"
}

die() { printf 'e2e: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'e2e: %s\n' "$*"; }

FAILURES=()
fail() {
    FAILURES+=("$*")
    printf 'e2e: FAIL %s\n' "$*"
}

# Microseconds since the epoch, and a duration in seconds with 2 decimals.
now_us() { echo "${EPOCHREALTIME//[!0-9]/}"; }
secs() { printf '%d.%02d' $(($1 / 1000000)) $(($1 % 1000000 / 10000)); }

# Whether a process exists and is not a zombie.
is_running() {
    local state
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z ]]
}

parse_args() {
    while (($#)); do
        case $1 in
            --daemon) DAEMON=${2:?--daemon needs a path}; shift 2 ;;
            --daemon-arg) DAEMON_ARGS+=("${2:?--daemon-arg needs a value}"); shift 2 ;;
            --boots) BOOTS=${2:?--boots needs a number}; shift 2 ;;
            --modes) MODES=${2:?--modes needs a list}; shift 2 ;;
            --qemu) STOCK_QEMU=${2:?--qemu needs a path}; shift 2 ;;
            --patched-qemu) PATCHED_QEMU=${2:?--patched-qemu needs a path}; shift 2 ;;
            --timeout) BOOT_TIMEOUT=${2:?--timeout needs seconds}; shift 2 ;;
            -h | --help) usage 0 ;;
            *) printf 'e2e: unknown argument %s\n' "$1" >&2; usage 2 >&2 ;;
        esac
    done
    [[ $BOOTS =~ ^[1-9][0-9]*$ ]] || die "--boots must be a positive integer"
    [[ $BOOT_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "--timeout must be a positive integer"
    [[ $MODES =~ ^(compat|full)(,(compat|full))*$ ]] ||
        die "--modes must be a comma-separated list of compat and full"
    IFS=, read -r -a MODE_LIST <<<"$MODES"
}

# The mode of boot $1.
boot_mode() {
    echo "${MODE_LIST[($1 - 1) % ${#MODE_LIST[@]}]}"
}

# Whether some boot of this run is in mode $1.
uses_mode() {
    local n
    for ((n = 1; n <= BOOTS && n <= ${#MODE_LIST[@]}; n++)); do
        [[ $(boot_mode "$n") == "$1" ]] && return 0
    done
    return 1
}

# --- daemon -------------------------------------------------------------------

SOCK=""
DAEMON_PID=""
# Set once the daemon's unexpected exit has been reported.
DAEMON_GONE=""
QEMU_PID=""

# Stops whatever is still running when the script exits early. QEMU runs
# under timeout(1), which passes SIGTERM on to it.
cleanup() {
    local pid i
    for pid in $QEMU_PID $DAEMON_PID; do
        is_running "$pid" || continue
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do
            is_running "$pid" || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    # The daemon normally removes its socket; do it if it could not.
    if [[ -n ${SOCK:-} ]] && ! is_running "$DAEMON_PID"; then
        rm -f "$SOCK"
    fi
}

# Waits (bounded) for the daemon's socket; fails if the daemon exits first.
wait_for_socket() {
    local i
    for ((i = 0; i < SOCKET_WAIT_TENTHS; i++)); do
        [[ -S $SOCK ]] && return 0
        is_running "$DAEMON_PID" || return 1
        sleep 0.1
    done
    return 1
}

start_daemon() {
    rm -f "$SOCK"
    log "starting $DAEMON --socket-path $SOCK ${DAEMON_ARGS[*]}"
    # 9>&-: the daemon must not inherit the run lock, or a daemon left
    # behind by a killed run would block every later run.
    "$DAEMON" --socket-path "$SOCK" "${DAEMON_ARGS[@]}" >"$OUT/daemon.log" 2>&1 9>&- &
    DAEMON_PID=$!
    if ! wait_for_socket; then
        tail -n 20 "$OUT/daemon.log" | sed 's/^/daemon: /'
        if ! is_running "$DAEMON_PID"; then
            reap_daemon
            die "daemon exited (status $DAEMON_STATUS) before creating $SOCK"
        fi
        die "daemon did not create $SOCK within $((SOCKET_WAIT_TENTHS / 10)) s"
    fi
}

# Fails (once per run) when the daemon log shows a panic; $1 prefixes the
# message.
DAEMON_PANIC=""
check_daemon_log() {
    if [[ -z $DAEMON_PANIC ]] && grep -q 'panicked' "$OUT/daemon.log"; then
        DAEMON_PANIC=1
        fail "${1}daemon panicked: $(grep -m 1 'panicked' "$OUT/daemon.log")"
    fi
}

# Collects the exit status of the (exited) daemon into DAEMON_STATUS. This
# must run in the main shell, not in $(...): only the parent can wait.
DAEMON_STATUS=""
reap_daemon() {
    if [[ -z $DAEMON_STATUS ]]; then
        DAEMON_STATUS=0
        # stderr off: bash would report a signal death as a job message.
        { wait "$DAEMON_PID"; } 2>/dev/null || DAEMON_STATUS=$?
    fi
}

stop_daemon() {
    if ! is_running "$DAEMON_PID"; then
        reap_daemon
        [[ -n $DAEMON_GONE ]] ||
            fail "daemon exited before the end of the test (status $DAEMON_STATUS)"
        return
    fi
    kill -TERM "$DAEMON_PID"
    local i
    for ((i = 0; i < STOP_WAIT_TENTHS; i++)); do
        is_running "$DAEMON_PID" || break
        sleep 0.1
    done
    if is_running "$DAEMON_PID"; then
        fail "daemon still running $((STOP_WAIT_TENTHS / 10)) s after SIGTERM; killing it"
        kill -KILL "$DAEMON_PID" 2>/dev/null || true
    fi
    reap_daemon
    log "daemon stopped after $((i * 100)) ms, status $DAEMON_STATUS"
}

# --- boots --------------------------------------------------------------------

# The first of several lines, and how many there are.
summary() {
    local count
    count=$(wc -l <<<"$1")
    if ((count > 1)); then
        printf '%s (and %d more lines)' "$(head -n 1 <<<"$1")" $((count - 1))
    else
        printf '%s' "$1"
    fi
}

# Console output without carriage returns and terminal escape sequences.
clean_console() {
    sed -e 's/\r//g' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1bc//g' "$1"
}

# Checks that boot $1 ran in mode $2 everywhere: the guest driver's
# `features:` lines (console text $3), the mode mali-guest-tests picked, and
# the mode the daemon logged for the connection (its log lines after line
# $4).
check_mode() {
    local n=$1 mode=$2 text=$3 skip=$4
    local want=${WANT_FEATURES[$mode]} features picked negotiated
    features=$(sed -n 's/^GUEST-DMESG \[[ 0-9.]*\] \[drm\] \(features: .*\)$/\1/p' <<<"$text" |
        paste -s -d ';' | sed 's/;/; /g')
    if [[ $features != "$want" ]]; then
        fail "boot $n: guest driver reports '${features:-no features line}', want '$want' in $mode mode"
    fi
    picked=$(sed -n 's/^guest-tests: mode \([a-z]*\) .*/\1/p' <<<"$text" | tail -n 1)
    if [[ $picked != "$mode" ]]; then
        fail "boot $n: mali-guest-tests ran in ${picked:-an unknown} mode, want $mode"
    fi
    negotiated=$(tail -n +"$((skip + 1))" "$OUT/daemon.log" |
        sed -n 's/.*features negotiated: .*; mode: \([a-z]*\).*/\1/p' | tail -n 1)
    if [[ $negotiated != "$mode" ]]; then
        fail "boot $n: the daemon logged ${negotiated:-no} mode for the connection, want $mode"
    fi
}

# Boots the guest once and checks its output. Returns non-zero only when
# the daemon is gone and further boots make no sense.
boot() {
    local n=$1
    local console=$OUT/console-$n.log qemu_log=$OUT/qemu-$n.log
    local failed_before=${#FAILURES[@]}
    local mode qemu
    mode=$(boot_mode "$n")
    qemu=$STOCK_QEMU
    [[ $mode == full ]] && qemu=$PATCHED_QEMU

    log "boot $n/$BOOTS: $mode mode, $qemu"
    if ! is_running "$DAEMON_PID"; then
        reap_daemon
        fail "boot $n: daemon is not running (status $DAEMON_STATUS)"
        DAEMON_GONE=1
        return 1
    fi
    # Between connections the daemon may briefly have no socket.
    if ! wait_for_socket; then
        fail "boot $n: daemon socket $SOCK missing"
        return 1
    fi

    # The daemon's log lines of this boot start after these.
    local daemon_lines
    daemon_lines=$(wc -l <"$OUT/daemon.log")

    local t0 rc=0
    t0=$(now_us)
    timeout --kill-after=5 "$BOOT_TIMEOUT" \
        "$qemu" \
        -accel tcg \
        -m "$GUEST_MEM" \
        -object "memory-backend-memfd,id=mem,size=$GUEST_MEM,share=on" \
        -machine q35,memory-backend=mem \
        -chardev "socket,id=vgpu,path=$SOCK" \
        -device vhost-user-gpu-pci,chardev=vgpu \
        -nic none \
        -kernel "$KERNEL" \
        -initrd "$INITRD" \
        -append "$APPEND" \
        -nographic -no-reboot \
        </dev/null >"$console" 2>"$qemu_log" 9>&- &
    QEMU_PID=$!
    wait "$QEMU_PID" || rc=$?
    QEMU_PID=""
    BOOT_TIME[n]=$(($(now_us) - t0))

    local text
    text=$(clean_console "$console")

    # What the guest saw: the driver binding with its features, and the probe.
    grep -E '^GUEST-MODULES ' <<<"$text" | sed 's/^GUEST-MODULES /  modules: /' || true
    grep -E '^GUEST-DMESG .*(features:|cap set|Initialized virtio_gpu)' <<<"$text" |
        sed 's/^GUEST-DMESG /  dmesg: /' || true
    grep -E '^(PROBE (PASS|FAIL) |probe: |TEST (PASS|FAIL) |guest-tests: )' <<<"$text" |
        sed 's/^/  /' || true

    # QEMU's stderr, in full: it is normally empty.
    if [[ -s $qemu_log ]]; then
        sed 's/^/  qemu: /' "$qemu_log"
    fi

    local done_line
    done_line=$(grep -E '^GUEST-DONE rc=' <<<"$text" | tail -n 1 || true)
    if ((rc == 124 || rc == 137)); then
        fail "boot $n: guest did not finish within ${BOOT_TIMEOUT} s"
    elif ((rc != 0)); then
        fail "boot $n: qemu exited with status $rc"
    elif [[ -z $done_line ]]; then
        # QEMU exited cleanly, so the guest powered off (or panicked) early.
        fail "boot $n: no GUEST-DONE marker on the console"
    fi
    if [[ -n $done_line && $done_line != "GUEST-DONE rc=0" ]]; then
        fail "boot $n: probe exited with ${done_line#GUEST-DONE }"
    fi
    if [[ -n $done_line ]] && ! grep -qE '^probe: [0-9]+ passed, [0-9]+ failed$' <<<"$text"; then
        fail "boot $n: no probe summary line"
    fi

    local tests_summary tests_rc
    tests_summary=$(grep -E '^guest-tests: [0-9]+ passed, [0-9]+ failed$' <<<"$text" | tail -n 1 || true)
    tests_rc=$(sed -n 's/^GUEST-TESTS rc=\([0-9]*\)$/\1/p' <<<"$text" | tail -n 1)
    TESTS_SUMMARY[n]=${tests_summary:-"(no guest-tests summary)"}
    if [[ -n $done_line && -z $tests_summary ]]; then
        fail "boot $n: no guest-tests summary line"
    fi
    if [[ -n $done_line && ${tests_rc:-x} != 0 ]]; then
        fail "boot $n: mali-guest-tests exited with ${tests_rc:-no status}"
    fi
    if [[ -n $done_line ]]; then
        check_mode "$n" "$mode" "$text" "$daemon_lines"
    fi

    local lines load_ms
    if lines=$(grep -E '^PROBE FAIL ' <<<"$text"); then
        fail "boot $n: $(wc -l <<<"$lines") probe check(s) failed"
    fi
    if lines=$(grep -E '^TEST FAIL ' <<<"$text"); then
        fail "boot $n: $(wc -l <<<"$lines") guest test(s) failed: $(summary "$lines")"
    fi
    if lines=$(grep -E '^GUEST-ERROR ' <<<"$text"); then
        fail "boot $n: guest setup: $(summary "$lines")"
    fi
    load_ms=$(sed -n 's/^GUEST-MODULES loaded in \([0-9]*\) ms$/\1/p' <<<"$text")
    if [[ -n $load_ms ]] && ((load_ms > MAX_MODULE_LOAD_MS)); then
        fail "boot $n: loading virtio-gpu took $load_ms ms: the device left the driver waiting"
    fi
    if lines=$({ cat "$qemu_log"; printf '%s\n' "$text"; } | grep -iE "$VHOST_ERRORS"); then
        fail "boot $n: vhost errors: $(summary "$lines") (see $qemu_log)"
    fi
    if lines=$(grep -E "$KERNEL_ERRORS" <<<"$text"); then
        fail "boot $n: guest kernel errors: $(summary "$lines") (see $console)"
    fi
    check_daemon_log "boot $n: "

    local verdict=PASS
    ((${#FAILURES[@]} == failed_before)) || verdict=FAIL
    BOOT_VERDICT[n]=$verdict
    log "boot $n: $mode mode: $verdict in $(secs "${BOOT_TIME[n]}") s (console: $console)"

    if ! is_running "$DAEMON_PID"; then
        reap_daemon
        fail "boot $n: daemon exited after the boot (status $DAEMON_STATUS)"
        DAEMON_GONE=1
        return 1
    fi
}

main() {
    parse_args "$@"
    mkdir -p "$OUT"

    # One run at a time: the socket and the logs have fixed names.
    exec 9>"$OUT/e2e.lock"
    flock -n 9 || die "another ci/e2e.sh run holds $OUT/e2e.lock"
    rm -f "$OUT"/console-*.log "$OUT"/qemu-*.log

    local t_start t_build
    t_start=$(now_us)
    "$ROOT/ci/guest-build.sh"
    # shellcheck source=/dev/null # written by guest-build.sh
    source "$OUT/guest.env"

    if [[ -z $DAEMON ]]; then
        # The guest suite's job-timeout case needs a short job timeout
        # (the default is 5 s); --daemon-arg --job-timeout-ms overrides it.
        if [[ " ${DAEMON_ARGS[*]} " != *" --job-timeout-ms "* ]]; then
            DAEMON_ARGS=(--job-timeout-ms "$GUEST_JOB_TIMEOUT_MS" "${DAEMON_ARGS[@]}")
        fi
        log "building the daemon"
        (cd "$ROOT" && cargo build --quiet --release --bin vhost-user-mali)
        DAEMON=${CARGO_TARGET_DIR:-$ROOT/target}/release/vhost-user-mali
    fi
    [[ -x $DAEMON ]] || die "daemon $DAEMON is not an executable"

    local t_qemu t_qemu_build=0
    t_qemu=$(now_us)
    if uses_mode compat; then
        command -v "$STOCK_QEMU" >/dev/null || die "stock QEMU $STOCK_QEMU not found"
        log "compat mode: $STOCK_QEMU ($("$STOCK_QEMU" --version | head -n 1))"
    fi
    if uses_mode full; then
        if [[ -z $PATCHED_QEMU ]]; then
            PATCHED_QEMU=$("$ROOT/ci/qemu-build.sh")
            t_qemu_build=$(($(now_us) - t_qemu))
        fi
        [[ -x $PATCHED_QEMU ]] || die "patched QEMU $PATCHED_QEMU is not an executable"
        log "full mode: $PATCHED_QEMU ($("$PATCHED_QEMU" --version | head -n 1))"
    fi
    t_build=$(now_us)

    # unix(7) socket paths are limited to 107 bytes.
    SOCK=$OUT/vhost-user-mali.sock
    if ((${#SOCK} > 100)); then
        SOCK=$(mktemp -u /tmp/vhost-user-mali-e2e.XXXXXX.sock)
    fi

    trap cleanup EXIT
    # Make Ctrl-C and SIGTERM go through the EXIT trap.
    trap 'exit 130' INT
    trap 'exit 143' TERM
    start_daemon
    local t_daemon
    t_daemon=$(now_us)

    declare -ga BOOT_TIME=() BOOT_VERDICT=() TESTS_SUMMARY=()
    local n
    for ((n = 1; n <= BOOTS; n++)); do
        boot "$n" || break
    done

    stop_daemon
    check_daemon_log ""
    local t_end
    t_end=$(now_us)

    echo
    log "timings: build $(secs $((t_build - t_start))) s (patched QEMU $(secs "$t_qemu_build") s), daemon start $(secs $((t_daemon - t_build))) s"
    for ((n = 1; n <= BOOTS; n++)); do
        if [[ -n ${BOOT_TIME[n]:-} ]]; then
            log "  boot $n ($(boot_mode "$n")): ${BOOT_VERDICT[n]} $(secs "${BOOT_TIME[n]}") s, ${TESTS_SUMMARY[n]:-}"
        else
            log "  boot $n ($(boot_mode "$n")): not run"
        fi
    done
    log "  boots and checks: $(secs $((t_end - t_build))) s, total: $(secs $((t_end - t_start))) s"

    if ((${#FAILURES[@]})); then
        log "${#FAILURES[@]} failure(s):"
        printf 'e2e:   %s\n' "${FAILURES[@]}"
        log "RESULT: FAIL (logs in $OUT)"
        exit 1
    fi
    log "RESULT: PASS ($BOOTS boot(s))"
}

main "$@"
