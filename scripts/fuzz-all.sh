#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ one at a time (one process each: the machine is shared)
# and prints, per target, the executions, executions per second, coverage and what it found.
#
#   bash scripts/fuzz-all.sh TARGET SECONDS    one target (a name from `cargo fuzz list`)
#   bash scripts/fuzz-all.sh all SECONDS       every target in turn, SECONDS each
#
# Needs a nightly toolchain with cargo-fuzz and, for vmm's build script, the nightly
# x86_64-unknown-none target (added here if missing). Each target starts from its committed
# regression corpus (fuzz/regressions/TARGET, read only) and grows a working corpus in
# fuzz/corpus/TARGET (gitignored). Builds have debug assertions on (overflow checks, as in
# the unit tests that replay the corpora). A crash stops that target: its input is in
# fuzz/artifacts/TARGET/ and the status is nonzero. Full logs: fuzz/target/fuzz-logs/.
# To commit a corpus: cargo +nightly fuzz cmin -a TARGET fuzz/corpus/TARGET, then copy what
# is new into fuzz/regressions/TARGET (small: a few hundred KB at most).
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -eq 2 ] || { echo "usage: $0 TARGET|all SECONDS" >&2; exit 64; }
which=$1
secs=$2
case $secs in '' | *[!0-9]*) echo "$0: SECONDS must be a number, not '$secs'" >&2; exit 64 ;; esac

rustup +nightly target list --installed | grep -x x86_64-unknown-none >/dev/null ||
  rustup +nightly target add x86_64-unknown-none

mapfile -t all < <(cargo +nightly fuzz list)
if [ "$which" = all ]; then
  targets=("${all[@]}")
else
  found=
  for t in "${all[@]}"; do [ "$t" = "$which" ] && found=1; done
  [ -n "$found" ] || { echo "$0: no fuzz target '$which' (there are: ${all[*]})" >&2; exit 64; }
  targets=("$which")
fi

logs=fuzz/target/fuzz-logs
mkdir -p "$logs"
status=0
printf '%-14s %7s %11s %8s %6s %7s %7s  %s\n' target seconds execs exec/s cov ft corpus result
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/regressions/$t"
  log=$logs/$t.log
  # Build first, so that the time measured below is fuzzing time.
  cargo +nightly fuzz build -a "$t" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
  rc=0
  start=$(date +%s)
  # -a: debug assertions; the working corpus first (new inputs go there), then the seeds.
  cargo +nightly fuzz run -a "$t" "fuzz/corpus/$t" "fuzz/regressions/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    >>"$log" 2>&1 || rc=$?
  took=$(($(date +%s) - start))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
  last=$(grep -aE '^#[0-9]+' "$log" | tail -n1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
  if [ "$rc" -eq 0 ]; then
    result=ok
  else
    status=1
    art=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)
    result="FAILED (status $rc${art:+, input $art}; see $log)"
  fi
  printf '%-14s %7s %11s %8s %6s %7s %7s  %s\n' "$t" "$took" "${execs:-?}" "${rate:-?}" \
    "${cov:-?}" "${ft:-?}" "${corp:-?}" "$result"
done
exit "$status"
