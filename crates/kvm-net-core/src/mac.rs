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

/// The link-local IPv6 address the kernel gives an interface with this MAC
/// (`addr_gen_mode` eui64, its default): fe80::/64 and the modified EUI-64.
pub fn link_local(mac: &Mac) -> std::net::Ipv6Addr {
    let [a, b, c, d, e, f] = *mac;
    let mut octets = [0u8; 16];
    octets[..2].copy_from_slice(&[0xfe, 0x80]);
    octets[8..].copy_from_slice(&[a ^ 0x02, b, c, 0xff, 0xfe, d, e, f]);
    std::net::Ipv6Addr::from(octets)
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

    #[test]
    fn a_link_local_address_is_the_kernels_eui64() {
        let address = link_local(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(address.to_string(), "fe80::5054:ff:fe12:3456");
    }
}
