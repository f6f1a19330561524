//! Traffic control over rtnetlink, for a port's rate limits: a token
//! bucket (`tbf`) as a link's root qdisc shapes what the link sends, and
//! what a link receives is sent on (u32 match-all, mirred redirect on its
//! ingress qdisc) to an `ifb` device of its own, shaped the same way. No
//! police action: kernels without `CONFIG_NET_ACT_POLICE` have none, and a
//! shaper holds TCP at its rate where a policer's drops make it back off.

use anyhow::{Context, Result};

use super::netlink::{ifinfomsg, Link, Netlink};
use super::uapi::{
    NLM_F_ECHO, NLM_F_REPLACE, TCA_ACT_KIND, TCA_ACT_OPTIONS, TCA_EGRESS_REDIR, TCA_MIRRED_PARMS, TCA_TBF_BURST,
    TCA_TBF_PARMS, TCA_TBF_RATE64, TCA_U32_ACT, TCA_U32_SEL, TC_ACT_STOLEN, TC_H_INGRESS, TC_H_ROOT,
    TC_LINKLAYER_ETHERNET, TC_U32_TERMINAL,
};
use super::wire::{attribute, attributes, string, u32_at, Request, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};

/// `struct tcmsg`: family, padding, ifindex, handle, parent, info.
const TCMSG: usize = 20;
/// kvm-net's root qdisc's handle (`6b76:`, "kv": a shaper of anyone else's
/// is never taken for one of kvm-net's), and the ingress qdisc's (`ffff:`).
const ROOT_HANDLE: u32 = 0x6b76_0000;
const INGRESS_HANDLE: u32 = 0xffff_0000;
/// The redirect filter's priority.
const FILTER_PRIORITY: u32 = 1;

/// A token bucket: what a shaper lets through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shaper {
    /// Bytes per second.
    pub rate: u64,
    /// The bucket, in bytes: how much may pass at once.
    pub burst: u32,
    /// The queue, in bytes: what waits before it is dropped.
    pub limit: u32,
}

impl Shaper {
    /// A shaper of `rate` bytes a second: a bucket of 32 KiB, or 4 ms at
    /// that rate if more (a small bucket cannot keep a fast link busy
    /// between timer ticks), and a queue of 50 ms at that rate.
    pub fn of_rate(rate: u64) -> Self {
        let burst = (rate / 250).clamp(32 * 1024, u64::from(u32::MAX / 2));
        let limit = (rate / 20 + burst).min(u64::from(u32::MAX));
        Self { rate, burst: burst as u32, limit: limit as u32 }
    }
}

fn tcmsg(index: u32, handle: u32, parent: u32, info: u32) -> [u8; TCMSG] {
    let mut header = [0u8; TCMSG];
    header[4..8].copy_from_slice(&index.to_ne_bytes());
    header[8..12].copy_from_slice(&handle.to_ne_bytes());
    header[12..16].copy_from_slice(&parent.to_ne_bytes());
    header[16..20].copy_from_slice(&info.to_ne_bytes());
    header
}

/// `struct tc_tbf_qopt`: the rate (a `struct tc_ratespec` for Ethernet
/// frames, which needs no rate table), no peak rate, the queue; the bucket
/// goes in `TCA_TBF_BURST`.
fn tbf_qopt(shaper: &Shaper) -> Vec<u8> {
    let mut rate = [0u8; 12];
    rate[1] = TC_LINKLAYER_ETHERNET;
    rate[8..12].copy_from_slice(&u32::try_from(shaper.rate).unwrap_or(u32::MAX).to_ne_bytes());
    let mut qopt = rate.to_vec();
    qopt.extend([0u8; 12]);
    qopt.extend(shaper.limit.to_ne_bytes());
    qopt.extend([0u8; 8]);
    qopt
}

/// The u32 selector that matches every packet: one key, mask and value 0.
fn match_all() -> Vec<u8> {
    let mut selector = vec![0u8; 16 + 16];
    selector[0] = TC_U32_TERMINAL;
    selector[2] = 1;
    selector
}

/// `struct tc_mirred`: redirect (stolen) out of `to`.
fn mirred(to: u32) -> Vec<u8> {
    let mut parms = vec![0u8; 28];
    parms[8..12].copy_from_slice(&TC_ACT_STOLEN.to_ne_bytes());
    parms[20..24].copy_from_slice(&TCA_EGRESS_REDIR.to_ne_bytes());
    parms[24..28].copy_from_slice(&to.to_ne_bytes());
    parms
}

