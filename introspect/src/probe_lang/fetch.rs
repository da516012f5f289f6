//! Fetch arguments and their types: the `FETCHARGS` of a kprobe_events definition.
//!
//! A [`FetchArg`] is a tree: a dereference ([`FetchArg::Deref`]) holds the fetch it reads
//! through, a member chain ([`FetchArg::Member`]) holds its base (an argument by name or
//! `$retval`) and the member names in order. Nothing here knows types: `file->f_path.dentry`
//! is the name `file` and the path `->f_path`, `.dentry`, for a BTF resolver to walk.

use std::fmt;

use disasm::{Fetch, Gpr};

use super::kprobe::ProbeErrorKind as K;
use super::{is_good_name, parse_decimal, parse_long, parse_ulong, short_number, short_signed};

/// Deepest nesting of `+OFFS(...)` dereferences, and the longest member chain: the kernel's
/// `FETCH_INSN_MAX` (16) leaves room for 12.
pub const MAX_DEREF_DEPTH: usize = 12;
/// Largest `$stackN` and `$argN`: the kernel's `PARAM_MAX_STACK` on x86-64
/// (`THREAD_SIZE / sizeof(long)`).
pub const MAX_STACK_PARAM: u64 = 2048;
/// Most elements of an array type (`TYPE[N]`): the kernel's `MAX_ARRAY_LEN`.
pub const MAX_ARRAY_LEN: u32 = 64;

/// An x86-64 register as kprobe_events names it (`pt_regs` member names): `%ax`..`%r15`,
/// `%ip`, `%flags`, `%cs`, `%ss`, `%orig_ax`. The parser also takes the `r`-prefixed names
/// (`%rax`, `%rip`, `%rflags`); `Display` gives the kernel's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Reg {
    Ax,
    Bx,
    Cx,
    Dx,
    Si,
    Di,
    Bp,
    Sp,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
    Ip,
    Flags,
    Cs,
    Ss,
    OrigAx,
}

/// Every register: the kernel's name, the `r`-prefixed alias, the GPR.
const REGS: [(Reg, &str, &str, Option<Gpr>); 21] = [
    (Reg::Ax, "ax", "rax", Some(Gpr::Rax)),
    (Reg::Bx, "bx", "rbx", Some(Gpr::Rbx)),
    (Reg::Cx, "cx", "rcx", Some(Gpr::Rcx)),
    (Reg::Dx, "dx", "rdx", Some(Gpr::Rdx)),
    (Reg::Si, "si", "rsi", Some(Gpr::Rsi)),
    (Reg::Di, "di", "rdi", Some(Gpr::Rdi)),
    (Reg::Bp, "bp", "rbp", Some(Gpr::Rbp)),
    (Reg::Sp, "sp", "rsp", Some(Gpr::Rsp)),
    (Reg::R8, "r8", "r8", Some(Gpr::R8)),
    (Reg::R9, "r9", "r9", Some(Gpr::R9)),
    (Reg::R10, "r10", "r10", Some(Gpr::R10)),
    (Reg::R11, "r11", "r11", Some(Gpr::R11)),
    (Reg::R12, "r12", "r12", Some(Gpr::R12)),
    (Reg::R13, "r13", "r13", Some(Gpr::R13)),
    (Reg::R14, "r14", "r14", Some(Gpr::R14)),
    (Reg::R15, "r15", "r15", Some(Gpr::R15)),
    (Reg::Ip, "ip", "rip", None),
    (Reg::Flags, "flags", "rflags", None),
    (Reg::Cs, "cs", "cs", None),
    (Reg::Ss, "ss", "ss", None),
    (Reg::OrigAx, "orig_ax", "orig_rax", None),
];

impl Reg {
    /// The register named `name` (without `%`): the kernel's name or the `r`-prefixed one.
    /// Case matters, as in the kernel.
    pub fn from_name(name: &str) -> Option<Reg> {
        REGS.iter()
            .find(|(_, k, r, _)| *k == name || *r == name)
            .map(|(reg, ..)| *reg)
    }

    /// The kernel's name (`ax`, `r8`, `ip`, `flags`).
    pub fn name(self) -> &'static str {
        REGS.iter()
            .find(|(r, ..)| *r == self)
            .map_or("?", |(_, k, ..)| k)
    }

    /// The general-purpose register, if it is one.
    pub fn gpr(self) -> Option<Gpr> {
        REGS.iter().find(|(r, ..)| *r == self).and_then(|e| e.3)
    }
}

