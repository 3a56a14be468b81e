//! A real container registry on 127.0.0.1 for pull tests: Debian's `docker-registry`
//! (distribution 2.x) on a free port with its own storage directory, optionally behind
//! htpasswd auth, its request log kept for counting; and a multi-layer test image built from
//! `berth-test/tiny` with layers of random data, pushed there, and removed from the local
//! engine so that a pull really downloads it. Docker trusts loopback registries over HTTP.
//!
//! The docker CLI runs with its own `DOCKER_CONFIG` (a temporary directory), so `docker login`
//! never touches the host's credentials. Nothing here removes an image it did not build.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TINY, temp_dir, unique};

/// The registry program of Debian's `docker-registry` package.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running registry; stopped and its storage removed on drop.
pub struct Registry {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    /// `(user, password)` when htpasswd auth is on.
    pub auth: Option<(String, String)>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Registry {
    /// Starts a registry; with `auth`, only that user and password may push or pull.
    pub fn start(auth: Option<(&str, &str)>) -> Self {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "pull tests need a registry: apt-get install docker-registry apache2-utils (tests/run-all does)"
        );
        let dir = temp_dir("registry");
        let port = free_port();
        let mut auth_yaml = String::new();
        if let Some((user, password)) = auth {
            let htpasswd = dir.join("htpasswd");
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("htpasswd (apache2-utils) must be installed");
            assert!(out.status.success(), "htpasswd failed");
            std::fs::write(&htpasswd, &out.stdout).unwrap();
            auth_yaml = format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_yaml}",
                dir.join("storage").display()
            ),
        )
        .unwrap();
        let mut r = Registry {
            child: None,
            port,
            log: dir.join("registry.log"),
            dir,
            config,
            auth: auth.map(|(u, p)| (u.to_owned(), p.to_owned())),
        };
        r.resume();
        r
    }

    /// Starts the registry process (again, after [`Registry::stop`]) and waits until it answers.
    pub fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("http://127.0.0.1:{}/v2/", self.port))
                .output()
                .expect("curl must be installed");
            let code = String::from_utf8_lossy(&out.stdout).into_owned();
            if code == "200" || code == "401" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the registry did not answer on port {}: {}",
                self.port,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the registry process (its storage stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Everything the registry logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many GETs of `repo`'s manifests the registry answered.
    pub fn manifest_gets(&self, repo: &str) -> usize {
        let needle = format!("/v2/{repo}/manifests/");
        self.log_text()
            .lines()
            .filter(|l| {
                l.contains("response completed")
                    && l.contains("http.request.method=GET")
                    && l.contains(&needle)
            })
            .count()
    }

    /// The compressed sizes of the layers of `repo:tag` as the registry serves them.
    pub fn layer_sizes(&self, repo: &str, tag: &str) -> Vec<u64> {
        let mut cmd = Command::new("curl");
        cmd.args(["-sf", "-H"])
            .arg("Accept: application/vnd.docker.distribution.manifest.v2+json");
        if let Some((u, p)) = &self.auth {
            cmd.arg("-u").arg(format!("{u}:{p}"));
        }
        let out = cmd
            .arg(format!("http://{}/v2/{repo}/manifests/{tag}", self.host()))
            .output()
            .unwrap();
        let m: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a manifest");
        m["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|l| l["size"].as_u64().unwrap())
            .collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the docker CLI with its own config directory; panics with its output on failure.
fn docker_cli(config: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("docker")
        .env("DOCKER_CONFIG", config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the docker CLI must be installed");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "docker {args:?} failed: {text}");
    text
}

/// An image in a registry and no longer on the local engine.
pub struct Pushed {
    /// `127.0.0.1:<port>/<repo>:<tag>`.
    pub reference: String,
    pub repo: String,
    pub tag: String,
    /// Compressed sizes of the layers a pull must download (those not from `berth-test/tiny`).
    pub new_layer_sizes: Vec<u64>,
}

/// Builds an image of `berth-test/tiny` plus `layers` layers of `mib` MiB of random data each
/// (unique to this call, so no other test's pull can make a layer already present), pushes it
/// to `reg` as a unique repository, and removes every tag of it from the local engine.
pub fn push_test_image(reg: &Registry, layers: usize, mib: usize) -> Pushed {
    let ctx = temp_dir("pull-image");
    let mut dockerfile = format!("FROM {TINY}\n");
    for i in 0..layers {
        let path = ctx.join(format!("blob{i}"));
        let out = Command::new("head")
            .arg("-c")
            .arg((mib << 20).to_string())
            .arg("/dev/urandom")
            .output()
            .unwrap();
        std::fs::write(&path, out.stdout).unwrap();
        dockerfile.push_str(&format!("COPY blob{i} /data/blob{i}\n"));
    }
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    let repo = unique("berth-pull").replace('_', "-");
    let tag = "1".to_owned();
    let reference = format!("{}/{repo}:{tag}", reg.host());
    let cfg = ctx.join("docker-config");
    std::fs::create_dir_all(&cfg).unwrap();
    let ctx_s = ctx.display().to_string();
    docker_cli(&cfg, &["build", "-q", "-t", &reference, &ctx_s], None);
    if let Some((user, password)) = &reg.auth {
        docker_cli(
            &cfg,
            &["login", &reg.host(), "-u", user, "--password-stdin"],
            Some(password),
        );
    }
    docker_cli(&cfg, &["push", &reference], None);
    docker_cli(&cfg, &["rmi", &reference], None);
    let tiny_layers = super::docker(&[
        "image",
        "inspect",
        TINY,
        "--format",
        "{{len .RootFS.Layers}}",
    ])
    .parse::<usize>()
    .unwrap();
    let sizes = reg.layer_sizes(&repo, &tag);
    let _ = std::fs::remove_dir_all(&ctx);
    Pushed {
        new_layer_sizes: sizes[tiny_layers..].to_vec(),
        reference,
        repo,
        tag,
    }
}

/// Removes `reference` from the local engine if a test pulled it (never an image it did not make).
pub fn remove_local(reference: &str) {
    let _ = Command::new("docker")
        .args(["rmi", "-f", reference])
        .output();
}

/// A file for `images.registry_auth_file` in Docker's `config.json` form, mode 0600.
pub fn auth_file(dir: &Path, host: &str, user: &str, password: &str) -> PathBuf {
    use base64::Engine as _;
    use std::os::unix::fs::PermissionsExt;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let path = dir.join("registry-auth.json");
    std::fs::write(
        &path,
        format!(r#"{{"auths": {{"{host}": {{"auth": "{auth}"}}}}}}"#),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A TCP proxy on 127.0.0.1 in front of `upstream` that sends the registry's answers at most
/// `bytes_per_second`, so a pull of a few MB on loopback lasts long enough to be watched. Pull
/// through `127.0.0.1:<port>/<repo>:<tag>`: the registry does not care which host was asked.
pub struct SlowProxy {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl SlowProxy {
    pub async fn start(upstream: u16, bytes_per_second: u64) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let (mut down_r, mut down_w) = down.into_split();
                    let (mut up_r, mut up_w) = up.into_split();
                    let requests = tokio::io::copy(&mut down_r, &mut up_w);
                    let answers = async {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match up_r.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if down_w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                            let nanos = n as u64 * 1_000_000_000 / bytes_per_second;
                            tokio::time::sleep(Duration::from_nanos(nanos)).await;
                        }
                    };
                    tokio::select! {
                        _ = requests => {}
                        () = answers => {}
                    }
                });
            }
        });
        SlowProxy { port, task }
    }

    /// `reference` as pulled through this proxy.
    pub fn reference(&self, pushed: &Pushed) -> String {
        format!("127.0.0.1:{}/{}:{}", self.port, pushed.repo, pushed.tag)
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
