//! Image GC against a real Docker engine — a PRIVATE dockerd this test starts (its own
//! data-root, exec-root, pidfile, socket, no bridge, an empty config file, its own containerd
//! namespaces) and stops, never the host's engine: a collection there would remove other
//! people's images. It runs in a network namespace of its own (`unshare --net`): a dockerd
//! started with `--bridge=none` deletes any interface named docker0 in its namespace, which in
//! the host's would be the host engine's bridge. With a high mark below the disk's usage, unused images go in LRU order
//! (never used first), an image a container uses stays, and so does an image neither berth's nor
//! in `gc_images`.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berthd::docker::BollardEngine;
use berthd::runtime::Runtime;
use berthd::runtime::images::image_gc::GcConfig;
use berthd::state::FileStore;
use common::{TINY, require_docker, temp_dir, unique};

/// A dockerd of this test alone.
struct PrivateDocker {
    child: Child,
    data: PathBuf,
    run: PathBuf,
    host: String,
}

impl PrivateDocker {
    fn start() -> Self {
        let data = temp_dir("gc-dockerd");
        // Short: the socket path must fit a sockaddr_un.
        let run = PathBuf::from(format!("/run/bgc-{}", std::process::id()));
        std::fs::create_dir_all(&run).unwrap();
        let config = data.join("daemon.json");
        std::fs::write(&config, "{}").unwrap();
        let host = format!("unix://{}/d.sock", run.display());
        let ns = unique("bgc");
        let log = std::fs::File::create(data.join("dockerd.log")).unwrap();
        let child = Command::new("unshare")
            .args(["--net", "dockerd"])
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(data.join("root"))
            .arg("--exec-root")
            .arg(run.join("x"))
            .arg("--pidfile")
            .arg(run.join("d.pid"))
            .args([
                "-H",
                &host,
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
            ])
            .args(["--storage-driver", "vfs"])
            .args(["--containerd-namespace", &ns])
            .args(["--containerd-plugins-namespace", &format!("{ns}-p")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("unshare (util-linux) and dockerd must be installed");
        let mut d = PrivateDocker {
            child,
            data,
            run,
            host,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.cli(&["info"]).0 {
            assert!(
                Instant::now() < deadline && d.child.try_wait().unwrap().is_none(),
                "the private dockerd did not answer: {}",
                std::fs::read_to_string(d.data.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("docker")
            .args(["-H", &self.host])
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text.trim().to_owned())
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.cli(args);
        assert!(ok, "docker {args:?}: {text}");
        text
    }

    /// The test image, copied from the host engine (read only there).
    fn load_tiny(&self) {
        let mut save = Command::new("docker")
            .args(["save", TINY])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let load = Command::new("docker")
            .args(["-H", &self.host, "load"])
            .stdin(save.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(
            save.wait().unwrap().success() && load.status.success(),
            "{load:?}"
        );
    }

    /// An image of its own id on top of the test image.
    fn build(&self, tag: &str) {
        let mut child = Command::new("docker")
            .args(["-H", &self.host, "build", "-q", "-t", tag, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let dockerfile = format!("FROM {TINY}\nLABEL berth.gc-test={tag}\n");
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), dockerfile.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    fn images(&self) -> Vec<String> {
        self.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for PrivateDocker {
    fn drop(&mut self) {
        let ids = self.cli(&["ps", "-aq"]).1;
        for id in ids.split_whitespace() {
            let _ = self.cli(&["rm", "-f", id]);
        }
        // SIGTERM: a clean shutdown.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
        let _ = std::fs::remove_dir_all(&self.run);
    }
}

fn marks(high: u8) -> GcConfig {
    GcConfig {
        high_percent: high,
        low_percent: 0,
        interval: Duration::from_secs(3600),
        min_age: Duration::ZERO,
        // Built here, not pulled by berth: GC may remove them only because they are listed.
        images: vec!["gc/*".to_owned()],
    }
}

/// Whether the host has its engine's bridge (a guard: this test must never remove it).
fn host_bridge() -> bool {
    Command::new("ip")
        .args(["link", "show", "docker0"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn unused_images_go_least_recently_used_first_and_used_ones_stay() {
    require_docker();
    let bridge = host_bridge();
    let d = PrivateDocker::start();
    assert_eq!(
        host_bridge(),
        bridge,
        "the private dockerd left the host's docker0 alone"
    );
    d.load_tiny();
    for tag in ["gc/i1:1", "gc/i2:1", "gc/i3:1"] {
        d.build(tag);
    }
    let engine = BollardEngine::connect(&d.host, Duration::from_secs(30))
        .await
        .unwrap();
    let state = temp_dir("gc-state");
    let cfg = berthd::config::Config {
        state_dir: state.clone(),
        ..Default::default()
    }
    .runtime();
    let rt = Runtime::new(engine, cfg, FileStore::open(&state).unwrap());

    // A high mark of 100 % never collects: each pass only records which images are in use.
    let report = rt.collect_images(&marks(100)).await.unwrap();
    assert!(
        report.removed.is_empty(),
        "under the high mark nothing goes"
    );
    let usage = report.usage_before.expect("the disk usage is read");
    let used_once = |tag: &str| {
        let name = unique("gc-user");
        d.ok(&["create", "--network", "none", "--name", &name, tag]);
        name
    };
    let c3 = used_once("gc/i3:1");
    rt.collect_images(&marks(100)).await.unwrap();
    d.ok(&["rm", &c3]);
    let _c1 = used_once("gc/i1:1"); // stays: in use
    rt.collect_images(&marks(100)).await.unwrap();
    let c2 = used_once("gc/i2:1");
    rt.collect_images(&marks(100)).await.unwrap();
    d.ok(&["rm", &c2]);

    // Above the high mark, with a low mark it never reaches: every unused image goes, LRU first.
    let high = (1..=99u8)
        .rev()
        .find(|h| f64::from(*h) <= usage)
        .unwrap_or(1);
    let report = rt.collect_images(&marks(high)).await.unwrap();
    eprintln!("{report:?}");
    let pos = |tag: &str| report.removed.iter().position(|r| r == tag);
    let (i3, i2) = (pos("gc/i3:1").unwrap(), pos("gc/i2:1").unwrap());
    assert!(i3 < i2, "i3 was last used before i2: {:?}", report.removed);
    // The test image is neither berth's nor listed: never removed, however unused. Mutation
    // check: drop `removable` from the pass's `keep` and it goes first (never used).
    assert!(pos(TINY).is_none(), "{:?}", report.removed);
    assert!(pos("gc/i1:1").is_none() && !report.refused.contains(&"gc/i1:1".to_owned()));
    let left = d.images();
    assert!(left.contains(&"gc/i1:1".to_owned()), "{left:?}");
    assert!(left.contains(&TINY.to_owned()), "{left:?}");
    assert!(
        !left.iter().any(|i| i == "gc/i2:1" || i == "gc/i3:1"),
        "{left:?}"
    );
    let _ = std::fs::remove_dir_all(&state);
    drop(d);
    assert_eq!(
        host_bridge(),
        bridge,
        "the private dockerd left the host's docker0 alone"
    );
}
