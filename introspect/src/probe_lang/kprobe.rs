//! kprobe_events definitions (`Documentation/trace/kprobetrace.rst`).
//!
//! ```text
//! p[:[GRP/][EVENT]] [MOD:]SYM[+offs]|MEMADDR [FETCHARGS]      a probe
//! r[MAXACTIVE][:[GRP/][EVENT]] [MOD:]SYM[+0] [FETCHARGS]      a return probe
//! p[:[GRP/][EVENT]] [MOD:]SYM[+0]%return [FETCHARGS]          a return probe
//! ```
//!
//! Parsing fills in what the kernel fills in: the group `kprobes`, the event name
//! `p_<sym>_<offs>` / `r_<sym>_<offs>` / `p_0x<addr>` (with `:` and `.` made `_`), and each
//! unnamed argument's name (its own text when that is a C identifier, as BTF arguments are,
//! else `arg<N>`). So `Display` prints the kernel's canonical form, the one it shows when
//! `kprobe_events` is read, and that form parses back to an equal [`ProbeDef`].

use std::fmt;
use std::str::FromStr;

use super::fetch::{self, ArgContext, ArgType, BaseType, Fail, FetchArg};
use super::{MAX_INPUT_LEN, column, is_good_name, is_space, parse_long, parse_ulong, word_at};

/// Most fetch arguments in one definition: the kernel's `MAX_TRACE_ARGS`.
pub const MAX_TRACE_ARGS: usize = 128;
/// Longest argument expression (with its `:TYPE`), in bytes: the kernel's `MAX_ARGSTR_LEN`.
pub const MAX_ARGSTR_LEN: usize = 63;
/// Longest argument name, in bytes: the kernel's `MAX_ARG_NAME_LEN`.
pub const MAX_ARG_NAME_LEN: usize = 32;
/// Longest event or group name, in bytes (the kernel's `MAX_EVENT_NAME_LEN` less the NUL).
pub const MAX_EVENT_NAME_LEN: usize = 63;
/// Largest `r<MAXACTIVE>`: the kernel's `KRETPROBE_MAXACTIVE_MAX`.
pub const MAX_MAXACTIVE: u32 = 4096;
/// The group of a definition that names none.
pub const DEFAULT_GROUP: &str = "kprobes";

/// Field names an argument may not take: the event's common fields and the probe's own.
const RESERVED_NAMES: [&str; 8] = [
    "common_type",
    "common_flags",
    "common_preempt_count",
    "common_pid",
    "common_tgid",
    "__probe_ip",
    "__probe_ret_ip",
    "__probe_func",
];

