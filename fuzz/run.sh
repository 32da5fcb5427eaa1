#!/usr/bin/env bash
# Runs each libFuzzer target for a bounded time:
#
#     fuzz/run.sh [SECONDS_PER_TARGET]     (default 60)
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Without them it says so and exits 0: CI cannot count on nightly, so what
# runs on every change is the proptest suite over the same parsers,
# `cargo test --test fuzz` (PROPTEST_CASES=N searches longer).
#
# Findings land in fuzz/artifacts/<target>/; replay one with
# `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>`.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: no nightly toolchain; skipped (tests/fuzz.rs runs in cargo test)" >&2
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz is not installed; skipped (cargo install cargo-fuzz)" >&2
    exit 0
fi

for target in $(cargo +nightly fuzz list); do
    echo "== $target: ${seconds}s"
    mkdir -p "corpus/$target"
    # Seeds are read, never written: new inputs go to corpus/.
    cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=4096
done
