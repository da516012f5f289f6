//! Hand-written number and string formatting into byte buffers: writers format millions of
//! events per second, and `core::fmt` costs about three times as many instructions per line
//! (callgrind).

/// Appends `v` in decimal.
pub(super) fn dec(buf: &mut Vec<u8>, v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = v;
    loop {
        i -= 1;
        // A digit: below 10.
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Appends `v` in decimal, padded on the left with `pad` to `width` characters.
pub(super) fn dec_padded(buf: &mut Vec<u8>, v: u64, width: usize, pad: u8) {
    let start = buf.len();
    dec(buf, v);
    let len = buf.len() - start;
    if len < width {
        buf.splice(start..start, std::iter::repeat_n(pad, width - len));
    }
}

/// Appends `v` as `{:#x}`: `0x`, lowercase, no leading zeros.
pub(super) fn hex(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(b"0x");
    hex_bare(buf, v);
}

/// Appends `v` as `{:x}`: lowercase, no leading zeros.
pub(super) fn hex_bare(buf: &mut Vec<u8>, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let nibbles = (64 - v.leading_zeros()).div_ceil(4).max(1);
    for k in (0..nibbles).rev() {
        buf.push(DIGITS[usize::try_from((v >> (4 * k)) & 0xf).unwrap_or(0)]);
    }
}

/// Appends `"0x..."` (a JSON string of `v` in hex).
pub(super) fn hex_str(buf: &mut Vec<u8>, v: u64) {
    buf.push(b'"');
    hex(buf, v);
    buf.push(b'"');
}

/// Appends `s` as a JSON string (quotes included), escaped as serde_json does.
pub(super) fn json_str(buf: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            buf.extend_from_slice(b"\\u00");
            buf.push(HEX[usize::from(b >> 4)]);
            buf.push(HEX[usize::from(b & 0xf)]);
        } else {
            buf.extend_from_slice(esc);
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_format_as_core_fmt_does() {
        for v in [
            0,
            1,
            9,
            10,
            15,
            16,
            255,
            4096,
            1_234_567,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut b = Vec::new();
            dec(&mut b, v);
            assert_eq!(String::from_utf8(b).unwrap(), v.to_string());
            let mut b = Vec::new();
            hex(&mut b, v);
            assert_eq!(String::from_utf8(b).unwrap(), format!("{v:#x}"));
            let mut b = Vec::new();
            dec_padded(&mut b, v, 6, b'0');
            assert_eq!(String::from_utf8(b).unwrap(), format!("{v:06}"));
            let mut b = Vec::new();
            dec_padded(&mut b, v, 4, b' ');
            assert_eq!(String::from_utf8(b).unwrap(), format!("{v:>4}"));
        }
    }

    #[test]
    fn strings_escape_as_serde_json_does() {
        for s in [
            "",
            "plain",
            "quote \" and \\ back",
            "ctl \n\r\t\u{8}\u{c}\u{1}\u{1f}",
            "ünïcödé ✓",
        ] {
            let mut b = Vec::new();
            json_str(&mut b, s);
            assert_eq!(
                String::from_utf8(b).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }
}
