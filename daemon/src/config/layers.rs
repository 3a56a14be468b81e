//! The env and flag layers over the file: which keys they may set (from the `section!`
//! declarations), how `berthd`'s flags are built from them, and how a value is applied.

use std::path::PathBuf;

use clap::{Arg, ArgMatches, value_parser};
use toml::Value;

use super::{
    CapacityConfig, Config, ConfigError, DevicesConfig, DockerConfig, FencingConfig, ImagesConfig,
    MetricsConfig, NetworkConfig, NodeConfig, SecurityConfig, SpawnConfig,
};
use crate::policy::Policy;
use crate::policy::options::OptionsPolicy;
use crate::reporter::ActivityConfig;

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

/// The keys of the file that no `BERTH_*` variable or flag can set, each with the reason; a
/// test walks the default file and fails on any other key that is not in [`settings`].
pub const FILE_ONLY: &[(&str, &str)] = &[
    (
        "devices.classes",
        "a list of tables, [[devices.classes]], with no one-line form",
    ),
    (
        "warm.pools",
        "a list of tables, [[warm.pools]], with no one-line form",
    ),
];

/// How a `BERTH_*` variable or a flag writes a value that is not a plain scalar.
pub const VALUE_RULES: &str = "Lists are comma-separated (\"a,b\"; \"\" = empty); tables \
     are comma-separated key=value pairs (\"gpu=a100,zone=b\"; \"\" = empty); sizes and \
     durations as in the file (\"4G\", \"90s\").";

/// Every key that env and flags may set, in declaration order.
pub fn settings() -> impl Iterator<Item = &'static Setting> {
    [
        Config::OVERRIDABLE,
        DockerConfig::OVERRIDABLE,
        SpawnConfig::OVERRIDABLE,
        CapacityConfig::OVERRIDABLE,
        SecurityConfig::OVERRIDABLE,
        NetworkConfig::OVERRIDABLE,
        FencingConfig::OVERRIDABLE,
        ImagesConfig::OVERRIDABLE,
        Policy::OVERRIDABLE,
        OptionsPolicy::OVERRIDABLE,
        crate::hostpath::HostPathsConfig::OVERRIDABLE,
        ActivityConfig::OVERRIDABLE,
        NodeConfig::OVERRIDABLE,
        DevicesConfig::OVERRIDABLE,
        MetricsConfig::OVERRIDABLE,
        crate::logging::LogConfig::OVERRIDABLE,
    ]
    .into_iter()
    .flatten()
}

/// Where environment variables come from (the process env, or a map in tests).
pub trait EnvSource {
    /// The variable's value, if set.
    fn var(&self, name: &str) -> Option<String>;
    /// The names of the variables set (for telling unknown `BERTH_*` ones).
    fn names(&self) -> Vec<String>;
}

/// The regular spelling of `key`'s variable: `BERTH_` and the dotted key in capitals with
/// `_` for `.` (`images.gc_high_percent` → `BERTH_IMAGES_GC_HIGH_PERCENT`). It sets the key
/// as the declared variable does, where the two differ (the declared one wins).
pub fn regular_env(key: &str) -> String {
    format!("BERTH_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// The `BERTH_*` variables set in `env` that no key reads (a misspelling, or a key that no
/// variable may set), sorted: berthd warns about each rather than ignore it without a word.
pub fn unknown_vars(env: &dyn EnvSource) -> Vec<String> {
    let known = |name: &str| {
        name == CONFIG_ENV || settings().any(|s| s.env == name || regular_env(s.key) == name)
    };
    let mut out: Vec<String> = env
        .names()
        .into_iter()
        .filter(|n| n.starts_with("BERTH_") && !known(n))
        .collect();
    out.sort();
    out
}

/// The process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn names(&self) -> Vec<String> {
        std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect()
    }
}

