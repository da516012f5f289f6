//! The kernel's glob_match semantics (cases in the spirit of lib/globtest.c).

use super::glob::glob_match;

#[test]
fn cases() {
    let cases: &[(&str, &str, bool)] = &[
        ("a", "a", true),
        ("a", "b", false),
        ("a", "aa", false),
        ("a", "", false),
        ("", "", true),
        ("", "a", false),
        // Character classes.
        ("[a]", "a", true),
        ("[a]", "b", false),
        ("[!a]", "a", false),
        ("[!a]", "b", true),
        ("[ab]", "a", true),
        ("[ab]", "b", true),
        ("[ab]", "c", false),
        ("[!ab]", "c", true),
        ("[a-c]", "b", true),
        ("[a-c]", "d", false),
        ("[!a-c]", "d", true),
        ("[]]", "]", true),
        ("[]a]", "a", true),
        ("[!]]", "]", false),
        ("[!]]", "a", true),
        ("[a-]", "-", true),
        ("[a-]", "a", true),
        ("[a-]", "b", false),
        ("[-a]", "-", true),
        ("[a]", "", false),
        // Malformed classes: the [ is literal.
        ("[", "[", true),
        ("[a", "[a", true),
        ("[a-", "[a-", true),
        ("[a-", "a", false),
        // Wildcards.
        ("?", "a", true),
        ("?", "", false),
        ("??", "a", false),
        ("*", "", true),
        ("*", "abc", true),
        ("a*", "a", true),
        ("a*", "abc", true),
        ("a*", "ba", false),
        ("*a", "ba", true),
        ("*a", "ab", false),
        ("a*b", "ab", true),
        ("a*b", "axxb", true),
        ("a*b", "axxbc", false),
        ("a*b*c", "abxbxc", true),
        ("*a*b*", "xaxbx", true),
        ("*ab", "aab", true),
        ("*ab*ab", "abxxabab", true),
        ("a*?", "a", false),
        ("a*?", "ab", true),
        ("**", "", true),
        // Escapes.
        ("\\*", "*", true),
        ("\\*", "a", false),
        ("\\[a]", "[a]", true),
        ("a\\", "a", true),
        ("a\\", "ab", false),
        // As in C: the trailing backslash escapes the NUL, which the end of "ab" matches.
        ("*\\", "ab", true),
        // Bytes compare as unsigned.
        ("[\u{7f}-\u{ff}]", "\u{80}", false),
    ];
    for (pat, text, want) in cases {
        assert_eq!(
            glob_match(pat.as_bytes(), text.as_bytes()),
            *want,
            "{pat:?} ~ {text:?}"
        );
    }
    assert!(glob_match(b"[\x80-\xff]", b"\x90"));
    assert!(!glob_match(b"[\x80-\x8f]", b"\x90"));
}

#[test]
fn long_inputs_finish() {
    let text = vec![b'a'; 4096];
    let mut pat = b"*a".repeat(40);
    pat.push(b'b');
    assert!(!glob_match(&pat, &text));
}