/// Why a definition was refused. The messages start with the kernel's own (from
/// `trace_probe.h`'s error list) where it has one, and say what would be valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)]
pub enum ProbeErrorKind {
    #[error(
        "empty definition: expected p[:[GRP/]EVENT] SYM[+offs]|ADDR [FETCHARGS] or \
         r[MAXACTIVE][:[GRP/]EVENT] SYM[+0] [FETCHARGS]"
    )]
    Empty,
    #[error("definition is longer than {MAX_INPUT_LEN} bytes")]
    TooLong,
    #[error(
        "unknown probe type: expected p (kprobe) or r[MAXACTIVE] (kretprobe), then an optional \
         :[GRP/]EVENT"
    )]
    BadCommand,
    #[error("Maxactive is not for kprobe: only r takes a MAXACTIVE (r16:EVENT)")]
    MaxactNoKprobe,
    #[error("Invalid maxactive number: expected r<N> with N from 1 to {MAX_MAXACTIVE}")]
    BadMaxact,
    #[error("Maxactive is too big: at most {MAX_MAXACTIVE}")]
    MaxactTooBig,
    #[error("Group name is not specified: expected :GRP/EVENT or :EVENT")]
    NoGroupName,
    #[error("Group name is too long: at most {MAX_EVENT_NAME_LEN} bytes")]
    GroupTooLong,
    #[error("Group name must follow the same rules as C identifiers ([A-Za-z_][A-Za-z0-9_]*)")]
    BadGroupName,
    #[error("Event name is not specified: expected :EVENT, :GRP/EVENT, :GRP/ or no colon")]
    NoEventName,
    #[error("Event name is too long: at most {MAX_EVENT_NAME_LEN} bytes")]
    EventTooLong,
    #[error("Event name must follow the same rules as C identifiers ([A-Za-z_][A-Za-z0-9_]*)")]
    BadEventName,
    #[error("no probe point: expected SYM[+offs], MOD:SYM[+offs] or an address after the type")]
    NoProbePoint,
    #[error(
        "Invalid probed address or symbol: expected SYM[+offs] (offs from 0 to 4294967295), \
         MOD:SYM[+offs] or an address (0x...)"
    )]
    BadProbeAddr,
    #[error("Invalid probed address suffix: only %return is allowed")]
    BadAddrSuffix,
    #[error("Retprobe address must be a function entry: use SYM or SYM+0")]
    BadRetprobe,
    #[error("Too many arguments are specified: at most {MAX_TRACE_ARGS}")]
    TooManyArgs,
    #[error("Argument name is too long: at most {MAX_ARG_NAME_LEN} bytes")]
    ArgNameTooLong,
    #[error("Argument name is not specified: expected NAME=FETCHARG or FETCHARG")]
    NoArgName,
    #[error("Argument name must follow the same rules as C identifiers ([A-Za-z_][A-Za-z0-9_]*)")]
    BadArgName,
    #[error(
        "This argument name is already used (or reserved: common_*, __probe_ip, \
         __probe_ret_ip, __probe_func): give it another NAME="
    )]
    UsedArgName,
    #[error("Argument expression is too long: at most {MAX_ARGSTR_LEN} bytes with its :TYPE")]
    ArgTooLong,
    #[error("No argument expression: expected NAME=FETCHARG")]
    NoArgBody,
    #[error("$arg* can be used only once")]
    DoubleArgs,
    #[error("$arg* stands alone: no NAME= and no :TYPE")]
    MetaArgAlone,
    #[error("$comm and immediate strings can only be of type string (and not an array)")]
    NeedStringType,
    #[error("$retval is not available on probe: only on return probes (r, or SYM%return)")]
    RetvalOnProbe,
    #[error("Invalid stack number: expected $stack or $stackN with N up to 2048")]
    BadStackNum,
    #[error("Invalid argument number: expected $argN with N from 1 to 2048")]
    BadArgNum,
    #[error("$argN can be used only on function entry or exit: probe SYM or SYM+0, or r")]
    NofentryArgs,
    #[error(
        "Invalid $-variable specified: expected $stack, $stackN, $argN, $arg*, $retval or $comm"
    )]
    BadVar,
    #[error(
        "Invalid register name: expected %ax %bx %cx %dx %si %di %bp %sp %r8..%r15 %ip %flags \
         %cs %ss %orig_ax (or %rax, %rip, %rflags...)"
    )]
    BadRegName,
    #[error("Invalid memory address: expected @ADDR (a number) or @SYM[+|-offs]")]
    BadMemAddr,
    #[error("File offset is not available with kprobe: expected @ADDR or @SYM[+|-offs]")]
    FileOnKprobe,
    #[error("Dereference is too much nested: at most 12 levels of +OFFS(...) or of members")]
    TooManyOps,
    #[error("Dereference needs a brace: expected +|-[u]OFFS(FETCHARG)")]
    DerefNeedBrace,
    #[error("Invalid dereference offset: expected +|-[u]OFFS( with OFFS a number within 32 bits")]
    BadDerefOffs,
    #[error("Dereference brace is not closed: expected +|-[u]OFFS(FETCHARG)")]
    DerefOpenBrace,
    #[error("text after a dereference's closing brace: expected +|-[u]OFFS(FETCHARG)[:TYPE]")]
    DerefTrailing,
    #[error("$comm can not be dereferenced (nor can an immediate string)")]
    CommCantDeref,
    #[error(
        "Invalid fetch argument: expected %REG, @ADDR, @SYM[+|-offs], $stack[N], $argN, \
         $retval, $comm, +|-[u]OFFS(FETCHARG), \\IMM, \\\"STRING\" or an argument name"
    )]
    BadFetchArg,
    #[error("Invalid immediate value: expected \\NUMBER (decimal, 0x hex, -N) or \\\"STRING\"")]
    BadImm,
    #[error("String is not closed with '\"': expected \\\"STRING\" (no spaces)")]
    ImmstrNoClose,
    #[error(
        "arguments by name need BTF at a function entry or exit: probe SYM or SYM+0 (or r), \
         or use %REG or $argN"
    )]
    NosupBtfArg,
    #[error("Dot-connected field on an argument is not supported: start with -> (arg->a.b)")]
    NosupDatArg,
    #[error("Failed to parse single hyphen. Forgot '>'? (expected ->member)")]
    BadHyphen,
    #[error("Invalid member access: expected ->NAME or .NAME with C identifiers")]
    BadMember,
    #[error("Array is not closed: expected TYPE[N]")]
    ArrayNoClose,
    #[error("Array has wrong suffix: nothing may follow TYPE[N]")]
    BadArraySuffix,
    #[error("Invalid array size: expected TYPE[N] with N from 1 to 64")]
    BadArrayNum,
    #[error("Array number is too big: at most 64")]
    ArrayTooBig,
    #[error(
        "Unknown type is specified: expected u8/u16/u32/u64, s8..s64, x8..x64, char, string, \
         ustring, symbol, symstr, %pd, %pD or b<width>@<offset>/<8|16|32|64>, then an optional [N]"
    )]
    BadType,
    #[error(
        "String accepts only memory argument: use +0(FETCHARG):string, @ADDR, @SYM, $comm or \
         an argument name"
    )]
    BadString,
    #[error("symstr needs a register, $stackN, $argN, $retval or memory")]
    BadSymstring,
    #[error(
        "an array type needs a memory fetch (+OFFS(FETCHARG), @ADDR, @SYM), not a register or \
         $-variable"
    )]
    ArrayNotMemory,
    #[error(
        "Invalid bitfield: expected b<width>@<offset>/<container> with width >= 1 and \
         width + offset <= container"
    )]
    BadBitfield,
}

