//! ftrace event filter expressions (`Documentation/trace/events.rst`, "Event filtering").
//!
//! ```text
//! field-name relational-operator value      a predicate
//! P && P, P || P, !P, (P)                    combined (&& binds tighter than ||)
//! ```
//!
//! Operators: `==`, `!=`, `<`, `<=`, `>`, `>=`, `&` (bits in common) for numbers; `==`,
//! `!=`, `~` (a [glob](super::glob), `!` first to negate it) for strings; `==`, `!=`, `&`
//! for `CPUS{cpulist}`. Values: numbers (decimal, `0x` hex, `0` octal, negative), strings
//! in `"..."` or `'...'` (no escapes, at most 255 bytes) or as one bare word (`comm != bash`),
//! `CPUS{0-3,8}`. Field suffixes: `.ustring` (the field points to a user-space string) and
//! `.function` (the field is an address; `== NAME` tests that it lies in function NAME).
//!
//! [`Filter::check`] checks the predicates against the fields' kinds (the kernel does that
//! while parsing, with the event's format at hand); [`Filter::eval`] decides a record.
//!
//! ```
//! use introspect::probe_lang::filter::{FieldKind, FieldValue, Filter};
//! let f: Filter = "((sig >= 10 && sig < 15) || sig == 17) && comm != bash".parse().unwrap();
//! f.check(|name| match name {
//!     "sig" => Some(FieldKind::Signed),
//!     "comm" => Some(FieldKind::String),
//!     _ => None,
//! })
//! .unwrap();
//! let record = [("sig", FieldValue::I64(11)), ("comm", FieldValue::Str(b"sh"))];
//! assert!(f.eval(&record[..]).unwrap());
//! let record = [("sig", FieldValue::I64(11)), ("comm", FieldValue::Str(b"bash"))];
//! assert!(!f.eval(&record[..]).unwrap());
//! ```

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use super::glob::glob_match;
use super::{MAX_INPUT_LEN, column, is_space, parse_long, parse_ulong, word_at};

/// Deepest nesting of parentheses.
pub const MAX_NESTING: usize = 64;
/// Most predicates in one filter.
pub const MAX_PREDICATES: usize = 1024;
/// Longest string value, in bytes (the kernel's `MAX_FILTER_STR_VAL` less the NUL).
pub const MAX_STRING_LEN: usize = 255;
/// CPU numbers in `CPUS{...}` are below this (the kernel's largest `NR_CPUS`).
pub const MAX_CPUS: u32 = 8192;
/// Most ranges in one `CPUS{...}`.
pub const MAX_CPU_RANGES: usize = 256;

/// Why a filter was refused (or failed [`Filter::check`]). Messages start with the kernel's
/// own (`trace_events_filter.c`) where it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)]
pub enum FilterErrorKind {
    #[error("No filter found: expected field OP value, e.g. common_pid == 1")]
    Empty,
    #[error("filter is longer than {MAX_INPUT_LEN} bytes")]
    TooLong,
    #[error("expected a field name (letters, digits, _)")]
    NoFieldName,
    #[error("unknown field suffix: expected .ustring or .function")]
    BadModifier,
    #[error("Invalid operator: expected ==, !=, <, <=, >, >=, & or ~")]
    InvalidOp,
    #[error("Too many '(': expected a ) for each (")]
    TooManyOpen,
    #[error("Too few '(': this ) has no (")]
    TooManyClose,
    #[error("parentheses nest too deep: at most {MAX_NESTING} levels")]
    TooDeep,
    #[error("Missing matching quote: expected a closing \" or '")]
    MissingQuote,
    #[error("Missing '}}': expected CPUS{{cpulist}}")]
    MissingBraceClose,
    #[error("Operand too long: strings are at most {MAX_STRING_LEN} bytes")]
    OperandTooLong,
    #[error("Invalid cpulist: expected CPUS{{N,N-M,...}} with CPUs below {MAX_CPUS}")]
    InvalidCpulist,
    #[error("Invalid value (did you forget quotes)?: expected a number, \"string\" or CPUS{{...}}")]
    InvalidValue,
    #[error(
        "Illegal integer value: expected decimal, 0x hex or 0 octal (negative for signed fields)"
    )]
    IllegalIntVal,
    #[error(
        "Illegal operation for field type: numbers take == != < <= > >= &, strings == != ~, \
         CPUS{{}} == != &, .function == !="
    )]
    IllegalFieldOp,
    #[error("Expecting string field: this field is a number, compare it with a number")]
    ExpectDigit,
    #[error("Expecting numeric field: this field is a string, compare it with \"string\"")]
    ExpectString,
    #[error(".function compares with a function's name: field.function == NAME")]
    ExpectFunction,
    #[error("Field not found")]
    FieldNotFound,
    #[error("Too many terms in predicate expression: at most {MAX_PREDICATES}")]
    TooManyPreds,
    #[error("expected && or || or ) after a predicate")]
    ExpectLogicalOp,
}

