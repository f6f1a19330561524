//! The numbers of nf_tables' netlink interface kvm-net writes by hand,
//! each once: the attributes (`NFTA_*`, linux/netfilter/nf_tables.h) and
//! values that neither `libc` nor netlink-packet-netfilter exports, and
//! what `nft` itself calls its data types and comments (libnftnl's and
//! nftables' own numbers, which no kernel header has). Every other number
//! comes from `libc` under its own name. The test checks the kernel's
//! against the headers of the machine that builds kvm-net.

// Attributes of tables, chains, hooks and rules.
/// `NFTA_TABLE_NAME`.
pub const NFTA_TABLE_NAME: u16 = 1;
/// `NFTA_CHAIN_TABLE`.
pub const NFTA_CHAIN_TABLE: u16 = 1;
/// `NFTA_CHAIN_NAME`.
pub const NFTA_CHAIN_NAME: u16 = 3;
/// `NFTA_CHAIN_HOOK`.
pub const NFTA_CHAIN_HOOK: u16 = 4;
/// `NFTA_CHAIN_POLICY`.
pub const NFTA_CHAIN_POLICY: u16 = 5;
/// `NFTA_CHAIN_USE`: how many rules jump to the chain.
pub const NFTA_CHAIN_USE: u16 = 6;
/// `NFTA_CHAIN_TYPE`.
pub const NFTA_CHAIN_TYPE: u16 = 7;
/// `NFTA_HOOK_HOOKNUM`.
pub const NFTA_HOOK_HOOKNUM: u16 = 1;
/// `NFTA_RULE_CHAIN`.
pub const NFTA_RULE_CHAIN: u16 = 2;
/// `NFTA_RULE_EXPRESSIONS`.
pub const NFTA_RULE_EXPRESSIONS: u16 = 4;
/// `NFTA_RULE_USERDATA`: where a rule's comment is.
pub const NFTA_RULE_USERDATA: u16 = 7;
/// `NFTA_GEN_ID`: the ruleset's generation.
pub const NFTA_GEN_ID: u16 = 1;

// Sets, their elements, and the data in them.
/// `NFTA_SET_NAME`.
pub const NFTA_SET_NAME: u16 = 2;
/// `NFTA_SET_ELEM_LIST_ELEMENTS`.
pub const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
/// `NFTA_LIST_ELEM`.
pub const NFTA_LIST_ELEM: u16 = 1;
/// `NFTA_SET_ELEM_KEY`.
pub const NFTA_SET_ELEM_KEY: u16 = 1;
/// `NFTA_SET_ELEM_DATA`.
pub const NFTA_SET_ELEM_DATA: u16 = 2;
/// `NFTA_DATA_VALUE`.
pub const NFTA_DATA_VALUE: u16 = 1;
/// `NFTA_DATA_VERDICT`.
pub const NFTA_DATA_VERDICT: u16 = 2;
/// `NFTA_VERDICT_CODE`.
pub const NFTA_VERDICT_CODE: u16 = 1;
/// `NFTA_VERDICT_CHAIN`.
pub const NFTA_VERDICT_CHAIN: u16 = 2;