impl fmt::Display for Reg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.name())
    }
}

/// How a member is reached: `->` through a pointer, `.` inside a structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberOp {
    /// `->name`
    Arrow,
    /// `.name`
    Dot,
}

/// One step of a member chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    /// `->` or `.`.
    pub op: MemberOp,
    /// The member's name (a C identifier).
    pub name: String,
}

/// What a fetch argument reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FetchArg {
    /// `%REG`
    Reg(Reg),
    /// `$stack`: the stack pointer's value.
    StackAddr,
    /// `$stackN`: the Nth entry of the stack (N >= 0).
    Stack(u32),
    /// `$retval` (return probes only).
    Retval,
    /// `$comm`: the current task's comm (a string).
    Comm,
    /// `$argN`: the Nth function argument (N >= 1; function entry or return probes).
    Arg(u32),
    /// `$arg*`: every argument of the function, by its BTF name (the resolver expands it;
    /// it stands alone, without a name or type).
    AllArgs,
    /// `@ADDR`: memory at a kernel address.
    Mem(u64),
    /// `@SYM[+|-offs]`: memory at a data symbol plus an offset.
    Symbol {
        /// The symbol.
        name: String,
        /// The byte offset from it.
        offset: i64,
    },
    /// `+|-[u]OFFS(FETCHARG)`: memory at the inner value plus `offset`.
    Deref {
        /// The byte offset added to the inner value.
        offset: i32,
        /// `u`: a user-space address.
        user: bool,
        /// The address.
        inner: Box<FetchArg>,
    },
    /// `\IMM`: an immediate (a negative one as its two's complement).
    Imm(u64),
    /// `\"STRING"`: an immediate string.
    ImmStr(String),
    /// An argument by name (`filename`): BTF resolves it to `$argN`.
    Var(String),
    /// A member chain on an argument by name or `$retval`: `file->f_path.dentry`.
    Member {
        /// [`FetchArg::Var`] or [`FetchArg::Retval`].
        base: Box<FetchArg>,
        /// The steps, the first one `->`.
        path: Vec<Member>,
    },
}

impl FetchArg {
    /// The value an in-guest (jump) handler can record directly, where there is one: a
    /// general-purpose register, RFLAGS, or 8 bytes at a fixed address.
    pub fn trampoline_fetch(&self) -> Option<Fetch> {
        match self {
            FetchArg::Reg(Reg::Flags) => Some(Fetch::Rflags),
            FetchArg::Reg(r) => r.gpr().map(Fetch::Reg),
            FetchArg::Mem(addr) => Some(Fetch::Mem(*addr)),
            _ => None,
        }
    }

    /// Whether this reads memory last (a dereference, `@ADDR`, `@SYM`, or a member chain).
    pub fn is_memory(&self) -> bool {
        matches!(
            self,
            FetchArg::Deref { .. }
                | FetchArg::Mem(_)
                | FetchArg::Symbol { .. }
                | FetchArg::Member { .. }
        )
    }

    /// Whether BTF must resolve this (an argument by name, a member chain, `$arg*`,
    /// anywhere in the tree).
    pub fn needs_btf(&self) -> bool {
        match self {
            FetchArg::Var(_) | FetchArg::Member { .. } | FetchArg::AllArgs => true,
            FetchArg::Deref { inner, .. } => inner.needs_btf(),
            _ => false,
        }
    }
}

