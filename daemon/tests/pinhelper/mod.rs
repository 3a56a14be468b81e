//! The real `berth-pin` binary, started for a test on a socket of its own.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `berth-pin`; killed when dropped.
pub(crate) struct PinHelper {
    child: Child,
    /// Its socket.
    pub(crate) socket: PathBuf,
}

impl PinHelper {
    /// Starts `berth-pin --config <config> --socket <dir>/pin.sock` plus `extra`, and waits
    /// until the socket answers.
    pub(crate) fn start(config: &Path, dir: &Path, extra: &[&str]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("pin.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_berth-pin"))
            .arg("--config")
            .arg(config)
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .expect("berth-pin starts");
        let mut h = PinHelper { child, socket };
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&h.socket).is_err() {
            if let Some(status) = h.child.try_wait().unwrap() {
                panic!("berth-pin exited: {status}");
            }
            assert!(Instant::now() < deadline, "berth-pin did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        h
    }

    /// Where it puts its staging mounts.
    pub(crate) fn staging(&self) -> PathBuf {
        self.socket.parent().unwrap().join("mounts")
    }

    /// Waits until every pin is released (connections closed): the staging directory is
    /// empty. A killed helper would leave its mounts behind (its next start clears them).
    pub(crate) fn wait_released(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left: Vec<_> = std::fs::read_dir(self.staging())
                .map(|r| r.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            if left.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "pins not released: {left:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How it exited, once it has (a deadline of 10 s).
    pub(crate) fn exit_code(mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(Instant::now() < deadline, "berth-pin did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PinHelper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One connection to a helper, speaking its JSON lines.
pub(crate) struct Conn {
    out: UnixStream,
    lines: BufReader<UnixStream>,
}

impl Conn {
    pub(crate) fn open(socket: &Path) -> Self {
        let out = UnixStream::connect(socket).unwrap();
        out.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let lines = BufReader::new(out.try_clone().unwrap());
        Conn { out, lines }
    }

    /// Sends `line` and returns the answer, parsed. The helper may answer and close before the
    /// whole line is written (a line past its limit, a peer it refuses): a broken pipe while
    /// writing is then no error, the answer is still there to read.
    pub(crate) fn ask(&mut self, line: &str) -> serde_json::Value {
        let sent = self
            .out
            .write_all(line.as_bytes())
            .and_then(|()| self.out.write_all(b"\n"));
        if let Err(e) = sent {
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        }
        self.answer()
    }

    /// The next answer; `Null` when the helper closed the connection.
    pub(crate) fn answer(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.lines.read_line(&mut line).unwrap();
        if line.is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::from_str(&line).unwrap()
    }
}

/// Whether `path` is a mount point now (from /proc/self/mountinfo).
pub(crate) fn is_mount_point(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = path.to_str().unwrap();
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == want))
}