/// A refused definition: what, where (byte offset and 1-based column) and the word there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column} (`{token}`): {kind}")]
pub struct ProbeError {
    /// What is wrong.
    pub kind: ProbeErrorKind,
    /// Byte offset in the definition.
    pub pos: usize,
    /// 1-based column (in characters) of `pos`.
    pub column: usize,
    /// The word at `pos` (at most 40 characters), or `end of line`.
    pub token: String,
}

impl ProbeError {
    fn at(line: &str, (kind, pos): Fail) -> ProbeError {
        let pos = pos.min(line.len());
        ProbeError {
            kind,
            pos,
            column: column(line, pos),
            token: word_at(line, pos),
        }
    }
}

/// Entry probe or return probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// `p`: a kprobe.
    Kprobe,
    /// `r` (or `p ... SYM%return`): a kretprobe.
    Kretprobe {
        /// `r<MAXACTIVE>`: how many instances may be probed at once; 0 for the default.
        maxactive: u32,
    },
}

/// Where a probe goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProbeTarget {
    /// `[MOD:]SYM[+offs]`.
    Symbol {
        /// `MOD:`: the module that has the symbol.
        module: Option<String>,
        /// The symbol.
        name: String,
        /// Bytes from the symbol's start.
        offset: u32,
    },
    /// `MEMADDR`.
    Address(u64),
}

impl ProbeTarget {
    /// `SYM`, `SYM+0x10` or `0xADDR`: the form `SymbolTable::resolve` and
    /// `session::ProbeRequest::at` take (a module prefix is dropped).
    pub fn location(&self) -> String {
        match self {
            ProbeTarget::Symbol { name, offset, .. } if *offset == 0 => name.clone(),
            ProbeTarget::Symbol { name, offset, .. } => format!("{name}+{offset:#x}"),
            ProbeTarget::Address(a) => format!("{a:#x}"),
        }
    }
}

impl fmt::Display for ProbeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeTarget::Symbol {
                module,
                name,
                offset,
            } => {
                if let Some(m) = module {
                    write!(f, "{m}:")?;
                }
                f.write_str(name)?;
                if *offset != 0 {
                    write!(f, "+{offset}")?;
                }
                Ok(())
            }
            ProbeTarget::Address(a) => write!(f, "{a:#x}"),
        }
    }
}

/// One fetch argument: `NAME=FETCHARG[:TYPE]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProbeArg {
    /// The field name: given, or the kernel's default. Empty for `$arg*`, whose expansion
    /// is named after the function's parameters.
    pub name: String,
    /// What is fetched.
    pub fetch: FetchArg,
    /// `:TYPE`; without one the kernel uses x64 (or, with BTF, the argument's own type).
    pub ty: Option<ArgType>,
}