impl<const N: usize> EnvSource for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }

    fn names(&self) -> Vec<String> {
        self.iter().map(|(k, _)| (*k).to_owned()).collect()
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
        let file_only: Vec<String> = FILE_ONLY
            .iter()
            .map(|(key, why)| format!("{key} ({why})"))
            .collect();
        let cmd = cmd.next_line_help(true).after_help(format!(
            "Each setting is read from the file (--config), then its BERTH_* variable, then its \
             flag; the later wins. {VALUE_RULES} Only in the file: {}.",
            file_only.join("; ")
        ));
        settings().fold(cmd, |cmd, s| {
            let shown = defaults
                .as_ref()
                .and_then(|d| lookup(d, s.key))
                .map(as_text)
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
    let from_env = settings().filter_map(|s| {
        env.var(s.env)
            .map(|v| (s, s.env.to_owned(), v))
            .or_else(|| {
                let regular = regular_env(s.key);
                env.var(&regular).map(|v| (s, regular, v))
            })
    });
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
        let (parent, field) = s.key.rsplit_once('.').unwrap_or(("", s.key));
        let table = lookup_mut(&mut tree, parent)
            .and_then(Value::as_table_mut)
            .ok_or_else(|| bad("is not a key of the configuration".to_owned()))?;
        // A key whose default is unset (an optional number) is absent from the tree.
        let value = match table.get(field) {
            Some(like) => coerce(like, &raw),
            None => Ok(unset(&raw)),
        };
        table.insert(
            field.to_owned(),
            value.map_err(|e| bad(format!("{raw:?}: {e}")))?,
        );
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
    if key.is_empty() {
        return Some(tree);
    }
    key.split('.').try_fold(tree, |v, part| v.get_mut(part))
}

/// A value as a variable or flag would give it (the inverse of [`coerce`]), for `--help`.
fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(as_text).collect::<Vec<_>>().join(","),
        Value::Table(t) => t
            .iter()
            .map(|(k, v)| format!("{k}={}", as_text(v)))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// `raw` as a TOML integer: decimal, or `0o`/`0x`/`0b` as in the file (`0o700`).
fn integer(raw: &str) -> Option<i64> {
    let t = raw.trim().replace('_', "");
    let radix = |p: &str, r| {
        t.strip_prefix(p)
            .and_then(|d| i64::from_str_radix(d, r).ok())
    };
    t.parse()
        .ok()
        .or_else(|| radix("0o", 8))
        .or_else(|| radix("0x", 16))
        .or_else(|| radix("0b", 2))
}

/// The items of a comma-separated list, trimmed; "" is the empty list.
fn items(raw: &str) -> impl Iterator<Item = &str> {
    raw.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// `raw` for a key unset by default (an optional number): a number if it is one, else text
/// for the key to refuse, naming itself.
fn unset(raw: &str) -> Value {
    integer(raw).map_or_else(|| Value::String(raw.to_owned()), Value::Integer)
}

/// `raw` as a TOML value of the same type as `like`.
fn coerce(like: &Value, raw: &str) -> Result<Value, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    Ok(match like {
        Value::String(_) => Value::String(raw.to_owned()),
        // Not a number: handed on as text, which the `*_bytes`/`*_seconds` keys read as a
        // human size or duration ("4G", "90s") and any other key refuses, naming itself.
        Value::Integer(_) => unset(raw),
        Value::Float(_) => Value::Float(raw.trim().parse().map_err(|e| err(&e))?),
        Value::Boolean(_) => Value::Boolean(raw.trim().parse().map_err(|e| err(&e))?),
        // A list: comma-separated items, each read as the list's items are (text so far).
        Value::Array(_) => Value::Array(items(raw).map(|i| Value::String(i.to_owned())).collect()),
        // A table of text: `k=v,k2=v2`.
        Value::Table(_) => Value::Table(
            items(raw)
                .map(|pair| {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| format!("{pair:?} is not key=value"))?;
                    Ok((k.trim().to_owned(), Value::String(v.trim().to_owned())))
                })
                .collect::<Result<_, String>>()?,
        ),
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
        assert_eq!(coerce(&n, "0o700"), Ok(Value::Integer(0o700)));
        assert_eq!(unset("1000"), Value::Integer(1000));
        assert_eq!(unset("root"), Value::String("root".to_owned()));
    }

    #[test]
    fn lists_are_comma_separated_and_tables_key_value_pairs() {
        let list = Value::Array(vec![]);
        let text = |s: &str| Value::String(s.to_owned());
        assert_eq!(
            coerce(&list, " a/* , b ,"),
            Ok(Value::Array(vec![text("a/*"), text("b")]))
        );
        assert_eq!(coerce(&list, ""), Ok(Value::Array(vec![])));
        let table = Value::Table(toml::Table::new());
        let got = coerce(&table, "gpu=a100, zone = b").expect("a table");
        assert_eq!(as_text(&got), "gpu=a100,zone=b");
        assert_eq!(coerce(&table, ""), Ok(Value::Table(toml::Table::new())));
        let err = coerce(&table, "gpu").expect_err("not a pair");
        assert!(err.contains("key=value"), "{err}");
    }
}
