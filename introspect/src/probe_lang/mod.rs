//! Probe definitions and conditions in Linux's own languages, parsed by hand.
//!
//! - [`kprobe`]: `kprobe_events` definitions (`Documentation/trace/kprobetrace.rst`):
//!   `p[:[GRP/]EVENT] [MOD:]SYM[+offs]|ADDR [FETCHARGS]`,
//!   `r[MAXACTIVE][:[GRP/]EVENT] [MOD:]SYM[+0] [FETCHARGS]` and `SYM%return`, into a
//!   [`ProbeDef`] whose `Display` is the canonical form the kernel shows in `kprobe_events`.
//! - [`fetch`]: one fetch argument (`%di`, `+8(%si):string`, `$comm`, `@sym+8`,
//!   `file->f_path.dentry`, `b3@4/32`, `x16[4]`, ...) into a [`FetchArg`] tree and an
//!   [`ArgType`]. Arguments by name and `->`/`.` member chains are kept as names
//!   ([`FetchArg::Var`], [`FetchArg::Member`]): resolving them against BTF is the
//!   caller's job, by walking the tree.
//! - [`filter`]: ftrace event filter expressions (`Documentation/trace/events.rst`, "Event
//!   filtering"): `((sig >= 10 && sig < 15) || sig == 17) && comm != bash` into an
//!   [`Filter`] tree, checked against a schema of field kinds and evaluated over a
//!   [`filter::Record`] of named fields with ftrace's semantics.
//! - [`glob`]: the kernel's `glob_match` (`*`, `?`, `[...]`, `[!...]`, `\` escapes), which
//!   the filter's `~` operator uses.
//!
//! Everything here is pure and bounded: inputs are at most [`MAX_INPUT_LEN`] bytes, the
//! kernel's own limits apply (128 arguments, 63-byte argument bodies, 32-byte argument
//! names, 63-byte event and group names, a dereference depth of 12, arrays of at most 64
//! elements), filters nest at most [`filter::MAX_NESTING`] parentheses deep and hold at
//! most [`filter::MAX_PREDICATES`] predicates. No input makes a parser panic, recurse
//! without bound or allocate more than a small multiple of its length (the fuzz targets
//! `kprobe_def` and `event_filter` check this).
//!
//! Errors are one line each: what is wrong in the kernel's words where it has them, the
//! 1-based column and the offending token, and what would be valid. [`caret`] renders the
//! kernel's two-line `error_log` form (the input, then a `^` under the column).
//!
//! ```
//! use introspect::probe_lang::{Filter, ProbeDef};
//! let def: ProbeDef = "p:myprobe do_sys_open dfd=%ax filename=%dx flags=%cx mode=+4($stack)"
//!     .parse()
//!     .unwrap();
//! assert_eq!(def.event, "myprobe");
//! assert_eq!(
//!     def.to_string(),
//!     "p:kprobes/myprobe do_sys_open dfd=%ax filename=%dx flags=%cx mode=+4($stack)"
//! );
//! let filter: Filter = "common_pid == 0".parse().unwrap();
//! assert_eq!(filter.to_string(), "common_pid == 0");
//! ```

pub mod fetch;
pub mod filter;
pub mod glob;
pub mod kprobe;

#[cfg(test)]
mod corpus_tests;
#[cfg(test)]
mod fetch_tests;
#[cfg(test)]
mod filter_tests;
#[cfg(test)]
mod glob_tests;
#[cfg(test)]
mod kprobe_tests;

pub use fetch::{ArgType, BaseType, FetchArg, IntKind, MemberOp, Reg};
pub use filter::{Filter, FilterError, FilterErrorKind};
pub use kprobe::{ProbeArg, ProbeDef, ProbeError, ProbeErrorKind, ProbeKind, ProbeTarget};

/// The longest definition or filter accepted, in bytes. The kernel takes writes of one page
/// (4096 bytes); this is larger so that the canonical form of anything accepted (which names
/// every argument) parses again.
pub const MAX_INPUT_LEN: usize = 16 * 1024;

