//! Debian's stock 6.1 kernel's BTF (`CONFIG_DEBUG_INFO_BTF=y`), read by `introspect::btf`
//! and checked against an independent reader run here: `bpftool btf dump file <vmlinux>
//! format raw` (Debian package `bpftool`) on the same ELF. Every type's kind and name, and
//! every field bpftool prints (sizes, type IDs, member bit offsets and bitfield sizes,
//! enumerator values, parameters, section variables) must agree; then the members and the
//! prototype the probe work needs are checked one by one. The bzImage fetched by
//! `scripts/fetch-debian-kernel.sh` is decompressed with hvprobe's own loader.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use introspect::btf::{Btf, Kind, Linkage, Type, TypeId};
use introspect::elf::ElfFile;
use introspect::symbols::kallsyms::find_kallsyms_in_elf;

/// One type as bpftool prints it: `[id] KIND 'name' key=value ...`, then one line per
/// member, enumerator, parameter or section variable.
#[derive(Debug, Default)]
struct RawType {
    kind: String,
    name: String,
    attrs: HashMap<String, String>,
    lines: Vec<(String, HashMap<String, String>)>,
}

/// `key=value` tokens (a trailing comma dropped: bpftool prints `type_id=7, linkage=...`).
fn key_values(s: &str) -> HashMap<String, String> {
    s.split_whitespace()
        .filter_map(|tok| tok.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_end_matches(',').to_owned()))
        .collect()
}

/// `'name' rest` -> (name, rest).
fn quoted(s: &str) -> (String, &str) {
    let s = s.trim_start();
    match s.strip_prefix('\'').and_then(|r| r.split_once('\'')) {
        Some((name, rest)) => (name.to_owned(), rest),
        None => (String::new(), s),
    }
}

/// bpftool's raw dump, indexed by type ID (index 0 is void).
fn parse_bpftool(text: &str) -> Vec<RawType> {
    let mut types = vec![RawType {
        kind: "UNKN".into(),
        name: "(anon)".into(),
        ..RawType::default()
    }];
    for line in text.lines() {
        if let Some(sub) = line.strip_prefix('\t') {
            let (name, rest) = quoted(sub);
            types
                .last_mut()
                .expect("a member line before any type")
                .lines
                .push((name, key_values(rest)));
            continue;
        }
        let (id, rest) = line
            .strip_prefix('[')
            .and_then(|l| l.split_once("] "))
            .unwrap_or_else(|| panic!("unexpected bpftool line: {line}"));
        assert_eq!(id.parse::<usize>().unwrap(), types.len(), "IDs in order");
        let (kind, rest) = rest.split_once(' ').unwrap();
        let (name, rest) = quoted(rest);
        types.push(RawType {
            kind: kind.to_owned(),
            name,
            attrs: key_values(rest),
            lines: Vec::new(),
        });
    }
    types
}