/// A refused filter: what, where (byte offset and 1-based column) and the word there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column} (`{token}`): {kind}")]
pub struct FilterError {
    /// What is wrong.
    pub kind: FilterErrorKind,
    /// Byte offset in the filter.
    pub pos: usize,
    /// 1-based column (in characters) of `pos`.
    pub column: usize,
    /// The word at `pos` (at most 40 characters), or `end of line`.
    pub token: String,
}

impl FilterError {
    fn at(input: &str, kind: FilterErrorKind, pos: usize) -> FilterError {
        let pos = pos.min(input.len());
        FilterError {
            kind,
            pos,
            column: column(input, pos),
            token: word_at(input, pos),
        }
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `&`: some bit in common (numbers), CPUs in common (`CPUS{}`).
    BitAnd,
    /// `~`: glob match (strings).
    Glob,
}

impl CmpOp {
    fn as_str(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::BitAnd => "&",
            CmpOp::Glob => "~",
        }
    }
}

/// A field suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldModifier {
    /// None.
    None,
    /// `.ustring`: the field points to a user-space string.
    Ustring,
    /// `.function`: the field is an address, compared with a function's extent.
    Function,
}

/// A set of CPUs: inclusive ranges, as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CpuList(pub Vec<(u32, u32)>);

impl CpuList {
    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: u64) -> bool {
        self.0
            .iter()
            .any(|&(a, b)| u64::from(a) <= cpu && cpu <= u64::from(b))
    }

    /// Whether the set is exactly `{cpu}`.
    pub fn is_only(&self, cpu: u64) -> bool {
        !self.0.is_empty()
            && self
                .0
                .iter()
                .all(|&(a, b)| u64::from(a) == cpu && u64::from(b) == cpu)
    }

    /// The set as a bitmap of [`MAX_CPUS`] bits (bit n of word n / 64).
    pub fn bitmap(&self) -> Vec<u64> {
        let mut words = vec![0u64; (MAX_CPUS / 64) as usize];
        for &(a, b) in &self.0 {
            for cpu in a..=b.min(MAX_CPUS - 1) {
                words[(cpu / 64) as usize] |= 1 << (cpu % 64);
            }
        }
        words
    }
}

impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CPUS{")?;
        for (i, &(a, b)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{b}")?;
            }
        }
        f.write_str("}")
    }
}

/// A predicate's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Literal {
    /// A number (u64 or i64 range).
    Num(i128),
    /// A string, quoted or a bare word.
    Str(String),
    /// `CPUS{...}`.
    Cpus(CpuList),
}

/// `field[.suffix] OP value`.
#[derive(Debug, Clone, Eq)]
pub struct Predicate {
    /// The field's name.
    pub field: String,
    /// `.ustring` or `.function`.
    pub modifier: FieldModifier,
    /// The operator.
    pub op: CmpOp,
    /// The value.
    pub value: Literal,
    /// Byte offset of the field name in the source (not compared by `==`).
    pub pos: usize,
}

impl PartialEq for Predicate {
    fn eq(&self, other: &Predicate) -> bool {
        self.field == other.field
            && self.modifier == other.modifier
            && self.op == other.op
            && self.value == other.value
    }
}

