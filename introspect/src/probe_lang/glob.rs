//! The kernel's `glob_match` (`lib/glob.c`), which ftrace's `~` filter operator uses.
//!
//! `*` matches any run of bytes (also none), `?` any one byte, `[abc]`, `[a-z]` a byte of a
//! class and `[!a-z]` a byte outside it (a `]` first in the class is literal), `\x` the byte
//! `x`. A malformed class (no closing `]`) makes its `[` literal. The whole string must
//! match. Time is O(pattern x string) at worst: one backtrack point (the last `*`).

/// Whether `text` matches `pattern`, as the kernel's `glob_match` decides.
///
/// ```
/// use introspect::probe_lang::glob::glob_match;
/// assert!(glob_match(b"*sh", b"bash"));
/// assert!(glob_match(b"ba*sh", b"bash"));
/// assert!(glob_match(b"[a-c]?t", b"cat"));
/// assert!(!glob_match(b"[!a-c]?t", b"cat"));
/// ```
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    // Reads past either end give NUL, as the C strings do.
    let at = |s: &[u8], i: usize| s.get(i).copied().unwrap_or(0);
    let (mut p, mut s) = (0usize, 0usize);
    let mut back: Option<(usize, usize)> = None;
    loop {
        let c = at(text, s);
        s += 1;
        let mut d = at(pattern, p);
        p += 1;
        let mut matched = None;
        match d {
            b'?' => {
                if c == 0 {
                    return false;
                }
                matched = Some(true);
            }
            b'*' => {
                if at(pattern, p) == 0 {
                    return true;
                }
                s -= 1;
                back = Some((p, s));
                matched = Some(true);
            }
            b'[' => {
                if c == 0 {
                    return false;
                }
                let inverted = at(pattern, p) == b'!';
                let mut class = p + usize::from(inverted);
                let mut a = at(pattern, class);
                class += 1;
                let mut hit = false;
                let mut malformed = false;
                loop {
                    let mut b = a;
                    if a == 0 {
                        malformed = true;
                        break;
                    }
                    if at(pattern, class) == b'-' && at(pattern, class + 1) != b']' {
                        b = at(pattern, class + 1);
                        if b == 0 {
                            malformed = true;
                            break;
                        }
                        class += 2;
                    }
                    hit |= a <= c && c <= b;
                    a = at(pattern, class);
                    class += 1;
                    if a == b']' {
                        break;
                    }
                }
                if !malformed {
                    if hit == inverted {
                        matched = Some(false);
                    } else {
                        p = class;
                        matched = Some(true);
                    }
                }
                // Malformed: the `[` is a literal (d is still `[`).
            }
            b'\\' => {
                d = at(pattern, p);
                p += 1;
            }
            _ => {}
        }
        let ok = match matched {
            Some(ok) => ok,
            None => {
                if c == d && d == 0 {
                    return true;
                }
                c == d
            }
        };
        if !ok {
            match back {
                Some((bp, bs)) if c != 0 => {
                    p = bp;
                    s = bs + 1;
                    back = Some((bp, bs + 1));
                }
                _ => return false,
            }
        }
    }
}
