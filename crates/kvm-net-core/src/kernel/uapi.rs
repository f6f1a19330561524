//! The numbers of the kernel's interfaces (its UAPI headers) that kvm-net
//! uses and the `libc` crate does not export, each written once. Every
//! other kernel number comes from `libc` under its own name. The tests
//! check each against the headers of the machine that builds kvm-net
//! (`linux-libc-dev`), as firecracker checks its hand-typed tap numbers.

/// `IFLA_INET6_CONF` (linux/if_link.h): IPv6's per-link settings in `IFLA_AF_SPEC`.
pub const IFLA_INET6_CONF: u16 = 2;
/// `DEVCONF_ACCEPT_RA` (linux/ipv6.h): `accept_ra`'s place in those settings.
pub const DEVCONF_ACCEPT_RA: usize = 3;
/// `DEVCONF_ACCEPT_DAD` (linux/ipv6.h): `accept_dad`'s.
pub const DEVCONF_ACCEPT_DAD: usize = 27;
/// `IFLA_BRPORT_ISOLATED` (linux/if_link.h): the port may talk to the
/// bridge and to ports that are not isolated, never to another isolated port.
pub const IFLA_BRPORT_ISOLATED: u16 = 33;
/// `IFLA_TUN_OWNER`, `IFLA_TUN_GROUP`, `IFLA_TUN_VNET_HDR` (linux/if_link.h).
pub const IFLA_TUN_OWNER: u16 = 1;
/// See [`IFLA_TUN_OWNER`].
pub const IFLA_TUN_GROUP: u16 = 2;
/// See [`IFLA_TUN_OWNER`].
pub const IFLA_TUN_VNET_HDR: u16 = 5;
/// `NDA_MASTER` (linux/neighbour.h): musl's libc lacks it.
pub const NDA_MASTER: u16 = 9;
/// `IFA_F_PERMANENT` (linux/if_addr.h): an address set by hand, not
/// learned (libc has it for Android only).
pub const IFA_F_PERMANENT: u32 = 0x80;

/// `IFLA_STATS64` (linux/if_link.h): a link's counters, 64-bit
/// (`struct rtnl_link_stats64`: packets, then bytes, received then sent).
pub const IFLA_STATS64: u16 = 23;
/// `NLM_F_REPLACE` (linux/netlink.h): a new object replaces one that is there.
pub const NLM_F_REPLACE: u16 = 0x100;
/// `NLM_F_ECHO` (linux/netlink.h): the kernel answers a change with the
/// object it made (links since Linux 6.3; earlier kernels just acknowledge).
pub const NLM_F_ECHO: u16 = 0x8;

// Traffic control (linux/pkt_sched.h, linux/pkt_cls.h, linux/tc_act/tc_mirred.h).
/// `TC_H_ROOT`: a qdisc's parent when it is the device's root.
pub const TC_H_ROOT: u32 = 0xffff_ffff;
/// `TC_H_INGRESS`: the ingress qdisc's parent.
pub const TC_H_INGRESS: u32 = 0xffff_fff1;
/// `TC_LINKLAYER_ETHERNET`: a rate that counts Ethernet frames (no rate table needed).
pub const TC_LINKLAYER_ETHERNET: u8 = 1;
/// `TCA_TBF_PARMS`: tbf's `struct tc_tbf_qopt`.
pub const TCA_TBF_PARMS: u16 = 1;
/// `TCA_TBF_RATE64`: a rate above 2^32 - 1 bytes a second.
pub const TCA_TBF_RATE64: u16 = 4;
/// `TCA_TBF_BURST`: the bucket, in bytes.
pub const TCA_TBF_BURST: u16 = 6;
/// `TCA_U32_SEL`: u32's `struct tc_u32_sel` with its keys.
pub const TCA_U32_SEL: u16 = 5;
/// `TCA_U32_ACT`: u32's actions.
pub const TCA_U32_ACT: u16 = 7;
/// `TC_U32_TERMINAL`: a selector whose match is final.
pub const TC_U32_TERMINAL: u8 = 1;
/// `TCA_ACT_KIND`, `TCA_ACT_OPTIONS`: an action's name and settings.
pub const TCA_ACT_KIND: u16 = 1;
/// See [`TCA_ACT_KIND`].
pub const TCA_ACT_OPTIONS: u16 = 2;
/// `TC_ACT_STOLEN`: the packet is the action's (mirred's redirect).
pub const TC_ACT_STOLEN: i32 = 4;
/// `TCA_MIRRED_PARMS`: mirred's `struct tc_mirred`.
pub const TCA_MIRRED_PARMS: u16 = 2;
/// `TCA_EGRESS_REDIR`: mirred sends the packet out of the other device.
pub const TCA_EGRESS_REDIR: i32 = 1;