/// The 1-based column (in characters) of byte offset `pos` of `input`.
pub(crate) fn column(input: &str, pos: usize) -> usize {
    let pos = pos.min(input.len());
    let mut end = pos;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    input[..end].chars().count() + 1
}

/// The kernel's two-line error form: `input` on the first line and a `^` under the
/// 1-based `column` on the second (tabs kept so the caret lines up).
///
/// ```
/// let line = "p:x do_sys_open %zz";
/// let err = line.parse::<introspect::probe_lang::ProbeDef>().unwrap_err();
/// assert_eq!(
///     introspect::probe_lang::caret(line, err.column),
///     "p:x do_sys_open %zz\n                ^"
/// );
/// ```
pub fn caret(input: &str, column: usize) -> String {
    let mut pad = String::new();
    for c in input.chars().take(column.saturating_sub(1)) {
        pad.push(if c == '\t' { '\t' } else { ' ' });
    }
    format!("{input}\n{pad}^")
}

/// The kernel's `isspace` (space, `\t`, `\n`, `\v`, `\f`, `\r`).
pub(crate) fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// The kernel's `is_good_name`: a C identifier.
pub(crate) fn is_good_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The kernel's `kstrtoul(s, 0)`: an optional `+`, then `0x`/`0X` hex, `0` octal or
/// decimal, the whole string, within u64.
pub(crate) fn parse_ulong(s: &str) -> Option<u64> {
    let s = s.strip_prefix('+').unwrap_or(s);
    let b = s.as_bytes();
    let (radix, digits) =
        if b.len() >= 3 && b[0] == b'0' && (b[1] | 0x20) == b'x' && b[2].is_ascii_hexdigit() {
            (16, &s[2..])
        } else if b.len() >= 2 && b[0] == b'0' {
            (8, &s[1..])
        } else {
            (10, s)
        };
    if digits.is_empty() || !digits.bytes().all(|d| (d as char).is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// The kernel's `kstrtol(s, 0)`: an optional `-` (or `+`), then as [`parse_ulong`], within
/// i64.
pub(crate) fn parse_long(s: &str) -> Option<i64> {
    if let Some(rest) = s.strip_prefix('-') {
        if rest.starts_with(['+', '-']) {
            return None;
        }
        let v = parse_ulong(rest)?;
        if v > 1u64 << 63 {
            return None;
        }
        Some(0i64.wrapping_sub_unsigned(v))
    } else {
        i64::try_from(parse_ulong(s)?).ok()
    }
}

/// The kernel's `kstrtoul(s, 10)`: decimal digits only, within u64.
pub(crate) fn parse_decimal(s: &str) -> Option<u64> {
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `v` in decimal, or in `0x` hex where that is shorter (so a canonical form is never longer
/// than any way of writing the number).
pub(crate) fn short_number(v: u64) -> String {
    let dec = v.to_string();
    let hex = format!("{v:#x}");
    if hex.len() < dec.len() { hex } else { dec }
}

/// `v` with its sign: `-` and the magnitude for a negative, else the magnitude alone
/// ([`short_number`] each).
pub(crate) fn short_signed(v: i64) -> String {
    if v < 0 {
        format!("-{}", short_number(v.unsigned_abs()))
    } else {
        short_number(v.unsigned_abs())
    }
}

/// At most `max` characters of `s`, with `...` when cut.
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max).collect();
        out.push_str("...");
        out
    }
}

/// The whitespace-separated word covering (or ending at) byte `pos` of `line`, at most 40
/// characters, or `end of line`.
pub(crate) fn word_at(line: &str, pos: usize) -> String {
    let b = line.as_bytes();
    let mut start = pos.min(b.len());
    while start > 0 && !is_space(b[start - 1]) {
        start -= 1;
    }
    let mut end = pos.min(b.len());
    while end < b.len() && !is_space(b[end]) {
        end += 1;
    }
    // `start` and `end` border ASCII whitespace or the line's ends: char boundaries.
    match line.get(start..end) {
        Some("") | None => "end of line".to_owned(),
        Some(w) => clip(w, 40),
    }
}
