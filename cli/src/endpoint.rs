//! Which berthd to talk to, and how. In order: `--endpoint`, `BERTH_ENDPOINT`, berthd's config
//! file (`--config`, `BERTH_CONFIG`, else `/etc/berth/config.toml` when it exists), then the
//! Admin socket at its default places.
//!
//! From the config file the Admin socket it names comes first (root on the node needs nothing
//! else), then its listen address with its TLS and token files. The Admin socket also serves
//! the Spawner's reads, Logs, Stop, Prepull and RemoveVolume, so every command works over it;
//! drain, undrain and reconcile work only over it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use berth_proto::v1::admin_client::AdminClient;
use berth_proto::v1::spawner_client::SpawnerClient;
use berthd::config::Config;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

/// berthd's config file when none is named.
pub(crate) const DEFAULT_CONFIG: &str = "/etc/berth/config.toml";
/// Where the Admin socket is when no config file says: the packaged unit's place, then the
/// embedded default (`<state_dir>/admin.sock`).
const DEFAULT_SOCKETS: &[&str] = &["/run/berth/admin.sock", "/var/lib/berth/admin.sock"];
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach berthd; global flags of every command.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct ConnArgs {
    /// berthd to talk to: unix:/path/admin.sock, http://host:port or https://host:port
    /// (default: from berthd's config file, else its Admin socket).
    #[arg(long, env = "BERTH_ENDPOINT", global = true, value_name = "URL")]
    pub(crate) endpoint: Option<String>,
    /// berthd's configuration file, to find its Admin socket or listen address, TLS and token.
    #[arg(long, env = "BERTH_CONFIG", global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// File holding the node's bearer token (TCP endpoints).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// CA that signed berthd's certificate (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// Client certificate for mutual TLS (PEM).
    #[arg(long, global = true, value_name = "FILE", requires = "key")]
    pub(crate) cert: Option<PathBuf>,
    /// Client private key for mutual TLS (PEM).
    #[arg(long, global = true, value_name = "FILE", requires = "cert")]
    pub(crate) key: Option<PathBuf>,
}

/// One way of reaching berthd.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Target {
    /// The Admin socket: no credentials, Admin and the Spawner's operator methods.
    Unix(PathBuf),
    /// The network listener: the Spawner service.
    Tcp(Tcp),
}

/// The network listener and the credentials for it.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Tcp {
    /// `http://host:port` or `https://host:port`.
    pub(crate) url: String,
    /// The name the server's certificate must carry ("" = the URL's host).
    pub(crate) server_name: String,
    pub(crate) ca: Option<PathBuf>,
    pub(crate) identity: Option<(PathBuf, PathBuf)>,
    pub(crate) token_file: Option<PathBuf>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
            Target::Tcp(t) => f.write_str(&t.url),
        }
    }
}

/// Adds `authorization: Bearer <token>` when a token is known.
#[derive(Clone)]
pub(crate) struct Bearer(Option<MetadataValue<Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The Spawner client berthctl uses.
pub(crate) type Spawner = SpawnerClient<InterceptedService<Channel, Bearer>>;

/// An open connection to berthd.
pub(crate) struct Conn {
    pub(crate) target: Target,
    channel: Channel,
    bearer: Bearer,
}

impl Conn {
    /// The Spawner service (over the socket: its operator methods).
    pub(crate) fn spawner(&self) -> Spawner {
        SpawnerClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }

    /// The Admin service; only on the Admin socket.
    pub(crate) fn admin(&self) -> Result<AdminClient<Channel>> {
        match &self.target {
            Target::Unix(_) => Ok(AdminClient::new(self.channel.clone())),
            Target::Tcp(t) => bail!(
                "drain, undrain and reconcile are served only on berthd's Admin socket, not on {}: run berthctl on the node (as root), or pass --endpoint unix:/path/admin.sock",
                t.url
            ),
        }
    }
}

/// The targets to try, in order, and where they came from (for errors).
pub(crate) fn targets(args: &ConnArgs) -> Result<(Vec<Target>, String)> {
    targets_with(args, Path::new(DEFAULT_CONFIG))
}

fn targets_with(args: &ConnArgs, default_config: &Path) -> Result<(Vec<Target>, String)> {
    if let Some(ep) = &args.endpoint {
        return Ok((vec![parse_endpoint(ep, args)?], format!("endpoint {ep}")));
    }
    let (path, named) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (default_config.to_owned(), false),
    };
    let mut source = "the default Admin sockets".to_owned();
    if named || path.exists() {
        match Config::from_file(&path) {
            Ok(cfg) => {
                return Ok((
                    from_config(&cfg, args),
                    format!("config {}", path.display()),
                ));
            }
            Err(e) if named => return Err(e).context("reading berthd's configuration"),
            // Not root: the sockets may still be open to this user's group.
            Err(e) => source = format!("{source}, as {e}"),
        }
    }
    let sockets = DEFAULT_SOCKETS
        .iter()
        .map(|s| Target::Unix(PathBuf::from(s)))
        .collect();
    Ok((sockets, source))
}

