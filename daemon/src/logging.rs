//! Where berthd's log goes and how it looks: human text on a terminal (colour only there), one
//! JSON object per line with `[log] format = "json"` / `BERTH_LOG_FORMAT=json` (for journald
//! forwarding or a log shipper); the level from `[log] filter` / `BERTH_LOG`, with the libraries
//! that could log secrets held at info.

use std::net::SocketAddr;

/// The variable choosing the format: `json`, or `text` (the default); `[log] format`.
pub const FORMAT_ENV: &str = "BERTH_LOG_FORMAT";
/// The variable holding the filter (`info`, `info,berthd=debug`, ...); `[log] filter`.
pub const FILTER_ENV: &str = "BERTH_LOG";

section! {
    /// `[log]`: berthd's own log, on stderr. Read with the rest of the configuration, so the
    /// log starts once the configuration is known (an unusable one is reported on stderr).
    pub struct LogConfig at "log." {
        /// Log filter: a level (error, warn, info, debug, trace) or tracing directives, e.g. info,berthd=debug; libraries that could log secrets stay at info.
        filter: String = "info".to_owned(), env "BERTH_LOG", flag "log";
        /// Log format: text (colour only on a terminal) or json (one object per line).
        format: Format = Format::Text, env "BERTH_LOG_FORMAT", flag "log-format";
    }
}

impl LogConfig {
    /// The filter, parsed; the error names the key.
    pub fn env_filter(&self) -> Result<tracing_subscriber::EnvFilter, String> {
        tracing_subscriber::EnvFilter::try_new(self.filter.trim())
            .map_err(|e| format!("{:?} is not a log filter: {e}", self.filter))
    }
}

/// Libraries whose debug output could carry secrets (request bodies, headers).
const LIBRARIES_CAPPED_AT_INFO: &[&str] = &[
    "bollard",
    "hyper",
    "hyper_util",
    "h2",
    "tonic",
    "tower",
    "rustls",
    "reqwest",
    "http",
];

/// The log's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Human text.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber (on stderr, which journald collects); `cfg` was validated.
pub fn init(cfg: &LogConfig) -> Result<(), String> {
    let mut filter = cfg.env_filter()?;
    // Whatever the filter says, libraries that log request bodies or headers at debug/trace
    // (bollard logs the create payload, which holds the hub's token) stay at info.
    for quiet in LIBRARIES_CAPPED_AT_INFO {
        if let Ok(d) = format!("{quiet}=info").parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.format {
        Format::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    Ok(())
}

/// The warning due when the listener is on the network but servers are published on loopback:
/// the hub's proxy, on another machine, could not reach them.
pub fn publish_warning(listen: SocketAddr, publish: std::net::IpAddr) -> Option<String> {
    (!listen.ip().is_loopback() && publish.is_loopback()).then(|| {
        format!(
            "berthd listens on {listen} but publishes servers on {publish} (docker.publish_host_ip): a hub or proxy on another machine cannot reach them; set docker.publish_host_ip to this node's cluster address"
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn format_and_filter_are_read_and_bad_ones_refused() {
        let cfg: LogConfig = toml::from_str("format = \"json\"").unwrap();
        assert_eq!(cfg.format, Format::Json);
        assert_eq!(LogConfig::default().format, Format::Text);
        let err = toml::from_str::<LogConfig>("format = \"xml\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("format") && err.contains("json"), "{err}");
        let bad = LogConfig {
            filter: "info,=[".to_owned(),
            ..LogConfig::default()
        };
        assert!(bad.env_filter().is_err());
        assert!(LogConfig::default().env_filter().is_ok());
    }

    #[test]
    fn warns_only_for_a_network_listener_publishing_on_loopback() {
        let p = |s: &str| s.parse().unwrap();
        let lo = p("127.0.0.1");
        assert!(publish_warning("10.0.0.5:50051".parse().unwrap(), lo).is_some());
        assert!(publish_warning("0.0.0.0:50051".parse().unwrap(), lo).is_some());
        assert!(publish_warning("127.0.0.1:50051".parse().unwrap(), lo).is_none());
        assert!(publish_warning("10.0.0.5:50051".parse().unwrap(), p("10.0.0.5")).is_none());
        assert!(publish_warning("[::]:50051".parse().unwrap(), p("::1")).is_some());
    }
}
