#!/usr/bin/env bash
# Runs the filter from the kernel's Documentation/trace/mmiotrace.rst over an mmiotrace:
# every 32-bit write (/W 4 /) whose physical address ($5, read with gawk's strtonum) lies in
# [LO, HI). Prints the selected lines, then the documentation's lost-events check
# (grep -i lost). Exits non-zero if gawk reports anything on stderr (its --lint warnings included, gawk extensions allowed) or
# selects nothing.
#
# usage: mmiotrace-gawk.sh FILE [LO HI]   (default: the whole address space)
set -euo pipefail
if [ $# -ne 1 ] && [ $# -ne 3 ]; then
  echo "usage: $0 FILE [LO HI]" >&2
  exit 2
fi
file=$1
lo=${2:-0x0}
hi=${3:-0x10000000000000000}
command -v gawk >/dev/null || { echo "$0: gawk is not installed (apt-get install gawk)" >&2; exit 2; }
[ -r "$file" ] || { echo "$0: cannot read $file" >&2; exit 2; }

errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
out=$(gawk --lint=no-ext -v lo="$lo" -v hi="$hi" '
  BEGIN { lo = strtonum(lo); hi = strtonum(hi) }
  /W 4 / { adr = strtonum($5); if (adr >= lo && adr < hi) print }
' "$file" 2>"$errors") || { cat "$errors" >&2; echo "$0: gawk failed" >&2; exit 1; }
if [ -s "$errors" ]; then
  cat "$errors" >&2
  echo "$0: gawk reported problems" >&2
  exit 1
fi
if [ -z "$out" ]; then
  echo "$0: the filter selected no 32-bit write in [$lo, $hi) of $file" >&2
  exit 1
fi
printf '%s\n' "$out"
echo "--- grep -i lost:"
grep -i lost "$file" || echo "(no lost events)"
