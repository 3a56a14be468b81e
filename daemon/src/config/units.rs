//! Human sizes (`"4G"`, `"512MiB"`) and durations (`"90s"`, `"2m"`, `"1h30m"`) for the keys
//! named `*_bytes` and `*_seconds`; a plain number keeps meaning bytes or seconds.
//!
//! Sizes follow JupyterHub's and Docker's reading of `K`/`M`/`G`/`T`: powers of 1024, as are
//! `KiB`..`TiB`. `KB`..`TB` are refused rather than guessed at (SI or binary?): the error says
//! what to write instead.

use serde::Deserializer;
use serde::de::{self, Visitor};

const KIB: u64 = 1024;

/// The number of bytes `text` names: `4096`, `"4096"`, `"4G"`, `"1.5 GiB"`, `"512m"`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "ki" | "kib" => KIB,
        "m" | "mi" | "mib" => KIB.pow(2),
        "g" | "gi" | "gib" => KIB.pow(3),
        "t" | "ti" | "tib" => KIB.pow(4),
        "kb" | "mb" | "gb" | "tb" => {
            return Err(format!(
                "{text:?}: {unit} is ambiguous; write {number}{}iB (powers of 1024) or a number of bytes",
                &unit[..1].to_ascii_uppercase()
            ));
        }
        _ => {
            return Err(format!(
                "{text:?} is not a size: a number of bytes, or a number with K, M, G or T (powers of 1024, e.g. \"4G\", \"512MiB\")"
            ));
        }
    };
    scaled(number, multiplier).ok_or_else(|| {
        format!(
            "{text:?} is not a size: a number of bytes, or a number with K, M, G or T (e.g. \"4G\")"
        )
    })
}

/// `number` (digits, optionally `.` and up to 9 more) times `multiplier`, rounded down.
fn scaled(number: &str, multiplier: u64) -> Option<u64> {
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole = u128::from(whole.parse::<u64>().ok()?) * u128::from(multiplier);
    let part = if frac.is_empty() {
        0
    } else {
        let digits = u32::try_from(frac.len()).ok()?;
        u128::from(frac.parse::<u64>().ok()?) * u128::from(multiplier) / 10u128.pow(digits)
    };
    u64::try_from(whole + part).ok()
}

/// The number of seconds `text` names: `90`, `"90"`, `"90s"`, `"2m"`, `"1h30m"`, `"1d"`.
pub fn parse_seconds(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "{text:?} is not a duration: a number of seconds, or numbers with s, m, h or d (e.g. \"90s\", \"2m\", \"1h30m\")"
        )
    };
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().map_err(|_| bad());
    }
    let mut rest = t;
    let mut total: u64 = 0;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = rest[digits..].trim_start();
        let letters = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = match rest[..letters].to_ascii_lowercase().as_str() {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86_400,
            "ms" | "us" | "ns" => {
                return Err(format!("{text:?}: berthd counts whole seconds"));
            }
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
        rest = rest[letters..].trim_start();
    }
    Ok(total)
}

/// `bytes` for people: `512 B`, `4.0 KiB`, `1.5 GiB`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < KIB {
        return format!("{bytes} B");
    }
    let mut unit = 0;
    let mut scale = KIB;
    while unit + 1 < UNITS.len() && bytes / scale >= KIB {
        unit += 1;
        scale *= KIB;
    }
    // Tenths, rounded down, in integers: exact for any u64.
    let tenths = u128::from(bytes) * 10 / u128::from(scale);
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
}

/// serde `deserialize_with` for a `*_bytes` key: an integer or a human size.
pub fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(Human {
        parse: parse_size,
        what: "a number of bytes or a size such as \"4G\"",
    })
}

/// serde `deserialize_with` for a `*_seconds` key: an integer or a human duration.
pub fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(Human {
        parse: parse_seconds,
        what: "a number of seconds or a duration such as \"90s\"",
    })
}

struct Human {
    parse: fn(&str) -> Result<u64, String>,
    what: &'static str,
}