impl fmt::Display for FetchArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchArg::Reg(r) => write!(f, "{r}"),
            FetchArg::StackAddr => f.write_str("$stack"),
            FetchArg::Stack(n) => write!(f, "$stack{n}"),
            FetchArg::Retval => f.write_str("$retval"),
            FetchArg::Comm => f.write_str("$comm"),
            FetchArg::Arg(n) => write!(f, "$arg{n}"),
            FetchArg::AllArgs => f.write_str("$arg*"),
            FetchArg::Mem(a) => write!(f, "@{a:#x}"),
            FetchArg::Symbol { name, offset } => {
                write!(f, "@{name}")?;
                match offset {
                    0 => Ok(()),
                    o if *o < 0 => write!(f, "{}", short_signed(*o)),
                    o => write!(f, "+{}", short_signed(*o)),
                }
            }
            FetchArg::Deref {
                offset,
                user,
                inner,
            } => {
                let sign = if *offset < 0 { '-' } else { '+' };
                let u = if *user { "u" } else { "" };
                let mag = short_number(u64::from(offset.unsigned_abs()));
                write!(f, "{sign}{u}{mag}({inner})")
            }
            FetchArg::Imm(v) => {
                // Negative-looking values as written with a sign: the same u64 either way.
                let s = i64::from_ne_bytes(v.to_ne_bytes());
                if s < 0 {
                    write!(f, "\\{}", short_signed(s))
                } else {
                    write!(f, "\\{}", short_number(*v))
                }
            }
            FetchArg::ImmStr(s) => write!(f, "\\\"{s}\""),
            FetchArg::Var(name) => f.write_str(name),
            FetchArg::Member { base, path } => {
                write!(f, "{base}")?;
                for m in path {
                    let op = match m.op {
                        MemberOp::Arrow => "->",
                        MemberOp::Dot => ".",
                    };
                    write!(f, "{op}{}", m.name)?;
                }
                Ok(())
            }
        }
    }
}

/// Signedness and print style of an integer type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntKind {
    /// `uN`: unsigned, printed in decimal.
    Unsigned,
    /// `sN`: signed, printed in decimal.
    Signed,
    /// `xN`: unsigned, printed in hex.
    Hex,
}

/// A fetch argument's base type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BaseType {
    /// `u8`..`u64`, `s8`..`s64`, `x8`..`x64`.
    Int {
        /// Signedness and print style.
        kind: IntKind,
        /// 8, 16, 32 or 64.
        bits: u8,
    },
    /// `char`: a byte shown as a character.
    Char,
    /// `string`: a NUL-terminated kernel string.
    String,
    /// `ustring`: a NUL-terminated user-space string.
    Ustring,
    /// `symbol`: a pointer shown as `symbol+offset`.
    Symbol,
    /// `symstr`: a pointer stored as the string `symbol+offset/size`.
    Symstr,
    /// `%pd`: the name of the `struct dentry` at the value.
    Dentry,
    /// `%pD`: the name of the `struct file` at the value.
    File,
    /// `b<width>@<offset>/<container>`: a bitfield in a container of 8, 16, 32 or 64 bits.
    Bitfield {
        /// Width in bits (>= 1).
        width: u8,
        /// Offset in bits from the container's least significant bit.
        offset: u8,
        /// Container size in bits.
        container: u8,
    },
}

impl BaseType {
    /// Whether it stores a string (`string`, `ustring`, `symstr`).
    pub fn is_string(self) -> bool {
        matches!(
            self,
            BaseType::String | BaseType::Ustring | BaseType::Symstr
        )
    }
}

impl fmt::Display for BaseType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BaseType::Int { kind, bits } => {
                let p = match kind {
                    IntKind::Unsigned => 'u',
                    IntKind::Signed => 's',
                    IntKind::Hex => 'x',
                };
                write!(f, "{p}{bits}")
            }
            BaseType::Char => f.write_str("char"),
            BaseType::String => f.write_str("string"),
            BaseType::Ustring => f.write_str("ustring"),
            BaseType::Symbol => f.write_str("symbol"),
            BaseType::Symstr => f.write_str("symstr"),
            BaseType::Dentry => f.write_str("%pd"),
            BaseType::File => f.write_str("%pD"),
            BaseType::Bitfield {
                width,
                offset,
                container,
            } => write!(f, "b{width}@{offset}/{container}"),
        }
    }
}

/// `:TYPE` or `:TYPE[N]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArgType {
    /// The element type.
    pub base: BaseType,
    /// `[N]`: an array of N (1..=64) elements.
    pub array: Option<u32>,
}

impl fmt::Display for ArgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.base)?;
        if let Some(n) = self.array {
            write!(f, "[{n}]")?;
        }
        Ok(())
    }
}

/// An internal parse failure: the kind and the byte offset in the whole line.
pub(crate) type Fail = (K, usize);

/// What the probe point allows.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ArgContext {
    /// A return probe: `$retval` is allowed.
    pub is_return: bool,
    /// Function entry (or return): `$argN`, `$arg*` and arguments by name are allowed.
    /// For an address probe this is assumed (only symbols tell).
    pub at_entry: bool,
}

