//! `[policy.container_options]`: which container options a hub may set on this node, and
//! their bounds.

use super::{Violation, deny, glob_match};
use crate::spec::options::{ContainerOptions, OPTION_NAMES};

/// Docker's /dev/shm size when a container asks for none.
const DOCKER_DEFAULT_SHM_BYTES: u64 = 64 << 20;

section! {
    /// `[policy.container_options]`: which typed container options a hub may set, and within
    /// which bounds. Everything is allowed by default except creating a missing Docker network.
    #[derive(Eq)]
    pub struct OptionsPolicy at "policy.container_options." {
        /// Options refused outright, by name (`user`, `shm_size`, `network_name`, …).
        forbidden: Vec<String> = Vec::new(),
            env "BERTH_POLICY_CONTAINER_OPTIONS_FORBIDDEN", flag "policy-container-options-forbidden";
        /// Lowest uid a server may run as (`user`); 0 = any.
        min_uid: u32 = 0,
            env "BERTH_POLICY_CONTAINER_OPTIONS_MIN_UID", flag "policy-container-options-min-uid";
        /// Largest /dev/shm in bytes; 0 = no cap.
        max_shm_size_bytes: u64 = 0,
            env "BERTH_POLICY_CONTAINER_OPTIONS_MAX_SHM_SIZE_BYTES", flag "policy-container-options-max-shm-size-bytes";
        /// Largest `pids_limit`; 0 = no cap.
        max_pids_limit: i64 = 0,
            env "BERTH_POLICY_CONTAINER_OPTIONS_MAX_PIDS_LIMIT", flag "policy-container-options-max-pids-limit";
        /// Networks a server may join, as globs; empty = any.
        allowed_networks: Vec<String> = Vec::new(),
            env "BERTH_POLICY_CONTAINER_OPTIONS_ALLOWED_NETWORKS", flag "policy-container-options-allowed-networks";
        /// Create a missing network (a bridge labelled `berth.managed`); else such a Start is refused.
        allow_network_create: bool = false,
            env "BERTH_POLICY_CONTAINER_OPTIONS_ALLOW_NETWORK_CREATE", flag "policy-container-options-allow-network-create";
    }
}

impl OptionsPolicy {
    /// An unknown name in `forbidden`, if any (a typo would silently allow the option).
    pub fn unknown_option(&self) -> Option<&str> {
        self.forbidden
            .iter()
            .find(|f| !OPTION_NAMES.contains(&f.as_str()))
            .map(String::as_str)
    }

    /// `o` with the bounds applied where the Start leaves an option out, so that no omitted
    /// option escapes a bound: without `user`, a node with `min_uid` runs the server as
    /// `min_uid` (the image's own user may be root, and cannot be trusted); without
    /// `pids_limit`, a node with `max_pids_limit` sets that limit; without `shm_size`, a node
    /// whose `max_shm_size_bytes` is below Docker's default (64 MiB) sets its cap. Without
    /// `network_name` the server joins the node's own network, which `allowed_networks` does
    /// not restrict.
    pub fn with_defaults(&self, mut o: ContainerOptions) -> ContainerOptions {
        if o.user.is_none() && self.min_uid > 0 {
            o.user = Some((self.min_uid, None));
        }
        if o.pids_limit.is_none() && self.max_pids_limit > 0 {
            o.pids_limit = Some(self.max_pids_limit);
        }
        if o.shm_size.is_none()
            && self.max_shm_size_bytes > 0
            && self.max_shm_size_bytes < DOCKER_DEFAULT_SHM_BYTES
        {
            o.shm_size = Some(self.max_shm_size_bytes);
        }
        o
    }

