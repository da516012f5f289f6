//! Event filters: events.rst's examples, evaluation as ftrace does it, errors, round trips.

use std::borrow::Cow;
use std::ops::Range;

use super::filter::{
    CmpOp, CpuList, EvalError, Expr, FieldKind, FieldModifier, FieldValue, Filter,
    FilterErrorKind as K, Literal, Predicate, Record,
};

fn parse(s: &str) -> Filter {
    Filter::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

fn pred(field: &str, op: CmpOp, value: Literal) -> Expr {
    Expr::Pred(Predicate {
        field: field.into(),
        modifier: FieldModifier::None,
        op,
        value,
        pos: 0,
    })
}

fn num(n: i128) -> Literal {
    Literal::Num(n)
}

fn s(v: &str) -> Literal {
    Literal::Str(v.into())
}

/// events.rst, 5.1 and 5.2.
#[test]
fn doc_examples() {
    for (text, pat) in [
        ("prev_comm ~ \"*sh\"", "*sh"),
        ("prev_comm ~ \"sh*\"", "sh*"),
        ("prev_comm ~ \"*sh*\"", "*sh*"),
        ("prev_comm ~ \"ba*sh\"", "ba*sh"),
    ] {
        assert_eq!(parse(text).expr, pred("prev_comm", CmpOp::Glob, s(pat)));
    }
    assert_eq!(
        parse("filename.ustring ~ \"password\"").expr,
        Expr::Pred(Predicate {
            field: "filename".into(),
            modifier: FieldModifier::Ustring,
            op: CmpOp::Glob,
            value: s("password"),
            pos: 0,
        })
    );
    assert_eq!(
        parse("call_site.function == security_prepare_creds").expr,
        Expr::Pred(Predicate {
            field: "call_site".into(),
            modifier: FieldModifier::Function,
            op: CmpOp::Eq,
            value: s("security_prepare_creds"),
            pos: 0,
        })
    );
    assert_eq!(
        parse("target_cpu & CPUS{17-42}").expr,
        pred(
            "target_cpu",
            CmpOp::BitAnd,
            Literal::Cpus(CpuList(vec![(17, 42)]))
        )
    );
    assert_eq!(
        parse("common_preempt_count > 4").expr,
        pred("common_preempt_count", CmpOp::Gt, num(4))
    );
    assert_eq!(
        parse("((sig >= 10 && sig < 15) || sig == 17) && comm != bash").expr,
        Expr::And(vec![
            Expr::Or(vec![
                Expr::And(vec![
                    pred("sig", CmpOp::Ge, num(10)),
                    pred("sig", CmpOp::Lt, num(15)),
                ]),
                pred("sig", CmpOp::Eq, num(17)),
            ]),
            pred("comm", CmpOp::Ne, s("bash")),
        ])
    );
    assert_eq!(
        parse("common_pid == 0").expr,
        pred("common_pid", CmpOp::Eq, num(0))
    );
    assert_eq!(
        parse("prev_pid == 0").expr,
        pred("prev_pid", CmpOp::Eq, num(0))
    );

    // The error example: a field the event does not have.
    let f = parse("((sig >= 10 && sig < 15) || dsig == 17) && comm != bash");
    let err = f.check(signal_fields).unwrap_err();
    assert_eq!((err.kind, err.column), (K::FieldNotFound, 29));
    assert_eq!(err.token, "dsig");
    assert_eq!(err.to_string(), "column 29 (`dsig`): Field not found");
}

fn signal_fields(name: &str) -> Option<FieldKind> {
    match name {
        "sig" | "errno" | "code" | "pid" => Some(FieldKind::Signed),
        "comm" => Some(FieldKind::String),
        "flags" | "ptr" => Some(FieldKind::Unsigned),
        "mask" => Some(FieldKind::CpuMask),
        _ => None,
    }
}

#[test]
fn precedence_and_negation() {
    // && binds tighter than ||.
    assert_eq!(
        parse("a == 1 || b == 2 && c == 3").expr,
        Expr::Or(vec![
            pred("a", CmpOp::Eq, num(1)),
            Expr::And(vec![
                pred("b", CmpOp::Eq, num(2)),
                pred("c", CmpOp::Eq, num(3))
            ]),
        ])
    );
    // ! applies to one predicate or one group; !! cancels.
    assert_eq!(
        parse("!a == 1 && b == 2").expr,
        Expr::And(vec![
            Expr::Not(Box::new(pred("a", CmpOp::Eq, num(1)))),
            pred("b", CmpOp::Eq, num(2)),
        ])
    );
    assert_eq!(parse("!!a == 1").expr, pred("a", CmpOp::Eq, num(1)));
    assert_eq!(parse("!(!(a == 1))").expr, pred("a", CmpOp::Eq, num(1)));
    assert_eq!(
        parse("!(a == 1 || b == 2)").expr,
        Expr::Not(Box::new(Expr::Or(vec![
            pred("a", CmpOp::Eq, num(1)),
            pred("b", CmpOp::Eq, num(2)),
        ])))
    );
    // `!=` is an operator, not a negation.
    assert_eq!(parse("a!=1").expr, pred("a", CmpOp::Ne, num(1)));
    // Chains flatten.
    assert_eq!(
        parse("(a == 1 && b == 2) && (c == 3 && d == 4)").expr,
        Expr::And(
            ["a", "b", "c", "d"]
                .iter()
                .zip(1..)
                .map(|(f, n)| pred(f, CmpOp::Eq, num(n)))
                .collect()
        )
    );
    // A group first in a || chain flattens too (a fuzzer find: `(a || b) || c` stayed nested
    // and its canonical form, `a || b || c`, parsed to a different expression).
    let abc = Expr::Or(
        ["a", "b", "c"]
            .iter()
            .zip(1..)
            .map(|(f, n)| pred(f, CmpOp::Eq, num(n)))
            .collect(),
    );
    assert_eq!(parse("(a == 1 || b == 2) || c == 3").expr, abc);
    assert_eq!(parse("a == 1 || (b == 2 || c == 3)").expr, abc);
    assert_eq!(parse("((a == 1 || b == 2)) || c == 3").expr, abc);
    assert_eq!(parse("(a == 1 || b == 2 || c == 3)").expr, abc);
}

#[test]
fn values() {
    assert_eq!(parse("a == 0x10").expr, pred("a", CmpOp::Eq, num(16)));
    assert_eq!(parse("a == 010").expr, pred("a", CmpOp::Eq, num(8)));
    assert_eq!(parse("a == -5").expr, pred("a", CmpOp::Eq, num(-5)));
    assert_eq!(
        parse("a == 18446744073709551615").expr,
        pred("a", CmpOp::Eq, num(i128::from(u64::MAX)))
    );
    assert_eq!(parse("a & 4").expr, pred("a", CmpOp::BitAnd, num(4)));
    assert_eq!(
        parse("comm == 'it\"s'").expr,
        pred("comm", CmpOp::Eq, s("it\"s"))
    );
    assert_eq!(
        parse("comm == \"a b\"").expr,
        pred("comm", CmpOp::Eq, s("a b"))
    );
    assert_eq!(
        parse("m == CPUS{0,2-3}").expr,
        pred("m", CmpOp::Eq, Literal::Cpus(CpuList(vec![(0, 0), (2, 3)])))
    );
}

struct Rec {
    fields: Vec<(&'static str, FieldValue<'static>)>,
}

impl Record for Rec {
    fn field(&self, name: &str) -> Option<FieldValue<'_>> {
        self.fields[..].field(name)
    }

    fn user_string(&self, name: &str) -> Option<Cow<'_, [u8]>> {
        (name == "filename").then_some(Cow::Borrowed(&b"/etc/password\0junk"[..]))
    }

    fn function_range(&self, name: &str) -> Option<Range<u64>> {
        (name == "security_prepare_creds").then_some(0x1000..0x1080)
    }
}

