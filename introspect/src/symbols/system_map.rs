//! System.map and `/proc/kallsyms` text: `ffffffff81000000 T _text`, with an optional
//! `[module]` column in `/proc/kallsyms`.

use super::table::{Symbol, SymbolTable};

/// What Debian ships as `/boot/System.map-*`: one line pointing at the -dbg package.
const DEBIAN_STUB_MARKER: &str = "The real System.map is in the";

/// Why System.map / kallsyms text did not load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SystemMapError {
    /// Debian's placeholder System.map, which holds no symbols.
    #[error(
        "This System.map is Debian's stub: the real one is in the {package} package; use the kernel image itself (its embedded kallsyms) instead"
    )]
    DebianStub {
        /// The package the stub names, e.g. `linux-image-<version>-dbg`.
        package: String,
    },
    /// No symbol lines at all.
    #[error("The System.map / kallsyms text holds no symbols")]
    Empty,
    /// Every address is zero: `/proc/kallsyms` read without the right to see addresses.
    #[error(
        "Every address is 0: /proc/kallsyms was read without privilege (kptr_restrict); read it as root"
    )]
    AddressesHidden,
    /// A line is not `ADDRESS TYPE NAME [MODULE]`.
    #[error("Line {line}: {reason}: '{text}'")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
        /// The line.
        text: String,
    },
}

impl SymbolTable {
    /// Parses System.map or `/proc/kallsyms` text.
    pub fn from_system_map(text: &str) -> Result<SymbolTable, SystemMapError> {
        if let Some(pos) = text.find(DEBIAN_STUB_MARKER) {
            let rest = &text[pos + DEBIAN_STUB_MARKER.len()..];
            let package = rest
                .split_whitespace()
                .next()
                .unwrap_or("linux-image-<version>-dbg")
                .to_string();
            return Err(SystemMapError::DebianStub { package });
        }
        let mut syms = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            syms.push(parse_line(i + 1, line)?);
        }
        if syms.is_empty() {
            return Err(SystemMapError::Empty);
        }
        if syms.len() > 1 && syms.iter().all(|s| s.addr == 0) {
            return Err(SystemMapError::AddressesHidden);
        }
        Ok(SymbolTable::new(syms))
    }
}

fn parse_line(line: usize, text: &str) -> Result<Symbol, SystemMapError> {
    let bad = |reason| SystemMapError::Malformed {
        line,
        reason,
        text: text.to_string(),
    };
    let mut fields = text.split_whitespace();
    let (Some(addr), Some(kind), Some(name)) = (fields.next(), fields.next(), fields.next()) else {
        return Err(bad("expected ADDRESS TYPE NAME"));
    };
    if addr.is_empty() || addr.len() > 16 || !addr.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("the address is not up to 16 hex digits"));
    }
    let addr = u64::from_str_radix(addr, 16).map_err(|_| bad("the address is not hex"))?;
    let mut kind_chars = kind.chars();
    let (Some(kind), None) = (kind_chars.next(), kind_chars.next()) else {
        return Err(bad("the type is not one letter"));
    };
    if !(kind.is_ascii_alphabetic() || kind == '?' || kind == '-') {
        return Err(bad("the type is not one letter"));
    }
    let module = match fields.next() {
        None => None,
        Some(m) => {
            let inner = m
                .strip_prefix('[')
                .and_then(|m| m.strip_suffix(']'))
                .filter(|m| !m.is_empty())
                .ok_or_else(|| bad("the fourth column is not [module]"))?;
            Some(inner.to_string())
        }
    };
    if fields.next().is_some() {
        return Err(bad("too many columns"));
    }
    Ok(Symbol {
        name: name.to_string(),
        addr,
        size: None,
        kind,
        module,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_system_map_and_kallsyms() {
        let text = "\
ffffffff81000000 T _text
ffffffff81000000 T startup_64
ffffffff82a00000 D linux_banner

0000000000000000 A fixed_percpu_data
ffffffffc0000000 t virtio_probe\t[virtio]
";
        let t = SymbolTable::from_system_map(text).unwrap();
        assert_eq!(t.len(), 5);
        assert_eq!(t.addr_of("linux_banner"), Some(0xffff_ffff_82a0_0000));
        let v = t.get("virtio_probe").unwrap();
        assert_eq!((v.kind, v.module.as_deref()), ('t', Some("virtio")));
        assert_eq!(t.resolve("_text+0x10"), Ok(0xffff_ffff_8100_0010));
    }

    #[test]
    fn detects_debian_stub() {
        // Byte for byte what Debian's linux-image-6.1.0-56-amd64 ships.
        let stub =
            "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n";
        assert_eq!(stub.len(), 83);
        assert_eq!(
            SymbolTable::from_system_map(stub).unwrap_err(),
            SystemMapError::DebianStub {
                package: "linux-image-<version>-dbg".into()
            }
        );
    }

    #[test]
    fn rejects_malformed_lines_with_their_number() {
        let cases = [
            ("ffffffff81000000 T\n", 1),
            ("ffffffff81000000 T a\nzz T b\n", 2),
            ("ffffffff81000000 T a\n\n1 TT b\n", 3),
            ("1 T a virtio\n", 1),
            ("1 T a [virtio] extra\n", 1),
            ("1 T a []\n", 1),
            ("11112222333344445 T a\n", 1),
            ("1 5 a\n", 1),
        ];
        for (text, line) in cases {
            match SymbolTable::from_system_map(text) {
                Err(SystemMapError::Malformed { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn empty_and_hidden() {
        assert_eq!(
            SymbolTable::from_system_map("\n\n").unwrap_err(),
            SystemMapError::Empty
        );
        let hidden = "0000000000000000 T _text\n0000000000000000 T start_kernel\n";
        assert_eq!(
            SymbolTable::from_system_map(hidden).unwrap_err(),
            SystemMapError::AddressesHidden
        );
    }
}