impl fmt::Display for ProbeArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.fetch == FetchArg::AllArgs {
            return write!(f, "{}", self.fetch);
        }
        // A name longer than `NAME=` allows can only be the kernel's default, the variable's
        // own name: written without `NAME=`, it is given again.
        if self.name.len() > MAX_ARG_NAME_LEN {
            if let FetchArg::Var(v) = &self.fetch {
                if *v == self.name {
                    write!(f, "{}", self.fetch)?;
                    if let Some(t) = &self.ty {
                        write!(f, ":{t}")?;
                    }
                    return Ok(());
                }
            }
        }
        write!(f, "{}={}", self.name, self.fetch)?;
        if let Some(t) = &self.ty {
            write!(f, ":{t}")?;
        }
        Ok(())
    }
}

/// A parsed kprobe_events definition, defaults filled in.
///
/// ```
/// use introspect::probe_lang::{FetchArg, ProbeDef, ProbeKind, Reg};
/// let def = ProbeDef::parse("r:myretprobe do_sys_open $retval").unwrap();
/// assert_eq!(def.kind, ProbeKind::Kretprobe { maxactive: 0 });
/// assert_eq!(def.args[0].name, "arg1");
/// assert_eq!(def.args[0].fetch, FetchArg::Retval);
/// assert_eq!(def.to_string(), "r:kprobes/myretprobe do_sys_open arg1=$retval");
///
/// let def = ProbeDef::parse("p vfs_read+8 %di").unwrap();
/// assert_eq!((def.group.as_str(), def.event.as_str()), ("kprobes", "p_vfs_read_8"));
/// assert_eq!(def.args[0].fetch, FetchArg::Reg(Reg::Di));
///
/// let err = ProbeDef::parse("p:myprobe do_sys_open $retval").unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "column 23 (`$retval`): $retval is not available on probe: only on return probes \
///      (r, or SYM%return)"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProbeDef {
    /// Kprobe or kretprobe.
    pub kind: ProbeKind,
    /// The event's group (`kprobes` unless given).
    pub group: String,
    /// The event's name (given, or made from the probe point).
    pub event: String,
    /// Where the probe goes.
    pub target: ProbeTarget,
    /// What each hit records, in order.
    pub args: Vec<ProbeArg>,
}

impl ProbeDef {
    /// Parses one definition (one line; words separated by whitespace).
    pub fn parse(line: &str) -> Result<ProbeDef, ProbeError> {
        parse_def(line).map_err(|f| ProbeError::at(line, f))
    }

    /// Whether it is a return probe.
    pub fn is_return(&self) -> bool {
        matches!(self.kind, ProbeKind::Kretprobe { .. })
    }

    /// Whether an argument needs BTF (arguments by name, member chains, `$arg*`).
    pub fn needs_btf(&self) -> bool {
        self.args.iter().any(|a| a.fetch.needs_btf())
    }
}

impl FromStr for ProbeDef {
    type Err = ProbeError;

    fn from_str(s: &str) -> Result<ProbeDef, ProbeError> {
        ProbeDef::parse(s)
    }
}

impl fmt::Display for ProbeDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ProbeKind::Kprobe => f.write_str("p")?,
            ProbeKind::Kretprobe { maxactive: 0 } => f.write_str("r")?,
            ProbeKind::Kretprobe { maxactive } => write!(f, "r{maxactive}")?,
        }
        write!(f, ":{}/{} {}", self.group, self.event, self.target)?;
        for a in &self.args {
            write!(f, " {a}")?;
        }
        Ok(())
    }
}

/// The words of `line` with their byte offsets.
fn words(line: &str) -> Vec<(usize, &str)> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if is_space(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_space(b[i]) {
            i += 1;
        }
        // Both ends border ASCII whitespace or the line's ends: char boundaries.
        if let Some(w) = line.get(start..i) {
            out.push((start, w));
        }
    }
    out
}