fn kv(pairs: &[(&str, String)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn linkage(l: Option<Linkage>) -> String {
    match l {
        Some(Linkage::Static) => "static".into(),
        Some(Linkage::Global) => "global".into(),
        Some(Linkage::Extern) => "extern".into(),
        other => format!("{other:?}"),
    }
}

/// What our parse says about a type, in bpftool's words: (attributes, sub-lines).
type Printed = (
    HashMap<String, String>,
    Vec<(String, HashMap<String, String>)>,
);

fn as_bpftool(btf: &Btf, t: &Type<'_>) -> Printed {
    let anon = |s: &str| {
        if s.is_empty() {
            "(anon)".to_owned()
        } else {
            s.to_owned()
        }
    };
    let id = |t: TypeId| t.0.to_string();
    let size = || t.size().unwrap().to_string();
    let vlen = || t.vlen().to_string();
    let mut lines = Vec::new();
    let attrs = match t.kind() {
        Kind::Int => {
            let i = t.int().unwrap();
            let enc = match i.encoding.0 {
                0 => "(none)",
                1 => "SIGNED",
                2 => "CHAR",
                4 => "BOOL",
                _ => "?",
            };
            kv(&[
                ("size", size()),
                ("bits_offset", i.offset.to_string()),
                ("nr_bits", i.bits.to_string()),
                ("encoding", enc.into()),
            ])
        }
        Kind::Ptr | Kind::Typedef | Kind::Volatile | Kind::Const | Kind::Restrict => {
            kv(&[("type_id", id(t.target().unwrap()))])
        }
        Kind::TypeTag => kv(&[("type_id", id(t.target().unwrap()))]),
        Kind::Array => {
            let a = t.array().unwrap();
            kv(&[
                ("type_id", id(a.elem)),
                ("index_type_id", id(a.index)),
                ("nr_elems", a.nelems.to_string()),
            ])
        }
        Kind::Struct | Kind::Union => {
            for m in t.members() {
                let mut a = vec![
                    ("type_id", id(m.ty)),
                    ("bits_offset", m.bit_offset.to_string()),
                ];
                if m.bitfield_size != 0 {
                    a.push(("bitfield_size", m.bitfield_size.to_string()));
                }
                lines.push((anon(m.name), kv(&a)));
            }
            kv(&[("size", size()), ("vlen", vlen())])
        }
        Kind::Enum | Kind::Enum64 => {
            let signed = t.kind_flag();
            for e in t.enumerators() {
                let val = match (t.kind(), signed) {
                    (Kind::Enum, _) => e.value.to_string(),
                    (_, true) => format!("{}LL", e.value),
                    (_, false) => format!("{}ULL", e.value),
                };
                lines.push((anon(e.name), kv(&[("val", val)])));
            }
            let enc = if signed { "SIGNED" } else { "UNSIGNED" };
            kv(&[("encoding", enc.into()), ("size", size()), ("vlen", vlen())])
        }
        Kind::Fwd => {
            let k = if t.kind_flag() { "union" } else { "struct" };
            kv(&[("fwd_kind", k.into())])
        }
        Kind::Func => kv(&[
            ("type_id", id(t.target().unwrap())),
            ("linkage", linkage(t.linkage())),
        ]),
        Kind::FuncProto => {
            for p in t.params() {
                lines.push((anon(p.name), kv(&[("type_id", id(p.ty))])));
            }
            kv(&[("ret_type_id", id(t.target().unwrap())), ("vlen", vlen())])
        }
        Kind::Var => kv(&[
            ("type_id", id(t.target().unwrap())),
            ("linkage", linkage(t.linkage())),
        ]),
        Kind::Datasec => {
            for v in t.secinfos() {
                let var = btf.get(v.ty).unwrap();
                lines.push((
                    String::new(),
                    kv(&[
                        ("type_id", id(v.ty)),
                        ("offset", v.offset.to_string()),
                        ("size", v.size.to_string()),
                    ]),
                ));
                assert!(!var.name().is_empty());
            }
            kv(&[("size", size()), ("vlen", vlen())])
        }
        Kind::Float => kv(&[("size", size())]),
        Kind::DeclTag => kv(&[
            ("type_id", id(t.target().unwrap())),
            ("component_idx", t.component_idx().unwrap().to_string()),
        ]),
        Kind::Void => HashMap::new(),
    };
    (attrs, lines)
}

/// Whether `have` holds every key of `want` with the same value.
fn agrees(want: &HashMap<String, String>, have: &HashMap<String, String>) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

/// bpftool's view of a member: its cumulative bit offset and type ID, looking inside
/// anonymous members as C does (independent of introspect's lookup).
fn raw_member(raw: &[RawType], id: usize, name: &str) -> Option<(u64, usize)> {
    let t = &raw[id];
    let num = |m: &HashMap<String, String>, k: &str| m[k].parse::<u64>().unwrap();
    for (n, m) in &t.lines {
        if n == name {
            return Some((num(m, "bits_offset"), m["type_id"].parse().unwrap()));
        }
    }
    for (n, m) in &t.lines {
        if n != "(anon)" {
            continue;
        }
        let mut inner: usize = m["type_id"].parse().unwrap();
        while matches!(
            raw[inner].kind.as_str(),
            "TYPEDEF" | "CONST" | "VOLATILE" | "TYPE_TAG"
        ) {
            inner = raw[inner].attrs["type_id"].parse().unwrap();
        }
        if let Some((off, ty)) = raw_member(raw, inner, name) {
            return Some((num(m, "bits_offset") + off, ty));
        }
    }
    None
}

fn raw_find(raw: &[RawType], name: &str, kind: &str) -> usize {
    raw.iter()
        .position(|t| t.name == name && t.kind == kind)
        .unwrap_or_else(|| panic!("bpftool has no {kind} '{name}'"))
}

fn find_bpftool() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join("bpftool"))
        .find(|p| p.is_file())
}