/// `unix:/p`, `unix:///p`, `http://h:p` or `https://h:p`, with the credential flags.
fn parse_endpoint(ep: &str, args: &ConnArgs) -> Result<Target> {
    if let Some(path) = ep.strip_prefix("unix:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if !path.starts_with('/') {
            return Err(usage(format!(
                "--endpoint {ep}: a Unix socket needs an absolute path (unix:/run/berth/admin.sock)"
            )));
        }
        return Ok(Target::Unix(PathBuf::from(path)));
    }
    if !(ep.starts_with("http://") || ep.starts_with("https://")) {
        return Err(usage(format!(
            "--endpoint {ep}: expected unix:/path, http://host:port or https://host:port"
        )));
    }
    if let Err(e) = ep.parse::<Uri>() {
        return Err(usage(format!("--endpoint {ep}: {e}")));
    }
    Ok(Target::Tcp(Tcp {
        url: ep.trim_end_matches('/').to_owned(),
        server_name: String::new(),
        ca: args.ca.clone(),
        identity: args.cert.clone().zip(args.key.clone()),
        token_file: args.token_file.clone(),
    }))
}

/// berthd's Admin socket, then its listen address (an unspecified address is reached on
/// loopback, where the node's certificate is checked for the name "localhost"). Flags win over
/// the file's credentials; with mutual TLS the node's own certificate is the client's.
fn from_config(cfg: &Config, args: &ConnArgs) -> Vec<Target> {
    let sec = &cfg.security;
    let set = |p: &Path| (!p.as_os_str().is_empty()).then(|| p.to_owned());
    let mut ip = cfg.listen.ip();
    if ip.is_unspecified() {
        ip = if ip.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
    }
    let addr = std::net::SocketAddr::new(ip, cfg.listen.port());
    let tls = sec.tls();
    let tcp = Tcp {
        url: format!("{}://{addr}", if tls { "https" } else { "http" }),
        server_name: if ip.is_loopback() {
            "localhost".to_owned()
        } else {
            String::new()
        },
        ca: args.ca.clone().or_else(|| set(&sec.client_ca_file)),
        identity: args.cert.clone().zip(args.key.clone()).or_else(|| {
            sec.mutual_tls()
                .then(|| (sec.tls_cert_file.clone(), sec.tls_key_file.clone()))
        }),
        token_file: args.token_file.clone().or_else(|| set(&sec.token_file)),
    };
    vec![Target::Unix(cfg.admin_socket()), Target::Tcp(tcp)]
}

/// Connects to the first target that answers.
pub(crate) async fn connect(args: &ConnArgs) -> Result<Conn> {
    let (targets, source) = targets(args)?;
    let mut failures = Vec::new();
    let only = targets.len() == 1;
    for target in targets {
        match open(&target).await {
            Ok(conn) => return Ok(conn),
            // A file the one endpoint asked for cannot be read: that is the error, not reach.
            Err(e) if only && e.downcast_ref::<Usage>().is_some() => return Err(e),
            // The whole chain: it names the file or the TLS refusal, not only its last cause.
            Err(e) => failures.push(format!("{target}: {e:#}")),
        }
    }
    Err(anyhow!(Unreachable(format!(
        "cannot reach berthd (from {source}): {}",
        failures.join("; ")
    ))))
}

/// Bad usage: an endpoint that cannot be one, a credential file that cannot be read (exit
/// status 2).
#[derive(Debug)]
pub(crate) struct Usage(pub(crate) String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

fn usage(message: String) -> anyhow::Error {
    anyhow!(Usage(message))
}

/// No berthd answered (exit status 69).
#[derive(Debug)]
pub(crate) struct Unreachable(pub(crate) String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

async fn open(target: &Target) -> Result<Conn> {
    match target {
        Target::Unix(path) => {
            let path = path.clone();
            let channel = Endpoint::from_static("http://localhost")
                .connect_timeout(CONNECT_TIMEOUT)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(&path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                }))
                .await?;
            Ok(Conn {
                target: target.clone(),
                channel,
                bearer: Bearer(None),
            })
        }
        Target::Tcp(t) => {
            let mut ep = Endpoint::from_shared(t.url.clone())?.connect_timeout(CONNECT_TIMEOUT);
            if t.url.starts_with("https://") {
                ep = ep.tls_config(tls(t)?)?;
            }
            let bearer = match &t.token_file {
                Some(p) => Bearer(Some(token(p)?)),
                None => Bearer(None),
            };
            Ok(Conn {
                target: target.clone(),
                channel: ep.connect().await?,
                bearer,
            })
        }
    }
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| usage(format!("{what} {}: {e}", path.display())))
}

fn tls(t: &Tcp) -> Result<ClientTlsConfig> {
    let mut cfg = ClientTlsConfig::new();
    let Some(ca) = &t.ca else {
        return Err(usage(format!(
            "{}: TLS needs the CA that signed berthd's certificate: pass --ca FILE",
            t.url
        )));
    };
    cfg = cfg.ca_certificate(Certificate::from_pem(read("--ca", ca)?));
    if let Some((cert, key)) = &t.identity {
        cfg = cfg.identity(Identity::from_pem(
            read("--cert", cert)?,
            read("--key", key)?,
        ));
    }
    if !t.server_name.is_empty() {
        cfg = cfg.domain_name(t.server_name.clone());
    }
    Ok(cfg)
}

fn token(path: &Path) -> Result<MetadataValue<Ascii>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| usage(format!("token file {}: {e}", path.display())))?;
    format!("Bearer {}", text.trim()).parse().map_err(|_| {
        usage(format!(
            "token file {}: not a valid header value",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests;
