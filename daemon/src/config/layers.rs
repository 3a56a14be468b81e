//! The env and flag layers over the file: which keys they may set (from the `section!`
//! declarations), how `berthd`'s flags are built from them, and how a value is applied.

use std::path::PathBuf;

use clap::{Arg, ArgMatches, value_parser};
use toml::Value;

use super::{
    CapacityConfig, Config, ConfigError, DockerConfig, MetricsConfig, SecurityConfig, SpawnConfig,
};

/// The variable naming the configuration file (the `--config` flag wins over it).
pub const CONFIG_ENV: &str = "BERTH_CONFIG";

/// A key that a `BERTH_*` variable and a `--flag` may set too; declared with its key in
/// `config.rs`, never written out by hand.
#[derive(Debug, PartialEq, Eq)]
pub struct Setting {
    /// The key as in the file, dotted (`docker.host`).
    pub key: &'static str,
    /// The environment variable (`BERTH_DOCKER_HOST`).
    pub env: &'static str,
    /// The flag without its dashes (`docker-host`).
    pub flag: &'static str,
    /// One line of help, also the key's doc comment.
    pub help: &'static str,
}

/// Every key that env and flags may set, in declaration order.
pub fn settings() -> impl Iterator<Item = &'static Setting> {
    [
        Config::OVERRIDABLE,
        DockerConfig::OVERRIDABLE,
        SpawnConfig::OVERRIDABLE,
        CapacityConfig::OVERRIDABLE,
        SecurityConfig::OVERRIDABLE,
        MetricsConfig::OVERRIDABLE,
    ]
    .into_iter()
    .flatten()
}

/// Where environment variables come from (the process env, or a map in tests).
pub trait EnvSource {
    /// The variable's value, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<const N: usize> EnvSource for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

/// Settings given on the command line; each wins over file and env. Its flags are the
/// [`settings`] plus `--config`, and it is the argument set of `berthd serve` / `config check`.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--config`: the TOML file.
    pub config: Option<PathBuf>,
    /// The flags given, in the order given.
    pub values: Vec<(&'static Setting, String)>,
}

impl Overrides {
    /// These overrides plus `--flag value`; `None` if no setting has that flag.
    pub fn with(mut self, flag: &str, value: &str) -> Option<Self> {
        let s = settings().find(|s| s.flag == flag)?;
        self.values.push((s, value.to_owned()));
        Some(self)
    }
}

impl clap::Args for Overrides {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let defaults = Value::try_from(Config::default()).ok();
        let cmd = cmd.arg(
            Arg::new("config")
                .long("config")
                .value_name("FILE")
                .value_parser(value_parser!(PathBuf))
                .help(format!("TOML configuration file [env: {CONFIG_ENV}]")),
        );
        settings().fold(cmd, |cmd, s| {
            let shown = defaults
                .as_ref()
                .and_then(|d| lookup(d, s.key))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .filter(|v| !v.is_empty())
                .map(|v| format!(" [default: {v}]"))
                .unwrap_or_default();
            cmd.arg(
                Arg::new(s.flag)
                    .long(s.flag)
                    .value_name(s.env.trim_start_matches("BERTH_"))
                    .value_parser(value_parser!(String))
                    .help(format!("{} [env: {}]{shown}", s.help.trim(), s.env)),
            )
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for Overrides {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self {
            config: m.get_one::<PathBuf>("config").cloned(),
            values: settings()
                .filter_map(|s| m.get_one::<String>(s.flag).map(|v| (s, v.clone())))
                .collect(),
        })
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

/// `cfg` with the env layer and then the flag layer applied. A value is written into the
/// configuration's TOML tree as the type the key already has there, so it is parsed exactly as
/// the same value in the file would be; the error names the key and where the value came from.
pub(super) fn apply(
    cfg: Config,
    env: &dyn EnvSource,
    flags: &Overrides,
) -> Result<Config, ConfigError> {
    let from_env = settings().filter_map(|s| env.var(s.env).map(|v| (s, s.env.to_owned(), v)));
    let from_flags = flags
        .values
        .iter()
        .map(|(s, v)| (*s, format!("--{}", s.flag), v.clone()));
    let layered: Vec<_> = from_env.chain(from_flags).collect();
    if layered.is_empty() {
        return Ok(cfg);
    }
    let mut tree = Value::try_from(&cfg).map_err(|e| super::invalid("(all)", e.to_string()))?;
    let mut cfg = cfg;
    for (s, origin, raw) in layered {
        let bad = |message: String| super::invalid(format!("{} (from {origin})", s.key), message);
        let slot = lookup_mut(&mut tree, s.key)
            .ok_or_else(|| bad("is not a key of the configuration".to_owned()))?;
        *slot = coerce(slot, &raw).map_err(|e| bad(format!("{raw:?}: {e}")))?;
        cfg = tree
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| bad(format!("{raw:?}: {}", e.message())))?;
    }
    Ok(cfg)
}

fn lookup<'v>(tree: &'v Value, key: &str) -> Option<&'v Value> {
    key.split('.').try_fold(tree, |v, part| v.get(part))
}

fn lookup_mut<'v>(tree: &'v mut Value, key: &str) -> Option<&'v mut Value> {
    key.split('.').try_fold(tree, |v, part| v.get_mut(part))
}

/// `raw` as a TOML value of the same type as `like`.
fn coerce(like: &Value, raw: &str) -> Result<Value, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    Ok(match like {
        Value::String(_) => Value::String(raw.to_owned()),
        // Not a number: handed on as text, which the `*_bytes`/`*_seconds` keys read as a
        // human size or duration ("4G", "90s") and any other key refuses, naming itself.
        Value::Integer(_) => raw
            .trim()
            .parse()
            .map_or_else(|_| Value::String(raw.to_owned()), Value::Integer),
        Value::Float(_) => Value::Float(raw.trim().parse().map_err(|e| err(&e))?),
        Value::Boolean(_) => Value::Boolean(raw.trim().parse().map_err(|e| err(&e))?),
        other => return Err(format!("a {} cannot be given as text", other.type_str())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_for_a_number_key_is_handed_on_for_the_key_to_read() {
        let n = Value::Integer(0);
        assert_eq!(coerce(&n, " 42 "), Ok(Value::Integer(42)));
        assert_eq!(coerce(&n, "4G"), Ok(Value::String("4G".to_owned())));
        assert!(coerce(&Value::Boolean(false), "maybe").is_err());
    }
}
