#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ one after another (request_parser, then
# reply_framer, or those named), each for RUNS executions, then optionally
# minimizes the checked-in corpus. Installs what is missing: cargo-fuzz with
# `cargo install` if absent, the nightly toolchain only if rustup has none.
#
#   scripts/fuzz.sh [-r RUNS] [-t SECONDS] [-m] [TARGET...]
#
#   -r RUNS     executions per target (default 10,000,000; 0: until -t or a crash)
#   -t SECONDS  stop a target after this long (default: no limit)
#   -m          afterwards, merge what was found into fuzz/corpus/TARGET and
#               minimize it (cargo fuzz cmin); commit the result if it is small
#
# FUZZ_SANITIZER=none builds without AddressSanitizer (cargo-fuzz's default is
# address), in fuzz/target/none: about twice the executions per second, but
# -malloc_limit_mb is then not enforced (it needs the sanitizer's malloc hooks).
#
# New inputs go to fuzz/corpus-work/TARGET (not checked in); fuzz/corpus/TARGET is
# the checked-in seed corpus, replayed on stable by tests/fuzz_corpus.rs. A crash
# is written to fuzz/artifacts/TARGET/; reproduce it with
#   cd fuzz && cargo +nightly fuzz run -O TARGET artifacts/TARGET/crash-...
# Logs (with libFuzzer's final stats: executions, time) go to fuzz/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=10000000 TIME=0 MIN=0
while getopts "r:t:m" o; do
    case "$o" in
        r) RUNS=$OPTARG ;; t) TIME=$OPTARG ;; m) MIN=1 ;; *) exit 2 ;;
    esac
done
shift $((OPTIND - 1))
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(request_parser reply_framer)

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

SAN=${FUZZ_SANITIZER:-address}
BUILD=(-O -s "$SAN")
[ "$SAN" = address ] || BUILD+=(--target-dir "target/$SAN")

cd fuzz
mkdir -p logs
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus-work/$t" "corpus/$t"
    echo "== $t: $RUNS runs (0: no limit), at most $TIME s (0: no limit)" >&2
    # -max_len: inputs up to 512 bytes reach every state of both readers.
    # -malloc_limit_mb: one allocation of more than 64 MiB is a crash, so a
    # length the input only claims (`*2147483647`) can never be reserved.
    cargo +nightly fuzz run "${BUILD[@]}" "$t" "corpus-work/$t" "corpus/$t" -- \
        -runs="$RUNS" -max_total_time="$TIME" -max_len=512 \
        -malloc_limit_mb=64 -rss_limit_mb=2048 -print_final_stats=1 \
        2>&1 | tee "logs/$t-$SAN.log"
    if [ "$MIN" = 1 ]; then
        cp -n "corpus-work/$t"/* "corpus/$t"/ 2>/dev/null || true
        # Edge coverage only: with hit counters cmin keeps thousands of files.
        cargo +nightly fuzz cmin "${BUILD[@]}" "$t" "corpus/$t" -- -use_counters=0 2>&1 | tail -n 1
        echo "$t corpus: $(ls "corpus/$t" | wc -l) files, $(du -sh "corpus/$t" | cut -f1)" >&2
    fi
done
