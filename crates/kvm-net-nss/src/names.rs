//! The names files kvm-net publishes for the host, read line by line:
//! `ADDRESS NAME`, one name per line, written by kvm-net (root) and
//! readable by everyone. Nothing in them is trusted: a line that is not
//! exactly an address and a valid DNS name is skipped, and so is a line
//! longer than [`MAX_LINE`] (with the rest of it).

use core::net::IpAddr;

/// The longest line kept: an IPv6 address, a space and a 253-byte name.
pub const MAX_LINE: usize = 320;

/// The longest DNS name.
const MAX_NAME: usize = 253;

/// Whether `name` is a DNS name kvm-net could have published: dot-separated
/// labels of 1-63 letters, digits and inner hyphens, 253 bytes at most.
pub fn is_dns_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.split(|b| *b == b'.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.first() != Some(&b'-')
                && label.last() != Some(&b'-')
                && label.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        })
}

/// The address a line gives `name`, if the line is well formed and names it
/// (names compare without regard to case, as DNS does).
pub fn address_for(line: &[u8], name: &[u8]) -> Option<IpAddr> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut fields = line.split(|b| *b == b' ' || *b == b'\t').filter(|field| !field.is_empty());
    let (address, named) = (fields.next()?, fields.next()?);
    if fields.next().is_some() || !is_dns_name(named) || !named.eq_ignore_ascii_case(name) {
        return None;
    }
    core::str::from_utf8(address).ok()?.parse().ok()
}

/// Finds the addresses of `name` in a file read in pieces: feed each piece
/// to [`Lines::feed`]; whole lines are matched as they complete, and a line
/// longer than [`MAX_LINE`] is skipped whole.
pub struct Lines<'a> {
    name: &'a [u8],
    line: [u8; MAX_LINE],
    length: usize,
    overlong: bool,
}

impl<'a> Lines<'a> {
    /// A reader looking for `name`.
    pub fn new(name: &'a [u8]) -> Self {
        Self { name, line: [0; MAX_LINE], length: 0, overlong: false }
    }

    /// Takes the next bytes of the file; `found` gets each address of a
    /// line completed here.
    pub fn feed(&mut self, bytes: &[u8], found: &mut impl FnMut(IpAddr)) {
        for byte in bytes {
            if *byte == b'\n' {
                self.end_line(found);
            } else if self.length < MAX_LINE {
                self.line[self.length] = *byte;
                self.length += 1;
            } else {
                self.overlong = true;
            }
        }
    }

    /// The file's end: a last line without its newline counts too.
    pub fn finish(&mut self, found: &mut impl FnMut(IpAddr)) {
        self.end_line(found);
    }

    fn end_line(&mut self, found: &mut impl FnMut(IpAddr)) {
        if !self.overlong {
            if let Some(address) = address_for(&self.line[..self.length], self.name) {
                found(address);
            }
        }
        self.length = 0;
        self.overlong = false;
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use proptest::prelude::*;

    use super::*;

    fn all(text: &[u8], name: &[u8], piece: usize) -> Vec<IpAddr> {
        let mut found = Vec::new();
        let mut lines = Lines::new(name);
        for chunk in text.chunks(piece.max(1)) {
            lines.feed(chunk, &mut |address| found.push(address));
        }
        lines.finish(&mut |address| found.push(address));
        found
    }

    #[test]
    fn well_formed_lines_answer_and_nothing_else_does() {
        let text = b"10.88.0.10 web1\n10.88.0.10 web1.vm.internal\nfd00:60::10 WEB1\n10.88.0.11 web2\n\
                     10.88.0.12 bad_name\nnot-an-address web1\n10.88.0.13 web1 extra\n\n10.88.0.14\tweb1";
        let want: Vec<IpAddr> =
            ["10.88.0.10", "fd00:60::10", "10.88.0.14"].iter().map(|a| a.parse().expect("ip")).collect();
        for piece in [1, 3, 7, 4096] {
            assert_eq!(all(text, b"web1", piece), want, "pieces of {piece}");
        }
        assert_eq!(all(text, b"web1.vm.internal", 5), [IpAddr::from([10, 88, 0, 10])]);
        assert!(all(text, b"web", 5).is_empty());
    }

    #[test]
    fn an_overlong_line_is_skipped_whole() {
        let mut text = Vec::from(&b"10.0.0.1 "[..]);
        text.extend(core::iter::repeat(b'a').take(MAX_LINE * 2));
        text.extend(b" web1\n10.0.0.2 web1\n");
        assert_eq!(all(&text, b"web1", 100), [IpAddr::from([10, 0, 0, 2])]);
    }

    #[test]
    fn dns_names_are_labels() {
        for good in ["web1", "web-1.vm.internal", "a", "x1.y2"] {
            assert!(is_dns_name(good.as_bytes()), "{good}");
        }
        for bad in ["", ".", "a..b", "-a", "a-", "a_b", "a b", "é", "a.", &"a".repeat(64)] {
            assert!(!is_dns_name(bad.as_bytes()), "{bad:?}");
        }
    }

    /// Cases per property: PROPTEST_CASES (make check runs many), else 2000.
    fn cases() -> u32 {
        std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(2000)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(), .. ProptestConfig::default() })]

        #[test]
        fn any_bytes_in_any_pieces_never_panic(text in proptest::collection::vec(any::<u8>(), 0..2048), piece in 1usize..300) {
            let found = all(&text, b"web1", piece);
            prop_assert!(found.len() <= text.len());
        }

        #[test]
        fn garbage_around_a_good_line_leaves_it_found(before in "[ -~\n]{0,200}", after in "[ -~\n]{0,200}") {
            let text = std::format!("{before}\n10.9.8.7 findme\n{after}");
            prop_assert!(all(text.as_bytes(), b"findme", 13).contains(&IpAddr::from([10, 9, 8, 7])));
        }
    }
}