// Expressions the crate leaves raw.
/// `NFTA_EXPR_NAME`.
pub const NFTA_EXPR_NAME: u16 = 1;
/// `NFTA_EXPR_DATA`.
pub const NFTA_EXPR_DATA: u16 = 2;
/// `NFTA_IMMEDIATE_DREG`.
pub const NFTA_IMMEDIATE_DREG: u16 = 1;
/// `NFTA_IMMEDIATE_DATA`.
pub const NFTA_IMMEDIATE_DATA: u16 = 2;
/// `NFTA_CMP_DATA`.
pub const NFTA_CMP_DATA: u16 = 3;
/// `NFTA_TARGET_NAME` (an iptables-nft `xt` target's name, linux/netfilter/nf_tables_compat.h).
pub const NFTA_TARGET_NAME: u16 = 1;
/// `NFTA_DYNSET_SET_NAME`.
pub const NFTA_DYNSET_SET_NAME: u16 = 1;
/// `NFTA_DYNSET_OP`.
pub const NFTA_DYNSET_OP: u16 = 3;
/// `NFTA_DYNSET_SREG_KEY`.
pub const NFTA_DYNSET_SREG_KEY: u16 = 4;
/// `NFTA_DYNSET_TIMEOUT`: how long an element the packet path adds lives (ms).
pub const NFTA_DYNSET_TIMEOUT: u16 = 6;
/// `NFTA_RANGE_SREG`, `NFTA_RANGE_OP`, `NFTA_RANGE_FROM_DATA`, `NFTA_RANGE_TO_DATA`.
pub const NFTA_RANGE_SREG: u16 = 1;
/// See [`NFTA_RANGE_SREG`].
pub const NFTA_RANGE_OP: u16 = 2;
/// See [`NFTA_RANGE_SREG`].
pub const NFTA_RANGE_FROM_DATA: u16 = 3;
/// See [`NFTA_RANGE_SREG`].
pub const NFTA_RANGE_TO_DATA: u16 = 4;
/// `NFTA_CT_DREG`.
pub const NFTA_CT_DREG: u16 = 1;
/// `NFTA_CT_KEY`.
pub const NFTA_CT_KEY: u16 = 2;
/// `NFTA_MASQ_FLAGS`.
pub const NFTA_MASQ_FLAGS: u16 = 1;
/// `NFTA_MASQ_REG_PROTO_MIN`.
pub const NFTA_MASQ_REG_PROTO_MIN: u16 = 2;
/// `NFTA_MASQ_REG_PROTO_MAX`.
pub const NFTA_MASQ_REG_PROTO_MAX: u16 = 3;
/// `NFTA_FIB_DREG`.
pub const NFTA_FIB_DREG: u16 = 1;
/// `NFTA_FIB_RESULT`.
pub const NFTA_FIB_RESULT: u16 = 2;
/// `NFTA_FIB_FLAGS`.
pub const NFTA_FIB_FLAGS: u16 = 3;
/// `NFT_FIB_RESULT_ADDRTYPE`: the address type of the looked-up address.
pub const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
/// `NFTA_FIB_F_DADDR`: look up the destination address.
pub const NFTA_FIB_F_DADDR: u32 = 1 << 1;
/// `NFTA_NAT_TYPE`.
pub const NFTA_NAT_TYPE: u16 = 1;
/// `NFTA_NAT_FAMILY`.
pub const NFTA_NAT_FAMILY: u16 = 2;
/// `NFTA_NAT_REG_ADDR_MIN`.
pub const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
/// `NFTA_NAT_REG_PROTO_MIN`.
pub const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
/// `NFTA_NAT_REG_PROTO_MAX`.
pub const NFTA_NAT_REG_PROTO_MAX: u16 = 6;

// Values of other headers (linux/netfilter/nf_nat.h, nf_conntrack_common.h).
/// `NF_NAT_RANGE_PROTO_SPECIFIED`: the masquerade picks ports from a range.
pub const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 1 << 1;
/// `IPS_DST_NAT`: a connection whose destination was rewritten.
pub const IPS_DST_NAT: u32 = 1 << 5;
/// The `ct state` bits of established and related connections
/// (`NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED)`).
pub const CT_ESTABLISHED_RELATED: u32 = (1 << 1) | (1 << 2);

// `struct nfgenmsg`, ahead of an object's attributes.
/// Its size.
pub const NFGENMSG: usize = 4;

