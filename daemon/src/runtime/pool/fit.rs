//! Whether a Start can claim a warm container: everything it asks must be something that can
//! be given to a container after it was created. Pure, so each rule has its unit test.

use crate::spec::StartSpec;

/// What the node can do for a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Can {
    /// Mount volumes and host paths into a running container ([`crate::hostpath::graft`]).
    pub graft: bool,
}

/// `Ok` when `spec` may claim a warm container of its image and `port`; otherwise why it
/// starts cold, in words for the log.
pub fn fits(spec: &StartSpec, can: Can) -> Result<(), &'static str> {
    if spec.resumable {
        return Err(
            "the server is kept between spawns (remove = false), which a warm container cannot be",
        );
    }
    if spec.internal_ssl.is_some() {
        return Err("internal_ssl certificates are given at create");
    }
    if spec.gpus.count > 0 || !spec.host.devices.is_empty() {
        return Err("devices are given at create");
    }
    if spec.host != crate::spec::HostAccess::default() {
        return Err("host access is set at create");
    }
    if spec.options != crate::spec::options::ContainerOptions::default() {
        return Err("container options are set at create");
    }
    if !spec.volumes.is_empty() && !can.graft {
        return Err(
            "this berthd cannot mount volumes into a running container (it is not root and has no pin helper)",
        );
    }
    if spec.volumes.iter().any(|v| {
        !v.host_path && (!v.driver.is_empty() && v.driver != "local" || !v.driver_opts.is_empty())
    }) {
        return Err("a volume with a driver or driver options is mounted by Docker at start");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Env, VolumeSpec};

    fn plain_spec() -> StartSpec {
        StartSpec {
            env: Env::new([("JUPYTERHUB_API_TOKEN".to_owned(), "t".to_owned())]).expect("valid"),
            ..StartSpec::plain("u", "docker.io/library/img:1")
        }
    }

    const CAN: Can = Can { graft: true };

    #[test]
    fn a_plain_start_fits() {
        assert_eq!(fits(&plain_spec(), CAN), Ok(()));
    }

    #[test]
    fn create_time_asks_start_cold() {
        type Change = Box<dyn Fn(&mut StartSpec)>;
        let cases: Vec<(&str, Change)> = vec![
            ("kept", Box::new(|s| s.resumable = true)),
            ("gpu", Box::new(|s| s.gpus.count = 1)),
            ("privileged", Box::new(|s| s.host.privileged = true)),
            (
                "device",
                Box::new(|s| s.host.devices.push("/dev/fuse".to_owned())),
            ),
            ("option", Box::new(|s| s.options.read_only_rootfs = true)),
            (
                "user",
                Box::new(|s| s.options.working_dir = Some("/x".to_owned())),
            ),
        ];
        for (name, change) in cases {
            let mut s = plain_spec();
            change(&mut s);
            assert!(fits(&s, CAN).is_err(), "{name} must start cold");
        }
    }

    #[test]
    fn volumes_need_grafting_and_a_plain_local_volume() {
        let mut s = plain_spec();
        let key = s.key.clone();
        s.volumes
            .push(VolumeSpec::new(0, &key, "home-{user}", "/home/jovyan", false).expect("ok"));
        assert_eq!(fits(&s, CAN), Ok(()));
        assert!(fits(&s, Can { graft: false }).is_err());
        s.volumes[0]
            .driver_opts
            .insert("type".to_owned(), "nfs".to_owned());
        assert!(fits(&s, CAN).is_err());
    }
}
