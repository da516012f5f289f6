//! kprobe_events definitions: kprobetrace.rst's (and fprobetrace.rst's BTF) examples, default
//! names, every error with its column, limits, round trips.

use super::fetch::{ArgType, BaseType, FetchArg, IntKind, Member, MemberOp, Reg};
use super::kprobe::{ProbeArg, ProbeDef, ProbeErrorKind as K, ProbeKind, ProbeTarget};

fn parse(s: &str) -> ProbeDef {
    ProbeDef::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

fn sym(name: &str, offset: u32) -> ProbeTarget {
    ProbeTarget::Symbol {
        module: None,
        name: name.into(),
        offset,
    }
}

fn arg(name: &str, fetch: FetchArg, ty: Option<ArgType>) -> ProbeArg {
    ProbeArg {
        name: name.into(),
        fetch,
        ty,
    }
}

fn deref(offset: i32, inner: FetchArg) -> FetchArg {
    FetchArg::Deref {
        offset,
        user: false,
        inner: Box::new(inner),
    }
}

fn ty(base: BaseType, array: Option<u32>) -> Option<ArgType> {
    Some(ArgType { base, array })
}

fn int(kind: IntKind, bits: u8) -> BaseType {
    BaseType::Int { kind, bits }
}

fn member(base: FetchArg, path: &[(MemberOp, &str)]) -> FetchArg {
    FetchArg::Member {
        base: Box::new(base),
        path: path
            .iter()
            .map(|(op, n)| Member {
                op: *op,
                name: (*n).into(),
            })
            .collect(),
    }
}

/// kprobetrace.rst, "Usage examples" and "Kernel Boot Parameter".
#[test]
fn doc_myprobe() {
    let d = parse("p:myprobe do_sys_open dfd=%ax filename=%dx flags=%cx mode=+4($stack)");
    assert_eq!(
        d,
        ProbeDef {
            kind: ProbeKind::Kprobe,
            group: "kprobes".into(),
            event: "myprobe".into(),
            target: sym("do_sys_open", 0),
            args: vec![
                arg("dfd", FetchArg::Reg(Reg::Ax), None),
                arg("filename", FetchArg::Reg(Reg::Dx), None),
                arg("flags", FetchArg::Reg(Reg::Cx), None),
                arg("mode", deref(4, FetchArg::StackAddr), None),
            ],
        }
    );
    assert_eq!(
        d.to_string(),
        "p:kprobes/myprobe do_sys_open dfd=%ax filename=%dx flags=%cx mode=+4($stack)"
    );
}

#[test]
fn doc_myretprobe() {
    let d = parse("r:myretprobe do_sys_open $retval");
    assert_eq!(d.kind, ProbeKind::Kretprobe { maxactive: 0 });
    assert_eq!(d.event, "myretprobe");
    assert_eq!(d.args, vec![arg("arg1", FetchArg::Retval, None)]);
    // The %return form (kprobetrace.rst's synopsis) is the same probe.
    let p = parse("p:myretprobe do_sys_open%return $retval");
    assert_eq!(p, d);
    assert_eq!(
        d.to_string(),
        "r:kprobes/myretprobe do_sys_open arg1=$retval"
    );
}

/// kprobetrace.rst, "Types" and "User Memory Access".
#[test]
fn doc_types() {
    let cases: Vec<(&str, FetchArg, Option<ArgType>)> = vec![
        (
            "+0(%di):x32[1]",
            deref(0, FetchArg::Reg(Reg::Di)),
            ty(int(IntKind::Hex, 32), Some(1)),
        ),
        (
            "+0(%di):x32",
            deref(0, FetchArg::Reg(Reg::Di)),
            ty(int(IntKind::Hex, 32), None),
        ),
        (
            "+0(%di):string[1]",
            deref(0, FetchArg::Reg(Reg::Di)),
            ty(BaseType::String, Some(1)),
        ),
        (
            "+0(+0(%di)):string",
            deref(0, deref(0, FetchArg::Reg(Reg::Di))),
            ty(BaseType::String, None),
        ),
        (
            "+8($stack):x8[8]",
            deref(8, FetchArg::StackAddr),
            ty(int(IntKind::Hex, 8), Some(8)),
        ),
        (
            "+0(%di):x16[4]",
            deref(0, FetchArg::Reg(Reg::Di)),
            ty(int(IntKind::Hex, 16), Some(4)),
        ),
        (
            "+u4(%si)",
            FetchArg::Deref {
                offset: 4,
                user: true,
                inner: Box::new(FetchArg::Reg(Reg::Si)),
            },
            None,
        ),
        (
            "+u0(%si):string",
            FetchArg::Deref {
                offset: 0,
                user: true,
                inner: Box::new(FetchArg::Reg(Reg::Si)),
            },
            ty(BaseType::String, None),
        ),
        (
            "+0(%si):ustring",
            deref(0, FetchArg::Reg(Reg::Si)),
            ty(BaseType::Ustring, None),
        ),
        (
            "+0(%di):b3@4/32",
            deref(0, FetchArg::Reg(Reg::Di)),
            ty(
                BaseType::Bitfield {
                    width: 3,
                    offset: 4,
                    container: 32,
                },
                None,
            ),
        ),
        (
            "%di:symbol",
            FetchArg::Reg(Reg::Di),
            ty(BaseType::Symbol, None),
        ),
        (
            "%di:symstr",
            FetchArg::Reg(Reg::Di),
            ty(BaseType::Symstr, None),
        ),
        ("%si:char", FetchArg::Reg(Reg::Si), ty(BaseType::Char, None)),
        (
            "%di:%pd",
            FetchArg::Reg(Reg::Di),
            ty(BaseType::Dentry, None),
        ),
        ("%di:%pD", FetchArg::Reg(Reg::Di), ty(BaseType::File, None)),
        ("$comm", FetchArg::Comm, None),
        ("$comm:string", FetchArg::Comm, ty(BaseType::String, None)),
        (
            "$stack3:s16",
            FetchArg::Stack(3),
            ty(int(IntKind::Signed, 16), None),
        ),
        (
            "$arg2:u64",
            FetchArg::Arg(2),
            ty(int(IntKind::Unsigned, 64), None),
        ),
        (
            "@jiffies",
            FetchArg::Symbol {
                name: "jiffies".into(),
                offset: 0,
            },
            None,
        ),
        (
            "@init_task+8:u32",
            FetchArg::Symbol {
                name: "init_task".into(),
                offset: 8,
            },
            ty(int(IntKind::Unsigned, 32), None),
        ),
        (
            "@init_task-0x10",
            FetchArg::Symbol {
                name: "init_task".into(),
                offset: -16,
            },
            None,
        ),
        (
            "@0xffffffff82000000",
            FetchArg::Mem(0xffff_ffff_8200_0000),
            None,
        ),
        ("\\1234", FetchArg::Imm(1234), None),
        ("\\-1", FetchArg::Imm(u64::MAX), None),
        ("\\+0x10", FetchArg::Imm(16), None),
        ("\\\"hello\"", FetchArg::ImmStr("hello".into()), None),
        (
            "\\\"hello\":string",
            FetchArg::ImmStr("hello".into()),
            ty(BaseType::String, None),
        ),
        (
            "-8(%bp):s32",
            deref(-8, FetchArg::Reg(Reg::Bp)),
            ty(int(IntKind::Signed, 32), None),
        ),
        ("+0x18(%rdi)", deref(0x18, FetchArg::Reg(Reg::Di)), None),
        ("%r15", FetchArg::Reg(Reg::R15), None),
        ("%rip", FetchArg::Reg(Reg::Ip), None),
        ("%flags", FetchArg::Reg(Reg::Flags), None),
    ];
    for (text, fetch, t) in cases {
        let d = parse(&format!("p:e do_sys_open v={text}"));
        assert_eq!(d.args, vec![arg("v", fetch, t)], "{text}");
    }
}

/// fprobetrace.rst's BTF forms, on a kprobe at a function entry or a return probe.
#[test]
fn doc_btf_forms() {
    let d = parse("p:myprobe vfs_read count pos");
    assert_eq!(
        d.args,
        vec![
            arg("count", FetchArg::Var("count".into()), None),
            arg("pos", FetchArg::Var("pos".into()), None),
        ]
    );
    assert!(d.needs_btf());
    assert_eq!(
        d.to_string(),
        "p:kprobes/myprobe vfs_read count=count pos=pos"
    );

    let d = parse("p vfs_read $arg*");
    assert_eq!(d.args, vec![arg("", FetchArg::AllArgs, None)]);
    assert_eq!(d.to_string(), "p:kprobes/p_vfs_read_0 vfs_read $arg*");

    let d = parse("p vfs_open mode=file->f_mode:x32 inode=file->f_inode:x64");
    assert_eq!(
        d.args,
        vec![
            arg(
                "mode",
                member(FetchArg::Var("file".into()), &[(MemberOp::Arrow, "f_mode")]),
                ty(int(IntKind::Hex, 32), None),
            ),
            arg(
                "inode",
                member(
                    FetchArg::Var("file".into()),
                    &[(MemberOp::Arrow, "f_inode")]
                ),
                ty(int(IntKind::Hex, 64), None),
            ),
        ]
    );

    let d = parse("r getname_flags $retval->name:string");
    assert_eq!(
        d.args,
        vec![arg(
            "arg1",
            member(FetchArg::Retval, &[(MemberOp::Arrow, "name")]),
            ty(BaseType::String, None),
        )]
    );

    let d = parse("p vfs_read dentry=file->f_path.dentry filename");
    assert_eq!(
        d.args[0].fetch,
        member(
            FetchArg::Var("file".into()),
            &[(MemberOp::Arrow, "f_path"), (MemberOp::Dot, "dentry")]
        )
    );
    assert_eq!(
        d.args[1],
        arg("filename", FetchArg::Var("filename".into()), None)
    );
    // Dereference of an argument by name.
    let d = parse("p vfs_read +8(file):u32");
    assert_eq!(d.args[0].fetch, deref(8, FetchArg::Var("file".into())));
    // Deep chains.
    let d = parse("p f a->b.c->d.e->f");
    assert_eq!(d.args[0].name, "arg1");
    assert_eq!(d.args[0].fetch.to_string(), "a->b.c->d.e->f");
}

#[test]
fn default_names() {
    let cases = [
        ("p do_sys_open", "p_do_sys_open_0"),
        ("r do_sys_open", "r_do_sys_open_0"),
        ("p do_sys_open%return", "r_do_sys_open_0"),
        ("p do_sys_open+0x10", "p_do_sys_open_16"),
        ("p do_sys_open+16", "p_do_sys_open_16"),
        ("r8 vfs_read", "r_vfs_read_0"),
        ("p 0xffffffff81000000", "p_0xffffffff81000000"),
        ("p 4096", "p_0x0000000000001000"),
        ("p ext4:ext4_sync_fs", "p_ext4_ext4_sync_fs_0"),
        ("p foo.isra.0", "p_foo_isra_0_0"),
        ("p:grp/ vfs_read", "p_vfs_read_0"),
    ];
    for (line, event) in cases {
        let d = parse(line);
        assert_eq!(d.event, event, "{line}");
    }
    assert_eq!(parse("p:grp/ vfs_read").group, "grp");
    assert_eq!(parse("p:grp/ev vfs_read").event, "ev");
    assert_eq!(parse("p vfs_read").group, "kprobes");
    // Cut to 63 bytes, as snprintf into MAX_EVENT_NAME_LEN cuts it.
    let long = "a".repeat(100);
    assert_eq!(parse(&format!("p {long}")).event.len(), 63);
    // Argument names: the text when it is an identifier, else arg<N> (from 1).
    let d = parse("p vfs_read %di count $stack x=%si +0(%dx)");
    let names: Vec<_> = d.args.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["arg1", "count", "arg3", "x", "arg5"]);
    // A default name from a variable may be longer than NAME= allows (the kernel takes the
    // variable's name as it is); the canonical form then leaves the name out (a fuzzer find:
    // it wrote NAME=, which does not parse).
    let (v, w) = ("v".repeat(40), "w".repeat(33));
    let d = parse(&format!("p vfs_read {v} {w}:u32"));
    assert_eq!(
        (d.args[0].name.as_str(), d.args[1].name.as_str()),
        (&*v, &*w)
    );
    let canon = d.to_string();
    assert_eq!(
        canon,
        format!("p:kprobes/p_vfs_read_0 vfs_read {v} {w}:u32")
    );
    assert_eq!(parse(&canon), d);
}

