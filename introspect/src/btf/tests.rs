//! Unit tests of the BTF parser, on blobs written by [`BtfBuilder`].

use std::path::PathBuf;

use super::*;

const SIGNED: IntEncoding = IntEncoding::SIGNED;

/// Types shaped like the kernel's: `struct list_head`, `struct task_struct` with anonymous
/// members, a bitfield struct, `do_sys_openat2`.
struct Sample {
    blob: Vec<u8>,
    int: TypeId,
    char_: TypeId,
    task: TypeId,
    list_head: TypeId,
}

fn sample() -> Sample {
    let mut b = BtfBuilder::default();
    let int = b.int("int", 4, SIGNED, 32);
    let uint = b.int("unsigned int", 4, IntEncoding::NONE, 32);
    let char_ = b.int("char", 1, IntEncoding(SIGNED.0 | IntEncoding::CHAR.0), 8);
    let long = b.int("long", 8, SIGNED, 64);
    let pid_t = b.typedef("pid_t", int);
    // The pointer comes first and refers forward to the struct after it.
    let list_head = TypeId(b.next_id().0 + 1);
    let lh_ptr = b.ptr(list_head);
    b.structure(
        "list_head",
        16,
        &[("next", lh_ptr, 0, 0), ("prev", lh_ptr, 64, 0)],
    );
    let comm = b.array(char_, int, 16);
    let mm = b.fwd("mm_struct", false);
    let mm_ptr = b.ptr(mm);
    // struct { int a; int b; } inside union { long l; struct {...}; } at byte 40.
    let inner = b.structure("", 8, &[("a", int, 0, 0), ("b", int, 32, 0)]);
    let anon_union = b.union("", 8, &[("l", long, 0, 0), ("", inner, 0, 0)]);
    let vol_uint = b.volatile(uint);
    let task = TypeId(b.next_id().0 + 1);
    let task_ptr = b.ptr(task);
    b.structure(
        "task_struct",
        64,
        &[
            ("__state", vol_uint, 0, 0),
            ("pid", pid_t, 32, 0),
            ("tasks", list_head, 64, 0),
            ("mm", mm_ptr, 192, 0),
            ("real_parent", task_ptr, 256, 0),
            ("", anon_union, 320, 0),
            ("comm", comm, 384, 0),
        ],
    );
    let const_char = b.constant(char_);
    let filename = b.ptr(const_char);
    let how_s = b.structure("open_how", 24, &[]);
    let how = b.ptr(how_s);
    let proto = b.func_proto(long, &[("dfd", int), ("filename", filename), ("how", how)]);
    b.func("do_sys_openat2", proto, Linkage::Static);
    Sample {
        blob: b.finish(),
        int,
        char_,
        task,
        list_head,
    }
}

#[test]
fn parses_kernel_like_structs() {
    let s = sample();
    let btf = Btf::parse(&s.blob).unwrap();
    assert_eq!(btf.find("task_struct", Kind::Struct), Ok(s.task));
    assert_eq!(btf.size_of(s.task), Ok(64));
    let off = |name: &str| btf.member(s.task, name).unwrap().byte_offset();
    assert_eq!(off("__state"), 0);
    assert_eq!(off("pid"), 4);
    assert_eq!(off("tasks"), 8);
    assert_eq!(off("mm"), 24);
    assert_eq!(off("real_parent"), 32);
    assert_eq!(off("comm"), 48);
    // Through the anonymous union and the anonymous struct in it.
    assert_eq!(off("l"), 40);
    assert_eq!(off("b"), 44);
    assert_eq!(
        btf.member_path(s.task, "tasks.prev").unwrap().byte_offset(),
        16
    );

    let name = |id| btf.type_name(id).unwrap();
    let ty = |m: &str| btf.member(s.task, m).unwrap().ty;
    assert_eq!(name(ty("__state")), "volatile unsigned int");
    assert_eq!(name(ty("pid")), "pid_t");
    assert_eq!(name(btf.resolve(ty("pid")).unwrap()), "int");
    assert_eq!(name(ty("comm")), "char[16]");
    assert_eq!(name(ty("mm")), "struct mm_struct *");
    assert_eq!(name(ty("real_parent")), "struct task_struct *");
    assert_eq!(btf.size_of(ty("comm")), Ok(16));
    assert_eq!(btf.size_of(ty("mm")), Ok(8));
    assert_eq!(btf.size_of(ty("pid")), Ok(4));
    let l = btf.get(btf.member(s.task, "l").unwrap().ty).unwrap();
    assert_eq!(l.name(), "long");
    assert_eq!(name(s.list_head), "struct list_head");

    let f = btf.func_proto("do_sys_openat2").unwrap();
    assert_eq!(name(f.ret), "long");
    let params: Vec<(&str, String)> = f.params.iter().map(|p| (p.name, name(p.ty))).collect();
    assert_eq!(
        params,
        [
            ("dfd", "int".to_owned()),
            ("filename", "const char *".to_owned()),
            ("how", "struct open_how *".to_owned())
        ]
    );
    assert!(!f.variadic);
    assert_eq!(
        f.signature(&btf).unwrap(),
        "long do_sys_openat2(int dfd, const char *filename, struct open_how *how)"
    );
    assert_eq!(name(f.proto), "long (int, const char *, struct open_how *)");
    assert_eq!(btf.get(f.func).unwrap().linkage(), Some(Linkage::Static));
    let _ = (s.int, s.char_);
}

