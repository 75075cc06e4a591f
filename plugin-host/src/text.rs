//! Plugin text is data: everything a plugin says (manifest strings, config-key docs, error strings, log
//! lines, metric names) passes through here before it reaches a terminal, a log or a file. Control
//! characters (C0 except newline and tab, DEL, C1 — which includes the 8-bit CSI), and bidirectional
//! overrides are replaced by `�`, so a plugin cannot move the cursor, recolour, retitle or hide text; and
//! the length is capped so a 120 MB error string costs a few KiB of output.

/// The cap on one piece of plugin text (error message, description, log line), in bytes.
pub const MAX_TEXT_BYTES: usize = 4096;

/// Whether `c` is shown as-is in plugin text.
fn is_safe(c: char) -> bool {
    match c {
        '\n' | '\t' => true,
        c if c.is_control() => false, // C0, DEL, C1
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' => false,
        _ => true,
    }
}

/// `s` with unsafe characters replaced by U+FFFD and cut to at most `cap` bytes (on a character
/// boundary), with a note of how much was cut.
pub fn clean_text(s: &str, cap: usize) -> String {
    let mut out = String::with_capacity(s.len().min(cap) + 32);
    for (i, c) in s.char_indices() {
        let shown = if is_safe(c) { c } else { '\u{FFFD}' };
        if out.len() + shown.len_utf8() > cap {
            out.push_str(&format!(" … ({} more bytes cut)", s.len() - i));
            return out;
        }
        out.push(shown);
    }
    out
}

/// [`clean_text`] with the default cap, [`MAX_TEXT_BYTES`].
pub fn clean(s: &str) -> String {
    clean_text(s, MAX_TEXT_BYTES)
}

/// [`clean`] on a single line: newlines and tabs become spaces too (for names, versions, table cells).
pub fn clean_line(s: &str) -> String {
    clean(s).replace(['\n', '\t'], " ")
}

/// A short single-line rendering of untrusted text for quoting inside an error message (≤ 80 bytes).
pub fn snippet(s: &str) -> String {
    clean_line(&clean_text(s, 80))
}

/// Whether `s` is 1–64 ASCII letters and digits, or bytes of `extra` (names, keys, metric names).
pub fn is_identifier(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_bidi_overrides_are_neutralised() {
        let s = clean("ok\x1b[2J\x1b]0;pwned\x07 \u{9b}31m \u{202E}txt.exe\r\nnext\tline\x7f");
        assert!(!s.chars().any(|c| c.is_control() && c != '\n' && c != '\t'));
        assert!(!s.contains('\u{202E}'));
        assert!(s.starts_with("ok\u{FFFD}[2J"));
        assert!(s.contains("\nnext\tline"));
    }

    #[test]
    fn long_text_is_capped_on_a_char_boundary() {
        let s = "é".repeat(10_000); // 20,000 bytes
        let c = clean_text(&s, 101);
        assert!(c.starts_with(&"é".repeat(50)));
        assert!(c.contains("(19900 more bytes cut)"), "{c}");
        assert_eq!(clean_line("a\nb\tc"), "a b c");
    }
}
