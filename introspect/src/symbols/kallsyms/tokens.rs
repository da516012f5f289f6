//! Finding `kallsyms_token_table` and `kallsyms_token_index`.
//!
//! The token table is 256 NUL-terminated strings, indexed by byte value. Every character
//! used in a symbol name keeps itself as its token (scripts/kallsyms.c starts from that and
//! only fills unused byte values with longer tokens), so the entries for '0' to '9' are always
//! the run "0\0" "1\0" ... "9\0". From that run we walk forward to the end of the table, read
//! `kallsyms_token_index` (256 u16 offsets) right after it, learn from it where the table
//! starts, and check that every offset matches the strings.

use super::region::Region;

/// Tokens 0x30 to 0x39: the digits, always single characters.
const DIGITS: &[u8; 20] = b"0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00";
/// The longest token we accept (KSYM_NAME_LEN in 6.1; a token is part of one name).
const MAX_TOKEN: usize = 512;

/// A validated token table and its index.
#[derive(Debug, Clone)]
pub(super) struct TokenTable<'a> {
    /// Position of the first token.
    pub(super) start: usize,
    /// Position of `kallsyms_token_index`.
    pub(super) index: usize,
    /// The 256 tokens (without their NULs).
    pub(super) tokens: Vec<&'a [u8]>,
}

impl TokenTable<'_> {
    /// The position just past `kallsyms_token_index`.
    pub(super) fn index_end(&self) -> usize {
        self.index + 512
    }
}

/// Positions of every "0\0" ... "9\0" run.
pub(super) fn digit_runs<'a>(r: &Region<'a>) -> impl Iterator<Item = usize> + 'a {
    let bytes = r.bytes;
    let mut from = 0;
    std::iter::from_fn(move || {
        while from + DIGITS.len() <= bytes.len() {
            let rel = bytes[from..].iter().position(|&b| b == b'0')?;
            let at = from + rel;
            from = at + 1;
            if bytes.get(at..at + DIGITS.len()) == Some(&DIGITS[..]) {
                return Some(at);
            }
        }
        None
    })
}

/// The token at `pos` and the position after its NUL, if it is a plausible token.
fn token_at<'a>(r: &Region<'a>, pos: usize) -> Option<(&'a [u8], usize)> {
    let window = r.bytes.get(pos..)?;
    let window = &window[..window.len().min(MAX_TOKEN + 1)];
    let len = window.iter().position(|&b| b == 0)?;
    let token = &window[..len];
    token
        .iter()
        .all(|b| (0x20..0x7f).contains(b))
        .then_some((token, pos + len + 1))
}

/// The token table whose digit tokens are at `digits`, if its index is found and agrees.
pub(super) fn token_table_at<'a>(r: &Region<'a>, digits: usize) -> Option<TokenTable<'a>> {
    // Walk tokens 0x30..=0xff to find the end of the table.
    let mut end = digits;
    for _ in 0x30..=0xff {
        end = token_at(r, end)?.1;
    }
    let mut tried = None;
    for align in [8, 4] {
        let index = r.align_up(end, align)?;
        if tried == Some(index) {
            continue;
        }
        tried = Some(index);
        if let Some(t) = check_index(r, digits, end, index) {
            return Some(t);
        }
    }
    None
}

fn check_index<'a>(
    r: &Region<'a>,
    digits: usize,
    end: usize,
    index: usize,
) -> Option<TokenTable<'a>> {
    let offset = |i: usize| r.u16(index + 2 * i).map(usize::from);
    if offset(0)? != 0 {
        return None;
    }
    let start = digits.checked_sub(offset(0x30)?)?;
    let mut tokens = Vec::with_capacity(256);
    let mut pos = start;
    for i in 0..256 {
        if offset(i)? != pos - start {
            return None;
        }
        let (token, next) = token_at(r, pos)?;
        tokens.push(token);
        pos = next;
    }
    (pos == end).then_some(TokenTable {
        start,
        index,
        tokens,
    })
}