#[test]
fn lookups_say_what_is_missing() {
    let s = sample();
    let btf = Btf::parse(&s.blob).unwrap();
    assert_eq!(
        btf.find("task_struct", Kind::Union),
        Err(LookupError::NotFound {
            name: "task_struct".into(),
            kind: Kind::Union
        })
    );
    assert!(matches!(
        btf.member(s.task, "nope"),
        Err(LookupError::NoMember { .. })
    ));
    assert_eq!(
        btf.member_path(s.task, "tasks..next"),
        Err(LookupError::BadPath("tasks..next".into()))
    );
    assert_eq!(
        btf.member_path(s.task, ""),
        Err(LookupError::BadPath(String::new()))
    );
    // `mm` is a pointer: a path cannot go through it.
    assert!(matches!(
        btf.member_path(s.task, "mm.x"),
        Err(LookupError::NotComposite {
            kind: Kind::Ptr,
            ..
        })
    ));
    assert!(matches!(
        btf.members(s.int),
        Err(LookupError::NotComposite {
            kind: Kind::Int,
            ..
        })
    ));
    let past = TypeId(u32::try_from(btf.len()).unwrap());
    assert_eq!(btf.get(past).unwrap_err(), LookupError::NoSuchType(past));
    assert_eq!(
        btf.size_of(TypeId::VOID),
        Err(LookupError::NoSize {
            id: TypeId::VOID,
            kind: Kind::Void
        })
    );
    let mm = btf.find("mm_struct", Kind::Fwd).unwrap();
    assert!(matches!(
        btf.size_of(mm),
        Err(LookupError::NoSize {
            kind: Kind::Fwd,
            ..
        })
    ));
    assert!(matches!(
        btf.func_proto("vfs_read"),
        Err(LookupError::NotFound {
            kind: Kind::Func,
            ..
        })
    ));
}

