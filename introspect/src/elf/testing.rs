//! A tiny ELF64 writer for tests: one segment and a symbol table.

/// A symbol to put in the test file's `.symtab`.
pub(crate) struct TestSym<'a> {
    pub name: &'a str,
    pub value: u64,
    pub size: u64,
    /// st_info: binding << 4 | type.
    pub info: u8,
    pub shndx: u16,
}

/// Builds an ELF64 file with one PT_LOAD segment holding `text` at `vaddr`, section
/// headers [null, .text, .bss, .symtab, .strtab, .shstrtab] and the given symbols.
pub(crate) fn build(vaddr: u64, text: &[u8], syms: &[TestSym<'_>]) -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[..4].copy_from_slice(b"\x7fELF");
    f[4] = 2;
    f[5] = 1;
    f[6] = 1;
    put16(&mut f, 0x10, 2);
    put16(&mut f, 0x12, 0x3e);
    // Program header right after the ELF header.
    let phoff = 64u64;
    f.resize(64 + 56, 0);
    let text_off = 0x1000u64;
    let mut ph = Vec::new();
    ph.extend_from_slice(&1u32.to_le_bytes());
    ph.extend_from_slice(&5u32.to_le_bytes());
    ph.extend_from_slice(&text_off.to_le_bytes());
    ph.extend_from_slice(&vaddr.to_le_bytes());
    ph.extend_from_slice(&0x100_0000u64.to_le_bytes());
    ph.extend_from_slice(&(text.len() as u64).to_le_bytes());
    ph.extend_from_slice(&(text.len() as u64 + 0x1000).to_le_bytes());
    ph.extend_from_slice(&0x1000u64.to_le_bytes());
    f[64..120].copy_from_slice(&ph);
    f.resize(0x1000, 0);
    f.extend_from_slice(text);
    // .strtab
    let mut strtab = vec![0u8];
    let mut symtab = vec![0u8; 24];
    for s in syms {
        let name = u32::try_from(strtab.len()).unwrap();
        strtab.extend_from_slice(s.name.as_bytes());
        strtab.push(0);
        let mut e = Vec::new();
        e.extend_from_slice(&name.to_le_bytes());
        e.push(s.info);
        e.push(0);
        e.extend_from_slice(&s.shndx.to_le_bytes());
        e.extend_from_slice(&s.value.to_le_bytes());
        e.extend_from_slice(&s.size.to_le_bytes());
        symtab.extend_from_slice(&e);
    }
    let shstrtab = b"\0.text\0.bss\0.symtab\0.strtab\0.shstrtab\0".to_vec();
    let symtab_off = f.len() as u64;
    f.extend_from_slice(&symtab);
    let strtab_off = f.len() as u64;
    f.extend_from_slice(&strtab);
    let shstr_off = f.len() as u64;
    f.extend_from_slice(&shstrtab);
    while f.len() % 8 != 0 {
        f.push(0);
    }
    let shoff = f.len() as u64;
    let text_len = text.len() as u64;
    let sh =
        |name: u32, ty: u32, flags: u64, addr: u64, off: u64, size: u64, link: u32, ent: u64| {
            let mut e = Vec::new();
            e.extend_from_slice(&name.to_le_bytes());
            e.extend_from_slice(&ty.to_le_bytes());
            e.extend_from_slice(&flags.to_le_bytes());
            e.extend_from_slice(&addr.to_le_bytes());
            e.extend_from_slice(&off.to_le_bytes());
            e.extend_from_slice(&size.to_le_bytes());
            e.extend_from_slice(&link.to_le_bytes());
            e.extend_from_slice(&0u32.to_le_bytes());
            e.extend_from_slice(&8u64.to_le_bytes());
            e.extend_from_slice(&ent.to_le_bytes());
            e
        };
    f.extend(sh(0, 0, 0, 0, 0, 0, 0, 0));
    f.extend(sh(1, 1, 6, vaddr, text_off, text_len, 0, 0));
    f.extend(sh(7, 8, 3, vaddr + text_len, 0, 0x1000, 0, 0));
    f.extend(sh(12, 2, 0, 0, symtab_off, symtab.len() as u64, 4, 24));
    f.extend(sh(20, 3, 0, 0, strtab_off, strtab.len() as u64, 0, 0));
    f.extend(sh(28, 3, 0, 0, shstr_off, shstrtab.len() as u64, 0, 0));
    put64(&mut f, 0x20, phoff);
    put64(&mut f, 0x28, shoff);
    put16(&mut f, 0x34, 64);
    put16(&mut f, 0x36, 56);
    put16(&mut f, 0x38, 1);
    put16(&mut f, 0x3a, 64);
    put16(&mut f, 0x3c, 6);
    put16(&mut f, 0x3e, 5);
    f
}

fn put16(f: &mut [u8], at: usize, v: u16) {
    f[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put64(f: &mut [u8], at: usize, v: u64) {
    f[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
