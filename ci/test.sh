#!/usr/bin/env bash
# The project's whole test suite, runnable on a fresh Debian 12 machine as
# root: formatting, lints, unit and integration tests over a real vhost-user
# socket, then the end-to-end boots of a Linux guest under QEMU 10 (TCG), in
# compat mode (stock QEMU) and full mode (patched QEMU).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain"
cargo --version
rustup component list --installed 2>/dev/null | grep -E '^(rustfmt|clippy)' || true

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "unit and integration tests"
mkdir -p ci/out
# Plain `cargo test` runs the library, binaries, integration tests and doc
# tests; the benchmarks are compiled by clippy above but not run here.
cargo test 2>&1 | tee ci/out/cargo-test.log
# cargo prints one summary line per test binary; add them up.
read -r CARGO_PASSED CARGO_FAILED < <(awk '/^test result:/ { p += $4; f += $6 } END { print p + 0, f + 0 }' ci/out/cargo-test.log)
echo "cargo tests: $CARGO_PASSED passed, $CARGO_FAILED failed"

step "end to end: Linux guest under QEMU with the daemon"
# Boot 1 in compat mode (stock QEMU), boot 2 in full mode (the patched QEMU
# that ci/qemu-build.sh builds once into ci/cache/qemu/).
BOOTS=2
bash ci/e2e.sh --boots "$BOOTS" --modes compat,full

# One closing line for the whole run: every cargo test and every guest boot.
# Any failure has already stopped the script with a non-zero status.
echo
echo "ci: $((CARGO_PASSED + BOOTS)) passed, 0 failed"
