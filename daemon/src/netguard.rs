//! The address ranges of the Docker networks berth puts servers on, so that berthd's own
//! listeners (gRPC, metrics) can refuse connections from its containers.
//!
//! Why at accept rather than in the firewall: a listener on a non-loopback address (or on
//! 0.0.0.0) is reachable from every container through its network's gateway, which is an
//! address of the host. berthd learns each network's subnets when it prepares the network for
//! a Start (and the default ones at startup) and drops any connection whose peer address lies
//! inside one before a byte is read; a container's traffic to the host keeps its container
//! address as source (Docker masquerades only traffic that leaves the host), so the peer
//! address says where it comes from. No firewall rule to install, keep in sync or lose on a
//! firewall reload.

use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};

/// One subnet: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Subnet {
    addr: IpAddr,
    prefix: u8,
}

impl Subnet {
    /// Parses CIDR text such as `172.18.0.0/16` or `fd00::/64`; `None` if it is not one.
    pub fn parse(cidr: &str) -> Option<Self> {
        let (addr, prefix) = cidr.split_once('/')?;
        let addr: IpAddr = addr.trim().parse().ok()?;
        let prefix: u8 = prefix.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// Whether `ip` lies inside (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The subnets of the container networks, shared by the runtime (which adds to them) and the
/// listeners (which consult them on every accept). Clones share the set.
#[derive(Debug, Clone, Default)]
pub struct ContainerNets {
    subnets: Arc<RwLock<Vec<Subnet>>>,
}

impl ContainerNets {
    /// Adds the subnets in `cidrs` (CIDR text as Docker reports it; others are skipped).
    pub fn learn<'a>(&self, cidrs: impl IntoIterator<Item = &'a str>) {
        let mut subnets = self.subnets.write().unwrap_or_else(PoisonError::into_inner);
        for s in cidrs.into_iter().filter_map(Subnet::parse) {
            if !subnets.contains(&s) {
                subnets.push(s);
            }
        }
    }

    /// Whether a connection from `peer` comes from a container network: refuse it.
    pub fn refuses(&self, peer: IpAddr) -> bool {
        self.subnets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|s| s.contains(peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_refused_exactly_inside_a_learned_subnet() {
        let nets = ContainerNets::default();
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(!nets.refuses(ip("172.18.0.5")), "nothing learned yet");
        nets.learn([
            "172.18.0.0/16",
            "fd00:b::/64",
            "not a subnet",
            "10.0.0.0/33",
        ]);
        // (peer, refused)
        for (peer, refused) in [
            ("172.18.0.5", true),
            ("172.18.255.255", true),
            ("172.19.0.1", false),
            ("172.17.0.2", false),
            ("127.0.0.1", false),
            ("10.0.0.1", false),
            ("::ffff:172.18.0.9", true),
            ("fd00:b::7", true),
            ("fd00:c::7", false),
            ("::1", false),
        ] {
            assert_eq!(nets.refuses(ip(peer)), refused, "{peer}");
        }
        let shared = nets.clone();
        nets.learn(["0.0.0.0/0"]);
        assert!(shared.refuses(ip("8.8.8.8")), "clones share the set");
    }

    #[test]
    fn subnets_parse_only_as_cidr() {
        for (text, ok) in [
            ("172.18.0.0/16", true),
            ("172.18.0.0/32", true),
            ("172.18.0.0/33", false),
            ("::/0", true),
            ("::/129", false),
            ("172.18.0.0", false),
            ("x/8", false),
            ("", false),
        ] {
            assert_eq!(Subnet::parse(text).is_some(), ok, "{text}");
        }
    }
}
