//! Server keys and the injective mapping from a key to Docker container and volume names.

use std::fmt;

/// Longest user or server name accepted, in bytes (JupyterHub stores names in 255-wide columns).
pub const MAX_NAME_BYTES: usize = 255;

/// Prefix of every container berthd creates.
pub const CONTAINER_PREFIX: &str = "berth-";

/// One single-user server: a JupyterHub user and a server name ("" for the default server).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerKey {
    user: String,
    server: String,
}

/// Why a user or server name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The user name is empty.
    #[error("must not be empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_BYTES`].
    #[error("is {0} bytes long; at most {MAX_NAME_BYTES} are allowed")]
    TooLong(usize),
    /// The name holds a control character (NUL, newline, ...).
    #[error("must not contain control characters")]
    Control,
}

impl ServerKey {
    /// Validates a user and server name. The user must be non-empty; both are bounded in length
    /// and free of control characters. Any other Unicode is allowed and escaped for Docker.
    pub fn new(user: &str, server: &str) -> Result<Self, (&'static str, KeyError)> {
        check_name(user, false).map_err(|e| ("user", e))?;
        check_name(server, true).map_err(|e| ("server_name", e))?;
        Ok(Self {
            user: user.to_owned(),
            server: server.to_owned(),
        })
    }

    /// The JupyterHub user name, exactly as given.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The server name ("" for the default server).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The Docker container name of this server: `berth-<user>` or `berth-<user>_<server>`,
    /// each part escaped with [`escape`]. Two different keys never share a name: the escaped
    /// parts never contain `_`, and [`escape`] is injective.
    pub fn container_name(&self) -> String {
        let mut name = String::with_capacity(CONTAINER_PREFIX.len() + self.user.len() * 3);
        name.push_str(CONTAINER_PREFIX);
        name.push_str(&escape(&self.user));
        if !self.server.is_empty() {
            name.push('_');
            name.push_str(&escape(&self.server));
        }
        name
    }
}

impl fmt::Display for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.server.is_empty() {
            write!(f, "{:?}", self.user)
        } else {
            write!(f, "{:?}/{:?}", self.user, self.server)
        }
    }
}

fn check_name(name: &str, may_be_empty: bool) -> Result<(), KeyError> {
    if name.is_empty() && !may_be_empty {
        return Err(KeyError::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(KeyError::TooLong(name.len()));
    }
    if name.chars().any(char::is_control) {
        return Err(KeyError::Control);
    }
    Ok(())
}

/// Escapes a name into Docker's name alphabet: `[a-z0-9]` stay, every other byte of the UTF-8
/// encoding becomes `-` and two lowercase hex digits. The result is non-empty-safe for Docker
/// (it may be empty only for an empty input) and decodes back uniquely.
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_lowercase() || b.is_ascii_digit() {
            out.push(b as char);
        } else {
            out.push('-');
            out.push(hex_digit(b >> 4));
            out.push(hex_digit(b & 0x0f));
        }
    }
    out
}

fn hex_digit(n: u8) -> char {
    char::from_digit(u32::from(n), 16).unwrap_or('0')
}

/// Reverses [`escape`]; `None` for text that [`escape`] cannot have produced.
pub fn unescape(escaped: &str) -> Option<String> {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'-' => {
                let hex = escaped.get(i + 1..i + 3)?;
                if hex.chars().any(|c| c.is_ascii_uppercase()) {
                    return None;
                }
                let b = u8::from_str_radix(hex, 16).ok()?;
                if b.is_ascii_lowercase() || b.is_ascii_digit() {
                    return None;
                }
                out.push(b);
                i += 3;
            }
            b if b.is_ascii_lowercase() || b.is_ascii_digit() => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_escaped_into_docker_alphabet() {
        let cases = [
            ("alice", "", "berth-alice"),
            ("alice", "gpu", "berth-alice_gpu"),
            ("Alice", "", "berth--41lice"),
            ("a-b", "", "berth-a-2db"),
            ("a_b", "x y", "berth-a-5fb_x-20y"),
            ("jörg", "", "berth-j-c3-b6rg"),
            ("a@b.org", "", "berth-a-40b-2eorg"),
        ];
        for (user, server, want) in cases {
            let key = ServerKey::new(user, server).expect("valid key");
            assert_eq!(key.container_name(), want, "{user:?}/{server:?}");
        }
    }

    #[test]
    fn bad_names_are_refused_with_the_field() {
        assert_eq!(
            ServerKey::new("", "").expect_err("invalid"),
            ("user", KeyError::Empty)
        );
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        assert_eq!(
            ServerKey::new(&long, "").expect_err("invalid"),
            ("user", KeyError::TooLong(256))
        );
        assert_eq!(
            ServerKey::new("a", "b\0").expect_err("invalid"),
            ("server_name", KeyError::Control)
        );
        assert_eq!(
            ServerKey::new("a\nb", "").expect_err("invalid"),
            ("user", KeyError::Control)
        );
    }

    fn decode(name: &str) -> Option<(String, String)> {
        let rest = name.strip_prefix(CONTAINER_PREFIX)?;
        match rest.split_once('_') {
            Some((u, s)) => Some((unescape(u)?, unescape(s)?)),
            None => Some((unescape(rest)?, String::new())),
        }
    }

    proptest! {
        #[test]
        fn container_names_decode_back_to_their_key(user in "\\PC{1,40}", server in "\\PC{0,20}") {
            let key = ServerKey::new(&user, &server).expect("printable names are valid");
            let name = key.container_name();
            prop_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            // Decoding is a function of the name, so equal names imply equal keys: no collisions.
            prop_assert_eq!(decode(&name), Some((user, server)));
        }

        #[test]
        fn distinct_keys_get_distinct_names(a in "[a-zA-Z_ -]{1,6}", b in "[a-zA-Z_ -]{1,6}", s in "[a-z_]{0,3}", t in "[a-z_]{0,3}") {
            let k1 = ServerKey::new(&a, &s).expect("valid");
            let k2 = ServerKey::new(&b, &t).expect("valid");
            prop_assert_eq!(k1 == k2, k1.container_name() == k2.container_name());
        }
    }
}