#[test]
fn targets_and_kinds() {
    let d = parse("r16:grp/ev vfs_read");
    assert_eq!(d.kind, ProbeKind::Kretprobe { maxactive: 16 });
    assert_eq!(d.to_string(), "r16:grp/ev vfs_read");
    let d = parse("p ext4:ext4_sync_fs+4");
    assert_eq!(
        d.target,
        ProbeTarget::Symbol {
            module: Some("ext4".into()),
            name: "ext4_sync_fs".into(),
            offset: 4,
        }
    );
    assert_eq!(d.target.location(), "ext4_sync_fs+0x4");
    assert_eq!(parse("p 0x1000").target, ProbeTarget::Address(0x1000));
    assert_eq!(parse("p 0x1000").target.location(), "0x1000");
    assert_eq!(parse("p vfs_read+0").target.location(), "vfs_read");
    // Address probes may use $argN (only a symbol says whether it is an entry).
    assert_eq!(parse("p 0x1000 $arg1").args[0].fetch, FetchArg::Arg(1));
    // Whitespace of every kind separates words.
    assert_eq!(parse(" p\tvfs_read \x0b %di\r\n").args.len(), 1);
    assert!(!parse("p vfs_read").is_return());
    assert!(parse("r vfs_read").is_return());
}

/// Each error with its column (1-based) and the word reported.
#[test]
fn errors() {
    let cases: &[(&str, K, usize)] = &[
        ("", K::Empty, 1),
        ("   ", K::Empty, 1),
        ("x vfs_read", K::BadCommand, 1),
        ("pfoo vfs_read", K::BadCommand, 1),
        ("-:myprobe", K::BadCommand, 1),
        ("p100 vfs_read", K::MaxactNoKprobe, 2),
        ("r1a111 vfs_read", K::BadMaxact, 2),
        ("r0 vfs_read", K::BadMaxact, 2),
        ("r100000 vfs_read", K::MaxactTooBig, 2),
        ("p:/ev vfs_read", K::NoGroupName, 3),
        ("p: vfs_read", K::NoEventName, 3),
        ("p:9grp/ev vfs_read", K::BadGroupName, 3),
        ("p:grp/e-v vfs_read", K::BadEventName, 7),
        ("p:e.v vfs_read", K::BadEventName, 3),
        ("p:myprobe", K::NoProbePoint, 10),
        ("p 0xzz", K::BadProbeAddr, 3),
        ("p vfs_read+", K::BadProbeAddr, 3),
        ("p vfs_read-4", K::BadProbeAddr, 3),
        ("p vfs_read+0x100000000", K::BadProbeAddr, 3),
        ("p 9:vfs_read", K::BadProbeAddr, 3),
        ("p vfs#read", K::BadProbeAddr, 3),
        ("p vfs_read%ret", K::BadAddrSuffix, 11),
        ("r vfs_read+8", K::BadRetprobe, 3),
        ("p vfs_read+8%return", K::BadRetprobe, 3),
        ("p:e f %ax=%ax", K::BadArgName, 7),
        ("p:e f =%ax", K::NoArgName, 7),
        ("p:e f x=", K::NoArgBody, 9),
        ("p:e f x=%ax x=%bx", K::UsedArgName, 13),
        ("p:e f common_pid=%ax", K::UsedArgName, 7),
        ("p:e f __probe_ip=%ax", K::UsedArgName, 7),
        ("p:e f %ax arg1=%bx", K::UsedArgName, 11),
        ("p:e f $retval", K::RetvalOnProbe, 7),
        ("r:e f $retvalx", K::BadVar, 7),
        ("p:e f $stack2049", K::BadStackNum, 7),
        ("p:e f $stackx", K::BadVar, 7),
        ("p:e f $arg0", K::BadArgNum, 7),
        ("p:e f $arg2049", K::BadArgNum, 7),
        ("p:e f+4 $arg1", K::NofentryArgs, 9),
        ("p:e f $argx", K::BadVar, 7),
        ("p:e f $foo", K::BadVar, 7),
        ("p:e f x=$arg*", K::MetaArgAlone, 7),
        ("p:e f $arg*:u32", K::MetaArgAlone, 7),
        ("p:e f $arg* $arg*", K::DoubleArgs, 13),
        ("p:e f+4 $arg*", K::NofentryArgs, 9),
        ("p:e f %zz", K::BadRegName, 7),
        ("p:e f %RAX", K::BadRegName, 7),
        ("p:e f @", K::BadMemAddr, 7),
        ("p:e f @0xzz", K::BadMemAddr, 7),
        ("p:e f @sym+x", K::BadMemAddr, 11),
        ("p:e f @+10", K::FileOnKprobe, 7),
        ("p:e f +0%di", K::DerefNeedBrace, 7),
        ("p:e f +x(%di)", K::BadDerefOffs, 7),
        ("p:e f +(%di)", K::BadDerefOffs, 7),
        ("p:e f +0x80000000(%di)", K::BadDerefOffs, 7),
        ("p:e f +0(%di", K::DerefOpenBrace, 13),
        ("p:e f +0(%di)x", K::DerefTrailing, 14),
        ("p:e f +0($comm)", K::CommCantDeref, 10),
        ("p:e f +0(\\\"s\")", K::CommCantDeref, 10),
        ("p:e f +0()", K::BadFetchArg, 10),
        ("p:e f #", K::BadFetchArg, 7),
        ("p:e f \\x", K::BadImm, 8),
        ("p:e f \\", K::BadImm, 8),
        ("p:e f \\\"abc", K::ImmstrNoClose, 12),
        ("p:e f+4 filename", K::NosupBtfArg, 9),
        ("p:e f file.f_mode", K::NosupDatArg, 11),
        ("p:e f file-f_mode", K::BadHyphen, 11),
        ("p:e f file->", K::BadMember, 13),
        ("p:e f file->1a", K::BadMember, 13),
        ("p:e f file->a+b", K::BadMember, 14),
        ("p:e f +0(%di):x8[2", K::ArrayNoClose, 19),
        ("p:e f +0(%di):x8[2]x", K::BadArraySuffix, 20),
        ("p:e f +0(%di):x8[0]", K::BadArrayNum, 18),
        ("p:e f +0(%di):x8[z]", K::BadArrayNum, 18),
        ("p:e f +0(%di):x8[65]", K::ArrayTooBig, 18),
        ("p:e f %di:u128", K::BadType, 11),
        ("p:e f %di:", K::BadType, 11),
        ("p:e f %di:b3@4/24", K::BadType, 11),
        ("p:e f %di:b0@4/32", K::BadBitfield, 11),
        ("p:e f %di:b3@30/32", K::BadBitfield, 11),
        ("p:e f %di:b3/32", K::BadBitfield, 11),
        ("p:e f %di:b3@/32", K::BadBitfield, 11),
        ("p:e f %di:string", K::BadString, 11),
        ("p:e f $stack:ustring", K::BadString, 14),
        ("p:e f $stack:symstr", K::BadSymstring, 14),
        ("p:e f $comm:symstr", K::NeedStringType, 13),
        ("p:e f $comm:u32", K::NeedStringType, 13),
        ("p:e f $comm:string[2]", K::NeedStringType, 13),
        ("p:e f \\\"s\":u8", K::NeedStringType, 12),
        ("p:e f $stack1:x8[8]", K::ArrayNotMemory, 15),
        ("p:e f %di:u32[2]", K::ArrayNotMemory, 11),
        ("p:e f +0(%di):symstr[2]", K::ArrayNotMemory, 15),
    ];
    let mut wrong = Vec::new();
    for (line, kind, col) in cases {
        let err = ProbeDef::parse(line).expect_err(line);
        if (err.kind, err.column) != (*kind, *col) {
            wrong.push(format!("{line:?}: {err}"));
        }
        // One line, with the column.
        let msg = err.to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(
            msg.starts_with(&format!("column {} (`", err.column)),
            "{msg}"
        );
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn error_messages() {
    let e = ProbeDef::parse("p:e do_sys_open dfd=%zz").unwrap_err();
    assert_eq!(e.token, "dfd=%zz");
    assert_eq!(
        e.to_string(),
        "column 21 (`dfd=%zz`): Invalid register name: expected %ax %bx %cx %dx %si %di %bp \
         %sp %r8..%r15 %ip %flags %cs %ss %orig_ax (or %rax, %rip, %rflags...)"
    );
    assert_eq!(
        super::caret("p:e do_sys_open dfd=%zz", e.column),
        "p:e do_sys_open dfd=%zz\n                    ^"
    );
    let e = ProbeDef::parse("p:myprobe").unwrap_err();
    assert_eq!(e.token, "p:myprobe");
    let e = ProbeDef::parse("").unwrap_err();
    assert_eq!(e.token, "end of line");
    // Columns count characters, not bytes.
    let e = ProbeDef::parse("p:e f \\\"é\" %zz").unwrap_err();
    assert_eq!((e.pos, e.column), (12, 12));
}

#[test]
fn limits() {
    let args: Vec<String> = (0..128).map(|i| format!("a{i}=%ax")).collect();
    let line = format!("p f {}", args.join(" "));
    assert_eq!(parse(&line).args.len(), 128);
    let err = ProbeDef::parse(&format!("{line} x=%ax")).unwrap_err();
    assert_eq!(err.kind, K::TooManyArgs);
    assert_eq!(err.token, "x=%ax");

    let nest = |n: usize| format!("{}%di{}", "+0(".repeat(n), ")".repeat(n));
    assert!(ProbeDef::parse(&format!("p f {}", nest(12))).is_ok());
    assert_eq!(
        ProbeDef::parse(&format!("p f {}", nest(13)))
            .unwrap_err()
            .kind,
        K::TooManyOps
    );
    let chain = |n: usize| format!("a{}", "->b".repeat(n));
    assert!(ProbeDef::parse(&format!("p f {}", chain(12))).is_ok());
    assert_eq!(
        ProbeDef::parse(&format!("p f {}", chain(13)))
            .unwrap_err()
            .kind,
        K::TooManyOps
    );

    let name32 = "n".repeat(32);
    assert!(ProbeDef::parse(&format!("p f {name32}=%ax")).is_ok());
    assert_eq!(
        ProbeDef::parse(&format!("p f n{name32}=%ax"))
            .unwrap_err()
            .kind,
        K::ArgNameTooLong
    );
    let body63 = format!("\\\"{}\"", "s".repeat(60));
    assert_eq!(body63.len(), 63);
    assert!(ProbeDef::parse(&format!("p f {body63}")).is_ok());
    assert_eq!(
        ProbeDef::parse(&format!("p f \\\"{}\"", "s".repeat(61)))
            .unwrap_err()
            .kind,
        K::ArgTooLong
    );
    let ev63 = "e".repeat(63);
    assert!(ProbeDef::parse(&format!("p:{ev63}/{ev63} f")).is_ok());
    assert_eq!(
        ProbeDef::parse(&format!("p:{ev63}e f")).unwrap_err().kind,
        K::EventTooLong
    );
    assert_eq!(
        ProbeDef::parse(&format!("p:{ev63}g/e f")).unwrap_err().kind,
        K::GroupTooLong
    );
    assert!(ProbeDef::parse("r4096 f").is_ok());
    assert_eq!(
        ProbeDef::parse("r4097 f").unwrap_err().kind,
        K::MaxactTooBig
    );
    assert_eq!(
        ProbeDef::parse(&format!("p f {}", "x".repeat(20_000)))
            .unwrap_err()
            .kind,
        K::TooLong
    );
    assert_eq!(
        ProbeDef::parse(&format!("p {}", "s".repeat(513)))
            .unwrap_err()
            .kind,
        K::BadProbeAddr
    );
}

/// Lines that parse: their canonical form parses to the same definition and prints the
/// same again.
pub(super) const VALID: &[&str] = &[
    "p:myprobe do_sys_open dfd=%ax filename=%dx flags=%cx mode=+4($stack)",
    "r:myretprobe do_sys_open $retval",
    "p:myretprobe do_sys_open%return $retval",
    "r16:grp/ev vfs_read+0 ret=$retval:s32",
    "p vfs_read+0x10 %di %rsi +0x18(%rdi):u32 -8(%bp):s64",
    "p 0xffffffff81000000 @0x1000 @jiffies @init_task-0x10 @init_task+8:u8",
    "p ext4:ext4_sync_fs sb=%di",
    "p f a=+0(%di):x32[1] b=+0(%di):string[1] c=+0(+0(%di)):string d=+8($stack):x8[8]",
    "p f a=+u4(%si) b=+u0(%si):string c=+0(%si):ustring d=+0(%di):b3@4/32",
    "p f a=-0x10(%di):b1@0/8 b=%di:symbol c=%di:symstr d=%di:char e=%di:%pd g=%si:%pD",
    "p f $comm a=$comm:string b=$COMM $stack $stack0 $stack2048 $arg1 $arg2048",
    "p f \\0 \\1234 \\-1 \\+5 \\0x7fffffffffffffff \\-9223372036854775808 \\\"str\"",
    "p f \\18446744073709551615 \\077 i=\\\"a=b\":string",
    "p:myprobe vfs_read count pos",
    "p vfs_read $arg*",
    "p vfs_open mode=file->f_mode:x32 inode=file->f_inode:x64",
    "r getname_flags $retval->name:string",
    "p vfs_read dentry=file->f_path.dentry +8(file):u32 name=+0(file->f_path.dentry):string",
    "p f +0(+0(+0(+0(+0(+0(+0(+0(+0(+0(+0(+0(%di))))))))))))",
    "p f %ax %bx %cx %dx %si %di %bp %sp %r8 %r9 %r10 %r11 %r12 %r13 %r14 %r15",
    "p f %ip %flags %cs %ss %orig_ax %rip %rflags %orig_rax",
    "p f @sym+0x7fffffffffffffff @sym-0x8000000000000000 +0x7fffffff(%ax) -0x80000000(%ax)",
    "p foo.isra.0+4294967295",
];

#[test]
fn round_trips() {
    for line in VALID {
        let d = parse(line);
        let canon = d.to_string();
        let again = parse(&canon);
        assert_eq!(again, d, "{line} -> {canon}");
        assert_eq!(again.to_string(), canon, "{line}");
    }
    assert_eq!(
        parse("p f +0x18(%rdi):u32 \\0x10 @sym+0x10").to_string(),
        "p:kprobes/p_f_0 f arg1=+24(%di):u32 arg2=\\16 arg3=@sym+16"
    );
    assert_eq!(
        parse("p f \\0xffffffffffffffff \\18446744073709551615").to_string(),
        "p:kprobes/p_f_0 f arg1=\\-1 arg2=\\-1"
    );
    assert_eq!(
        parse("p f +u0x10(%si) -16(%si)").to_string(),
        "p:kprobes/p_f_0 f arg1=+u16(%si) arg2=-16(%si)"
    );
}