impl Netlink {
    /// Makes `shaper` the root qdisc of `link`, replacing whatever is there.
    pub fn shape(&mut self, link: &Link, shaper: &Shaper) -> Result<()> {
        let mut request = Request::new(
            libc::RTM_NEWQDISC,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            &tcmsg(link.index, ROOT_HANDLE, TC_H_ROOT, 0),
        )
        .string(libc::TCA_KIND, "tbf")
        .begin(libc::TCA_OPTIONS)
        .bytes(TCA_TBF_PARMS, &tbf_qopt(shaper))
        .u32(TCA_TBF_BURST, shaper.burst);
        if shaper.rate > u64::from(u32::MAX) {
            request = request.bytes(TCA_TBF_RATE64, &shaper.rate.to_ne_bytes());
        }
        let request = request.end();
        self.ask(request, false, &[], || format!("limiting what {} sends", link.name)).map(drop)
    }

    /// Removes `link`'s root qdisc, kvm-net's shaper; none there counts as done.
    pub fn unshape(&mut self, link: &Link) -> Result<()> {
        let request = Request::new(libc::RTM_DELQDISC, NLM_F_ACK, &tcmsg(link.index, ROOT_HANDLE, TC_H_ROOT, 0));
        self.ask(request, false, &[libc::ENOENT, libc::EINVAL, libc::ENODEV], || {
            format!("removing the limit on what {} sends", link.name)
        })
        .map(drop)
    }

    /// Sends everything `link` receives on to `to`'s egress: an ingress
    /// qdisc with one match-all filter that redirects, made anew (an
    /// ingress qdisc already there goes first, with its filters).
    pub fn redirect_ingress(&mut self, link: &Link, to: &Link) -> Result<()> {
        let what = || format!("redirecting what {} receives to {}", link.name, to.name);
        let qdisc = || {
            Request::new(
                libc::RTM_NEWQDISC,
                NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                &tcmsg(link.index, INGRESS_HANDLE, TC_H_INGRESS, 0),
            )
            .string(libc::TCA_KIND, "ingress")
        };
        if self.ask(qdisc(), false, &[libc::EEXIST], what)?.is_empty() && self.ingress_redirect(link)?.is_some() {
            self.unredirect(link)?;
            self.ask(qdisc(), false, &[], what)?;
        }
        let protocol = u32::from((libc::ETH_P_ALL as u16).to_be());
        let filter = Request::new(
            libc::RTM_NEWTFILTER,
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &tcmsg(link.index, 0, INGRESS_HANDLE, (FILTER_PRIORITY << 16) | protocol),
        )
        .string(libc::TCA_KIND, "u32")
        .begin(libc::TCA_OPTIONS)
        .bytes(TCA_U32_SEL, &match_all())
        .begin(TCA_U32_ACT)
        .begin(1)
        .string(TCA_ACT_KIND, "mirred")
        .begin(TCA_ACT_OPTIONS)
        .bytes(TCA_MIRRED_PARMS, &mirred(to.index))
        .end()
        .end()
        .end()
        .end();
        self.ask(filter, false, &[], what).map(drop)
    }

    /// Removes `link`'s ingress qdisc, with its filters; none there counts as done.
    pub fn unredirect(&mut self, link: &Link) -> Result<()> {
        let request = Request::new(libc::RTM_DELQDISC, NLM_F_ACK, &tcmsg(link.index, INGRESS_HANDLE, TC_H_INGRESS, 0));
        self.ask(request, false, &[libc::ENOENT, libc::EINVAL, libc::ENODEV], || {
            format!("removing the redirect of what {} receives", link.name)
        })
        .map(drop)
    }

    /// The rate (bytes a second) of `link`'s root shaper, if kvm-net's is its root qdisc.
    pub fn shaped_rate(&mut self, link: &Link) -> Result<Option<u64>> {
        // The kernel sends a qdisc it was asked for to its multicast group
        // unless asked to echo it.
        let request = Request::new(libc::RTM_GETQDISC, NLM_F_ECHO, &tcmsg(link.index, ROOT_HANDLE, TC_H_ROOT, 0));
        let qdiscs = self.ask(request, false, &[libc::ENODEV, libc::ENOENT, libc::EINVAL], || {
            format!("reading the root qdisc of {}", link.name)
        })?;
        Ok(qdiscs.iter().filter(|q| q.kind == libc::RTM_NEWQDISC).find_map(|qdisc| {
            let body = &qdisc.body;
            let root = u32_at(body, 4) == link.index && u32_at(body, 8) == ROOT_HANDLE && u32_at(body, 12) == TC_H_ROOT;
            let attrs = body.get(TCMSG..)?;
            if !root || attribute(attrs, libc::TCA_KIND).and_then(string) != Some("tbf") {
                return None;
            }
            let options = attribute(attrs, libc::TCA_OPTIONS)?;
            let qopt = attribute(options, TCA_TBF_PARMS)?;
            let rate64 =
                attribute(options, TCA_TBF_RATE64).and_then(|v| <[u8; 8]>::try_from(v).ok()).map(u64::from_ne_bytes);
            Some(rate64.unwrap_or_else(|| u64::from(u32_at(qopt, 8))))
        }))
    }