// nft's own numbers (libnftnl, nftables), which `nft list` reads back.
/// `NFTNL_UDATA_RULE_COMMENT`: the user data `nft` shows as a rule's comment.
pub const UDATA_COMMENT: u8 = 0;
/// nft's data types: interface names (`TYPE_IFNAME`).
pub const TYPE_IFNAME: u32 = 41;
/// MAC addresses (`TYPE_ETHERADDR`).
pub const TYPE_ETHERADDR: u32 = 9;
/// IPv4 addresses (`TYPE_IPADDR`).
pub const TYPE_IPADDR: u32 = 7;
/// IPv6 addresses (`TYPE_IP6ADDR`).
pub const TYPE_IP6ADDR: u32 = 8;
/// Ports (`TYPE_INET_SERVICE`).
pub const TYPE_INET_SERVICE: u32 = 13;
/// How nft numbers a concatenation of data types (`TYPE_BITS`).
pub const TYPE_BITS: u32 = 6;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::uapi::header;

    #[test]
    fn each_hand_typed_kernel_number_is_the_kernels() {
        let nft = header::numbers("linux/netfilter/nf_tables.h");
        let check = |name: &str, value: i64| assert_eq!(nft.get(name), Some(&value), "{name}");
        for (name, value) in [
            ("NFTA_TABLE_NAME", NFTA_TABLE_NAME),
            ("NFTA_CHAIN_TABLE", NFTA_CHAIN_TABLE),
            ("NFTA_CHAIN_NAME", NFTA_CHAIN_NAME),
            ("NFTA_CHAIN_HOOK", NFTA_CHAIN_HOOK),
            ("NFTA_CHAIN_POLICY", NFTA_CHAIN_POLICY),
            ("NFTA_CHAIN_USE", NFTA_CHAIN_USE),
            ("NFTA_CHAIN_TYPE", NFTA_CHAIN_TYPE),
            ("NFTA_HOOK_HOOKNUM", NFTA_HOOK_HOOKNUM),
            ("NFTA_RULE_CHAIN", NFTA_RULE_CHAIN),
            ("NFTA_RULE_EXPRESSIONS", NFTA_RULE_EXPRESSIONS),
            ("NFTA_RULE_USERDATA", NFTA_RULE_USERDATA),
            ("NFTA_GEN_ID", NFTA_GEN_ID),
            ("NFTA_SET_NAME", NFTA_SET_NAME),
            ("NFTA_SET_ELEM_LIST_ELEMENTS", NFTA_SET_ELEM_LIST_ELEMENTS),
            ("NFTA_LIST_ELEM", NFTA_LIST_ELEM),
            ("NFTA_SET_ELEM_KEY", NFTA_SET_ELEM_KEY),
            ("NFTA_SET_ELEM_DATA", NFTA_SET_ELEM_DATA),
            ("NFTA_DATA_VALUE", NFTA_DATA_VALUE),
            ("NFTA_DATA_VERDICT", NFTA_DATA_VERDICT),
            ("NFTA_VERDICT_CODE", NFTA_VERDICT_CODE),
            ("NFTA_VERDICT_CHAIN", NFTA_VERDICT_CHAIN),
            ("NFTA_EXPR_NAME", NFTA_EXPR_NAME),
            ("NFTA_EXPR_DATA", NFTA_EXPR_DATA),
            ("NFTA_IMMEDIATE_DREG", NFTA_IMMEDIATE_DREG),
            ("NFTA_IMMEDIATE_DATA", NFTA_IMMEDIATE_DATA),
            ("NFTA_CMP_DATA", NFTA_CMP_DATA),
            ("NFTA_DYNSET_SET_NAME", NFTA_DYNSET_SET_NAME),
            ("NFTA_DYNSET_OP", NFTA_DYNSET_OP),
            ("NFTA_DYNSET_SREG_KEY", NFTA_DYNSET_SREG_KEY),
            ("NFTA_DYNSET_TIMEOUT", NFTA_DYNSET_TIMEOUT),
            ("NFTA_RANGE_SREG", NFTA_RANGE_SREG),
            ("NFTA_RANGE_OP", NFTA_RANGE_OP),
            ("NFTA_RANGE_FROM_DATA", NFTA_RANGE_FROM_DATA),
            ("NFTA_RANGE_TO_DATA", NFTA_RANGE_TO_DATA),
            ("NFTA_CT_DREG", NFTA_CT_DREG),
            ("NFTA_CT_KEY", NFTA_CT_KEY),
            ("NFTA_MASQ_FLAGS", NFTA_MASQ_FLAGS),
            ("NFTA_MASQ_REG_PROTO_MIN", NFTA_MASQ_REG_PROTO_MIN),
            ("NFTA_MASQ_REG_PROTO_MAX", NFTA_MASQ_REG_PROTO_MAX),
            ("NFTA_FIB_DREG", NFTA_FIB_DREG),
            ("NFTA_FIB_RESULT", NFTA_FIB_RESULT),
            ("NFTA_FIB_FLAGS", NFTA_FIB_FLAGS),
            ("NFTA_NAT_TYPE", NFTA_NAT_TYPE),
            ("NFTA_NAT_FAMILY", NFTA_NAT_FAMILY),
            ("NFTA_NAT_REG_ADDR_MIN", NFTA_NAT_REG_ADDR_MIN),
            ("NFTA_NAT_REG_PROTO_MIN", NFTA_NAT_REG_PROTO_MIN),
            ("NFTA_NAT_REG_PROTO_MAX", NFTA_NAT_REG_PROTO_MAX),
        ] {
            check(name, i64::from(value));
        }
        check("NFT_FIB_RESULT_ADDRTYPE", i64::from(NFT_FIB_RESULT_ADDRTYPE));
        check("NFTA_FIB_F_DADDR", i64::from(NFTA_FIB_F_DADDR));
        let compat = header::numbers("linux/netfilter/nf_tables_compat.h");
        assert_eq!(compat.get("NFTA_TARGET_NAME"), Some(&i64::from(NFTA_TARGET_NAME)));
        let nat = header::numbers("linux/netfilter/nf_nat.h");
        assert_eq!(nat.get("NF_NAT_RANGE_PROTO_SPECIFIED"), Some(&i64::from(NF_NAT_RANGE_PROTO_SPECIFIED)));
        let conntrack = header::numbers("linux/netfilter/nf_conntrack_common.h");
        assert_eq!(conntrack.get("IPS_DST_NAT"), Some(&i64::from(IPS_DST_NAT)));
        let (established, related) = (conntrack.get("IP_CT_ESTABLISHED"), conntrack.get("IP_CT_RELATED"));
        // NF_CT_STATE_BIT(ctinfo): 1 << (ctinfo % IP_CT_IS_REPLY + 1).
        let bits = established.zip(related).map(|(e, r)| (1 << (e + 1)) | (1 << (r + 1)));
        assert_eq!(bits, Some(i64::from(CT_ESTABLISHED_RELATED)));
        assert_eq!(NFGENMSG, 4, "struct nfgenmsg: family, version, resource id");
    }
}