impl Visitor<'_> for Human {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.what)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative; expected {}", self.what)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        (self.parse)(v).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_jupyterhub_and_docker_read_them() {
        let g = 1u64 << 30;
        for (text, want) in [
            ("0", Some(0)),
            ("4096", Some(4096)),
            ("4G", Some(4 * g)),
            ("4g", Some(4 * g)),
            ("4Gi", Some(4 * g)),
            ("4GiB", Some(4 * g)),
            ("4 GiB", Some(4 * g)),
            ("512MiB", Some(512 << 20)),
            ("512M", Some(512 << 20)),
            ("1.5G", Some(3 * g / 2)),
            ("2K", Some(2048)),
            ("1T", Some(1 << 40)),
            ("100B", Some(100)),
            (" 8G ", Some(8 * g)),
            ("4GB", None),
            ("4MB", None),
            ("G", None),
            ("", None),
            ("-1", None),
            ("4X", None),
            ("1.2.3G", None),
            ("99999999999T", None),
        ] {
            assert_eq!(parse_size(text).ok(), want, "{text:?}");
        }
        let e = parse_size("4GB").expect_err("ambiguous");
        assert!(e.contains("4GiB"), "{e}");
    }

    #[test]
    fn durations_are_whole_seconds() {
        for (text, want) in [
            ("0", Some(0)),
            ("90", Some(90)),
            ("90s", Some(90)),
            ("2m", Some(120)),
            ("2min", Some(120)),
            ("1h30m", Some(5400)),
            ("1h 30m", Some(5400)),
            ("1d", Some(86_400)),
            ("3 seconds", Some(3)),
            ("", None),
            ("s", None),
            ("1.5h", None),
            ("500ms", None),
            ("5 fortnights", None),
            ("-5s", None),
        ] {
            assert_eq!(parse_seconds(text).ok(), want, "{text:?}");
        }
    }

    #[test]
    fn sizes_print_for_people() {
        for (bytes, want) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (4 << 30, "4.0 GiB"),
            (1536 << 20, "1.5 GiB"),
            (u64::MAX, "16383.9 PiB"),
        ] {
            assert_eq!(format_size(bytes), want);
        }
    }

    #[derive(serde::Deserialize)]
    struct T {
        #[serde(deserialize_with = "bytes")]
        size: u64,
        #[serde(deserialize_with = "seconds")]
        wait: u64,
    }

    #[test]
    fn keys_take_numbers_and_text_and_name_the_key_when_wrong() {
        let t: T = toml::from_str("size = \"4G\"\nwait = \"2m\"").expect("parses");
        assert_eq!((t.size, t.wait), (4 << 30, 120));
        let t: T = toml::from_str("size = 10\nwait = 5").expect("parses");
        assert_eq!((t.size, t.wait), (10, 5));
        let e = toml::from_str::<T>("size = -1\nwait = 5")
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("size"), "{e}");
        let e = toml::from_str::<T>("size = 1\nwait = \"soon\"")
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("wait") && e.contains("soon"), "{e}");
    }

    /// Every `*_seconds` and `*_bytes` key of the whole configuration, in every section (new
    /// ones included), takes a human value.
    #[test]
    fn every_size_and_duration_key_of_the_configuration_takes_human_text() {
        let tree = toml::Value::try_from(crate::config::Config::default()).expect("serialisable");
        let mut checked = 0;
        for (section, key, text, want) in unit_keys(&tree) {
            let doc = match &section {
                Some(s) => format!("[{s}]\n{key} = \"{text}\"\n"),
                None => format!("{key} = \"{text}\"\n"),
            };
            let cfg =
                crate::config::Config::from_toml(&doc).unwrap_or_else(|e| panic!("{doc}: {e}"));
            let back = toml::Value::try_from(cfg).expect("serialisable");
            let got = match &section {
                Some(s) => &back[s.as_str()][key.as_str()],
                None => &back[key.as_str()],
            };
            assert_eq!(got.as_integer(), Some(want), "{doc}");
            checked += 1;
        }
        assert!(checked >= 9, "only {checked} keys found");
    }

    fn unit_keys(tree: &toml::Value) -> Vec<(Option<String>, String, &'static str, i64)> {
        let mut out = Vec::new();
        let mut visit = |section: Option<&str>, table: &toml::Table| {
            for (key, v) in table {
                if !v.is_integer() {
                    continue;
                }
                if key.ends_with("_seconds") {
                    out.push((section.map(str::to_owned), key.clone(), "2m", 120));
                } else if key.contains("_bytes") {
                    out.push((section.map(str::to_owned), key.clone(), "2K", 2048));
                }
            }
        };
        let top = tree.as_table().expect("a table");
        visit(None, top);
        for (name, v) in top {
            if let Some(t) = v.as_table() {
                visit(Some(name), t);
            }
        }
        out
    }
}