/// Parses `:TYPE[N]` (`text` after the colon, at byte `at` of the line).
pub(crate) fn parse_type(text: &str, at: usize) -> Result<ArgType, Fail> {
    let (name, array) = match text.find('[') {
        None => (text, None),
        Some(open) => {
            let rest = &text[open + 1..];
            let Some(close) = rest.find(']') else {
                return Err((K::ArrayNoClose, at + text.len()));
            };
            if close + 1 != rest.len() {
                return Err((K::BadArraySuffix, at + open + 1 + close + 1));
            }
            let num = &rest[..close];
            let n = match parse_ulong(num).and_then(|n| u32::try_from(n).ok()) {
                Some(n) if n > 0 => n,
                _ => return Err((K::BadArrayNum, at + open + 1)),
            };
            if n > MAX_ARRAY_LEN {
                return Err((K::ArrayTooBig, at + open + 1));
            }
            (&text[..open], Some(n))
        }
    };
    let base = parse_base_type(name, at)?;
    Ok(ArgType { base, array })
}

fn parse_base_type(name: &str, at: usize) -> Result<BaseType, Fail> {
    let int = |kind, bits: &str| match bits {
        "8" => Some(BaseType::Int { kind, bits: 8 }),
        "16" => Some(BaseType::Int { kind, bits: 16 }),
        "32" => Some(BaseType::Int { kind, bits: 32 }),
        "64" => Some(BaseType::Int { kind, bits: 64 }),
        _ => None,
    };
    let simple = match name {
        "char" => Some(BaseType::Char),
        "string" => Some(BaseType::String),
        "ustring" => Some(BaseType::Ustring),
        "symbol" => Some(BaseType::Symbol),
        "symstr" => Some(BaseType::Symstr),
        "%pd" => Some(BaseType::Dentry),
        "%pD" => Some(BaseType::File),
        _ => match name.as_bytes().first() {
            Some(b'u') => int(IntKind::Unsigned, &name[1..]),
            Some(b's') => int(IntKind::Signed, &name[1..]),
            Some(b'x') => int(IntKind::Hex, &name[1..]),
            _ => None,
        },
    };
    if let Some(t) = simple {
        return Ok(t);
    }
    if let Some(bf) = name.strip_prefix('b') {
        return parse_bitfield(bf, at);
    }
    Err((K::BadType, at))
}

/// `<width>@<offset>/<container>` (after the `b`).
fn parse_bitfield(bf: &str, at: usize) -> Result<BaseType, Fail> {
    // The container is looked up as a type first, as the kernel does: a bad one is an
    // unknown type, the rest is a bad bitfield.
    let Some((spec, container)) = bf.split_once('/') else {
        return Err((K::BadType, at));
    };
    let container: u8 = match container {
        "8" => 8,
        "16" => 16,
        "32" => 32,
        "64" => 64,
        _ => return Err((K::BadType, at)),
    };
    let bad = (K::BadBitfield, at);
    let (width, offset) = spec.split_once('@').ok_or(bad)?;
    let width = parse_ulong(width).ok_or(bad)?;
    let offset = parse_ulong(offset).ok_or(bad)?;
    if width == 0 || width.saturating_add(offset) > u64::from(container) {
        return Err(bad);
    }
    // Both fit: width + offset <= 64.
    let (Ok(width), Ok(offset)) = (u8::try_from(width), u8::try_from(offset)) else {
        return Err(bad);
    };
    Ok(BaseType::Bitfield {
        width,
        offset,
        container,
    })
}

/// Parses a fetch argument's expression (no name, no type) at byte `at` of the line.
pub(crate) fn parse_fetch(text: &str, at: usize, ctx: ArgContext) -> Result<FetchArg, Fail> {
    parse_expr(text, at, ctx, 0)
}

fn parse_expr(text: &str, at: usize, ctx: ArgContext, depth: usize) -> Result<FetchArg, Fail> {
    let Some(&first) = text.as_bytes().first() else {
        return Err((K::BadFetchArg, at));
    };
    match first {
        b'$' => parse_var(text, at, ctx),
        b'%' => Reg::from_name(&text[1..])
            .map(FetchArg::Reg)
            .ok_or((K::BadRegName, at)),
        b'@' => parse_at(text, at),
        b'+' | b'-' => parse_deref(text, at, ctx, depth),
        b'\\' => parse_imm(text, at),
        b if b.is_ascii_alphabetic() || b == b'_' => {
            if !ctx.at_entry {
                return Err((K::NosupBtfArg, at));
            }
            let (name, rest) = split_ident(text);
            parse_members(FetchArg::Var(name.to_owned()), rest, at + name.len())
        }
        _ => Err((K::BadFetchArg, at)),
    }
}

