//! Untrusted strings in logs and records: a bounded prefix, never the whole of what a peer sent.
//!
//! A twin message, a topic or a registry answer can be as large as the transport allows. Logging or journaling it in
//! full lets whoever can publish on one topic fill a disk (issue #16: 300 references of 200 KiB grew a journal to
//! 224 MB). Every such string goes through [`clip`] (for logs) or [`prefix`] (for records).

use std::fmt;

/// Characters of an untrusted string that a log line shows.
pub const LOG_CLIP: usize = 128;

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `s` for a log line: at most [`LOG_CLIP`] bytes, then how many bytes were left out.
pub fn clip(s: &str) -> Clipped<'_> {
    Clipped(s)
}

/// See [`clip`].
#[derive(Debug, Clone, Copy)]
pub struct Clipped<'a>(&'a str);

impl fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = prefix(self.0, LOG_CLIP);
        f.write_str(shown)?;
        if shown.len() < self.0.len() {
            write!(f, "…(+{} bytes)", self.0.len() - shown.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_pass_and_long_ones_are_cut_on_a_character_boundary() {
        assert_eq!(clip("reg/fw@sha256:0").to_string(), "reg/fw@sha256:0");
        let long = "x".repeat(200 * 1024);
        let shown = clip(&long).to_string();
        assert!(shown.len() < LOG_CLIP + 32, "{}", shown.len());
        assert!(shown.ends_with(&format!("…(+{} bytes)", long.len() - LOG_CLIP)));
        // 'ſ' is two bytes: a cut inside it moves back to its start.
        let s = format!("{}ſ", "a".repeat(LOG_CLIP - 1));
        assert_eq!(prefix(&s, LOG_CLIP), "a".repeat(LOG_CLIP - 1));
        assert_eq!(prefix("abc", 0), "");
    }
}
