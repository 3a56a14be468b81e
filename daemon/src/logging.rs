//! Where berthd's log goes and how it looks: human text on a terminal (colour only there), one
//! JSON object per line with `BERTH_LOG_FORMAT=json` (for journald forwarding or a log
//! shipper); the level from `BERTH_LOG`, with the libraries that could log secrets held at info.

use std::net::SocketAddr;

use crate::config::EnvSource;

/// The variable choosing the format: `json`, or `text` (the default).
pub const FORMAT_ENV: &str = "BERTH_LOG_FORMAT";
/// The variable holding the filter (`info`, `info,berthd=debug`, ...).
pub const FILTER_ENV: &str = "BERTH_LOG";

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human text.
    Text,
    /// One JSON object per line.
    Json,
}

impl Format {
    /// The format `BERTH_LOG_FORMAT` asks for; an unknown value is an error naming it.
    pub fn from_env(env: &dyn EnvSource) -> Result<Self, String> {
        match env.var(FORMAT_ENV).as_deref().map(str::trim) {
            None | Some("" | "text") => Ok(Self::Text),
            Some("json") => Ok(Self::Json),
            Some(other) => Err(format!(
                "{FORMAT_ENV}={other:?}: expected \"text\" or \"json\""
            )),
        }
    }
}

/// Installs the global subscriber (on stderr, which journald collects).
pub fn init(env: &dyn EnvSource) -> Result<(), String> {
    let format = Format::from_env(env)?;
    let mut filter = env
        .var(FILTER_ENV)
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    // Whatever BERTH_LOG says, libraries that log request bodies or headers at debug/trace
    // (bollard logs the create payload, which holds the hub's token) stay at info.
    for quiet in LIBRARIES_CAPPED_AT_INFO {
        if let Ok(d) = format!("{quiet}=info").parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
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
    fn format_from_env() {
        assert_eq!(Format::from_env(&[("X", "")]), Ok(Format::Text));
        assert_eq!(Format::from_env(&[(FORMAT_ENV, "text")]), Ok(Format::Text));
        assert_eq!(Format::from_env(&[(FORMAT_ENV, "json")]), Ok(Format::Json));
        let err = Format::from_env(&[(FORMAT_ENV, "xml")]).unwrap_err();
        assert!(err.contains("BERTH_LOG_FORMAT"), "{err}");
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