fn parse_def(line: &str) -> Result<ProbeDef, Fail> {
    use ProbeErrorKind as K;
    if line.len() > MAX_INPUT_LEN {
        return Err((K::TooLong, MAX_INPUT_LEN));
    }
    let words = words(line);
    let Some(&(head_at, head)) = words.first() else {
        return Err((K::Empty, 0));
    };
    let (mut kind, group, event) = parse_head(head, head_at)?;
    let Some(&(target_at, target_word)) = words.get(1) else {
        return Err((K::NoProbePoint, line.len()));
    };
    let (target, percent_return) = parse_target(target_word, target_at)?;
    if percent_return && kind == ProbeKind::Kprobe {
        kind = ProbeKind::Kretprobe { maxactive: 0 };
    }
    let is_return = matches!(kind, ProbeKind::Kretprobe { .. });
    let offset = match &target {
        ProbeTarget::Symbol { offset, .. } => Some(*offset),
        ProbeTarget::Address(_) => None,
    };
    if is_return && offset.is_some_and(|o| o != 0) {
        return Err((K::BadRetprobe, target_at));
    }
    let ctx = ArgContext {
        is_return,
        at_entry: is_return || offset.is_none_or(|o| o == 0),
    };
    let event = match event {
        Some(e) => e,
        None => default_event(is_return, &target),
    };
    let group = group.unwrap_or_else(|| DEFAULT_GROUP.to_owned());

    let arg_words = &words[2..];
    if arg_words.len() > MAX_TRACE_ARGS {
        return Err((K::TooManyArgs, arg_words[MAX_TRACE_ARGS].0));
    }
    let mut args: Vec<ProbeArg> = Vec::with_capacity(arg_words.len());
    let mut all_args = false;
    for (i, &(at, word)) in arg_words.iter().enumerate() {
        if word.contains("$arg*") {
            if word != "$arg*" {
                return Err((K::MetaArgAlone, at));
            }
            if !ctx.at_entry {
                return Err((K::NofentryArgs, at));
            }
            if all_args {
                return Err((K::DoubleArgs, at));
            }
            all_args = true;
            args.push(ProbeArg {
                name: String::new(),
                fetch: FetchArg::AllArgs,
                ty: None,
            });
            continue;
        }
        let arg = parse_arg(word, at, i, ctx)?;
        if RESERVED_NAMES.contains(&arg.name.as_str()) || args.iter().any(|a| a.name == arg.name) {
            return Err((K::UsedArgName, at));
        }
        args.push(arg);
    }
    Ok(ProbeDef {
        kind,
        group,
        event,
        target,
        args,
    })
}

/// `p`, `p:EVENT`, `r16:GRP/EVENT`, ...: the kind, the group and the event given.
fn parse_head(head: &str, at: usize) -> Result<(ProbeKind, Option<String>, Option<String>), Fail> {
    use ProbeErrorKind as K;
    let (type_part, name_part) = match head.split_once(':') {
        Some((t, n)) => (t, Some(n)),
        None => (head, None),
    };
    let kind = match type_part.as_bytes() {
        [b'p'] => ProbeKind::Kprobe,
        [b'r'] => ProbeKind::Kretprobe { maxactive: 0 },
        [b'p', d, ..] if d.is_ascii_digit() => return Err((K::MaxactNoKprobe, at + 1)),
        [b'r', d, ..] if d.is_ascii_digit() => {
            let n = parse_ulong(&type_part[1..]).ok_or((K::BadMaxact, at + 1))?;
            if n == 0 {
                return Err((K::BadMaxact, at + 1));
            }
            match u32::try_from(n) {
                Ok(m) if m <= MAX_MAXACTIVE => ProbeKind::Kretprobe { maxactive: m },
                _ => return Err((K::MaxactTooBig, at + 1)),
            }
        }
        _ => return Err((K::BadCommand, at)),
    };
    let Some(names) = name_part else {
        return Ok((kind, None, None));
    };
    let names_at = at + type_part.len() + 1;
    let (group, event) = match names.split_once('/') {
        Some((g, e)) => {
            if g.is_empty() {
                return Err((K::NoGroupName, names_at));
            }
            if g.len() > MAX_EVENT_NAME_LEN {
                return Err((K::GroupTooLong, names_at));
            }
            if !is_good_name(g) {
                return Err((K::BadGroupName, names_at));
            }
            (Some(g.to_owned()), e)
        }
        None => (None, names),
    };
    let event_at = at + head.len() - event.len();
    if event.is_empty() {
        if group.is_none() {
            return Err((K::NoEventName, event_at));
        }
        return Ok((kind, group, None));
    }
    if event.len() > MAX_EVENT_NAME_LEN {
        return Err((K::EventTooLong, event_at));
    }
    if !is_good_name(event) {
        return Err((K::BadEventName, event_at));
    }
    Ok((kind, group, Some(event.to_owned())))
}