impl fmt::Display for Predicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = match self.modifier {
            FieldModifier::None => "",
            FieldModifier::Ustring => ".ustring",
            FieldModifier::Function => ".function",
        };
        write!(f, "{}{m} {} ", self.field, self.op.as_str())?;
        match &self.value {
            Literal::Num(n) => write!(f, "{n}"),
            Literal::Cpus(c) => write!(f, "{c}"),
            Literal::Str(s) if self.modifier == FieldModifier::Function && is_bare_word(s) => {
                f.write_str(s)
            }
            Literal::Str(s) if s.contains('"') => write!(f, "'{s}'"),
            Literal::Str(s) => write!(f, "\"{s}\""),
        }
    }
}

/// A filter expression. `&&` and `||` hold every operand of a chain (flattened); a double
/// negation is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// A predicate.
    Pred(Predicate),
    /// `!`
    Not(Box<Expr>),
    /// `&&` over two or more operands.
    And(Vec<Expr>),
    /// `||` over two or more operands.
    Or(Vec<Expr>),
}

impl Expr {
    fn negate(self) -> Expr {
        match self {
            Expr::Not(e) => *e,
            e => Expr::Not(Box::new(e)),
        }
    }

    /// Every predicate, left to right.
    pub fn predicates(&self) -> Vec<&Predicate> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(e) = stack.pop() {
            match e {
                Expr::Pred(p) => out.push(p),
                Expr::Not(e) => stack.push(e),
                Expr::And(v) | Expr::Or(v) => stack.extend(v.iter().rev()),
            }
        }
        out
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Pred(p) => write!(f, "{p}"),
            Expr::Not(e) => match **e {
                Expr::Pred(ref p) => write!(f, "!{p}"),
                ref e => write!(f, "!({e})"),
            },
            Expr::And(v) => {
                for (i, e) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" && ")?;
                    }
                    match e {
                        Expr::Or(_) => write!(f, "({e})")?,
                        e => write!(f, "{e}")?,
                    }
                }
                Ok(())
            }
            Expr::Or(v) => {
                for (i, e) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" || ")?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
        }
    }
}

/// A parsed filter.
#[derive(Debug, Clone, Eq)]
pub struct Filter {
    /// The expression.
    pub expr: Expr,
    /// The text it was parsed from (for error columns; not compared by `==`).
    pub source: String,
}

impl PartialEq for Filter {
    fn eq(&self, other: &Filter) -> bool {
        self.expr == other.expr
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.expr)
    }
}

impl FromStr for Filter {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Filter, FilterError> {
        Filter::parse(s)
    }
}

/// The kind of an event field, for [`Filter::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldKind {
    /// An unsigned integer (or pointer).
    Unsigned,
    /// A signed integer.
    Signed,
    /// A string (`char[]`, `char *`, `__data_loc char[]`).
    String,
    /// A `cpumask_t`.
    CpuMask,
}

/// A field's value in a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValue<'a> {
    /// An unsigned integer (or pointer).
    U64(u64),
    /// A signed integer.
    I64(i64),
    /// A string's bytes (up to the first NUL, if any).
    Str(&'a [u8]),
    /// A CPU mask: bit n of word n / 64.
    CpuMask(&'a [u64]),
}

/// A record a filter decides: its fields by name.
pub trait Record {
    /// The field called `name`, if the record has one.
    fn field(&self, name: &str) -> Option<FieldValue<'_>>;

    /// For `name.ustring`: the user-space string the field points to. By default, the field
    /// itself when it is a string.
    fn user_string(&self, name: &str) -> Option<Cow<'_, [u8]>> {
        match self.field(name)? {
            FieldValue::Str(s) => Some(Cow::Borrowed(s)),
            _ => None,
        }
    }

    /// For `field.function == NAME`: the addresses of function `name`. None by default.
    fn function_range(&self, name: &str) -> Option<Range<u64>> {
        let _ = name;
        None
    }
}

