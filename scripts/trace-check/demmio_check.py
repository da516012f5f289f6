#!/usr/bin/env python3
"""Checks an mmiotrace the way envytools' demmio (rnn/demmio.c) reads it, and more strictly.

demmio reads each line with fgets() into a 1024-byte buffer and then:
  PCIDEV lines: sscanf("%*s %*s %x %*s %x %x %x %x %*s %*s %*s %x %x %x %x") -- the
    vendor<<16|device id, BARs 0-3 and sizes 0-3, all hex (SCNx64); 15 fields at least.
  R / W lines:  sscanf("%*s %d %lf %*d %x %x") -- width (bytes, decimal), timestamp
    (a double), map id (decimal, skipped), physical address and value (hex).
  anything else is echoed unchanged.
demmio never checks sscanf's result, so a field it cannot convert silently becomes garbage (and it needs
15 PCIDEV fields, where the kernel writes 18 plus the driver);
this script rejects such lines instead, and also holds each line to the kernel's exact shape
(kernel/trace/trace_mmiotrace.c): field counts, 0x prefixes, six-digit microseconds,
the PID field, VERSION first. Exits 1 listing every line it rejects.

usage: demmio_check.py FILE
"""

import re
import sys

MAX_LINE = 1023  # fgets(line, 1024, ...) keeps 1023 characters, the newline included
HEX = re.compile(r"^[0-9a-f]+$")  # the kernel's %x / %llx: lowercase, no prefix
HEX0X = re.compile(r"^0x[0-9a-f]+$")  # the kernel's 0x%lx / 0x%llx
DEC = re.compile(r"^-?[0-9]+$")  # %d
TIMESTAMP = re.compile(r"^[0-9]+\.[0-9]{6}$")  # %u.%06lu


def check_pcidev(f):
    # PCIDEV %02x%02x %04x%04x %x, 7 x %llx, 7 x %llx, then the driver name or nothing.
    if len(f) not in (18, 19):
        return f"PCIDEV has {len(f)} fields, expected 18 (no driver) or 19"
    if not re.fullmatch(r"[0-9a-f]{4}", f[1]):
        return f"bus/devfn {f[1]!r} is not 4 hex digits"
    if not re.fullmatch(r"[0-9a-f]{8}", f[2]):
        return f"vendor/device {f[2]!r} is not 8 hex digits"
    for i, name in [(3, "irq")] + [(4 + k, f"resource {k}") for k in range(7)] + [
        (11 + k, f"size {k}") for k in range(7)
    ]:
        if not HEX.match(f[i]):
            return f"{name} {f[i]!r} is not hex"
    return None


def check_rw(f):
    # R|W %d %u.%06lu %d 0x%llx 0x%lx 0x%lx %d
    if len(f) != 8:
        return f"{f[0]} has {len(f)} fields, expected 8"
    if f[1] not in ("1", "2", "4", "8"):
        return f"width {f[1]!r} is not 1, 2, 4 or 8"
    if not TIMESTAMP.match(f[2]):
        return f"timestamp {f[2]!r} is not seconds.microseconds"
    if not DEC.match(f[3]):
        return f"map id {f[3]!r} is not a decimal int"
    for i, name in ((4, "address"), (5, "value"), (6, "pc")):
        if not HEX0X.match(f[i]):
            return f"{name} {f[i]!r} is not 0x-prefixed hex"
    if int(f[5], 16) >= 1 << (8 * int(f[1])):
        return f"value {f[5]} does not fit in {f[1]} bytes"
    if not DEC.match(f[7]):
        return f"pid {f[7]!r} is not decimal"
    return None


def check_map(f):
    # MAP %u.%06lu %d 0x%llx 0x%lx 0x%lx 0x%lx %d
    if len(f) != 8:
        return f"MAP has {len(f)} fields, expected 8"
    if not TIMESTAMP.match(f[1]) or not DEC.match(f[2]) or not DEC.match(f[7]):
        return "MAP timestamp, id or pid malformed"
    if not all(HEX0X.match(x) for x in f[3:7]):
        return "MAP phys, virt, len or pc is not 0x-prefixed hex"
    return None


def check_unmap(f):
    # UNMAP %u.%06lu %d 0x%lx %d
    if len(f) != 5:
        return f"UNMAP has {len(f)} fields, expected 5"
    if not (TIMESTAMP.match(f[1]) and DEC.match(f[2]) and HEX0X.match(f[3]) and DEC.match(f[4])):
        return "UNMAP timestamp, id, pc or pid malformed"
    return None


def check_mark(f):
    # MARK %u.%06lu %s  (and the lost-events form MARK 0.000000 Lost %lu events.)
    if len(f) < 2 or not TIMESTAMP.match(f[1]):
        return "MARK has no seconds.microseconds timestamp"
    if len(f) >= 3 and f[2] == "Lost" and f[1] == "0.000000":
        if len(f) != 5 or not re.fullmatch(r"[0-9]+", f[3]) or f[4] != "events.":
            return "malformed lost-events line"
    return None


def check_line(number, raw):
    if len(raw) > MAX_LINE:
        return f"{len(raw)} characters: demmio's 1024-byte fgets buffer would split it"
    if not raw.endswith("\n"):
        return "no newline at the end"
    line = raw[:-1]
    f = line.split(" ")
    if number == 1:
        return None if line == "VERSION 20070824" else "the first line is not VERSION 20070824"
    if line.startswith("PCIDEV "):
        # The kernel ends a driverless PCIDEV line with " \n": one empty last field.
        if f[-1] == "":
            f = f[:-1]
        elif len(f) == 18:
            return "PCIDEV without a driver must end with a space"
        return check_pcidev(f)
    if line.startswith("R ") or line.startswith("W "):
        return check_rw(f)
    if line.startswith("MAP "):
        return check_map(f)
    if line.startswith("UNMAP "):
        return check_unmap(f)
    if line.startswith("MARK "):
        return check_mark(f)
    if f[0] in ("UNKNOWN", "LSPCI"):
        return None
    return f"unknown record {f[0]!r}"


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    counts = {}
    bad = 0
    with open(sys.argv[1], encoding="ascii", errors="replace", newline="\n") as trace:
        for number, raw in enumerate(trace, 1):
            problem = check_line(number, raw)
            if problem:
                bad += 1
                print(f"{sys.argv[1]}:{number}: {problem}: {raw.rstrip()!r}", file=sys.stderr)
            kind = raw.split(" ", 1)[0].strip()
            counts[kind] = counts.get(kind, 0) + 1
    if not counts:
        print(f"{sys.argv[1]}: empty trace", file=sys.stderr)
        return 1
    print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    if bad:
        print(f"{bad} line(s) rejected", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
