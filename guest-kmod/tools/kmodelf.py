#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0 OR MIT
"""ELF post-processing and checks for hvprobe's guest module (scripts/build-guest-kmod.sh).

  kmodelf.py relax OBJ
      Rewrites every GOT-relative call/jmp/mov in OBJ (an ELF64 x86-64 relocatable) to its
      direct form, as a linker's GOTPCRELX relaxation does: `call *x@GOTPCREL(%rip)` becomes
      `addr32 call x` (PLT32), `jmp *x@GOTPCREL(%rip)` becomes `nop; jmp x` (PLT32),
      `mov x@GOTPCREL(%rip), %reg` becomes `lea x(%rip), %reg` (PC32). Linux 6.1's module
      loader accepts none of the GOT relocation types. Any other GOT-relative form fails.
  kmodelf.py relocs KO
      Fails unless every relocation against an allocated section is one the x86-64 module
      loader accepts (NONE, 64, PC32, PLT32, 32, 32S, PC64).
Exit status 1 with one line per problem on stderr.
"""
import struct
import sys

SHT_RELA = 4
SHF_ALLOC = 0x2
R_PC32, R_PLT32 = 2, 4
GOT_TYPES = {9: "GOTPCREL", 41: "GOTPCRELX", 42: "REX_GOTPCRELX"}
ACCEPTED = {0: "NONE", 1: "64", 2: "PC32", 4: "PLT32", 10: "32", 11: "32S", 24: "PC64"}


def sections(data):
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise SystemExit("kmodelf: not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    out = []
    for i in range(shnum):
        f = struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
        out.append(dict(name=f[0], type=f[1], flags=f[2], offset=f[4], size=f[5],
                        link=f[6], info=f[7], entsize=f[9], hdr=shoff + i * shentsize))
    strtab = out[shstrndx]
    for s in out:
        end = data.index(b"\0", strtab["offset"] + s["name"])
        s["sname"] = data[strtab["offset"] + s["name"]:end].decode()
    return out


def relas(data, secs):
    for s in secs:
        if s["type"] != SHT_RELA:
            continue
        target = secs[s["info"]]
        for k in range(s["size"] // 24):
            at = s["offset"] + 24 * k
            off, info, addend = struct.unpack_from("<QQq", data, at)
            yield s, target, at, off, info >> 32, info & 0xFFFFFFFF, addend


def relax(path):
    data = bytearray(open(path, "rb").read())
    secs = sections(data)
    bad, done = [], 0
    for rel, target, at, off, sym, typ, addend in list(relas(data, secs)):
        if typ not in GOT_TYPES:
            continue
        base = target["offset"]
        op = bytes(data[base + off - 2:base + off])
        where = f"{target['sname']}+{off:#x}"
        if op == b"\xff\x15":  # call *disp(%rip) -> addr32 call rel32
            data[base + off - 2:base + off] = b"\x67\xe8"
            new = R_PLT32
        elif op == b"\xff\x25":  # jmp *disp(%rip) -> nop; jmp rel32
            data[base + off - 2:base + off] = b"\x90\xe9"
            new = R_PLT32
        elif op[0] == 0x8B and (op[1] & 0xC7) == 0x05 and off >= 3 and (data[base + off - 3] & 0xF0) == 0x40:
            data[base + off - 2] = 0x8D  # mov disp(%rip), %reg -> lea disp(%rip), %reg
            new = R_PC32
        else:
            bad.append(f"{where}: {GOT_TYPES[typ]} on an unknown instruction form {op.hex()}")
            continue
        struct.pack_into("<QQq", data, at, off, (sym << 32) | new, addend)
        done += 1
    if bad:
        for b in bad:
            print(f"kmodelf relax: {path}: {b}", file=sys.stderr)
        return 1
    open(path, "wb").write(data)
    print(f"kmodelf relax: {done} GOT-relative sites rewritten", file=sys.stderr)
    return 0


def check_relocs(path):
    data = open(path, "rb").read()
    secs = sections(data)
    bad = {}
    for rel, target, at, off, sym, typ, addend in relas(data, secs):
        if target["flags"] & SHF_ALLOC and typ not in ACCEPTED:
            key = (target["sname"], typ)
            bad[key] = bad.get(key, 0) + 1
    for (sec, typ), n in sorted(bad.items()):
        name = GOT_TYPES.get(typ, str(typ))
        print(f"kmodelf relocs: {path}: {n} relocation(s) of type {name} in {sec}: "
              "the module loader refuses them", file=sys.stderr)
    return 1 if bad else 0


def main(argv):
    if len(argv) != 3 or argv[1] not in ("relax", "relocs"):
        print(__doc__, file=sys.stderr)
        return 2
    return relax(argv[2]) if argv[1] == "relax" else check_relocs(argv[2])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