impl Record for [(&str, FieldValue<'_>)] {
    fn field(&self, name: &str) -> Option<FieldValue<'_>> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

/// Why a record could not be decided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The record has no such field.
    #[error("field {0:?} is not in the record")]
    FieldNotFound(String),
    /// The field's value does not fit the predicate (run [`Filter::check`] first).
    #[error("field {field:?} cannot be compared with `{op}` and this value")]
    TypeMismatch {
        /// The field.
        field: String,
        /// The operator.
        op: &'static str,
    },
    /// `.function` with a function the record does not know.
    #[error("function {0:?} is not known")]
    NoFunction(String),
}

impl Filter {
    /// Parses a filter expression.
    pub fn parse(input: &str) -> Result<Filter, FilterError> {
        if input.len() > MAX_INPUT_LEN {
            return Err(FilterError::at(
                input,
                FilterErrorKind::TooLong,
                MAX_INPUT_LEN,
            ));
        }
        let mut p = Parser {
            s: input.as_bytes(),
            src: input,
            i: 0,
            preds: 0,
        };
        p.skip_ws();
        if p.i == p.s.len() {
            return Err(FilterError::at(input, FilterErrorKind::Empty, 0));
        }
        let expr = p.or(0).map_err(|(k, pos)| FilterError::at(input, k, pos))?;
        p.skip_ws();
        if p.i < p.s.len() {
            let kind = if p.s[p.i] == b')' {
                FilterErrorKind::TooManyClose
            } else {
                FilterErrorKind::ExpectLogicalOp
            };
            return Err(FilterError::at(input, kind, p.i));
        }
        Ok(Filter {
            expr,
            source: input.to_owned(),
        })
    }

    /// Checks every predicate against its field's kind (`kind_of` a field name; None: no
    /// such field), as the kernel does when it parses a filter for an event.
    pub fn check(&self, kind_of: impl Fn(&str) -> Option<FieldKind>) -> Result<(), FilterError> {
        use FilterErrorKind as K;
        for p in self.expr.predicates() {
            let fail = |k| Err(FilterError::at(&self.source, k, p.pos));
            let Some(kind) = kind_of(&p.field) else {
                return fail(K::FieldNotFound);
            };
            match (p.modifier, kind, &p.value) {
                (FieldModifier::Function, FieldKind::Unsigned | FieldKind::Signed, _) => {}
                (FieldModifier::Function, ..) => return fail(K::IllegalFieldOp),
                (FieldModifier::Ustring, FieldKind::String | FieldKind::Unsigned, _) => {}
                (FieldModifier::Ustring, ..) => return fail(K::IllegalFieldOp),
                (_, FieldKind::String, Literal::Str(_)) => {}
                (_, FieldKind::String, _) => return fail(K::ExpectString),
                (_, FieldKind::Unsigned | FieldKind::Signed, Literal::Str(_)) => {
                    return fail(K::ExpectDigit);
                }
                (_, FieldKind::Unsigned, Literal::Num(n)) if *n < 0 => {
                    return fail(K::IllegalIntVal);
                }
                (_, FieldKind::Signed, Literal::Num(n)) if *n > i128::from(i64::MAX) => {
                    return fail(K::IllegalIntVal);
                }
                (_, FieldKind::CpuMask, Literal::Str(_)) => return fail(K::ExpectDigit),
                (_, FieldKind::CpuMask, _)
                    if !matches!(p.op, CmpOp::Eq | CmpOp::Ne | CmpOp::BitAnd) =>
                {
                    return fail(K::IllegalFieldOp);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether `record` matches.
    pub fn eval<R: Record + ?Sized>(&self, record: &R) -> Result<bool, EvalError> {
        eval_expr(&self.expr, record)
    }
}

fn eval_expr<R: Record + ?Sized>(e: &Expr, r: &R) -> Result<bool, EvalError> {
    Ok(match e {
        Expr::Pred(p) => eval_pred(p, r)?,
        Expr::Not(e) => !eval_expr(e, r)?,
        Expr::And(v) => {
            for e in v {
                if !eval_expr(e, r)? {
                    return Ok(false);
                }
            }
            true
        }
        Expr::Or(v) => {
            for e in v {
                if eval_expr(e, r)? {
                    return Ok(true);
                }
            }
            false
        }
    })
}

/// The bytes of a C string: up to the first NUL.
fn c_str(s: &[u8]) -> &[u8] {
    s.iter().position(|&b| b == 0).map_or(s, |n| &s[..n])
}

fn eval_pred<R: Record + ?Sized>(p: &Predicate, r: &R) -> Result<bool, EvalError> {
    let mismatch = || EvalError::TypeMismatch {
        field: p.field.clone(),
        op: p.op.as_str(),
    };
    let missing = || EvalError::FieldNotFound(p.field.clone());
    if p.modifier == FieldModifier::Ustring {
        let s = r.user_string(&p.field).ok_or_else(missing)?;
        let Literal::Str(pat) = &p.value else {
            return Err(mismatch());
        };
        return string_op(p.op, c_str(&s), pat.as_bytes()).ok_or_else(mismatch);
    }
    let value = r.field(&p.field).ok_or_else(missing)?;
    if p.modifier == FieldModifier::Function {
        let (Literal::Str(name), Some(addr)) = (&p.value, as_i128(value)) else {
            return Err(mismatch());
        };
        let range = r
            .function_range(name)
            .ok_or_else(|| EvalError::NoFunction(name.clone()))?;
        let inside = i128::from(range.start) <= addr && addr < i128::from(range.end);
        return match p.op {
            CmpOp::Eq => Ok(inside),
            CmpOp::Ne => Ok(!inside),
            _ => Err(mismatch()),
        };
    }
    let out = match (&p.value, value) {
        (Literal::Str(pat), FieldValue::Str(s)) => string_op(p.op, c_str(s), pat.as_bytes()),
        (Literal::Num(n), FieldValue::U64(_) | FieldValue::I64(_)) => {
            as_i128(value).and_then(|v| number_op(p.op, v, *n))
        }
        (Literal::Cpus(list), FieldValue::U64(_) | FieldValue::I64(_)) => {
            as_i128(value).and_then(|v| {
                let cpu = u64::try_from(v).ok();
                let contains = cpu.is_some_and(|c| list.contains(c));
                let only = cpu.is_some_and(|c| list.is_only(c));
                cpus_op(p.op, only, contains)
            })
        }
        (Literal::Cpus(list), FieldValue::CpuMask(mask)) => {
            let want = list.bitmap();
            let word = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
            let n = want.len().max(mask.len());
            let equal = (0..n).all(|i| word(&want, i) == word(mask, i));
            let common = (0..n).any(|i| word(&want, i) & word(mask, i) != 0);
            cpus_op(p.op, equal, common)
        }
        (Literal::Num(n), FieldValue::CpuMask(mask)) => {
            let bit = u64::try_from(*n).ok().and_then(|c| {
                let w = usize::try_from(c / 64).ok()?;
                Some(mask.get(w).is_some_and(|m| m & (1 << (c % 64)) != 0))
            });
            let has = bit.unwrap_or(false);
            let count: u32 = mask.iter().map(|m| m.count_ones()).sum();
            cpus_op(p.op, has && count == 1, has)
        }
        _ => None,
    };
    out.ok_or_else(mismatch)
}

fn as_i128(v: FieldValue<'_>) -> Option<i128> {
    match v {
        FieldValue::U64(u) => Some(i128::from(u)),
        FieldValue::I64(i) => Some(i128::from(i)),
        _ => None,
    }
}

fn string_op(op: CmpOp, s: &[u8], pat: &[u8]) -> Option<bool> {
    match op {
        CmpOp::Eq => Some(s == pat),
        CmpOp::Ne => Some(s != pat),
        CmpOp::Glob => Some(match pat.strip_prefix(b"!") {
            Some(rest) => !glob_match(rest, s),
            None => glob_match(pat, s),
        }),
        _ => None,
    }
}

fn number_op(op: CmpOp, v: i128, n: i128) -> Option<bool> {
    Some(match op {
        CmpOp::Eq => v == n,
        CmpOp::Ne => v != n,
        CmpOp::Lt => v < n,
        CmpOp::Le => v <= n,
        CmpOp::Gt => v > n,
        CmpOp::Ge => v >= n,
        // Two's complement bits of both (each fits 64 bits).
        CmpOp::BitAnd => (v & n) & i128::from(u64::MAX) != 0,
        CmpOp::Glob => return None,
    })
}

fn cpus_op(op: CmpOp, equal: bool, common: bool) -> Option<bool> {
    match op {
        CmpOp::Eq => Some(equal),
        CmpOp::Ne => Some(!equal),
        CmpOp::BitAnd => Some(common),
        _ => None,
    }
}

/// A bare word value: no whitespace, quotes, parentheses or operator characters, and not
/// starting like a number.
fn is_bare_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_STRING_LEN
        && !s.starts_with(|c: char| c.is_ascii_digit() || c == '-')
        && !s.starts_with("CPUS{")
        && s.bytes().all(is_bare_byte)
}

fn is_bare_byte(b: u8) -> bool {
    !is_space(b) && !b"()&|!\"'<>=~".contains(&b)
}

type Fail = (FilterErrorKind, usize);

struct Parser<'a> {
    s: &'a [u8],
    src: &'a str,
    i: usize,
    preds: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && is_space(self.s[self.i]) {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, tok: &[u8]) -> bool {
        if self.s[self.i..].starts_with(tok) {
            self.i += tok.len();
            true
        } else {
            false
        }
    }

    fn or(&mut self, depth: usize) -> Result<Expr, Fail> {
        // Every operand is flattened, the first one too: `(a || b) || c` is the chain a, b, c,
        // as `a || (b || c)` is (the canonical form prints no parentheses for either).
        let mut terms = Vec::new();
        loop {
            match self.and(depth)? {
                Expr::Or(v) => terms.extend(v),
                e => terms.push(e),
            }
            self.skip_ws();
            if !self.eat(b"||") {
                break;
            }
        }
        Ok(match terms.len() {
            1 => terms.swap_remove(0),
            _ => Expr::Or(terms),
        })
    }

    fn and(&mut self, depth: usize) -> Result<Expr, Fail> {
        let mut factors = Vec::new();
        loop {
            match self.unary(depth)? {
                Expr::And(v) => factors.extend(v),
                e => factors.push(e),
            }
            self.skip_ws();
            if !self.eat(b"&&") {
                break;
            }
        }
        Ok(match factors.len() {
            1 => factors.swap_remove(0),
            _ => Expr::And(factors),
        })
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, Fail> {
        let mut negate = false;
        loop {
            self.skip_ws();
            if self.peek() == Some(b'!') && self.s.get(self.i + 1) != Some(&b'=') {
                self.i += 1;
                negate = !negate;
            } else {
                break;
            }
        }
        let e = if self.peek() == Some(b'(') {
            let open = self.i;
            if depth >= MAX_NESTING {
                return Err((FilterErrorKind::TooDeep, open));
            }
            self.i += 1;
            let e = self.or(depth + 1)?;
            self.skip_ws();
            match self.peek() {
                Some(b')') => self.i += 1,
                None => return Err((FilterErrorKind::TooManyOpen, open)),
                Some(_) => return Err((FilterErrorKind::ExpectLogicalOp, self.i)),
            }
            e
        } else {
            Expr::Pred(self.predicate()?)
        };
        Ok(if negate { e.negate() } else { e })
    }

    fn predicate(&mut self) -> Result<Predicate, Fail> {
        use FilterErrorKind as K;
        self.skip_ws();
        let start = self.i;
        if self.preds == MAX_PREDICATES {
            return Err((K::TooManyPreds, start));
        }
        self.preds += 1;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            self.i += 1;
        }
        if self.i == start {
            return Err((
                if self.peek() == Some(b')') {
                    K::TooManyClose
                } else {
                    K::NoFieldName
                },
                start,
            ));
        }
        let field = self.src[start..self.i].to_owned();
        let modifier = if self.eat(b".ustring") {
            FieldModifier::Ustring
        } else if self.eat(b".function") {
            FieldModifier::Function
        } else if self.peek() == Some(b'.') {
            return Err((K::BadModifier, self.i));
        } else {
            FieldModifier::None
        };
        self.skip_ws();
        let op_at = self.i;
        if self.s[self.i..].starts_with(b"&&") || self.s[self.i..].starts_with(b"||") {
            return Err((K::InvalidOp, op_at));
        }
        let ops: [(&[u8], CmpOp); 8] = [
            (b"==", CmpOp::Eq),
            (b"!=", CmpOp::Ne),
            (b"<=", CmpOp::Le),
            (b"<", CmpOp::Lt),
            (b">=", CmpOp::Ge),
            (b">", CmpOp::Gt),
            (b"&", CmpOp::BitAnd),
            (b"~", CmpOp::Glob),
        ];
        let Some(op) = ops.iter().find(|(t, _)| self.eat(t)).map(|(_, o)| *o) else {
            return Err((K::InvalidOp, op_at));
        };
        self.skip_ws();
        let value_at = self.i;
        let value = self.value()?;
        let op_ok = match &value {
            Literal::Num(_) => op != CmpOp::Glob,
            Literal::Str(_) => matches!(op, CmpOp::Eq | CmpOp::Ne | CmpOp::Glob),
            Literal::Cpus(_) => matches!(op, CmpOp::Eq | CmpOp::Ne | CmpOp::BitAnd),
        };
        if !op_ok {
            return Err((K::IllegalFieldOp, op_at));
        }
        match modifier {
            FieldModifier::Function => {
                if !matches!(value, Literal::Str(_)) {
                    return Err((K::ExpectFunction, value_at));
                }
                if !matches!(op, CmpOp::Eq | CmpOp::Ne) {
                    return Err((K::IllegalFieldOp, op_at));
                }
            }
            FieldModifier::Ustring if !matches!(value, Literal::Str(_)) => {
                return Err((K::ExpectString, value_at));
            }
            _ => {}
        }
        Ok(Predicate {
            field,
            modifier,
            op,
            value,
            pos: start,
        })
    }

    fn value(&mut self) -> Result<Literal, Fail> {
        use FilterErrorKind as K;
        let start = self.i;
        match self.peek() {
            None => Err((K::InvalidValue, start)),
            Some(q @ (b'"' | b'\'')) => {
                let Some(len) = self.s[start + 1..].iter().position(|&b| b == q) else {
                    return Err((K::MissingQuote, self.s.len()));
                };
                if len > MAX_STRING_LEN {
                    return Err((K::OperandTooLong, start));
                }
                self.i = start + 1 + len + 1;
                Ok(Literal::Str(
                    self.src[start + 1..start + 1 + len].to_owned(),
                ))
            }
            Some(b) if b.is_ascii_digit() || b == b'-' => {
                self.i += 1;
                while self.peek().is_some_and(|b| b.is_ascii_alphanumeric()) {
                    self.i += 1;
                }
                let text = &self.src[start..self.i];
                let n = if b == b'-' {
                    parse_long(text).map(i128::from)
                } else {
                    parse_ulong(text).map(i128::from)
                };
                n.map(Literal::Num).ok_or((K::IllegalIntVal, start))
            }
            Some(_) if self.s[start..].starts_with(b"CPUS{") => {
                let list_at = start + 5;
                let Some(len) = self.s[list_at..].iter().position(|&b| b == b'}') else {
                    return Err((K::MissingBraceClose, self.s.len()));
                };
                self.i = list_at + len + 1;
                parse_cpulist(&self.src[list_at..list_at + len])
                    .map(Literal::Cpus)
                    .ok_or((K::InvalidCpulist, list_at))
            }
            Some(b) if is_bare_byte(b) => {
                while self.peek().is_some_and(is_bare_byte) {
                    self.i += 1;
                }
                if self.i - start > MAX_STRING_LEN {
                    return Err((K::OperandTooLong, start));
                }
                Ok(Literal::Str(self.src[start..self.i].to_owned()))
            }
            Some(_) => Err((K::InvalidValue, start)),
        }
    }
}

/// `N`, `N-M`, comma-separated, CPUs below [`MAX_CPUS`].
fn parse_cpulist(s: &str) -> Option<CpuList> {
    let mut out = Vec::new();
    for part in s.split(',') {
        if out.len() == MAX_CPU_RANGES {
            return None;
        }
        let cpu = |t: &str| {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            t.parse::<u32>().ok().filter(|c| *c < MAX_CPUS)
        };
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (cpu(a)?, cpu(b)?),
            None => {
                let c = cpu(part)?;
                (c, c)
            }
        };
        if a > b {
            return None;
        }
        out.push((a, b));
    }
    Some(CpuList(out))
}
