//! Which key of a TOML document a parse or type error points at, so that
//! the error can name the network and the field. Worked out from the
//! error's position only when there is an error: a file without one is
//! read once, and no path is tracked while it is.

use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue};

/// The keys leading to the deepest key or value of `text` that holds byte
/// `at`, an array's items as `[N]`: `["network", "lab", "dhcp", "hosts",
/// "[0]", "ip"]`. Empty when nothing does (or the text does not parse).
pub fn at(text: &str, at: usize) -> Vec<String> {
    let Ok(document) = DeTable::parse(text) else { return Vec::new() };
    let mut walk = Walk { at, path: Vec::new(), deepest: Vec::new() };
    walk.table(document.get_ref());
    walk.deepest
}

struct Walk {
    at: usize,
    path: Vec<String>,
    deepest: Vec<String>,
}

impl Walk {
    fn table(&mut self, table: &DeTable<'_>) {
        for (key, value) in table {
            self.path.push(key.get_ref().to_string());
            self.value(key.span().contains(&self.at), value);
            self.path.pop();
        }
    }

    /// A value under the current path; `holds`: its key holds the position.
    fn value(&mut self, holds: bool, value: &Spanned<DeValue<'_>>) {
        // A table's span may be only its header, so every table is walked.
        if (holds || value.span().contains(&self.at)) && self.path.len() > self.deepest.len() {
            self.deepest = self.path.clone();
        }
        match value.get_ref() {
            DeValue::Table(table) => self.table(table),
            DeValue::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    self.path.push(format!("[{index}]"));
                    self.value(false, item);
                    self.path.pop();
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deepest_key_or_value_at_a_position_is_named() {
        let text = "[network.lab]\nmode = \"nat\"\n[network.lab.dhcp]\nhosts = [{ mac = \"x\", ip = 5 }]\n";
        let position = |what: &str| text.find(what).expect("in the text");
        assert_eq!(at(text, position("5 }")), ["network", "lab", "dhcp", "hosts", "[0]", "ip"]);
        assert_eq!(at(text, position("mac")), ["network", "lab", "dhcp", "hosts", "[0]", "mac"]);
        assert_eq!(at(text, position("\"nat\"")), ["network", "lab", "mode"]);
        assert!(at(text, text.len() + 10).is_empty());
        assert!(at("[broken", 1).is_empty());
    }
}