#[test]
fn evaluation() {
    static MASK: [u64; 1] = [0b1010];
    let rec = Rec {
        fields: vec![
            ("sig", FieldValue::I64(-3)),
            ("flags", FieldValue::U64(0x8001)),
            ("comm", FieldValue::Str(b"bash\0\0\0\0")),
            ("prev_comm", FieldValue::Str(b"zsh")),
            ("call_site", FieldValue::U64(0x1040)),
            ("target_cpu", FieldValue::U64(20)),
            ("mask", FieldValue::CpuMask(&MASK)),
        ],
    };
    let cases = [
        ("sig == -3", true),
        ("sig < 0", true),
        ("sig <= -3 && sig >= -3", true),
        ("sig > -3", false),
        ("flags & 1", true),
        ("flags & 6", false),
        ("flags == 0x8001", true),
        ("flags != 32769", false),
        ("flags > -1", true),
        ("comm == bash", true),
        ("comm == \"bash\"", true),
        ("comm == ba", false),
        ("comm != bash", false),
        ("comm ~ \"ba*\"", true),
        ("comm ~ \"!ba*\"", false),
        ("comm ~ \"b?sh\"", true),
        ("comm ~ \"[a-c]ash\"", true),
        ("comm == \"ba*\"", false),
        ("prev_comm ~ \"*sh\"", true),
        ("prev_comm ~ \"sh*\"", false),
        ("prev_comm ~ \"*sh*\"", true),
        ("prev_comm ~ \"ba*sh\"", false),
        ("filename.ustring ~ \"*password\"", true),
        ("filename.ustring == \"/etc/password\"", true),
        ("call_site.function == security_prepare_creds", true),
        ("call_site.function != security_prepare_creds", false),
        ("target_cpu & CPUS{17-42}", true),
        ("target_cpu & CPUS{0-3}", false),
        ("target_cpu == CPUS{20}", true),
        ("target_cpu == CPUS{20-21}", false),
        ("mask & CPUS{3}", true),
        ("mask & CPUS{2}", false),
        ("mask == CPUS{1,3}", true),
        ("mask != CPUS{1,3}", false),
        ("mask & 1", true),
        ("mask == 1", false),
        (
            "((sig >= 10 && sig < 15) || sig == -3) && comm != bash",
            false,
        ),
        (
            "((sig >= 10 && sig < 15) || sig == -3) && comm != zsh",
            true,
        ),
        ("!(sig == -3)", false),
        ("!sig == 5 && !!flags & 1", true),
    ];
    for (text, want) in cases {
        assert_eq!(parse(text).eval(&rec), Ok(want), "{text}");
    }
    // Short-circuit: a missing field after a decided || is not looked at.
    assert_eq!(parse("sig == -3 || nope == 1").eval(&rec), Ok(true));
    assert_eq!(
        parse("nope == 1").eval(&rec),
        Err(EvalError::FieldNotFound("nope".into()))
    );
    assert!(matches!(
        parse("comm == 1").eval(&rec),
        Err(EvalError::TypeMismatch { .. })
    ));
    assert!(matches!(
        parse("sig == x").eval(&rec),
        Err(EvalError::TypeMismatch { .. })
    ));
    assert_eq!(
        parse("call_site.function == nope").eval(&rec),
        Err(EvalError::NoFunction("nope".into()))
    );
    // A plain slice of fields is a record.
    let fields = [("pid", FieldValue::I64(1))];
    assert_eq!(parse("pid == 1").eval(&fields[..]), Ok(true));
}

