//! Registers, types and fetch-tree helpers.

use disasm::{Fetch, Gpr};

use super::ProbeDef;
use super::fetch::{FetchArg, Reg};

#[test]
fn register_names() {
    for (k, r, gpr) in [
        ("ax", "rax", Some(Gpr::Rax)),
        ("bx", "rbx", Some(Gpr::Rbx)),
        ("cx", "rcx", Some(Gpr::Rcx)),
        ("dx", "rdx", Some(Gpr::Rdx)),
        ("si", "rsi", Some(Gpr::Rsi)),
        ("di", "rdi", Some(Gpr::Rdi)),
        ("bp", "rbp", Some(Gpr::Rbp)),
        ("sp", "rsp", Some(Gpr::Rsp)),
        ("r8", "r8", Some(Gpr::R8)),
        ("r15", "r15", Some(Gpr::R15)),
        ("ip", "rip", None),
        ("flags", "rflags", None),
    ] {
        let reg = Reg::from_name(k).unwrap();
        assert_eq!(Reg::from_name(r), Some(reg));
        assert_eq!(reg.name(), k);
        assert_eq!(reg.to_string(), format!("%{k}"));
        assert_eq!(reg.gpr(), gpr);
    }
    for bad in ["", "eax", "AX", "r16", "xmm0", "%ax"] {
        assert_eq!(Reg::from_name(bad), None, "{bad}");
    }
}

#[test]
fn trampoline_fetches() {
    let d = ProbeDef::parse("p f %di %flags @0x1000 %ip +0(%di) $comm").unwrap();
    let got: Vec<_> = d.args.iter().map(|a| a.fetch.trampoline_fetch()).collect();
    assert_eq!(
        got,
        [
            Some(Fetch::Reg(Gpr::Rdi)),
            Some(Fetch::Rflags),
            Some(Fetch::Mem(0x1000)),
            None,
            None,
            None
        ]
    );
}

#[test]
fn tree_queries() {
    let d = ProbeDef::parse("p f +8(file) %di a->b @x +0(%di)").unwrap();
    let btf: Vec<_> = d.args.iter().map(|a| a.fetch.needs_btf()).collect();
    assert_eq!(btf, [true, false, true, false, false]);
    let mem: Vec<_> = d.args.iter().map(|a| a.fetch.is_memory()).collect();
    assert_eq!(mem, [true, false, true, true, true]);
    assert!(FetchArg::AllArgs.needs_btf());
}
