//! QEMU's side of the contract: `HELPER IFNAME`, silence on stdout, one line
//! on stderr and a non-zero status when something fails.

use std::ffi::OsString;
use std::process::ExitCode;

use crate::config::NetworkConfig;
use crate::error::Error;
use crate::helpers;
use crate::ifname::IfName;

/// The four helpers, one per binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Helper {
    /// Attach a tap to an existing bridge.
    IfUp,
    /// Detach a tap from its bridge.
    IfDown,
    /// Create the NAT network if needed, then attach a tap.
    NatUp,
    /// Detach a tap; remove the NAT network when it is the last.
    NatDown,
}

impl Helper {
    /// The binary's name, used as the prefix of every message.
    pub fn name(self) -> &'static str {
        match self {
            Helper::IfUp => "kvm-ifup",
            Helper::IfDown => "kvm-ifdown",
            Helper::NatUp => "kvm-natup",
            Helper::NatDown => "kvm-natdown",
        }
    }

    fn summary(self) -> &'static str {
        match self {
            Helper::IfUp => "attach a VM's tap to an existing bridge (bridged or isolated networking)",
            Helper::IfDown => "detach a VM's tap from its bridge and set it down",
            Helper::NatUp => "attach a VM's tap to the NAT bridge, creating the bridge and its rules if needed",
            Helper::NatDown => "detach a VM's tap; remove the NAT bridge and its rules after the last one",
        }
    }

    fn usage(self) -> String {
        format!(
            "{name} - {summary}\n\n\
             Usage: {name} IFNAME\n\n\
             QEMU runs it with the tap's name: -netdev tap,id=n0,script=/usr/libexec/{name},...\n\n\
             Environment:\n  \
             KVM_NET_BRIDGE   bridge name (default br0)\n  \
             KVM_NET_ADDRESS  bridge address for NAT, CIDR (default 192.168.100.1/24)\n  \
             KVM_NET_DEBUG=1  trace each step on stderr\n",
            name = self.name(),
            summary = self.summary(),
        )
    }

    fn run(self, tap: &IfName) -> anyhow::Result<()> {
        match self {
            Helper::IfDown => helpers::ifdown(tap),
            Helper::IfUp => helpers::ifup(tap, &NetworkConfig::from_env()?),
            Helper::NatUp => helpers::natup(tap, &NetworkConfig::from_env()?),
            Helper::NatDown => helpers::natdown(tap, &NetworkConfig::from_env()?),
        }
    }
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Help,
    Version,
    Run(IfName),
}

fn parse(args: &[OsString]) -> Result<Request, Error> {
    match args {
        [] => Err(Error::Usage("no interface name given".to_owned())),
        [one] if one == "--help" || one == "-h" => Ok(Request::Help),
        [one] if one == "--version" || one == "-V" => Ok(Request::Version),
        [one] => {
            let name = one
                .to_str()
                .ok_or_else(|| Error::Usage(format!("interface name {one:?} is not UTF-8")))?;
            IfName::parse(name).map(Request::Run).map_err(Error::BadInterfaceName)
        }
        [_, extra, ..] => Err(Error::Usage(format!("unexpected extra argument {extra:?}"))),
    }
}

/// Formats an error as the one line the helpers print: context, cause, advice.
pub fn one_line(err: &anyhow::Error) -> String {
    let advice = match err.chain().find_map(|cause| cause.downcast_ref::<Error>()) {
        Some(known) => known.advice(),
        None if is_permission_error(err) => {
            "kvm-net needs root or CAP_NET_ADMIN; run QEMU as root, or with a setuid helper for unprivileged VMs"
        }
        None => "run again with KVM_NET_DEBUG=1 to see each step",
    };
    format!("{err:#}; {advice}").replace(['\n', '\r'], " ")
}

/// Whether the kernel refused for lack of privilege (EPERM/EACCES), from a
/// file (the lock, a sysctl) or from netlink.
fn is_permission_error(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        let kind = match (
            cause.downcast_ref::<std::io::Error>(),
            cause.downcast_ref::<rtnetlink::Error>(),
        ) {
            (Some(io), _) => Some(io.kind()),
            (None, Some(rtnetlink::Error::NetlinkError(message))) => Some(message.to_io().kind()),
            _ => None,
        };
        kind == Some(std::io::ErrorKind::PermissionDenied)
    })
}

/// The whole of a helper binary's `main`.
pub fn main(helper: Helper) -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let result = parse(&args)
        .map_err(anyhow::Error::from)
        .and_then(|request| match request {
            Request::Help => {
                print!("{}", helper.usage());
                Ok(())
            }
            Request::Version => {
                println!("{} {}", helper.name(), env!("CARGO_PKG_VERSION"));
                Ok(())
            }
            Request::Run(tap) => helper.run(&tap),
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}: {}", helper.name(), one_line(&err));
            let code = err
                .chain()
                .find_map(|cause| cause.downcast_ref::<Error>())
                .map_or(1, Error::exit_code);
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn accepts_exactly_one_interface_name() {
        assert_eq!(
            parse(&args(&["tap0"])).ok(),
            Some(Request::Run(IfName::parse("tap0").expect("valid")))
        );
        assert_eq!(parse(&args(&["--help"])).ok(), Some(Request::Help));
        assert_eq!(parse(&args(&["--version"])).ok(), Some(Request::Version));
    }

    #[test]
    fn rejects_what_qemu_would_never_pass() {
        for bad in [
            &[][..],
            &["tap0", "tap1"],
            &[""],
            &["-x"],
            &["a/b"],
            &["tap 0"],
            &["abcdefghijklmnop"],
        ] {
            let err = parse(&args(bad)).expect_err("must be rejected");
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn error_line_has_context_cause_and_advice_on_one_line() {
        let err = anyhow::Error::new(Error::NoBridge("br0".to_owned())).context("attaching tap0 to bridge br0");
        let line = one_line(&err);
        assert!(
            line.starts_with("attaching tap0 to bridge br0: bridge br0 does not exist; create the bridge"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }
}