#[test]
fn check() {
    let ok = [
        "sig == -1",
        "flags & 4",
        "comm ~ \"*sh\"",
        "ptr.function == schedule",
        "ptr.ustring ~ \"x\"",
        "mask & CPUS{1}",
        "pid & CPUS{1}",
    ];
    for text in ok {
        parse(text)
            .check(signal_fields)
            .unwrap_or_else(|e| panic!("{text}: {e}"));
    }
    let bad = [
        ("nope == 1", K::FieldNotFound),
        ("comm == 1", K::ExpectString),
        ("sig == bash", K::ExpectDigit),
        ("flags == -1", K::IllegalIntVal),
        ("sig == 18446744073709551615", K::IllegalIntVal),
        ("comm.function == x", K::IllegalFieldOp),
        ("mask.ustring == \"x\"", K::IllegalFieldOp),
        ("mask < 3", K::IllegalFieldOp),
        ("mask == x", K::ExpectDigit),
    ];
    for (text, kind) in bad {
        let err = parse(text).check(signal_fields).unwrap_err();
        assert_eq!(err.kind, kind, "{text}");
        assert_eq!(err.column, 1, "{text}");
    }
}

#[test]
fn errors() {
    let cases: &[(&str, K, usize)] = &[
        ("", K::Empty, 1),
        ("  \t", K::Empty, 1),
        ("== 1", K::NoFieldName, 1),
        ("a", K::InvalidOp, 2),
        ("a 1", K::InvalidOp, 3),
        ("a && b", K::InvalidOp, 3),
        ("a = 1", K::InvalidOp, 3),
        ("a.foo == 1", K::BadModifier, 2),
        ("a ==", K::InvalidValue, 5),
        ("a == )", K::InvalidValue, 6),
        ("(a == 1", K::TooManyOpen, 1),
        ("a == 1)", K::TooManyClose, 7),
        ("()", K::TooManyClose, 2),
        ("a == 1 b == 2", K::ExpectLogicalOp, 8),
        ("(a == 1 b == 2)", K::ExpectLogicalOp, 9),
        ("a == 1 &&", K::NoFieldName, 10),
        ("a == \"abc", K::MissingQuote, 10),
        ("a == CPUS{1", K::MissingBraceClose, 12),
        ("a == CPUS{1-}", K::InvalidCpulist, 11),
        ("a == CPUS{3-1}", K::InvalidCpulist, 11),
        ("a == CPUS{8192}", K::InvalidCpulist, 11),
        ("a == CPUS{}", K::InvalidCpulist, 11),
        ("a < CPUS{1}", K::IllegalFieldOp, 3),
        ("a == 12abc", K::IllegalIntVal, 6),
        ("a == -", K::IllegalIntVal, 6),
        ("a == 0x", K::IllegalIntVal, 6),
        ("a == 99999999999999999999", K::IllegalIntVal, 6),
        ("a ~ 5", K::IllegalFieldOp, 3),
        ("a < \"x\"", K::IllegalFieldOp, 3),
        ("a & bash", K::IllegalFieldOp, 3),
        ("a.function < x", K::IllegalFieldOp, 12),
        ("a.function == 5", K::ExpectFunction, 15),
        ("a.ustring == 5", K::ExpectString, 14),
    ];
    let mut wrong = Vec::new();
    for (text, kind, col) in cases {
        let err = Filter::parse(text).expect_err(text);
        if (err.kind, err.column) != (*kind, *col) {
            wrong.push(format!("{text:?}: {err}"));
        }
        assert!(!err.to_string().contains('\n'));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn limits() {
    let long = format!("a == \"{}\"", "x".repeat(255));
    assert!(Filter::parse(&long).is_ok());
    let long = format!("a == \"{}\"", "x".repeat(256));
    assert_eq!(Filter::parse(&long).unwrap_err().kind, K::OperandTooLong);
    let bare = format!("a == {}", "x".repeat(256));
    assert_eq!(Filter::parse(&bare).unwrap_err().kind, K::OperandTooLong);
    let nest = |n: usize| format!("{}a == 1{}", "(".repeat(n), ")".repeat(n));
    assert!(Filter::parse(&nest(64)).is_ok());
    assert_eq!(Filter::parse(&nest(65)).unwrap_err().kind, K::TooDeep);
    let many = |n: usize| vec!["a<1"; n].join("&&");
    assert!(Filter::parse(&many(1024)).is_ok());
    assert_eq!(
        Filter::parse(&many(1025)).unwrap_err().kind,
        K::TooManyPreds
    );
    assert_eq!(
        Filter::parse(&"!".repeat(20_000)).unwrap_err().kind,
        K::TooLong
    );
    // Many negations cost nothing (no recursion).
    assert!(Filter::parse(&format!("{}a == 1", "!".repeat(10_000))).is_ok());
}

pub(super) const VALID: &[&str] = &[
    "prev_comm ~ \"*sh\"",
    "filename.ustring ~ \"password\"",
    "call_site.function == security_prepare_creds",
    "target_cpu & CPUS{17-42}",
    "common_preempt_count > 4",
    "((sig >= 10 && sig < 15) || sig == 17) && comm != bash",
    "common_pid == 0",
    "!(a == 1 || b != 2) && !c ~ 'x\"y' || (d & 0x10 && (e <= -1 || f >= 010))",
    "a==1&&b==2||c==3&&(d==4||e==5)",
    "m == CPUS{0,2-3,8191}",
    "x.function != \"not a word\"",
];

#[test]
fn round_trips() {
    for text in VALID {
        let f = parse(text);
        let canon = f.to_string();
        let again = parse(&canon);
        assert_eq!(again, f, "{text} -> {canon}");
        assert_eq!(again.to_string(), canon, "{text}");
    }
    assert_eq!(
        parse("((sig >= 10 && sig < 15) || sig == 17) && comm != bash").to_string(),
        "(sig >= 10 && sig < 15 || sig == 17) && comm != \"bash\""
    );
    assert_eq!(parse("!(a==1)").to_string(), "!a == 1");
}