    /// The device `link`'s ingress filters redirect to, if any (its index).
    pub fn ingress_redirect(&mut self, link: &Link) -> Result<Option<u32>> {
        let request = Request::new(libc::RTM_GETTFILTER, NLM_F_DUMP, &tcmsg(link.index, 0, INGRESS_HANDLE, 0));
        let filters = self.ask(request, true, &[libc::ENODEV, libc::EINVAL, libc::ENOENT], || {
            format!("reading the ingress filters of {}", link.name)
        })?;
        Ok(filters.iter().filter(|f| f.kind == libc::RTM_NEWTFILTER).find_map(|filter| {
            let attrs = filter.body.get(TCMSG..)?;
            let actions = attribute(attribute(attrs, libc::TCA_OPTIONS)?, TCA_U32_ACT)?;
            attributes(actions).find_map(|(_, action)| {
                if attribute(action, TCA_ACT_KIND).and_then(string) != Some("mirred") {
                    return None;
                }
                let parms = attribute(attribute(action, TCA_ACT_OPTIONS)?, TCA_MIRRED_PARMS)?;
                (parms.len() >= 28).then(|| u32_at(parms, 24))
            })
        }))
    }

    /// Creates an `ifb` device `name` with `mtu`, up. `None` when a link of
    /// that name is there already.
    pub fn create_ifb(&mut self, name: &str, mtu: u32) -> Result<Option<Link>> {
        let up = libc::IFF_UP as u32;
        let request =
            Request::new(libc::RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO, &ifinfomsg(0, up, up))
                .string(libc::IFLA_IFNAME, name)
                .u32(libc::IFLA_MTU, mtu)
                .begin(libc::IFLA_LINKINFO)
                .string(libc::IFLA_INFO_KIND, "ifb")
                .end();
        match self.channel_exchange(request, &[]) {
            Ok(objects) => match objects.iter().find(|o| o.kind == libc::RTM_NEWLINK) {
                // The kernel's echo of the link it made (Linux 6.3 and later).
                Some(echo) => Ok(Some(Link::from_echo(&echo.body))),
                None => self
                    .link_by_name(name)?
                    .with_context(|| format!("{name} vanished right after it was created"))
                    .map(Some),
            },
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => Ok(None),
            Err(err) => Err(anyhow::Error::new(err).context(format!("creating {name} (ifb)"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shaper_keeps_a_fast_link_busy_and_a_slow_one_fair() {
        let slow = Shaper::of_rate(1_000);
        assert_eq!((slow.burst, slow.limit), (32 * 1024, 32 * 1024 + 50));
        let fast = Shaper::of_rate(125_000_000);
        assert_eq!(fast.burst, 500_000);
        assert_eq!(fast.limit, 6_250_000 + 500_000);
    }

    #[test]
    fn the_structures_are_laid_out_as_the_kernel_reads_them() {
        let qopt = tbf_qopt(&Shaper { rate: 6_250_000, burst: 32 * 1024, limit: 100_000 });
        assert_eq!(qopt.len(), 36, "struct tc_tbf_qopt");
        assert_eq!(qopt[1], TC_LINKLAYER_ETHERNET);
        assert_eq!(u32_at(&qopt, 8), 6_250_000);
        assert_eq!(u32_at(&qopt, 24), 100_000);
        let selector = match_all();
        assert_eq!((selector.len(), selector[0], selector[2]), (32, TC_U32_TERMINAL, 1));
        let parms = mirred(7);
        assert_eq!((parms.len(), u32_at(&parms, 24)), (28, 7));
        let header = tcmsg(3, ROOT_HANDLE, TC_H_ROOT, 0);
        assert_eq!((u32_at(&header, 4), u32_at(&header, 8), u32_at(&header, 12)), (3, ROOT_HANDLE, TC_H_ROOT));
    }
}
