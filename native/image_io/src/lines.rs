//! Splitting a byte stream into lines as it arrives: the output of builds and execs.

/// Lines longer than this are cut (a minified asset dumped to the terminal).
pub(crate) const MAX_LINE: usize = 16 * 1024;

/// Splits chunks into lines (`\n`, a trailing `\r` dropped); a line may span chunks.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    /// The lines `bytes` completes.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                out.push(self.take());
            } else {
                self.buf.push(b);
                if self.buf.len() >= MAX_LINE {
                    out.push(self.take());
                }
            }
        }
        out
    }

    /// The last line, if the stream did not end with a newline.
    pub(crate) fn finish(&mut self) -> Option<String> {
        (!self.buf.is_empty()).then(|| self.take())
    }

    fn take(&mut self) -> String {
        let mut bytes = std::mem::take(&mut self.buf);
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_span_chunks_and_long_ones_are_cut() {
        let mut l = Lines::default();
        let mut got = l.push(b"hel");
        got.extend(l.push(b"lo\r\nwor"));
        got.extend(l.push(b"ld\n\ntail"));
        got.extend(l.finish());
        assert_eq!(got, ["hello", "world", "", "tail"]);
        let got = l.push(&vec![b'a'; MAX_LINE + 10]);
        assert_eq!(got.len(), 1);
        assert_eq!(l.finish().as_deref(), Some("aaaaaaaaaa"));
    }
}