/// Removes the extracted vmlinux when the test ends, however it ends.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn bpftool_dump(bpftool: &Path, elf: &[u8]) -> String {
    let tmp = TempFile(
        std::env::temp_dir().join(format!("hvprobe-btf-debian-{}.vmlinux", std::process::id())),
    );
    std::fs::write(&tmp.0, elf).unwrap();
    let t = Instant::now();
    let out = std::process::Command::new(bpftool)
        .args(["btf", "dump", "file"])
        .arg(&tmp.0)
        .args(["format", "raw"])
        .output()
        .expect("run bpftool");
    assert!(
        out.status.success(),
        "bpftool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "bpftool: {} bytes of raw dump in {:?}",
        out.stdout.len(),
        t.elapsed()
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn debian_kernel_btf_matches_bpftool() {
    let Some(bz) = hvprobe_tests::debian_kernel() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must fetch the Debian kernel first (scripts/fetch-debian-kernel.sh)"
        );
        hvprobe_tests::skip(
            "Debian kernel BTF",
            "Debian kernel not fetched; run scripts/fetch-debian-kernel.sh",
        );
        return;
    };
    let bzimage = std::fs::read(&bz).unwrap();
    let elf = vmm::kernel_symbols::kernel_elf(&bzimage)
        .expect("decompress the bzImage payload")
        .into_owned();

    let t = Instant::now();
    let btf = Btf::from_elf(&elf).expect("parse the .BTF section");
    let took = t.elapsed();
    let h = btf.header();
    eprintln!(
        "BTF: {} types, {} bytes (types {}, strings {}), parsed in {took:?} ({} build)",
        btf.len() - 1,
        u64::from(h.hdr_len) + u64::from(h.type_len) + u64::from(h.str_len),
        h.type_len,
        h.str_len,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    );
    assert!(btf.len() > 50_000, "only {} types", btf.len());

    // The same blob as a guest would hold it: the bytes between __start_BTF and __stop_BTF.
    let syms = find_kallsyms_in_elf(&elf)
        .expect("kallsyms in Debian's vmlinux")
        .symbols;
    let start = syms.addr_of("__start_BTF").expect("__start_BTF");
    let stop = syms.addr_of("__stop_BTF").expect("__stop_BTF");
    let image = ElfFile::parse(&elf).unwrap();
    let blob = image
        .read_vaddr(start, usize::try_from(stop - start).unwrap())
        .expect("__start_BTF..__stop_BTF in the image");
    let from_mem = Btf::parse(blob).unwrap();
    assert_eq!(from_mem.len(), btf.len());
    assert_eq!(from_mem.header(), btf.header());

    // Our own checks, which need no reference.
    let task = btf.find("task_struct", Kind::Struct).unwrap();
    let pid = btf.member(task, "pid").unwrap();
    let tgid = btf.member(task, "tgid").unwrap();
    assert_eq!(tgid.byte_offset(), pid.byte_offset() + 4);
    assert_eq!(btf.type_name(pid.ty).unwrap(), "pid_t");

    let Some(bpftool) = find_bpftool() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install bpftool (scripts/test.sh's apt package list)"
        );
        hvprobe_tests::skip(
            "Debian kernel BTF against bpftool",
            "bpftool not installed (apt-get install bpftool)",
        );
        return;
    };
    let raw = parse_bpftool(&bpftool_dump(&bpftool, &elf));
    assert_eq!(raw.len(), btf.len(), "type count: bpftool vs introspect");

    // Every type, every field bpftool prints.
    let mut mismatches = Vec::new();
    let mut fields = 0usize;
    for t in btf.types().skip(1) {
        let r = &raw[t.id().0 as usize];
        let name = if t.name().is_empty() {
            "(anon)"
        } else {
            t.name()
        };
        let (attrs, lines) = as_bpftool(&btf, &t);
        fields += 2 + attrs.len() + lines.iter().map(|l| 1 + l.1.len()).sum::<usize>();
        let same = r.kind == t.kind().as_str()
            && r.name == name
            && agrees(&attrs, &r.attrs)
            && lines.len() == r.lines.len()
            && lines
                .iter()
                .zip(&r.lines)
                .all(|(a, b)| (a.0.is_empty() || a.0 == b.0) && agrees(&a.1, &b.1));
        if !same && mismatches.len() < 20 {
            mismatches.push(format!(
                "{}: ours {} '{name}' {attrs:?} {lines:?}\n  bpftool {r:?}",
                t.id(),
                t.kind()
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    eprintln!(
        "{} types, {fields} fields: all agree with bpftool",
        btf.len() - 1
    );

    // The members hvprobe's fetches will use, through anonymous members, against bpftool.
    let checks: &[(&str, &[(&str, &str)])] = &[
        (
            "task_struct",
            &[
                ("pid", "pid_t"),
                ("tgid", "pid_t"),
                ("comm", "char[16]"),
                ("tasks", "struct list_head"),
                ("mm", "struct mm_struct *"),
                ("real_parent", "struct task_struct *"),
                ("__state", "unsigned int"),
            ],
        ),
        ("file", &[("f_path", "struct path")]),
        (
            "path",
            &[("dentry", "struct dentry *"), ("mnt", "struct vfsmount *")],
        ),
        (
            "dentry",
            &[("d_name", "struct qstr"), ("d_parent", "struct dentry *")],
        ),
        ("qstr", &[("name", "const unsigned char *")]),
    ];
    for &(sname, members) in checks {
        let id = btf.find(sname, Kind::Struct).unwrap();
        let rid = raw_find(&raw, sname, "STRUCT");
        assert_eq!(id.0 as usize, rid);
        assert_eq!(
            btf.size_of(id).unwrap().to_string(),
            raw[rid].attrs["size"],
            "sizeof(struct {sname})"
        );
        for &(m, ty_name) in members {
            let f = btf.member(id, m).unwrap();
            let (bits, ty) =
                raw_member(&raw, rid, m).unwrap_or_else(|| panic!("bpftool: no {sname}.{m}"));
            assert_eq!((f.bit_offset, f.ty.0 as usize), (bits, ty), "{sname}.{m}");
            assert_eq!(btf.type_name(f.ty).unwrap(), ty_name, "{sname}.{m}");
            eprintln!(
                "{sname}.{m}: offset {} ({ty_name}, {} bytes)",
                f.byte_offset(),
                btf.size_of(f.ty).unwrap()
            );
        }
    }
    // A path: file.f_path.dentry = offsetof(file, f_path) + offsetof(path, dentry).
    let file = btf.find("file", Kind::Struct).unwrap();
    let (f_path, _) = raw_member(&raw, raw_find(&raw, "file", "STRUCT"), "f_path").unwrap();
    let (dentry, _) = raw_member(&raw, raw_find(&raw, "path", "STRUCT"), "dentry").unwrap();
    assert_eq!(
        btf.member_path(file, "f_path.dentry").unwrap().bit_offset,
        f_path + dentry
    );
    let name = btf.member_path(file, "f_path.dentry").unwrap();
    assert_eq!(btf.type_name(name.ty).unwrap(), "struct dentry *");

    // do_sys_openat2's prototype.
    let f = btf.func_proto("do_sys_openat2").unwrap();
    let rf = raw_find(&raw, "do_sys_openat2", "FUNC");
    assert_eq!(f.func.0 as usize, rf);
    let rp: usize = raw[rf].attrs["type_id"].parse().unwrap();
    assert_eq!(f.proto.0 as usize, rp);
    assert_eq!(f.ret.0.to_string(), raw[rp].attrs["ret_type_id"]);
    let ours: Vec<(&str, String)> = f
        .params
        .iter()
        .map(|p| (p.name, p.ty.0.to_string()))
        .collect();
    let theirs: Vec<(&str, String)> = raw[rp]
        .lines
        .iter()
        .map(|(n, m)| (n.as_str(), m["type_id"].clone()))
        .collect();
    assert_eq!(ours, theirs);
    let names: Vec<(&str, String)> = f
        .params
        .iter()
        .map(|p| (p.name, btf.type_name(p.ty).unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            ("dfd", "int".to_owned()),
            ("filename", "const char *".to_owned()),
            ("how", "struct open_how *".to_owned()),
        ]
    );
    assert!(!f.variadic);
    let sig = f.signature(&btf).unwrap();
    assert_eq!(
        sig,
        "long int do_sys_openat2(int dfd, const char *filename, struct open_how *how)"
    );
    eprintln!("{sig}");
}
