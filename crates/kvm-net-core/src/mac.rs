//! MAC addresses as kvm-net reads and writes them (`52:54:00:00:00:10`):
//! dnsmasq's lease events, the config's `dhcp.hosts`, status and messages.

/// A MAC address.
pub type Mac = [u8; 6];

/// Reads `52:54:00:00:00:10` (either case); `None` for anything else.
pub fn parse(text: &str) -> Option<Mac> {
    let octets: Vec<u8> = text
        .split(':')
        .map(|octet| (octet.len() == 2).then(|| u8::from_str_radix(octet, 16).ok()).flatten())
        .collect::<Option<_>>()?;
    <Mac>::try_from(octets).ok()
}

/// A MAC as people (and dnsmasq) write it, lower case.
pub fn show(mac: &Mac) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_it_writes_and_nothing_else() {
        let mac = [0x52, 0x54, 0, 0xab, 0, 0x10];
        assert_eq!(parse(&show(&mac)), Some(mac));
        assert_eq!(parse("52:54:00:AB:00:10"), Some(mac));
        for bad in
            ["", "52:54:00:00:00", "52:54:00:00:00:1", "52:54:00:00:00:10:11", "52-54-00-00-00-10", "5g:54:00:00:00:10"]
        {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