/// The leading C identifier of `s` and the rest.
fn split_ident(s: &str) -> (&str, &str) {
    let end = s
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || b == b'_'))
        .unwrap_or(s.len());
    s.split_at(end)
}

/// `->a.b->c` after a base (`rest` at byte `at`).
fn parse_members(base: FetchArg, mut rest: &str, mut at: usize) -> Result<FetchArg, Fail> {
    if rest.is_empty() {
        return Ok(base);
    }
    let mut path = Vec::new();
    while !rest.is_empty() {
        let (op, len) = if rest.starts_with("->") {
            (MemberOp::Arrow, 2)
        } else if rest.starts_with('.') {
            if path.is_empty() {
                return Err((K::NosupDatArg, at));
            }
            (MemberOp::Dot, 1)
        } else if rest.starts_with('-') {
            return Err((K::BadHyphen, at));
        } else {
            return Err((K::BadMember, at));
        };
        let (name, tail) = split_ident(&rest[len..]);
        if !is_good_name(name) {
            return Err((K::BadMember, at + len));
        }
        if path.len() == MAX_DEREF_DEPTH {
            return Err((K::TooManyOps, at));
        }
        path.push(Member {
            op,
            name: name.to_owned(),
        });
        at += len + name.len();
        rest = tail;
    }
    Ok(FetchArg::Member {
        base: Box::new(base),
        path,
    })
}

fn parse_var(text: &str, at: usize, ctx: ArgContext) -> Result<FetchArg, Fail> {
    let var = &text[1..];
    if let Some(rest) = var.strip_prefix("retval") {
        if !ctx.is_return {
            return Err((K::RetvalOnProbe, at));
        }
        if rest.is_empty() {
            return Ok(FetchArg::Retval);
        }
        if rest.starts_with("->") || rest.starts_with('.') || rest.starts_with('-') {
            return parse_members(FetchArg::Retval, rest, at + 7);
        }
        return Err((K::BadVar, at));
    }
    if let Some(rest) = var.strip_prefix("stack") {
        if rest.is_empty() {
            return Ok(FetchArg::StackAddr);
        }
        if !rest.as_bytes()[0].is_ascii_digit() {
            return Err((K::BadVar, at));
        }
        let n = parse_decimal(rest).ok_or((K::BadVar, at))?;
        if n > MAX_STACK_PARAM {
            return Err((K::BadStackNum, at));
        }
        return u32::try_from(n)
            .map(FetchArg::Stack)
            .map_err(|_| (K::BadStackNum, at));
    }
    if var == "comm" || var == "COMM" {
        return Ok(FetchArg::Comm);
    }
    if let Some(rest) = var.strip_prefix("arg") {
        let n = parse_decimal(rest).ok_or((K::BadVar, at))?;
        if n == 0 || n > MAX_STACK_PARAM {
            return Err((K::BadArgNum, at));
        }
        if !ctx.at_entry {
            return Err((K::NofentryArgs, at));
        }
        return u32::try_from(n)
            .map(FetchArg::Arg)
            .map_err(|_| (K::BadArgNum, at));
    }
    Err((K::BadVar, at))
}

fn parse_at(text: &str, at: usize) -> Result<FetchArg, Fail> {
    let rest = &text[1..];
    match rest.as_bytes().first() {
        Some(b) if b.is_ascii_digit() => parse_ulong(rest)
            .map(FetchArg::Mem)
            .ok_or((K::BadMemAddr, at)),
        Some(b'+') => Err((K::FileOnKprobe, at)),
        _ => {
            let (name, offset) = match rest.find(['+', '-']) {
                None => (rest, 0),
                Some(i) => (
                    &rest[..i],
                    parse_long(&rest[i..]).ok_or((K::BadMemAddr, at + 1 + i))?,
                ),
            };
            if !is_symbol_name(name) {
                return Err((K::BadMemAddr, at));
            }
            Ok(FetchArg::Symbol {
                name: name.to_owned(),
                offset,
            })
        }
    }
}

