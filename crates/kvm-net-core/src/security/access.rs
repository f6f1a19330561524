//! Who may do what through a helper that runs with more privilege than its
//! caller (installed setuid root, or with file capabilities): a caller other
//! than root may use only the networks the config grants to them or to one
//! of their groups, and only with tun/tap devices they own. Root, and a
//! helper with no privilege beyond its caller's (the kernel checks that
//! caller itself), are not restricted.

use nix::unistd::{Gid, Group, Uid, User};

use crate::config::model::{Grants, Network};
use crate::error::Error;
use crate::kernel::netlink::Link;

/// The real user and groups of the process that ran the helper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Real user ID.
    pub uid: Uid,
    /// Real group ID.
    pub gid: Gid,
    /// Supplementary groups, as the kernel has them for the caller.
    pub groups: Vec<Gid>,
}

impl Caller {
    /// The caller's user name for messages (`uid N` when it has none).
    pub fn name(&self) -> String {
        match User::from_uid(self.uid) {
            Ok(Some(user)) => user.name,
            _ => format!("uid {}", self.uid),
        }
    }

    fn in_group(&self, gid: Gid) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

impl Grants {
    /// Whether these grants cover `caller`: its user is named, or one of its
    /// groups (primary or supplementary) is. Names that do not resolve grant nothing.
    pub fn cover(&self, caller: &Caller) -> bool {
        let by_user = self.users.iter().any(|name| matches!(User::from_name(name), Ok(Some(u)) if u.uid == caller.uid));
        by_user
            || self.groups.iter().any(|name| matches!(Group::from_name(name), Ok(Some(g)) if caller.in_group(g.gid)))
    }
}

/// What the helper lets its caller do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Root, or a helper without privilege of its own.
    Unrestricted,
    /// Someone else, through a helper running with more privilege.
    Restricted(Caller),
}

impl Access {
    /// Refuses a network the caller has no grant for; `how` says how the
    /// network was chosen (the helper's name, a tap pattern, the default).
    pub fn check_network(&self, network: &Network, how: &str) -> Result<(), Error> {
        match self {
            Access::Restricted(caller) if !network.grants.cover(caller) => {
                Err(Error::NotGranted { user: caller.name(), network: network.name.clone(), how: how.to_owned() })
            }
            _ => Ok(()),
        }
    }

    /// Refuses a link that is not a tun/tap device of the caller's, by the
    /// kernel's own rule for opening one (`tun_not_capable`): an owner, if
    /// set, must be the caller; a group, if set, must be one of the
    /// caller's; and kvm-net asks for at least one of them (an ownerless
    /// tap is root's). A shared group alone does not make another user's
    /// tap the caller's.
    pub fn check_port(&self, link: &Link) -> Result<(), Error> {
        let Access::Restricted(caller) = self else { return Ok(()) };
        let refuse = |why: String| Error::NotYourTap { tap: link.name.clone(), user: caller.name(), why };
        let Some(tun) = &link.tun else {
            return Err(refuse(format!(
                "it is a {} link, not a tun/tap device",
                link.kind.as_deref().unwrap_or("network")
            )));
        };
        match (tun.owner, tun.group) {
            (None, None) => Err(refuse("it has no owner (only root may use it)".to_owned())),
            (Some(uid), _) if Uid::from_raw(uid) != caller.uid => Err(refuse(format!("it belongs to uid {uid}"))),
            (_, Some(gid)) if !caller.in_group(Gid::from_raw(gid)) => Err(refuse(format!(
                "its group is {}, which {} is not in (every owner and group set on a tap must match)",
                group_name(gid),
                caller.name()
            ))),
            _ => Ok(()),
        }
    }
}

/// A group's name for messages (`gid N` when it has none).
fn group_name(gid: u32) -> String {
    match Group::from_gid(Gid::from_raw(gid)) {
        Ok(Some(group)) => group.name,
        _ => format!("gid {gid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::netlink::Tun;

    fn caller(uid: u32, gid: u32, groups: &[u32]) -> Access {
        Access::Restricted(Caller {
            uid: Uid::from_raw(uid),
            gid: Gid::from_raw(gid),
            groups: groups.iter().copied().map(Gid::from_raw).collect(),
        })
    }

    fn link(kind: &str, tun: Option<Tun>) -> Link {
        Link { index: 7, name: "tap0".to_owned(), kind: Some(kind.to_owned()), mtu: 1500, tun, ..Link::default() }
    }

    #[test]
    fn a_restricted_caller_may_use_only_taps_it_owns() {
        let alice = caller(1000, 1000, &[20]);
        let tun = |owner, group| link("tun", Some(Tun { owner, group, vnet_header: false }));
        assert!(alice.check_port(&tun(Some(1000), None)).is_ok());
        assert!(alice.check_port(&tun(None, Some(20))).is_ok(), "a supplementary group counts");
        assert!(alice.check_port(&tun(Some(1000), Some(20))).is_ok(), "owner and group both hers");
        let theirs = tun(Some(1001), Some(30));
        assert!(matches!(alice.check_port(&theirs), Err(Error::NotYourTap { why, .. }) if why.contains("uid 1001")));
        let ownerless = tun(None, None);
        assert!(matches!(alice.check_port(&ownerless), Err(Error::NotYourTap { why, .. }) if why.contains("no owner")));
        let veth = link("veth", None);
        assert!(matches!(alice.check_port(&veth), Err(Error::NotYourTap { why, .. }) if why.contains("veth")));
        assert!(Access::Unrestricted.check_port(&veth).is_ok());
    }

    #[test]
    fn a_shared_group_does_not_make_another_users_tap_yours() {
        let alice = caller(1000, 1000, &[20]);
        let tun = |owner, group| link("tun", Some(Tun { owner, group, vnet_header: false }));
        // Bob's tap in a group alice is in: the kernel refuses her, and so does kvm-net.
        let bobs = tun(Some(1001), Some(20));
        assert!(matches!(alice.check_port(&bobs), Err(Error::NotYourTap { why, .. }) if why.contains("uid 1001")));
        // Hers, but also in a group she is not in: the kernel refuses her that too.
        let foreign_group = tun(Some(1000), Some(30));
        assert!(
            matches!(alice.check_port(&foreign_group), Err(Error::NotYourTap { why, .. }) if why.contains("its group is"))
        );
    }

    #[test]
    fn networks_need_a_grant_that_resolves() {
        let root_group = caller(1000, 1000, &[0]);
        let mut network = Network::classic();
        assert!(matches!(root_group.check_network(&network, "default"), Err(Error::NotGranted { .. })));
        network.grants.groups.push("root".to_owned());
        assert!(root_group.check_network(&network, "default").is_ok());
        network.grants = Grants { users: vec!["no-such-user-kvmnet".to_owned()], groups: Vec::new() };
        assert!(root_group.check_network(&network, "default").is_err());
        assert!(Access::Unrestricted.check_network(&network, "default").is_ok());
    }
}