    /// Checks the options of a Start.
    pub fn check(&self, o: &ContainerOptions) -> Result<(), Violation> {
        if let Some(name) = o
            .set()
            .into_iter()
            .find(|n| self.forbidden.iter().any(|f| f == n))
        {
            return deny(
                "container_options.forbidden",
                format!("the container option {name} is forbidden on this node"),
            );
        }
        if let Some((uid, _)) = o.user
            && uid < self.min_uid
        {
            return deny(
                "container_options.min_uid",
                format!("user {uid} is below the node's lowest uid {}", self.min_uid),
            );
        }
        if let Some(shm) = o.shm_size
            && self.max_shm_size_bytes > 0
            && shm > self.max_shm_size_bytes
        {
            return deny(
                "container_options.max_shm_size_bytes",
                format!("shm_size {shm} bytes; at most {}", self.max_shm_size_bytes),
            );
        }
        if let Some(p) = o.pids_limit
            && self.max_pids_limit > 0
            && p > self.max_pids_limit
        {
            return deny(
                "container_options.max_pids_limit",
                format!("pids_limit {p}; at most {}", self.max_pids_limit),
            );
        }
        if let Some(n) = &o.network_name
            && !self.allowed_networks.is_empty()
            && !self.allowed_networks.iter().any(|g| glob_match(g, n))
        {
            return deny(
                "container_options.allowed_networks",
                format!("network {n:?} is not in the node's allow-list"),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::options::RawOptions;

    fn opts(r: RawOptions) -> ContainerOptions {
        ContainerOptions::try_from(r).expect("valid")
    }

    #[test]
    fn each_rule_is_named() {
        let p = OptionsPolicy {
            forbidden: vec!["dns".into()],
            min_uid: 1000,
            max_shm_size_bytes: 1 << 30,
            max_pids_limit: 1000,
            allowed_networks: vec!["lab-*".into()],
            allow_network_create: false,
        };
        let cases = [
            (
                RawOptions {
                    dns: vec!["1.1.1.1".into()],
                    ..Default::default()
                },
                "container_options.forbidden",
            ),
            (
                RawOptions {
                    user: "0".into(),
                    ..Default::default()
                },
                "container_options.min_uid",
            ),
            (
                RawOptions {
                    shm_size_bytes: 2 << 30,
                    ..Default::default()
                },
                "container_options.max_shm_size_bytes",
            ),
            (
                RawOptions {
                    pids_limit: 5000,
                    ..Default::default()
                },
                "container_options.max_pids_limit",
            ),
            (
                RawOptions {
                    network_name: "other".into(),
                    ..Default::default()
                },
                "container_options.allowed_networks",
            ),
        ];
        for (r, rule) in cases {
            assert_eq!(p.check(&opts(r)).expect_err(rule).rule, rule);
        }
        let ok = RawOptions {
            user: "1000:100".into(),
            shm_size_bytes: 1 << 30,
            pids_limit: 1000,
            network_name: "lab-a".into(),
            ..Default::default()
        };
        assert_eq!(p.check(&opts(ok)), Ok(()));
        assert_eq!(
            OptionsPolicy::default().check(&opts(RawOptions {
                dns: vec!["1.1.1.1".into()],
                ..Default::default()
            })),
            Ok(()),
            "allowed by default"
        );
    }

    #[test]
    fn an_unknown_forbidden_name_is_found() {
        let p = OptionsPolicy {
            forbidden: vec!["usr".into()],
            ..Default::default()
        };
        assert_eq!(p.unknown_option(), Some("usr"));
    }

    #[test]
    fn an_omitted_option_gets_the_bound_and_a_set_one_is_kept() {
        let p = OptionsPolicy {
            min_uid: 1000,
            max_pids_limit: 500,
            max_shm_size_bytes: 32 << 20,
            ..OptionsPolicy::default()
        };
        let o = p.with_defaults(opts(RawOptions::default()));
        assert_eq!(o.user, Some((1000, None)));
        assert_eq!(o.pids_limit, Some(500));
        assert_eq!(o.shm_size, Some(32 << 20));
        let set = p.with_defaults(opts(RawOptions {
            user: "2000:100".into(),
            pids_limit: 50,
            shm_size_bytes: 1 << 20,
            ..Default::default()
        }));
        assert_eq!(set.user, Some((2000, Some(100))));
        assert_eq!(set.pids_limit, Some(50));
        assert_eq!(set.shm_size, Some(1 << 20));
        // No bound: nothing is added.
        let open = OptionsPolicy::default().with_defaults(opts(RawOptions::default()));
        assert_eq!(
            (open.user, open.pids_limit, open.shm_size),
            (None, None, None)
        );
        // A cap above Docker's default leaves the default alone.
        let roomy = OptionsPolicy {
            max_shm_size_bytes: 1 << 30,
            ..OptionsPolicy::default()
        };
        assert_eq!(
            roomy.with_defaults(opts(RawOptions::default())).shm_size,
            None
        );
    }
}