/// `[MOD:]SYM[+offs][%return]` or `ADDR[%return]`.
fn parse_target(word: &str, at: usize) -> Result<(ProbeTarget, bool), Fail> {
    use ProbeErrorKind as K;
    let (spec, is_return) = match word.find('%') {
        Some(i) if &word[i..] == "%return" => (&word[..i], true),
        Some(i) => return Err((K::BadAddrSuffix, at + i)),
        None => (word, false),
    };
    let bad = (K::BadProbeAddr, at);
    if spec.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        return parse_ulong(spec)
            .map(|a| (ProbeTarget::Address(a), is_return))
            .ok_or(bad);
    }
    let (module, rest) = match spec.split_once(':') {
        Some((m, r)) => {
            if !is_good_name(m) || m.len() > 64 {
                return Err(bad);
            }
            (Some(m.to_owned()), r)
        }
        None => (None, spec),
    };
    let (name, offset) = match rest.find(['+', '-']) {
        None => (rest, 0),
        Some(i) => {
            let off = parse_long(&rest[i..]).ok_or(bad)?;
            (&rest[..i], u32::try_from(off).map_err(|_| bad)?)
        }
    };
    if !fetch::is_symbol_name(name) {
        return Err(bad);
    }
    let target = ProbeTarget::Symbol {
        module,
        name: name.to_owned(),
        offset,
    };
    Ok((target, is_return))
}

/// The kernel's event name for a definition without one: `p_<sym>_<offs>`, `r_...`,
/// `p_0x<addr>`, with `:` and `.` made `_`, cut to [`MAX_EVENT_NAME_LEN`] bytes.
fn default_event(is_return: bool, target: &ProbeTarget) -> String {
    let c = if is_return { 'r' } else { 'p' };
    let mut name = match target {
        ProbeTarget::Symbol {
            module,
            name,
            offset,
        } => match module {
            Some(m) => format!("{c}_{m}:{name}_{offset}"),
            None => format!("{c}_{name}_{offset}"),
        },
        ProbeTarget::Address(a) => format!("{c}_0x{a:016x}"),
    };
    name = name.replace([':', '.'], "_");
    // ASCII only (symbol names are): any byte is a boundary.
    name.truncate(MAX_EVENT_NAME_LEN);
    name
}

/// `[NAME=]FETCHARG[:TYPE]` (argument `index`, from 0).
fn parse_arg(word: &str, at: usize, index: usize, ctx: ArgContext) -> Result<ProbeArg, Fail> {
    use ProbeErrorKind as K;
    let (name, body, body_at) = match word.find('=') {
        Some(eq) => {
            let name = &word[..eq];
            if name.len() > MAX_ARG_NAME_LEN {
                return Err((K::ArgNameTooLong, at));
            }
            if name.is_empty() {
                return Err((K::NoArgName, at));
            }
            if !is_good_name(name) {
                return Err((K::BadArgName, at));
            }
            (Some(name), &word[eq + 1..], at + eq + 1)
        }
        None => (None, word, at),
    };
    if body.len() > MAX_ARGSTR_LEN {
        return Err((K::ArgTooLong, body_at));
    }
    if body.is_empty() {
        return Err((K::NoArgBody, body_at));
    }
    let (expr, ty_text) = match body.split_once(':') {
        Some((e, t)) => (e, Some(t)),
        None => (body, None),
    };
    let ty_at = body_at + expr.len() + 1;
    let ty = ty_text.map(|t| fetch::parse_type(t, ty_at)).transpose()?;
    let string_only = expr == "$comm" || expr == "$COMM" || expr.starts_with("\\\"");
    if string_only && ty.is_some_and(|t| t.array.is_some() || t.base != BaseType::String) {
        return Err((K::NeedStringType, ty_at));
    }
    let fetch = fetch::parse_fetch(expr, body_at, ctx)?;
    if let Some(t) = &ty {
        fetch::check_type(&fetch, t, ty_at)?;
    }
    let name = match name {
        Some(n) => n.to_owned(),
        None if is_good_name(expr) => expr.to_owned(),
        None => format!("arg{}", index + 1),
    };
    Ok(ProbeArg { name, fetch, ty })
}
