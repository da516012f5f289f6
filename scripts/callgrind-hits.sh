#!/usr/bin/env bash
# Host-side (user-space) instructions per probe hit, per execute breakpoint hit and per bare
# PIO exit, measured with callgrind on the `hits` benchmark (vmm/benches/hits.rs).
#
# Each variant runs under `valgrind --tool=callgrind` twice, with N1 and N2 calls of `f`;
# (Ir(N2) - Ir(N1)) / (N2 - N1) is the host instructions each call adds, so VM creation,
# session setup and teardown cancel out. Callgrind counts user-space instructions of every
# thread of the process (the vCPU thread does nearly all the per-call work); the kernel's
# KVM work and the guest's own instructions are not counted.
#
# Usage: scripts/callgrind-hits.sh [VARIANT...]   (default: base pio probe hbreak)
#        scripts/callgrind-hits.sh --bench optprobes [RING:MODE...]
#          (the `optprobes` benchmark's cells; default: 0:none 0:int3 0:jump-exit 0:jump, where
#          every hit of the three probes is one probe hit of tk_bench_target)
# Env: HVPROBE_CG_N1 (default 200), HVPROBE_CG_N2 (default 2 * N1), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=hits
if [ "${1:-}" = "--bench" ]; then
  bench=${2:?"--bench needs a name: hits or optprobes"}
  shift 2
fi
case "$bench" in
  hits) default_variants=(base pio probe hbreak); base=pio; calls_per_n=1 ;;
  # optbench calls the target N times in each of its 5 rounds.
  optprobes) default_variants=(0:none 0:int3 0:jump-exit 0:jump); base=0:int3; calls_per_n=5 ;;
  *) echo "callgrind-hits.sh: unknown benchmark $bench (hits or optprobes)" >&2; exit 1 ;;
esac
command -v valgrind >/dev/null || { echo "callgrind-hits.sh: valgrind is not installed" >&2; exit 1; }
[ -r /dev/kvm ] || { echo "callgrind-hits.sh: /dev/kvm is missing or not readable" >&2; exit 1; }

n1=${HVPROBE_CG_N1:-200}
n2=${HVPROBE_CG_N2:-$((2 * n1))}
[ "$n2" -gt "$n1" ] || { echo "callgrind-hits.sh: need HVPROBE_CG_N2 > HVPROBE_CG_N1" >&2; exit 1; }
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=("${default_variants[@]}")

bin=$(cargo bench -p vmm --bench "$bench" --no-run 2>&1 | sed -n "s/^ *Executable benches\/$bench\.rs (\(.*\))\$/\1/p")
[ -x "$bin" ] || { echo "callgrind-hits.sh: could not build the $bench benchmark" >&2; exit 1; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Total Ir of one run of variant $1 with N=$2.
total_ir() {
  local file="$out/callgrind.${1//:/-}.$2"
  HVPROBE_BENCH_VARIANT=$1 HVPROBE_BENCH_N=$2 HVPROBE_BENCH_ROUNDS=1 HVPROBE_BENCH_RUNS=1 \
    valgrind --tool=callgrind --callgrind-out-file="$file" "$bin" >"$file.log" 2>&1 \
    || { echo "callgrind-hits.sh: $1 N=$2 failed:" >&2; tail -20 "$file.log" >&2; exit 1; }
  local ir
  ir=$(sed -n 's/^\(summary\|totals\): *\([0-9]*\).*/\2/p' "$file" | sed -n 1p)
  [ -n "$ir" ] || { echo "callgrind-hits.sh: no total in $file" >&2; exit 1; }
  echo "$ir"
}

printf '%-8s %14s %14s %16s\n' variant "Ir (N=$n1)" "Ir (N=$n2)" "Ir per call"
declare -A per
for v in "${variants[@]}"; do
  a=$(total_ir "$v" "$n1")
  b=$(total_ir "$v" "$n2")
  per[$v]=$(( (b - a) / ((n2 - n1) * calls_per_n) ))
  printf '%-8s %14s %14s %16s\n' "$v" "$a" "$b" "${per[$v]}"
done
if [ -n "${per[$base]:-}" ] && [ "${per[$base]}" -gt 0 ]; then
  for v in "${variants[@]}"; do
    [ "$v" != "$base" ] && [ -n "${per[$v]:-}" ] || continue
    awk -v v="$v" -v h="${per[$v]}" -v p="${per[$base]}" -v b="$base" \
      'BEGIN { printf "%s / %s: %.2f x host instructions (%d more per call)\n", v, b, h / p, h - p }'
  done
fi
echo "(host user-space instructions only, all threads; KVM's kernel work and guest code are not counted)"