#[test]
fn every_kind() {
    let mut b = BtfBuilder::default();
    let int = b.int("int", 4, SIGNED, 32);
    let ptr = b.ptr(int);
    let arr = b.array(int, int, 3);
    let st = b.structure("s", 4, &[("x", int, 0, 0)]);
    let un = b.union("u", 4, &[("x", int, 0, 0), ("y", ptr, 0, 0)]);
    let en = b.enumeration("e", 4, true, &[("NEG", -2), ("POS", 7)]);
    let en_u = b.enumeration("eu", 4, false, &[("BIG", 0xffff_fff0)]);
    let fwd = b.fwd("f", true);
    let td = b.typedef("t", int);
    let vol = b.volatile(int);
    let cons = b.constant(int);
    let res = b.restrict(ptr);
    let proto = b.func_proto(TypeId::VOID, &[("fmt", ptr), ("", TypeId::VOID)]);
    let func = b.func("printk", proto, Linkage::Global);
    let var = b.var("jiffies", int, Linkage::Global);
    let sec = b.datasec(".data", 64, &[(var, 8, 4)]);
    let flt = b.float("double", 8);
    let tag = b.decl_tag("user", st, 0);
    let ttag = b.type_tag("user", int);
    let e64 = b.enum64("e64", 8, false, &[("HUGE", 1 << 40)]);
    let e64s = b.enum64("e64s", 8, true, &[("MINUS", u64::MAX)]);
    let btf = Btf::parse(&b.finish()).unwrap();
    assert_eq!(btf.len(), 22);
    assert!(!btf.is_empty());
    let kinds: Vec<Kind> = btf.types().map(|t| t.kind()).collect();
    use Kind::*;
    assert_eq!(
        kinds,
        [
            Void, Int, Ptr, Array, Struct, Union, Enum, Enum, Fwd, Typedef, Volatile, Const,
            Restrict, FuncProto, Func, Var, Datasec, Float, DeclTag, TypeTag, Enum64, Enum64
        ]
    );
    let t = |id| btf.get(id).unwrap();
    let i = t(int).int().unwrap();
    assert_eq!((i.bits, i.offset, i.encoding.is_signed()), (32, 0, true));
    assert_eq!(t(ptr).target(), Some(int));
    assert_eq!(
        t(arr).array(),
        Some(ArrayInfo {
            elem: int,
            index: int,
            nelems: 3
        })
    );
    assert_eq!(btf.size_of(arr), Ok(12));
    assert_eq!(t(st).members().count(), 1);
    assert_eq!(btf.size_of(un), Ok(4));
    let vals: Vec<(&str, i128)> = t(en).enumerators().map(|e| (e.name, e.value)).collect();
    assert_eq!(vals, [("NEG", -2), ("POS", 7)]);
    assert_eq!(t(en_u).enumerators().next().unwrap().value, 0xffff_fff0);
    assert_eq!(t(e64).enumerators().next().unwrap().value, 1 << 40);
    assert_eq!(t(e64s).enumerators().next().unwrap().value, -1);
    assert!(t(fwd).kind_flag());
    assert_eq!(btf.type_name(fwd).unwrap(), "union f");
    assert_eq!(btf.resolve(td), Ok(int));
    assert_eq!(btf.resolve(vol), Ok(int));
    assert_eq!(btf.resolve(cons), Ok(int));
    assert_eq!(btf.resolve(ttag), Ok(int));
    assert_eq!(btf.resolve(res), Ok(ptr));
    assert_eq!(btf.type_name(res).unwrap(), "int *restrict");
    assert_eq!(btf.type_name(ttag).unwrap(), "int");
    let f = btf.func_proto("printk").unwrap();
    assert!(f.variadic);
    assert_eq!(f.params.len(), 1);
    assert_eq!(f.ret, TypeId::VOID);
    assert_eq!(f.signature(&btf).unwrap(), "void printk(int *fmt, ...)");
    assert_eq!(t(func).linkage(), Some(Linkage::Global));
    assert_eq!(t(var).linkage(), Some(Linkage::Global));
    assert_eq!(btf.size_of(var), Ok(4));
    assert_eq!(
        t(sec).secinfos().collect::<Vec<_>>(),
        [VarSecinfo {
            ty: var,
            offset: 8,
            size: 4
        }]
    );
    assert_eq!(btf.size_of(sec), Ok(64));
    assert_eq!(btf.size_of(flt), Ok(8));
    assert_eq!(t(tag).component_idx(), Some(0));
    assert_eq!(t(tag).target(), Some(st));
    assert_eq!(btf.size_of(e64), Ok(8));
    assert_eq!(Kind::FuncProto.to_string(), "FUNC_PROTO");
    // Views of the wrong kind are empty.
    assert_eq!(t(int).members().count(), 0);
    assert_eq!(t(int).array(), None);
    assert_eq!(t(st).int(), None);
    assert_eq!(t(st).params().count(), 0);
}

