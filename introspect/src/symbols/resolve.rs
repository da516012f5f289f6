//! Parsing `name`, `name+0x10`, `name+16` and `0xffffffff81000000` into addresses.

use super::table::SymbolTable;

/// Why an address expression did not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Nothing was given.
    #[error("Empty address: give SYMBOL, SYMBOL+OFFSET or 0xADDRESS")]
    Empty,
    /// No symbol has that name.
    #[error("Unknown symbol '{0}'")]
    UnknownSymbol(String),
    /// The part after `+` is not a number.
    #[error("Bad offset '{offset}' in '{expr}': use decimal (16) or hex (0x10)")]
    BadOffset {
        /// The whole expression.
        expr: String,
        /// The offending offset text.
        offset: String,
    },
    /// A `0x` address with bad digits or more than 64 bits.
    #[error("Bad address '{0}': expected 0x followed by up to 16 hex digits")]
    BadAddress(String),
    /// The expression is not of a supported form.
    #[error("Cannot parse '{expr}': {reason}; give SYMBOL, SYMBOL+OFFSET or 0xADDRESS")]
    BadSyntax {
        /// The whole expression.
        expr: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Symbol plus offset runs past the top of the address space.
    #[error("'{0}' is past the top of the address space")]
    Overflow(String),
}

impl SymbolTable {
    /// The address `expr` names: `name`, `name+0x10`, `name+16`, `0xffffffff81000000`.
    pub fn resolve(&self, expr: &str) -> Result<u64, ResolveError> {
        let e = expr.trim();
        if e.is_empty() {
            return Err(ResolveError::Empty);
        }
        if e.chars().any(char::is_whitespace) {
            return Err(syntax(e, "spaces are not allowed"));
        }
        if let Some(hex) = strip_hex(e) {
            return parse_hex(hex).ok_or_else(|| ResolveError::BadAddress(e.to_string()));
        }
        let (name, offset) = match e.split_once('+') {
            Some((n, o)) => (n, Some(o)),
            None => (e, None),
        };
        if name.is_empty() {
            return Err(syntax(e, "no symbol name before '+'"));
        }
        if name.contains('-') && self.get(name).is_none() {
            return Err(syntax(e, "negative offsets are not supported"));
        }
        let off = match offset {
            None => 0,
            Some(o) => parse_offset(o).ok_or_else(|| ResolveError::BadOffset {
                expr: e.to_string(),
                offset: o.to_string(),
            })?,
        };
        let base = self
            .addr_of(name)
            .ok_or_else(|| ResolveError::UnknownSymbol(name.to_string()))?;
        base.checked_add(off)
            .ok_or_else(|| ResolveError::Overflow(e.to_string()))
    }
}

fn syntax(e: &str, reason: &'static str) -> ResolveError {
    ResolveError::BadSyntax {
        expr: e.to_string(),
        reason,
    }
}

fn strip_hex(s: &str) -> Option<&str> {
    s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))
}

fn parse_hex(digits: &str) -> Option<u64> {
    if digits.is_empty() || digits.starts_with('+') {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

fn parse_offset(o: &str) -> Option<u64> {
    match strip_hex(o) {
        Some(hex) => parse_hex(hex),
        None if o.bytes().all(|b| b.is_ascii_digit()) && !o.is_empty() => o.parse().ok(),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::table::Symbol;
    use super::*;

    fn table() -> SymbolTable {
        SymbolTable::new(vec![
            Symbol::new("start_kernel", 0xffff_ffff_8300_0000, 'T'),
            Symbol::new("foo.cold", 0x1000, 't'),
            Symbol::new("top", u64::MAX - 1, 'A'),
        ])
    }

    #[test]
    fn resolves_every_form() {
        let t = table();
        assert_eq!(t.resolve("start_kernel"), Ok(0xffff_ffff_8300_0000));
        assert_eq!(t.resolve("start_kernel+0x10"), Ok(0xffff_ffff_8300_0010));
        assert_eq!(t.resolve("start_kernel+16"), Ok(0xffff_ffff_8300_0010));
        assert_eq!(t.resolve(" foo.cold+0X1f "), Ok(0x101f));
        assert_eq!(t.resolve("0xffffffff81000000"), Ok(0xffff_ffff_8100_0000));
        assert_eq!(t.resolve("0X10"), Ok(0x10));
    }

    #[test]
    fn typed_errors() {
        let t = table();
        assert_eq!(t.resolve(""), Err(ResolveError::Empty));
        assert_eq!(t.resolve("  "), Err(ResolveError::Empty));
        assert_eq!(
            t.resolve("nope+4"),
            Err(ResolveError::UnknownSymbol("nope".into()))
        );
        for bad in [
            "start_kernel+",
            "start_kernel+0x",
            "start_kernel+zz",
            "start_kernel+1+2",
            "start_kernel+-1",
            "start_kernel+0x+1",
        ] {
            assert!(
                matches!(t.resolve(bad), Err(ResolveError::BadOffset { .. })),
                "{bad}: {:?}",
                t.resolve(bad)
            );
        }
        assert_eq!(t.resolve("0x"), Err(ResolveError::BadAddress("0x".into())));
        assert_eq!(
            t.resolve("0x1_0000_0000_0000_0000"),
            Err(ResolveError::BadAddress("0x1_0000_0000_0000_0000".into()))
        );
        assert_eq!(
            t.resolve("0x10000000000000000"),
            Err(ResolveError::BadAddress("0x10000000000000000".into()))
        );
        assert!(matches!(
            t.resolve("+0x10"),
            Err(ResolveError::BadSyntax { .. })
        ));
        assert!(matches!(
            t.resolve("a b"),
            Err(ResolveError::BadSyntax { .. })
        ));
        assert!(matches!(
            t.resolve("start_kernel-4"),
            Err(ResolveError::BadSyntax { .. })
        ));
        assert_eq!(
            t.resolve("top+2"),
            Err(ResolveError::Overflow("top+2".into()))
        );
    }
}
