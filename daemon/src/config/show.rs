//! What `berthd config check` and `berthd config default` print: the effective configuration
//! as TOML with anything secret redacted, and the documented default file.

use toml::Value;

use super::{Config, ConfigError, invalid};

/// The documented configuration file (`systemd/config.toml`), as installed in
/// `/etc/berth/config.toml`: every key with its default, except the keys in
/// [`PACKAGED_CHOICES`] and a commented-out `node_id` (each node's own).
pub const DEFAULT_FILE: &str = include_str!("../../../systemd/config.toml");

/// Keys whose value in [`DEFAULT_FILE`] is the packaged unit's, not the embedded default.
pub const PACKAGED_CHOICES: &[&str] = &["admin_socket"];

/// What replaces a secret in printed configuration.
pub const REDACTED: &str = "<redacted>";

impl Config {
    /// The configuration as TOML, every key written out, secrets redacted (see [`redact`]).
    pub fn to_toml_redacted(&self) -> Result<String, ConfigError> {
        let mut tree = Value::try_from(self).map_err(|e| invalid("(all)", e.to_string()))?;
        redact(&mut tree);
        toml::to_string(&tree).map_err(|e| invalid("(all)", e.to_string()))
    }
}

/// Replaces secrets in a configuration tree: the text of a key named like a secret (`token`,
/// `password`, `secret`, `key`) unless it names a file (`*_file`, `*_dir`, `*_path`), and the
/// password of a URL (`https://user:pw@host`). Files are always printed as paths, never read;
/// a switch or a number is never a secret (`allow_pull_secrets = true` stays readable), so
/// the output stays a valid configuration file.
pub fn redact(tree: &mut Value) {
    match tree {
        Value::Table(t) => {
            for (key, v) in t.iter_mut() {
                if secret_key(key) {
                    hide_text(v);
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(s) => {
            if let Some(clean) = redact_url(s) {
                *s = clean;
            }
        }
        _ => {}
    }
}

/// Every non-empty string in `v` (a secret key's value) replaced by [`REDACTED`].
fn hide_text(v: &mut Value) {
    match v {
        Value::String(s) if !s.is_empty() => *s = REDACTED.to_owned(),
        Value::Array(items) => items.iter_mut().for_each(hide_text),
        Value::Table(t) => t.iter_mut().for_each(|(_, v)| hide_text(v)),
        _ => {}
    }
}

fn secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    let names_a_place = ["_file", "_dir", "_path", "_socket"]
        .iter()
        .any(|s| k.ends_with(s));
    !names_a_place
        && ["token", "password", "secret", "key"]
            .iter()
            .any(|s| k.contains(s))
}

/// `scheme://user:<redacted>@rest` for a URL with a password in it.
fn redact_url(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (userinfo, host) = rest[..authority_end].rsplit_once('@')?;
    let (user, _password) = userinfo.split_once(':')?;
    Some(format!(
        "{scheme}://{user}:{REDACTED}@{host}{}",
        &rest[authority_end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_paths_kept() {
        let mut tree: Value = toml::from_str(
            r#"
            token_file = "/etc/berth/token"
            tls_key_file = "/etc/berth/node.key"
            api_token = "s3cret-token-value"
            empty_token = ""
            hub_api_url = "https://svc:pa55@hub.example:8081/hub/api"
            plain_url = "https://hub.example/hub/api"
            [nested]
            password = "hunter2"
            list = ["http://a:b@c/d"]
            "#,
        )
        .expect("toml");
        redact(&mut tree);
        let text = toml::to_string(&tree).expect("prints");
        for secret in ["s3cret-token-value", "pa55", "hunter2", ":b@"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(tree["token_file"].as_str(), Some("/etc/berth/token"));
        assert_eq!(tree["tls_key_file"].as_str(), Some("/etc/berth/node.key"));
        assert_eq!(tree["empty_token"].as_str(), Some(""));
        assert_eq!(
            tree["hub_api_url"].as_str(),
            Some("https://svc:<redacted>@hub.example:8081/hub/api")
        );
        assert_eq!(
            tree["plain_url"].as_str(),
            Some("https://hub.example/hub/api")
        );
    }

    #[test]
    fn switches_stay_readable_and_the_output_is_a_valid_config() {
        let mut tree: Value = toml::from_str(
            r#"
            allow_pull_secrets = true
            max_keys = 3
            tokens = ["a", ""]
            "#,
        )
        .expect("toml");
        redact(&mut tree);
        assert_eq!(tree["allow_pull_secrets"].as_bool(), Some(true));
        assert_eq!(tree["max_keys"].as_integer(), Some(3));
        assert_eq!(
            tree["tokens"],
            Value::Array(vec![REDACTED.into(), String::new().into()])
        );
        let mut cfg = Config::default();
        cfg.policy.allow_pull_secrets = true;
        let printed = cfg.to_toml_redacted().expect("prints");
        let again = Config::from_toml(&printed).expect("the printed configuration parses");
        assert!(again.policy.allow_pull_secrets, "{printed}");
    }

    /// The documented file holds every key the daemon has, each with the daemon's default.
    #[test]
    fn the_default_file_is_the_embedded_defaults_with_every_key_written_out() {
        let file: Value = toml::from_str(DEFAULT_FILE).expect("the default file is TOML");
        let parsed = Config::from_toml(DEFAULT_FILE).expect("the default file parses");
        let mut want = Value::try_from(Config::default()).expect("serialisable");
        let mut got = Value::try_from(&parsed).expect("serialisable");
        // node_id is commented out: each node's own (default: the host name).
        assert!(
            file.get("node_id").is_none(),
            "node_id must be left to each node"
        );
        assert!(
            DEFAULT_FILE.contains("\n# node_id = "),
            "node_id is documented"
        );
        for key in PACKAGED_CHOICES {
            assert!(file.get(*key).is_some(), "{key} is in the file");
            got[*key] = want[*key].clone();
        }
        assert_eq!(got, want, "the file's values are the embedded defaults");
        // Every key is written out, not left to serde's defaults.
        let Value::Table(all) = &mut want else {
            panic!("a table")
        };
        all.remove("node_id");
        missing_keys(&want, &file, "");
    }

    fn missing_keys(want: &Value, file: &Value, at: &str) {
        let (Value::Table(w), Value::Table(f)) = (want, file) else {
            return;
        };
        for (k, v) in w {
            let path = format!("{at}{k}");
            let Some(fv) = f.get(k) else {
                panic!("systemd/config.toml lacks {path}")
            };
            missing_keys(v, fv, &format!("{path}."));
        }
    }
}