/// Reading C headers, for tests that check hand-typed numbers against
/// them: `#define NAME VALUE` and enum members, with the simple
/// expressions headers use (`1 << 3`, `A | B`, earlier names).
#[cfg(test)]
pub mod header {
    use std::collections::HashMap;

    /// The numbers `path` (under /usr/include) defines.
    pub fn numbers(path: &str) -> HashMap<String, i64> {
        let full = format!("/usr/include/{path}");
        let text = std::fs::read_to_string(&full)
            .unwrap_or_else(|err| panic!("{full}: {err} (the kernel's headers: apt-get install linux-libc-dev)"));
        parse(&text)
    }

    /// The numbers a header's text defines.
    pub fn parse(text: &str) -> HashMap<String, i64> {
        let text = strip_comments(text);
        let mut found = HashMap::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.next() == Some("#define") {
                if let (Some(name), value) = (words.next(), words.collect::<Vec<_>>().join(" ")) {
                    if let Some(value) = evaluate(&value, &found) {
                        found.insert(name.to_owned(), value);
                    }
                }
            }
        }
        let mut rest = text.as_str();
        while let Some(start) = rest.find("enum") {
            rest = &rest[start + 4..];
            let (Some(open), Some(close)) = (rest.find('{'), rest.find('}')) else { break };
            if open > close {
                continue;
            }
            let mut next = 0;
            for member in rest[open + 1..close].split(',') {
                let member = member.trim();
                if member.is_empty() {
                    continue;
                }
                let (name, value) = match member.split_once('=') {
                    Some((name, value)) => (name.trim(), evaluate(value, &found)),
                    None => (member, Some(next)),
                };
                if let Some(value) = value {
                    found.insert(name.to_owned(), value);
                    next = value + 1;
                }
            }
            rest = &rest[close..];
        }
        found
    }

    fn strip_comments(text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("/*") {
            out.push_str(&rest[..start]);
            rest = rest[start..].find("*/").map_or("", |end| &rest[start + end + 2..]);
        }
        out.push_str(rest);
        out.lines().map(|line| line.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
    }

    /// `A | B`, `A << B`, `(X)`, numbers (decimal, hex) and known names.
    fn evaluate(text: &str, known: &HashMap<String, i64>) -> Option<i64> {
        let text = text.trim();
        if let Some(inner) = text.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
            if balanced(inner) {
                return evaluate(inner, known);
            }
        }
        for operator in ["|", "<<"] {
            if let Some(at) = split_outside_parentheses(text, operator) {
                let (left, right) = (evaluate(&text[..at], known)?, evaluate(&text[at + operator.len()..], known)?);
                return Some(if operator == "|" { left | right } else { left << right });
            }
        }
        let number = text.trim_end_matches(['U', 'L', 'u', 'l']);
        match number.strip_prefix("0x") {
            Some(hex) => i64::from_str_radix(hex, 16).ok(),
            None => number.parse().ok().or_else(|| known.get(text).copied()),
        }
    }

    fn balanced(text: &str) -> bool {
        let mut depth = 0i32;
        text.chars().all(|c| {
            depth += i32::from(c == '(') - i32::from(c == ')');
            depth >= 0
        }) && depth == 0
    }

    fn split_outside_parentheses(text: &str, operator: &str) -> Option<usize> {
        let mut depth = 0i32;
        for (at, c) in text.char_indices() {
            depth += i32::from(c == '(') - i32::from(c == ')');
            if depth == 0 && text[at..].starts_with(operator) {
                return Some(at);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_hand_typed_number_is_the_kernels() {
        let link = header::numbers("linux/if_link.h");
        for (name, value) in [
            ("IFLA_INET6_CONF", i64::from(IFLA_INET6_CONF)),
            ("IFLA_BRPORT_ISOLATED", i64::from(IFLA_BRPORT_ISOLATED)),
            ("IFLA_TUN_OWNER", i64::from(IFLA_TUN_OWNER)),
            ("IFLA_TUN_GROUP", i64::from(IFLA_TUN_GROUP)),
            ("IFLA_TUN_VNET_HDR", i64::from(IFLA_TUN_VNET_HDR)),
        ] {
            assert_eq!(link.get(name), Some(&value), "{name}");
        }
        let ipv6 = header::numbers("linux/ipv6.h");
        assert_eq!(ipv6.get("DEVCONF_ACCEPT_RA"), Some(&(DEVCONF_ACCEPT_RA as i64)));
        assert_eq!(ipv6.get("DEVCONF_ACCEPT_DAD"), Some(&(DEVCONF_ACCEPT_DAD as i64)));
        assert_eq!(header::numbers("linux/neighbour.h").get("NDA_MASTER"), Some(&i64::from(NDA_MASTER)));
        assert_eq!(header::numbers("linux/if_addr.h").get("IFA_F_PERMANENT"), Some(&i64::from(IFA_F_PERMANENT)));
        assert_eq!(link.get("IFLA_STATS64"), Some(&i64::from(IFLA_STATS64)));
        let netlink = header::numbers("linux/netlink.h");
        assert_eq!(netlink.get("NLM_F_REPLACE"), Some(&i64::from(NLM_F_REPLACE)));
        assert_eq!(netlink.get("NLM_F_ECHO"), Some(&i64::from(NLM_F_ECHO)));
        let sched = header::numbers("linux/pkt_sched.h");
        for (name, value) in [
            ("TC_H_ROOT", i64::from(TC_H_ROOT)),
            ("TC_H_INGRESS", i64::from(TC_H_INGRESS)),
            ("TC_LINKLAYER_ETHERNET", i64::from(TC_LINKLAYER_ETHERNET)),
            ("TCA_TBF_PARMS", i64::from(TCA_TBF_PARMS)),
            ("TCA_TBF_RATE64", i64::from(TCA_TBF_RATE64)),
            ("TCA_TBF_BURST", i64::from(TCA_TBF_BURST)),
        ] {
            assert_eq!(sched.get(name), Some(&value), "{name}");
        }
        let classify = header::numbers("linux/pkt_cls.h");
        for (name, value) in [
            ("TCA_U32_SEL", i64::from(TCA_U32_SEL)),
            ("TCA_U32_ACT", i64::from(TCA_U32_ACT)),
            ("TC_U32_TERMINAL", i64::from(TC_U32_TERMINAL)),
            ("TCA_ACT_KIND", i64::from(TCA_ACT_KIND)),
            ("TCA_ACT_OPTIONS", i64::from(TCA_ACT_OPTIONS)),
            ("TC_ACT_STOLEN", i64::from(TC_ACT_STOLEN)),
        ] {
            assert_eq!(classify.get(name), Some(&value), "{name}");
        }
        let mirred = header::numbers("linux/tc_act/tc_mirred.h");
        assert_eq!(mirred.get("TCA_MIRRED_PARMS"), Some(&i64::from(TCA_MIRRED_PARMS)));
        assert_eq!(mirred.get("TCA_EGRESS_REDIR"), Some(&i64::from(TCA_EGRESS_REDIR)));
    }

    #[test]
    fn headers_are_read_with_their_expressions() {
        let found = header::parse(
            "/* a */\n#define A_BIT 5\n#define A (1 << A_BIT) // b\nenum e { X, Y = 0x10, Z, W = A | 1 };\n",
        );
        assert_eq!(found.get("A"), Some(&32));
        assert_eq!(
            (found.get("X"), found.get("Y"), found.get("Z"), found.get("W")),
            (Some(&0), Some(&16), Some(&17), Some(&33))
        );
    }
}
