//! Warm pools' configuration (`[[warm.pools]]`) and the launchers their containers run until
//! claimed; the pools themselves are `runtime::pool`'s.

use serde::{Deserialize, Serialize};

/// Name prefix of warm members; never a server's (those begin `berth-`).
pub const WARM_PREFIX: &str = "berthwarm-";

/// One `[[warm.pools]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// The image, as a Start names it.
    pub image: String,
    /// Members kept ready.
    #[serde(default)]
    pub size: u32,
    /// What a member holds before its claim, counted by the capacity ("512M"; 0 = nothing but
    /// a server's place).
    #[serde(default, deserialize_with = "crate::config::units::bytes")]
    pub memory_bytes: u64,
    /// What members run until claimed.
    #[serde(default)]
    pub launcher: Launcher,
    /// The port the server listens on.
    #[serde(default = "default_port")]
    pub port: u16,
}

fn default_port() -> u16 {
    8888
}

/// Most members one pool may keep.
pub const MAX_POOL_SIZE: u32 = 256;

/// What a member runs until it is claimed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Launcher {
    /// `python3 -c launcher.py`: imports the single-user server's modules ahead of the claim.
    #[default]
    Python,
    /// `sh -c launcher.sh`: only waits (images without Python).
    Shell,
}

impl Launcher {
    /// The entrypoint of a member.
    pub fn argv(self) -> Vec<String> {
        match self {
            Self::Python => vec![
                "python3".to_owned(),
                "-c".to_owned(),
                include_str!("warm/launcher.py").to_owned(),
            ],
            Self::Shell => vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                include_str!("warm/launcher.sh").to_owned(),
                "berth-launcher".to_owned(),
            ],
        }
    }
}

/// The line a launcher prints once it waits for its identity.
pub const READY_LINE: &str = "berth-launcher: ready";

/// Checks the `[[warm.pools]]` entries; the error names the key.
pub fn validate(pools: &[PoolConfig]) -> Result<(), (String, String)> {
    for (i, p) in pools.iter().enumerate() {
        let key = |k: &str| format!("warm.pools[{i}].{k}");
        if p.image.trim().is_empty() {
            return Err((key("image"), "must name an image".to_owned()));
        }
        if p.size > MAX_POOL_SIZE {
            return Err((key("size"), format!("must be at most {MAX_POOL_SIZE}")));
        }
        if p.port == 0 {
            return Err((key("port"), "must be a port (1-65535)".to_owned()));
        }
        if pools[..i]
            .iter()
            .any(|q| q.image == p.image && q.port == p.port)
        {
            return Err((
                key("image"),
                format!("{:?} with port {} has a pool already", p.image, p.port),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_checked() {
        let p = |image: &str, size, port| PoolConfig {
            image: image.into(),
            size,
            memory_bytes: 0,
            launcher: Launcher::Python,
            port,
        };
        assert!(validate(&[p("i", 2, 8888)]).is_ok());
        assert_eq!(
            validate(&[p(" ", 2, 8888)]).expect_err("refused").0,
            "warm.pools[0].image"
        );
        assert_eq!(
            validate(&[p("i", 999, 8888)]).expect_err("refused").0,
            "warm.pools[0].size"
        );
        assert_eq!(
            validate(&[p("i", 1, 0)]).expect_err("refused").0,
            "warm.pools[0].port"
        );
        assert!(validate(&[p("i", 1, 8888), p("i", 1, 8888)]).is_err());
    }
}