/// A kernel symbol's name as written: letters, digits, `_` and `.` (`foo.isra.0`), not
/// starting with a digit, at most 512 bytes (`KSYM_NAME_LEN`).
pub(crate) fn is_symbol_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 512
        && !b[0].is_ascii_digit()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'.')
}

fn parse_deref(text: &str, at: usize, ctx: ArgContext, depth: usize) -> Result<FetchArg, Fail> {
    if depth >= MAX_DEREF_DEPTH {
        return Err((K::TooManyOps, at));
    }
    let negative = text.starts_with('-');
    let user = text.as_bytes().get(1) == Some(&b'u');
    let num_start = if user { 2 } else { 1 };
    let Some(open) = text.find('(') else {
        return Err((K::DerefNeedBrace, at));
    };
    if open < num_start {
        return Err((K::BadDerefOffs, at));
    }
    let digits = &text[num_start..open];
    let magnitude = parse_ulong(digits)
        .filter(|_| !digits.starts_with('+'))
        .ok_or((K::BadDerefOffs, at))?;
    let offset = if negative {
        i64::try_from(magnitude).map(|m| -m).ok()
    } else {
        i64::try_from(magnitude).ok()
    }
    .and_then(|o| i32::try_from(o).ok())
    .ok_or((K::BadDerefOffs, at))?;
    let inner_start = open + 1;
    let Some(close) = text.rfind(')').filter(|c| *c >= inner_start) else {
        return Err((K::DerefOpenBrace, at + text.len()));
    };
    if close + 1 != text.len() {
        return Err((K::DerefTrailing, at + close + 1));
    }
    let inner_at = at + inner_start;
    let inner = parse_expr(&text[inner_start..close], inner_at, ctx, depth + 1)?;
    if matches!(inner, FetchArg::Comm | FetchArg::ImmStr(_)) {
        return Err((K::CommCantDeref, inner_at));
    }
    if matches!(inner, FetchArg::AllArgs) {
        return Err((K::BadVar, inner_at));
    }
    Ok(FetchArg::Deref {
        offset,
        user,
        inner: Box::new(inner),
    })
}

fn parse_imm(text: &str, at: usize) -> Result<FetchArg, Fail> {
    let rest = &text[1..];
    if let Some(s) = rest.strip_prefix('"') {
        return match s.strip_suffix('"') {
            Some(body) => Ok(FetchArg::ImmStr(body.to_owned())),
            None => Err((K::ImmstrNoClose, at + text.len())),
        };
    }
    let v = match rest.as_bytes().first() {
        Some(b) if b.is_ascii_digit() => parse_ulong(rest),
        Some(b'-') => parse_long(rest).map(as_unsigned),
        Some(b'+') => parse_long(&rest[1..])
            .filter(|_| !rest[1..].starts_with(['+', '-']))
            .map(as_unsigned),
        _ => None,
    };
    v.map(FetchArg::Imm).ok_or((K::BadImm, at + 1))
}

/// The two's complement bits of `v`.
fn as_unsigned(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

/// Checks a type against what its fetch stores, as the kernel's `finalize_fetch_insn` does
/// (`ty_at`: the type's byte offset in the line).
pub(crate) fn check_type(fetch: &FetchArg, ty: &ArgType, ty_at: usize) -> Result<(), Fail> {
    let btf = matches!(fetch, FetchArg::Var(_) | FetchArg::Member { .. });
    let base = ty.base;
    if matches!(base, BaseType::String | BaseType::Ustring) {
        let ok = fetch.is_memory()
            || btf
            || matches!(
                fetch,
                FetchArg::Imm(_) | FetchArg::Comm | FetchArg::ImmStr(_)
            );
        if !ok {
            return Err((K::BadString, ty_at));
        }
    }
    if base == BaseType::Symstr {
        let ok = fetch.is_memory()
            || btf
            || matches!(
                fetch,
                FetchArg::Reg(_) | FetchArg::Stack(_) | FetchArg::Retval | FetchArg::Arg(_)
            );
        if !ok {
            return Err((K::BadSymstring, ty_at));
        }
    }
    if ty.array.is_some() {
        let ok = match base {
            BaseType::Symstr => false,
            BaseType::String | BaseType::Ustring => {
                fetch.is_memory() || matches!(fetch, FetchArg::Imm(_))
            }
            _ => fetch.is_memory(),
        };
        if !ok {
            return Err((K::ArrayNotMemory, ty_at));
        }
    }
    Ok(())
}
