//! Unit tests of the pull tally, its wording and the reading of Docker's failures.

use super::*;
use crate::runtime::progress::pulling::{PULL_FROM, PULL_TO, human_bytes};

fn ev(layer: &str, status: &str, progress: Option<(u64, u64)>) -> PullEvent {
    PullEvent {
        layer: layer.to_owned(),
        status: status.to_owned(),
        current: progress.map(|p| p.0),
        total: progress.map(|p| p.1),
    }
}

#[test]
fn bytes_and_layers_add_up_and_never_go_back() {
    let mut t = Tally::new("127.0.0.1:5000/x:1");
    let steps = [
        ev("1", "Pulling from x", None),
        ev("a", "Pulling fs layer", None),
        ev("b", "Pulling fs layer", None),
        ev("c", "Already exists", None),
        ev("a", "Downloading", Some((100, 1000))),
        ev("b", "Waiting", None),
        ev("a", "Downloading", Some((600, 1000))),
        ev("b", "Downloading", Some((50, 3000))),
        // A retried download starts again from 0: the tally keeps what it had.
        ev("a", "Downloading", Some((10, 1000))),
        ev("a", "Download complete", None),
        ev("a", "Extracting", Some((500, 1000))),
        ev("a", "Pull complete", None),
        ev("b", "Downloading", Some((3000, 3000))),
        ev("b", "Verifying Checksum", None),
        ev("b", "Extracting", Some((3000, 3000))),
        ev("b", "Pull complete", None),
        ev("", "Digest: sha256:0", None),
        ev("", "Status: Downloaded newer image for x:1", None),
    ];
    let mut last = t.progress();
    for s in &steps {
        t.apply(s);
        let p = t.progress();
        assert!(
            p.bytes_done >= last.bytes_done,
            "{s:?}: {p:?} after {last:?}"
        );
        assert!(p.fraction >= last.fraction, "{s:?}: {p:?} after {last:?}");
        assert!(p.percent() >= last.percent() && p.percent() <= PULL_TO);
        last = p;
    }
    assert_eq!((last.bytes_done, last.bytes_total), (4000, 4000));
    assert_eq!((last.layers_done, last.layers_total), (3, 3));
    assert!(
        last.fraction < 1.0,
        "only the end of the stream completes a pull"
    );
}

#[test]
fn messages_read_like_docker() {
    let p = PullProgress {
        image: "quay.io/jupyter/base:1".into(),
        bytes_done: 312_000_000,
        bytes_total: 1_200_000_000,
        layers_done: 3,
        layers_total: 9,
        fraction: 0.3,
    };
    assert_eq!(
        p.message(),
        "Pulling quay.io/jupyter/base:1: 312 MB of 1.2 GB (3 of 9 layers)"
    );
    assert_eq!(human_bytes(950), "950 B");
    assert_eq!(human_bytes(4_500), "4.5 kB");
    assert_eq!(human_bytes(12_600_000), "13 MB");
    assert_eq!(p.percent(), PULL_FROM + 15);
    let empty = PullProgress {
        image: "x".into(),
        ..PullProgress::default()
    };
    assert_eq!(empty.message(), "Pulling x: asking the registry");
    assert_eq!(empty.percent(), PULL_FROM);
}

#[test]
fn failures_are_read_by_cause() {
    let cases = [
        (
            "manifest for 127.0.0.1:5000/x:nope not found: manifest unknown: manifest unknown",
            PullCause::NotFound,
        ),
        (
            "Head \"http://127.0.0.1:5000/v2/x/manifests/1\": no basic auth credentials",
            PullCause::Unauthorized,
        ),
        (
            "unauthorized: authentication required",
            PullCause::Unauthorized,
        ),
        (
            "pull access denied for x, repository does not exist or may require 'docker login': denied: requested access to the resource is denied",
            PullCause::Unauthorized,
        ),
        (
            "Get \"http://127.0.0.1:5000/v2/\": dial tcp 127.0.0.1:5000: connect: connection refused",
            PullCause::RegistryUnreachable,
        ),
        (
            "failed to register layer: write /x: no space left on device",
            PullCause::DiskFull,
        ),
        ("something else", PullCause::Other),
    ];
    for (text, cause) in cases {
        assert_eq!(PullCause::of(text), cause, "{text}");
    }
    let e = failure(&EngineError::NotFound {
        what: "manifest unknown".into(),
    });
    assert_eq!(e.cause, PullCause::NotFound);
    let down = failure(&EngineError::Unavailable {
        op: "pull",
        message: "connection refused".into(),
    });
    assert!(
        down.engine_down,
        "Docker down is the node's problem, not the image's"
    );
}

/// A 25 MB pull of an image one of whose layers is already on the node (the usual case: images
/// share base layers): the bar starts at the bottom and moves with the bytes. Mutation check:
/// count present layers in the fraction again and the bar sits near PULL_TO from the start.
#[test]
fn a_layer_already_on_the_node_does_not_fill_the_bar_and_the_bar_follows_the_bytes() {
    let mut t = Tally::new("127.0.0.1:5000/x:1");
    t.apply(&ev("base", "Already exists", None));
    assert_eq!(t.progress().percent(), PULL_FROM, "nothing fetched yet");
    t.apply(&ev("app", "Pulling fs layer", None));
    let mut percents = Vec::new();
    for mb in (1..=25).step_by(2) {
        t.apply(&ev(
            "app",
            "Downloading",
            Some((mb * 1_000_000, 25_000_000)),
        ));
        percents.push(t.progress().percent());
    }
    let mut distinct = percents.clone();
    distinct.dedup();
    assert!(
        distinct.len() >= 10,
        "the bar moves with the bytes: {percents:?}"
    );
    // 13 of 25 MB fetched: about half of the download's share of the pull's part of the bar.
    let half = percents[6];
    let expect = f64::from(PULL_FROM) + 0.8 * 13.0 / 25.0 * f64::from(PULL_TO - PULL_FROM);
    assert!(
        (f64::from(half) - expect).abs() <= 1.0,
        "{half} vs {expect}"
    );
    t.apply(&ev("app", "Pull complete", None));
    assert!(t.progress().percent() < PULL_TO + 1 && t.progress().percent() >= PULL_TO - 1);
}