#[test]
fn bitfields_with_and_without_kind_flag() {
    let mut b = BtfBuilder::default();
    let uint = b.int("unsigned int", 4, IntEncoding::NONE, 32);
    // struct { unsigned a:3, b:5; unsigned c; } with kind_flag.
    let kf = b.structure(
        "kf",
        8,
        &[("a", uint, 0, 3), ("b", uint, 3, 5), ("c", uint, 32, 0)],
    );
    // The old encoding: the width (and offset) in a dedicated INT.
    let bits5 = b.int_at("unsigned int", 4, IntEncoding::NONE, 3, 5);
    let old = b.structure("old", 4, &[("a", uint, 0, 0), ("b", bits5, 0, 0)]);
    let btf = Btf::parse(&b.finish()).unwrap();
    assert!(btf.get(kf).unwrap().kind_flag());
    let m: Vec<(&str, u32, u8)> = btf
        .members(kf)
        .unwrap()
        .iter()
        .map(|m| (m.name, m.bit_offset, m.bitfield_size))
        .collect();
    assert_eq!(m, [("a", 0, 3), ("b", 3, 5), ("c", 32, 0)]);
    let b_ = btf.member(kf, "b").unwrap();
    assert_eq!(
        (b_.bit_offset, b_.bitfield_size, b_.byte_offset()),
        (3, 5, 0)
    );
    let c = btf.member(kf, "c").unwrap();
    assert_eq!((c.byte_offset(), c.bitfield_size), (4, 0));
    assert!(!btf.get(old).unwrap().kind_flag());
    let ob = btf.member(old, "b").unwrap();
    assert_eq!((ob.bit_offset, ob.bitfield_size), (3, 5));
    // The raw view keeps the record as written.
    let raw: Vec<u8> = btf
        .get(old)
        .unwrap()
        .members()
        .map(|m| m.bitfield_size)
        .collect();
    assert_eq!(raw, [0, 0]);
}

#[test]
fn type_names_follow_c_declarators() {
    let mut b = BtfBuilder::default();
    let char_ = b.int("char", 1, SIGNED, 8);
    let int = b.int("int", 4, SIGNED, 32);
    let p = b.ptr(char_);
    let cp = b.constant(p);
    let pp = b.ptr(p);
    let arr = b.array(char_, int, 16);
    let parr = b.ptr(arr);
    let arr_p = b.array(p, int, 4);
    let file = b.fwd("file", false);
    let fp = b.ptr(file);
    let long = b.int("long int", 8, SIGNED, 64);
    let proto = b.func_proto(int, &[("", fp), ("", long)]);
    let fnp = b.ptr(proto);
    let empty = b.func_proto(TypeId::VOID, &[]);
    let anon = b.structure("", 0, &[]);
    let anon_u = b.union("", 0, &[]);
    let anon_e = b.enumeration("", 4, false, &[]);
    let void_p = b.ptr(TypeId::VOID);
    let vc = b.volatile(cp);
    let btf = Btf::parse(&b.finish()).unwrap();
    let n = |id| btf.type_name(id).unwrap();
    assert_eq!(n(p), "char *");
    assert_eq!(n(cp), "char *const");
    assert_eq!(n(vc), "char *const volatile");
    assert_eq!(n(pp), "char **");
    assert_eq!(n(arr), "char[16]");
    assert_eq!(n(parr), "char (*)[16]");
    assert_eq!(n(arr_p), "char *[4]");
    assert_eq!(n(fnp), "int (*)(struct file *, long int)");
    assert_eq!(n(empty), "void (void)");
    assert_eq!(n(anon), "struct {...}");
    assert_eq!(n(anon_u), "union {...}");
    assert_eq!(n(anon_e), "enum {...}");
    assert_eq!(n(void_p), "void *");
    assert_eq!(n(TypeId::VOID), "void");
}

#[test]
fn size_of_arrays_and_overflow() {
    let mut b = BtfBuilder::default();
    let int = b.int("int", 4, SIGNED, 32);
    let row = b.array(int, int, 3);
    let grid = b.array(row, int, 5);
    let huge = b.array(int, int, u32::MAX);
    let huger = b.array(huge, int, u32::MAX);
    let hugest = b.array(huger, int, u32::MAX);
    let btf = Btf::parse(&b.finish()).unwrap();
    assert_eq!(btf.size_of(grid), Ok(60));
    assert_eq!(btf.size_of(huge), Ok(4 * u64::from(u32::MAX)));
    assert_eq!(btf.size_of(hugest), Err(LookupError::SizeOverflow(hugest)));
}

