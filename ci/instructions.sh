#!/usr/bin/env bash
# Instructions per request of the batched transport cases, counted with
# callgrind: the echo floor and fenced no-op GPU jobs, 64 per kick, driver
# and device on one CPU. Each case runs twice (100 and 600 batches); the
# difference divided by 500 x 64 requests leaves out start-up and set-up.
# Also split by thread: the driver (the bench's main thread) and the rest
# (the device: its vring worker, engine and display threads).
#
# Unlike timings, these counts do not move with other tenants of the
# machine, so they show what a change does to the work per request. The
# release profile builds the crate as one codegen unit; with the default
# 16 the counts also moved with how the compiler split and inlined the
# crate (an unrelated change moved the echo floor's own count, whose back
# end and driver are in this crate, by 15 %). Compare a change with the
# commit before it, both counted here.
#
# Needs valgrind (apt-get install valgrind).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 1; }
bin=$(cargo bench --bench transport --no-run 2>&1 |
    sed -n 's/.*Executable .*(\(.*transport-[0-9a-f]*\)).*/\1/p' | tail -1)
[ -x "$bin" ] || { echo "cannot find the transport bench binary" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Prints "<other threads> <main thread>" instructions of one run.
count() {
    local case=$1 batches=$2
    TRANSPORT_CASES=$case TRANSPORT_ITERS=10 TRANSPORT_BATCHES=$batches \
        valgrind --tool=callgrind --separate-threads=yes \
        --callgrind-out-file="$out/$case.$batches" "$bin" --bench >/dev/null 2>&1
    local main=0 rest=0 f n
    for f in "$out/$case.$batches"-*; do
        n=$(sed -n 's/^summary: *//p' "$f")
        if [[ $f == *-01 ]]; then main=$((main + n)); else rest=$((rest + n)); fi
    done
    echo "$rest $main"
}

per_request() {
    local case=$1 a am b bm
    read -r a am < <(count "$case" 100)
    read -r b bm < <(count "$case" 600)
    echo $(((b - a) / 32000)) $(((bm - am) / 32000))
}

read -r jd jm < <(per_request job-batch)
read -r ed em < <(per_request echo-batch)
printf 'instructions per request, 64 per kick, one CPU:\n'
printf '  echo floor  %6d  (device %d, driver %d)\n' $((ed + em)) "$ed" "$em"
printf '  GPU job     %6d  (device %d, driver %d)\n' $((jd + jm)) "$jd" "$jm"
awk -v e=$((ed + em)) -v j=$((jd + jm)) 'BEGIN { printf "  echo / job  %.3f\n", e / j }'
