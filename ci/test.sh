#!/usr/bin/env bash
# The project's whole test suite, runnable on a fresh Debian 12 machine as
# root: formatting, lints, unit and integration tests over a real vhost-user
# socket, then the end-to-end boot of a Linux guest under QEMU 10 (TCG).
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
awk '/^test result:/ { p += $4; f += $6 } END { printf "cargo tests: %d passed, %d failed\n", p, f }' ci/out/cargo-test.log

step "end to end: Linux guest under QEMU with the daemon"
bash ci/e2e.sh
