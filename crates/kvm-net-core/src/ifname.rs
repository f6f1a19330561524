//! Interface names, checked once at the edge so every later step can trust them.

use std::fmt;

/// The kernel's limit: IFNAMSIZ (16) less the terminating NUL.
pub const MAX_IFNAME_LEN: usize = 15;

/// A name the kernel would accept for a network interface, and that is safe to
/// put in an iptables chain name, a rule comment and a lock file name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IfName(String);

/// Why a string is not a usable interface name; the text is shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IfNameError {
    #[error("the name is empty")]
    Empty,
    #[error("{0:?} is {1} bytes long, over the kernel's limit of 15")]
    TooLong(String, usize),
    #[error("{0:?} starts with '-'")]
    LeadingDash(String),
    #[error("{0:?} is reserved")]
    Reserved(String),
    #[error("{0:?} contains {1:?}; allowed are letters, digits and . _ - @ +")]
    BadChar(String, char),
    #[error("{0:?} contains '+', which iptables reads as a wildcard (br+ would match every br... link); allowed in a bridge's name are letters, digits and . _ - @")]
    Wildcard(String),
}

impl IfName {
    /// Validates `name` by the kernel's rules (length, no `/`, `:` or white space),
    /// narrowed to characters that need no quoting anywhere kvm-net writes them.
    pub fn parse(name: &str) -> Result<Self, IfNameError> {
        if name.is_empty() {
            return Err(IfNameError::Empty);
        }
        if name.len() > MAX_IFNAME_LEN {
            return Err(IfNameError::TooLong(name.to_owned(), name.len()));
        }
        if name.starts_with('-') {
            return Err(IfNameError::LeadingDash(name.to_owned()));
        }
        if name == "." || name == ".." {
            return Err(IfNameError::Reserved(name.to_owned()));
        }
        if let Some(bad) =
            name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '+')))
        {
            return Err(IfNameError::BadChar(name.to_owned(), bad));
        }
        Ok(Self(name.to_owned()))
    }

    /// Validates a bridge's name: as [`IfName::parse`], without `+`, which
    /// firewall rules that name the bridge (`-i NAME`) read as a wildcard.
    pub fn parse_bridge(name: &str) -> Result<Self, IfNameError> {
        let parsed = Self::parse(name)?;
        if name.contains('+') {
            return Err(IfNameError::Wildcard(name.to_owned()));
        }
        Ok(parsed)
    }

    /// A name written into kvm-net's own source, checked by the unit tests
    /// rather than at run time.
    pub(crate) fn builtin(name: &'static str) -> Self {
        debug_assert!(Self::parse(name).is_ok(), "{name} is not a valid interface name");
        Self(name.to_owned())
    }

    /// The name as the kernel knows it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_usual_tap_and_bridge_names() {
        for name in ["tap0", "br0", "vnet12", "lab-web1", "virbr0-nic", "a", "x.y_z@1+2", "abcdefghijklmno"] {
            assert_eq!(IfName::parse(name).map(|n| n.to_string()), Ok(name.to_owned()));
        }
    }

    #[test]
    fn rejects_what_the_kernel_or_a_shell_would_trip_on() {
        assert_eq!(IfName::parse(""), Err(IfNameError::Empty));
        assert!(matches!(IfName::parse("abcdefghijklmnop"), Err(IfNameError::TooLong(_, 16))));
        assert!(matches!(IfName::parse("-tap0"), Err(IfNameError::LeadingDash(_))));
        assert!(matches!(IfName::parse("--help"), Err(IfNameError::LeadingDash(_))));
        assert!(matches!(IfName::parse("."), Err(IfNameError::Reserved(_))));
        assert!(matches!(IfName::parse(".."), Err(IfNameError::Reserved(_))));
        for (name, bad) in [
            ("a/b", '/'),
            ("tap 0", ' '),
            ("tap\t0", '\t'),
            ("tap\n", '\n'),
            ("br:0", ':'),
            ("t\"ap", '"'),
            ("tap$x", '$'),
            ("täp", 'ä'),
        ] {
            assert_eq!(IfName::parse(name), Err(IfNameError::BadChar(name.to_owned(), bad)), "{name:?}");
        }
    }

    #[test]
    fn bridge_names_exclude_firewall_wildcards() {
        assert!(IfName::parse("br+").is_ok(), "a tap may have it");
        assert!(matches!(IfName::parse_bridge("br+"), Err(IfNameError::Wildcard(_))));
        assert!(matches!(IfName::parse_bridge("a+b"), Err(IfNameError::Wildcard(_))));
        assert!(IfName::parse_bridge("br-lab_1.x@y").is_ok());
    }

    #[test]
    fn counts_length_in_bytes_like_the_kernel() {
        // 8 two-byte characters: 16 bytes, over the limit even though 8 chars.
        assert!(matches!(IfName::parse("éééééééé"), Err(IfNameError::TooLong(_, 16))));
    }
}