#[test]
fn cycles_end_in_errors() {
    let mut b = BtfBuilder::default();
    // typedef a -> typedef b -> typedef a
    let a = b.next_id();
    let bb = TypeId(a.0 + 1);
    b.typedef("a", bb);
    b.typedef("b", a);
    // A pointer to itself, a const of itself.
    let selfp = b.next_id();
    b.ptr(selfp);
    let selfc = b.next_id();
    b.constant(selfc);
    // An array of itself.
    let selfa = b.next_id();
    b.array(selfa, selfa, 2);
    // A struct whose anonymous member is itself.
    let selfs = b.next_id();
    b.structure("loop", 4, &[("", selfs, 0, 0)]);
    // A function prototype taking itself.
    let selff = b.next_id();
    b.func_proto(selff, &[("x", selff)]);
    // A list_head: a legitimate pointer cycle.
    let lh = TypeId(b.next_id().0 + 1);
    let lhp = b.ptr(lh);
    b.structure(
        "list_head",
        16,
        &[("next", lhp, 0, 0), ("prev", lhp, 64, 0)],
    );
    let btf = Btf::parse(&b.finish()).unwrap();
    assert_eq!(btf.resolve(a), Err(LookupError::TooDeep(a)));
    assert_eq!(btf.size_of(a), Err(LookupError::TooDeep(a)));
    assert!(matches!(btf.type_name(a), Ok(n) if n == "a"));
    assert!(matches!(btf.members(a), Err(LookupError::TooDeep(_))));
    assert!(matches!(btf.type_name(selfp), Err(LookupError::TooDeep(_))));
    assert_eq!(btf.size_of(selfp), Ok(8));
    assert!(matches!(btf.type_name(selfc), Err(LookupError::TooDeep(_))));
    assert!(matches!(btf.resolve(selfc), Err(LookupError::TooDeep(_))));
    assert!(matches!(btf.size_of(selfa), Err(LookupError::TooDeep(_))));
    assert!(matches!(btf.type_name(selfa), Err(LookupError::TooDeep(_))));
    assert!(matches!(
        btf.member(selfs, "x"),
        Err(LookupError::TooDeep(_))
    ));
    assert!(matches!(btf.type_name(selff), Err(LookupError::TooDeep(_))));
    assert_eq!(btf.type_name(lhp).unwrap(), "struct list_head *");
    assert_eq!(btf.member_path(lh, "prev").unwrap().byte_offset(), 8);
    assert_eq!(btf.size_of(lh), Ok(16));
}

#[test]
fn wide_reference_trees_are_cut_off() {
    let mut b = BtfBuilder::default();
    let int = b.int("int", 4, SIGNED, 32);
    // Each level: a struct of 2000 anonymous members of the level below: 2000^3 paths.
    let mut level = b.structure("", 4, &[("x", int, 0, 0)]);
    for _ in 0..3 {
        let members: Vec<(&str, TypeId, u32, u8)> = (0..2000).map(|_| ("", level, 0, 0)).collect();
        level = b.structure("", 4, &members);
    }
    // The same for names: a prototype of 2000 prototypes of 2000 prototypes.
    let mut proto = b.func_proto(int, &[]);
    for _ in 0..3 {
        let params: Vec<(&str, TypeId)> = (0..2000).map(|_| ("", proto)).collect();
        proto = b.func_proto(int, &params);
    }
    let btf = Btf::parse(&b.finish()).unwrap();
    assert!(matches!(
        btf.member(level, "nope"),
        Err(LookupError::TooComplex(_))
    ));
    assert!(matches!(
        btf.type_name(proto),
        Err(LookupError::TooComplex(_))
    ));
}

fn header_with(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut blob = sample().blob;
    f(&mut blob);
    blob
}

fn put32(blob: &mut [u8], at: usize, v: u32) {
    blob[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn get32(blob: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(blob[at..at + 4].try_into().unwrap())
}

#[test]
fn header_errors() {
    assert_eq!(Btf::parse(&[]).unwrap_err(), BtfError::TooShort { len: 0 });
    assert_eq!(
        Btf::parse(&[0x9f, 0xeb, 1]).unwrap_err(),
        BtfError::TooShort { len: 3 }
    );
    assert_eq!(
        Btf::parse(&header_with(|b| b[..2].copy_from_slice(b"\x7fE"))).unwrap_err(),
        BtfError::BadMagic { magic: 0x457f }
    );
    let be = header_with(|b| b.swap(0, 1));
    assert_eq!(Btf::parse(&be).unwrap_err(), BtfError::BigEndian);
    assert!(
        Btf::parse(&be)
            .unwrap_err()
            .to_string()
            .contains("little-endian")
    );
    assert_eq!(
        Btf::parse(&header_with(|b| b[2] = 2)).unwrap_err(),
        BtfError::UnsupportedVersion { version: 2 }
    );
    let len = sample().blob.len();
    assert_eq!(
        Btf::parse(&header_with(|b| put32(b, 4, 8))).unwrap_err(),
        BtfError::BadHeaderLen { hdr_len: 8, len }
    );
    assert!(matches!(
        Btf::parse(&header_with(|b| put32(b, 4, u32::MAX))),
        Err(BtfError::BadHeaderLen { .. })
    ));
    assert!(matches!(
        Btf::parse(&header_with(|b| put32(b, 12, u32::MAX))),
        Err(BtfError::SectionOutOfBounds {
            section: "type",
            ..
        })
    ));
    assert!(matches!(
        Btf::parse(&header_with(|b| put32(b, 16, u32::MAX))),
        Err(BtfError::SectionOutOfBounds {
            section: "string",
            ..
        })
    ));
}

#[test]
fn string_section_errors() {
    let blob = sample().blob;
    let str_start = 24 + get32(&blob, 16) as usize;
    let err = Btf::parse(&header_with(|b| b[str_start] = b'x')).unwrap_err();
    assert!(matches!(err, BtfError::BadStrings { offset, .. } if offset == str_start as u64));
    let last = blob.len() - 1;
    assert!(matches!(
        Btf::parse(&header_with(|b| b[last] = b'x')),
        Err(BtfError::BadStrings { offset, .. }) if offset == last as u64
    ));
    // "int" is the first name: make it invalid UTF-8.
    assert!(matches!(
        Btf::parse(&header_with(|b| b[str_start + 1] = 0xff)),
        Err(BtfError::BadStrings { reason: "invalid UTF-8", offset, .. }) if offset == str_start as u64 + 1
    ));
    // An empty string section.
    assert!(matches!(
        Btf::parse(&header_with(|b| put32(b, 20, 0))),
        Err(BtfError::BadStrings { .. })
    ));
}

#[test]
fn record_errors_name_the_type_and_offset() {
    // A truncated type section: the last record loses its last word.
    let blob = sample().blob;
    let type_len = get32(&blob, 12);
    let cut = header_with(|b| put32(b, 12, type_len - 4));
    assert!(matches!(
        Btf::parse(&cut),
        Err(BtfError::Truncated {
            need: 12,
            have: 8,
            ..
        })
    ));
    // A struct whose members run past the end.
    let mut b = BtfBuilder::default();
    let int = b.int("int", 4, SIGNED, 32);
    b.raw(0, 4, false, 3, 8, &[0, int.0, 0]);
    let e = Btf::parse(&b.finish()).unwrap_err();
    assert_eq!(
        e,
        BtfError::Truncated {
            id: 2,
            offset: 24 + 16,
            need: 12 + 36,
            have: 24
        }
    );
    assert!(e.to_string().contains("type 2 at offset 0x28"));

    let one = |name_off: u32, kind: u8, st: u32, trailing: &[u32]| {
        let mut b = BtfBuilder::default();
        b.int("int", 4, SIGNED, 32);
        b.raw(name_off, kind, false, 0, st, trailing);
        Btf::parse(&b.finish())
    };
    assert_eq!(
        one(0, 20, 0, &[]).unwrap_err(),
        BtfError::UnknownKind {
            id: 2,
            offset: 40,
            kind: 20
        }
    );
    assert!(matches!(
        one(0, 0, 0, &[]),
        Err(BtfError::UnknownKind { kind: 0, .. })
    ));
    assert_eq!(
        one(1000, 2, 1, &[]).unwrap_err(),
        BtfError::BadName {
            id: 2,
            offset: 40,
            name_off: 1000
        }
    );
    assert_eq!(
        one(0, 2, 7, &[]).unwrap_err(),
        BtfError::BadTypeRef {
            id: 2,
            offset: 40,
            target: 7,
            count: 3
        }
    );
    // An array's element, a member's type, a parameter's type, a section variable's type.
    assert!(matches!(
        one(0, 3, 0, &[9, 1, 1]),
        Err(BtfError::BadTypeRef { target: 9, .. })
    ));
    for (kind, trailing) in [(4u8, vec![0, 9, 0]), (13, vec![0, 9]), (15, vec![9, 0, 4])] {
        let mut b = BtfBuilder::default();
        b.int("int", 4, SIGNED, 32);
        b.raw(0, kind, false, 1, 0, &trailing);
        assert!(
            matches!(
                Btf::parse(&b.finish()),
                Err(BtfError::BadTypeRef {
                    id: 2,
                    target: 9,
                    ..
                })
            ),
            "kind {kind}"
        );
    }
    // A name offset in the middle of a multi-byte character.
    let mut b = BtfBuilder::default();
    let off = b.string("é");
    b.raw(off + 1, 1, false, 0, 4, &[32]);
    assert!(matches!(
        Btf::parse(&b.finish()),
        Err(BtfError::BadName { .. })
    ));
}

/// Every query on every type of a parsed blob returns, whatever it returns.
fn exercise(btf: &Btf) {
    for t in btf.types() {
        let id = t.id();
        let _ = btf.resolve(id);
        let _ = btf.size_of(id);
        let _ = btf.type_name(id);
        if let Ok(members) = btf.members(id) {
            for m in members.iter().take(8) {
                let _ = btf.member(id, m.name);
                let _ = btf.member_path(id, &format!("{}.x", m.name));
            }
            let _ = btf.member(id, "no_such_member");
        }
        if t.kind() == Kind::Func
            && let Ok(f) = btf.func_proto(t.name())
        {
            let _ = f.signature(btf);
        }
        let _ = t.enumerators().count() + t.params().count() + t.secinfos().count();
        let _ = (t.int(), t.array(), t.linkage(), t.component_idx());
    }
}

#[test]
fn every_truncation_and_byte_flip_is_an_error_or_a_blob() {
    let blob = sample().blob;
    exercise(&Btf::parse(&blob).unwrap());
    for len in 0..blob.len() {
        if let Ok(btf) = Btf::parse(&blob[..len]) {
            exercise(&btf);
        }
    }
    for at in 0..blob.len() {
        for x in [0x01, 0x80, 0xff] {
            let mut b = blob.clone();
            b[at] ^= x;
            if let Ok(btf) = Btf::parse(&b) {
                exercise(&btf);
            }
        }
    }
}

#[test]
fn duplicate_names_find_the_lowest_id_of_the_kind() {
    let mut b = BtfBuilder::default();
    let fwd = b.fwd("file", false);
    let s1 = b.structure("file", 8, &[]);
    let s2 = b.structure("file", 16, &[]);
    let td = b.typedef("file", s1);
    let btf = Btf::parse(&b.finish()).unwrap();
    assert_eq!(btf.find("file", Kind::Struct), Ok(s1));
    assert_eq!(btf.find("file", Kind::Fwd), Ok(fwd));
    assert_eq!(btf.find("file", Kind::Typedef), Ok(td));
    let all: Vec<TypeId> = btf.find_all("file").map(|t| t.id()).collect();
    assert_eq!(all, [s1, s2, fwd, td]);
    assert_eq!(btf.find_all("fil").count(), 0);
    assert_eq!(btf.find_all("files").count(), 0);
    assert_eq!(btf.find_all("").count(), 0);
}

/// A minimal ELF64 file with section headers [null, .shstrtab, .BTF].
fn elf_with_btf(btf: &[u8], section_name: &str) -> Vec<u8> {
    let shstrtab = format!("\0.shstrtab\0{section_name}\0").into_bytes();
    let mut f = vec![0u8; 64];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2;
    f[5] = 1;
    f[6] = 1;
    let names_off = f.len();
    f.extend_from_slice(&shstrtab);
    let btf_off = f.len();
    f.extend_from_slice(btf);
    while f.len() % 8 != 0 {
        f.push(0);
    }
    let shoff = f.len();
    let section = |name: u32, ty: u32, off: usize, size: usize| {
        let mut s = vec![0u8; 64];
        s[..4].copy_from_slice(&name.to_le_bytes());
        s[4..8].copy_from_slice(&ty.to_le_bytes());
        s[24..32].copy_from_slice(&(off as u64).to_le_bytes());
        s[32..40].copy_from_slice(&(size as u64).to_le_bytes());
        s
    };
    f.extend(section(0, 0, 0, 0));
    f.extend(section(1, 3, names_off, shstrtab.len()));
    f.extend(section(11, 1, btf_off, btf.len()));
    f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
    f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
    f[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
    f
}

#[test]
fn from_elf_reads_the_btf_section() {
    let s = sample();
    let btf = Btf::from_elf(&elf_with_btf(&s.blob, ".BTF")).unwrap();
    assert_eq!(btf.find("task_struct", Kind::Struct), Ok(s.task));
    assert_eq!(btf.header().version, 1);
    assert_eq!(
        Btf::from_elf(&elf_with_btf(&s.blob, ".BTF.ext")).unwrap_err(),
        BtfError::NoBtfSection
    );
    assert!(matches!(
        Btf::from_elf(&s.blob),
        Err(BtfError::Elf(crate::elf::ElfError::NotElf))
    ));
    let mut bad = elf_with_btf(&s.blob, ".BTF");
    bad[0x3e] = 9;
    assert_eq!(Btf::from_elf(&bad).unwrap_err(), BtfError::NoBtfSection);
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/btf")
}

/// Every file of the committed fuzz regression corpus parses or fails without panicking,
/// and every query on what parses returns. Seeds say in their name what they are:
/// `seed-good-*` parse, `seed-bad-*` do not; fuzzer finds can go either way.
#[test]
fn fuzz_regression_corpus_replays() {
    let dir = corpus_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 8,
        "corpus {} has {} files",
        dir.display(),
        files.len()
    );
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let r = Btf::parse(&bytes);
        if let Ok(btf) = &r {
            exercise(btf);
        }
        if name.starts_with("seed-good-") {
            assert!(r.is_ok(), "{name}: {r:?}");
        } else if name.starts_with("seed-bad-") {
            assert!(r.is_err(), "{name} parsed");
        }
    }
}

/// Regenerates the seeds of the fuzz regression corpus (fuzzer finds next to them are left
/// alone): `cargo test -p introspect --lib btf::tests::write_regression_seeds -- --ignored`.
#[test]
#[ignore = "writes fuzz/regressions/btf/seed-*"]
fn write_regression_seeds() {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let good = sample().blob;
    let mut seeds: Vec<(&str, Vec<u8>)> = vec![("seed-good-kernel-like", good.clone())];
    // Every kind once.
    let mut b = BtfBuilder::default();
    let int = b.int("int", 4, SIGNED, 32);
    let ptr = b.ptr(int);
    b.array(int, int, 3);
    let st = b.structure("s", 4, &[("x", int, 0, 3), ("", int, 3, 5)]);
    b.union("u", 4, &[("x", int, 0, 0), ("y", ptr, 0, 0)]);
    b.enumeration("e", 4, true, &[("NEG", -2)]);
    b.fwd("f", true);
    b.typedef("t", int);
    b.volatile(int);
    let c = b.constant(int);
    b.restrict(ptr);
    let proto = b.func_proto(c, &[("fmt", ptr), ("", TypeId::VOID)]);
    b.func("printk", proto, Linkage::Global);
    let var = b.var("v", int, Linkage::Static);
    b.datasec(".data", 8, &[(var, 0, 4)]);
    b.float("double", 8);
    b.decl_tag("tag", st, -1);
    b.type_tag("user", int);
    b.enum64("e64", 8, false, &[("BIG", 1 << 40)]);
    seeds.push(("seed-good-every-kind", b.finish()));
    // Cycles that parse (and must not hang the queries).
    let mut b = BtfBuilder::default();
    let a = b.next_id();
    b.typedef("a", TypeId(a.0 + 1));
    b.typedef("b", a);
    let s = b.next_id();
    b.structure("loop", 4, &[("", s, 0, 0)]);
    let p = b.next_id();
    b.ptr(p);
    seeds.push(("seed-good-cycles", b.finish()));
    let mut be = good.clone();
    be.swap(0, 1);
    seeds.push(("seed-bad-big-endian", be));
    let mut cut = good.clone();
    let tl = get32(&cut, 12);
    put32(&mut cut, 12, tl - 4);
    seeds.push(("seed-bad-truncated-record", cut));
    let mut strs = good.clone();
    let last = strs.len() - 1;
    strs[last] = b'x';
    seeds.push(("seed-bad-unterminated-strings", strs));
    let mut hdr = good.clone();
    put32(&mut hdr, 16, u32::MAX);
    seeds.push(("seed-bad-string-section-out-of-bounds", hdr));
    let mut b = BtfBuilder::default();
    b.raw(0, 2, false, 0, 99, &[]);
    seeds.push(("seed-bad-dangling-ref", b.finish()));
    let mut b = BtfBuilder::default();
    b.raw(0, 4, false, 0xffff, 0, &[]);
    seeds.push(("seed-bad-huge-vlen", b.finish()));
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
