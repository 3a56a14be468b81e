//! Moving a user volume between nodes (real Docker, real berthd): ExportVolume on one node,
//! its messages forwarded by the test (as the operator's client does) into ImportVolume on
//! another, then RemoveVolume on the first. Both daemons share the one Docker engine here, so
//! the test renames the volume in the header it forwards (Docker names are per engine); on two
//! real nodes the name stays the same.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_proto::v1 as pb;
use berth_proto::v1::spawner_client::SpawnerClient;
use berth_proto::v1::volume_chunk::Part;
use common::{Daemon, docker, key, tiny_start, unique};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

fn reason(s: &tonic::Status) -> String {
    s.get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

fn mountpoint(name: &str) -> PathBuf {
    PathBuf::from(docker(&[
        "volume",
        "inspect",
        "-f",
        "{{.Mountpoint}}",
        name,
    ]))
}

fn volume_exists(name: &str) -> bool {
    !docker(&["volume", "ls", "-q", "--filter", &format!("name=^{name}$")]).is_empty()
}

/// Makes `user`'s home volume on `d` as a Start does (then stops and removes the server), and
/// fills it: nested directories, a link, modes, owners, times and 20 MB of random data.
async fn filled_volume(d: &Daemon, user: &str) -> String {
    let c = d.client().await;
    let mut req = tiny_start(user, "s1");
    req.volumes.push(pb::Volume {
        source: "berth-test-mv-{user}".into(),
        target: "/home/data".into(),
        ..Default::default()
    });
    c.clone().start(req).await.unwrap();
    common::stop_remove(&c, user).await;
    let name = format!("berth-test-mv-{}", berthd::key::escape(user));
    let root = mountpoint(&name);
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::write(root.join("a/b/c/deep.txt"), b"deep\n").unwrap();
    symlink("b/c/deep.txt", root.join("a/link")).unwrap();
    symlink("/etc/hostname", root.join("outward-link")).unwrap();
    std::fs::write(root.join("a/secret"), b"s").unwrap();
    std::fs::set_permissions(
        root.join("a/secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::lchown(root.join("a/secret"), Some(1000), Some(100)).unwrap();
    std::fs::set_permissions(root.join("a/b"), std::fs::Permissions::from_mode(0o2750)).unwrap();
    let mut random = vec![0u8; 20 * 1024 * 1024];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for b in &mut random {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *b = seed.to_le_bytes()[3];
    }
    std::fs::write(root.join("a/b/random.bin"), &random).unwrap();
    let old = filetime::FileTime::from_unix_time(1_500_000_000, 0);
    filetime::set_file_mtime(root.join("a/b/c"), old).unwrap();
    name
}

/// A digest of the tree under `root`: every path with its kind, mode, owner, mtime and
/// content (or link target), in name order.
fn tree_digest(root: &Path) -> String {
    let mut h = Sha256::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let at = root.join(&rel);
        let m = std::fs::symlink_metadata(&at).unwrap();
        h.update(format!(
            "{}\0{:o}\0{}\0{}\0{}\0",
            rel.display(),
            m.mode(),
            m.uid(),
            m.gid(),
            m.mtime()
        ));
        if m.is_dir() {
            let mut kids: Vec<PathBuf> = std::fs::read_dir(&at)
                .unwrap()
                .map(|e| rel.join(e.unwrap().file_name()))
                .collect();
            kids.sort();
            stack.extend(kids.into_iter().rev());
        } else if m.file_type().is_symlink() {
            h.update(
                std::fs::read_link(&at)
                    .unwrap()
                    .as_os_str()
                    .as_encoded_bytes(),
            );
        } else {
            h.update(std::fs::read(&at).unwrap());
        }
    }
    hex::encode(h.finalize())
}

async fn export(
    c: &SpawnerClient<Channel>,
    name: &str,
) -> Result<Vec<pb::VolumeChunk>, tonic::Status> {
    let mut s = c
        .clone()
        .export_volume(pb::ExportVolumeRequest {
            name: name.to_owned(),
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.next().await {
        out.push(m?);
    }
    Ok(out)
}

/// The export's messages with the volume renamed to `to` (see the file's header).
fn renamed(mut chunks: Vec<pb::VolumeChunk>, to: &str) -> Vec<pb::VolumeChunk> {
    let Some(Part::Header(h)) = chunks[0].part.as_mut() else {
        panic!("an export begins with its header");
    };
    h.name = to.to_owned();
    chunks
}

async fn import(
    c: &SpawnerClient<Channel>,
    chunks: Vec<pb::VolumeChunk>,
) -> Result<pb::ImportVolumeResponse, tonic::Status> {
    c.clone()
        .import_volume(futures::stream::iter(chunks))
        .await
        .map(tonic::Response::into_inner)
}

async fn listed(d: &Daemon, user: &str) -> Vec<String> {
    d.client()
        .await
        .list_volumes(pb::ListVolumesRequest {
            user: user.to_owned(),
            sizes: false,
        })
        .await
        .unwrap()
        .into_inner()
        .volumes
        .into_iter()
        .map(|v| v.name)
        .collect()
}

fn trailer(chunks: &[pb::VolumeChunk]) -> pb::VolumeTrailer {
    match chunks.last().and_then(|c| c.part.clone()) {
        Some(Part::Trailer(t)) => t,
        other => panic!("an export ends with its trailer, not {other:?}"),
    }
}

/// An import into `node` fed message by message through the returned sender, running in the
/// background so a test can stop feeding it half-way.
async fn import_in_background(
    node: &Daemon,
) -> (
    tokio::sync::mpsc::Sender<pb::VolumeChunk>,
    tokio::task::JoinHandle<Result<tonic::Response<pb::ImportVolumeResponse>, tonic::Status>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let c = node.client().await;
    let call = tokio::spawn(async move {
        c.clone()
            .import_volume(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    (tx, call)
}

#[tokio::test]
async fn a_volume_moves_with_identical_content_and_the_source_is_removed_after() {
    let (a, b) = (Daemon::start(), Daemon::start());
    let user = unique("mv Ünï");
    let name = filled_volume(&a, &user).await;
    let before = tree_digest(&mountpoint(&name));

    let chunks = export(&a.client().await, &name).await.unwrap();
    let Some(Part::Header(h)) = &chunks[0].part else {
        panic!("header first")
    };
    assert_eq!(h.owner, key(&user, ""));
    assert_eq!(
        (h.scope.as_str(), h.source_node.as_str()),
        ("user", a.node_id.as_str())
    );
    assert!(
        chunks[1..chunks.len() - 1]
            .iter()
            .all(|c| matches!(&c.part, Some(Part::Data(d)) if d.len() <= 1024 * 1024)),
        "bounded chunks"
    );
    assert!(
        chunks.len() > 20,
        "20 MB come in 1 MiB chunks: {}",
        chunks.len()
    );
    let sent = trailer(&chunks);

    let moved = format!("{name}-moved");
    let done = import(&b.client().await, renamed(chunks, &moved))
        .await
        .unwrap();
    assert_eq!(
        (done.sha256.as_str(), done.bytes),
        (sent.sha256.as_str(), sent.bytes)
    );
    assert_eq!(tree_digest(&mountpoint(&moved)), before, "identical tree");
    assert_eq!(listed(&b, &user).await, vec![moved.clone()]);
    let labels = docker(&["volume", "inspect", "-f", "{{json .Labels}}", &moved]);
    assert!(
        labels.contains(&format!("\"berth.node\":\"{}\"", b.node_id)),
        "{labels}"
    );
    assert!(
        labels.contains("\"berth.volume-scope\":\"user\""),
        "{labels}"
    );
    assert_eq!(
        tree_digest(&mountpoint(&name)),
        before,
        "the source is untouched"
    );
    // The same tree gives the same stream: a client can tell an earlier complete copy.
    let again = export(&b.client().await, &moved).await.unwrap();
    assert_eq!(trailer(&again), sent, "the copy exports to the same bytes");

    let removed = a
        .client()
        .await
        .remove_volume(pb::RemoveVolumeRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(removed.removed);
    assert!(!volume_exists(&name));
    assert!(listed(&a, &user).await.is_empty());
    docker(&["volume", "rm", &moved]);
}

#[tokio::test]
async fn a_tampered_checksum_fails_and_leaves_no_volume() {
    let (a, b) = (Daemon::start(), Daemon::start());
    let user = unique("mvsum");
    let name = filled_volume(&a, &user).await;
    let mut chunks = export(&a.client().await, &name).await.unwrap();
    let last = chunks.len() - 1;
    let mut t = trailer(&chunks);
    t.sha256 = "0".repeat(64);
    chunks[last].part = Some(Part::Trailer(t));
    let moved = format!("{name}-moved");

    let err = import(&b.client().await, renamed(chunks, &moved))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert_eq!(reason(&err), "CHECKSUM_MISMATCH");
    assert!(!volume_exists(&moved), "the partial import is removed");
    assert!(listed(&b, &user).await.is_empty());
    assert!(!b.state_dir.join("imports").join(&moved).exists());
    assert!(volume_exists(&name), "the source is untouched");
    docker(&["volume", "rm", &name]);
}

#[tokio::test]
async fn an_interrupted_import_leaves_the_source_and_a_retry_completes_even_after_a_crash() {
    let (a, mut b) = (Daemon::start(), Daemon::start());
    let user = unique("mvcut");
    let name = filled_volume(&a, &user).await;
    let before = tree_digest(&mountpoint(&name));
    let moved = format!("{name}-moved");
    let chunks = renamed(export(&a.client().await, &name).await.unwrap(), &moved);
    let half = chunks.len() / 2;

    // The client goes away half-way: berthd removes what it had imported.
    let (tx, call) = import_in_background(&b).await;
    for m in &chunks[..half] {
        tx.send(m.clone()).await.unwrap();
    }
    assert!(
        common::eventually(Duration::from_secs(10), || async {
            volume_exists(&moved).then_some(())
        })
        .await
        .is_some()
    );
    call.abort();
    drop(tx);
    let gone = common::eventually(Duration::from_secs(10), || async {
        (!volume_exists(&moved) && !b.state_dir.join("imports").join(&moved).exists()).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the dropped import was removed");
    assert_eq!(
        tree_digest(&mountpoint(&name)),
        before,
        "the source is untouched"
    );

    // berthd dies half-way: the marker says the volume is unfinished after its restart.
    let (tx, call) = import_in_background(&b).await;
    for m in &chunks[..half] {
        tx.send(m.clone()).await.unwrap();
    }
    b.kill9();
    call.abort();
    b.respawn();
    assert!(volume_exists(&moved), "a crash leaves the partial volume");
    assert!(b.state_dir.join("imports").join(&moved).exists());
    assert!(
        listed(&b, &user).await.is_empty(),
        "not listed as the user's"
    );
    let err = b
        .client()
        .await
        .export_volume(pb::ExportVolumeRequest {
            name: moved.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "VOLUME_IMPORTING", "{err:?}");

    // The retry of the same move wipes it and completes.
    let done = import(&b.client().await, chunks.clone()).await.unwrap();
    assert_eq!(done.sha256, trailer(&chunks).sha256);
    assert_eq!(tree_digest(&mountpoint(&moved)), before);
    assert!(!b.state_dir.join("imports").join(&moved).exists());
    assert_eq!(listed(&b, &user).await, vec![moved.clone()]);

    // Once complete, the same import again is refused: the volume is the user's now.
    let err = import(&b.client().await, chunks).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(reason(&err), "VOLUME_EXISTS");
    assert_eq!(tree_digest(&mountpoint(&moved)), before);
    docker(&["volume", "rm", &moved, &name]);
}

#[tokio::test]
async fn a_running_servers_volume_is_neither_exported_nor_removed() {
    let a = Daemon::start();
    let c = a.client().await;
    let user = unique("mvrun");
    let mut req = tiny_start(&user, "s1");
    req.volumes.push(pb::Volume {
        source: "berth-test-mv-{user}".into(),
        target: "/home/data".into(),
        ..Default::default()
    });
    c.clone().start(req).await.unwrap();
    let name = format!("berth-test-mv-{}", berthd::key::escape(&user));

    let err = export(&c, &name).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(reason(&err), "VOLUME_IN_USE");
    let err = c
        .clone()
        .remove_volume(pb::RemoveVolumeRequest { name: name.clone() })
        .await
        .unwrap_err();
    assert_eq!(reason(&err), "VOLUME_IN_USE", "{err:?}");
    assert!(volume_exists(&name));

    // Stopped (container kept): it exports, and removing it removes the stopped server too.
    common::stop_as(&c, &user, "", common::Stop::Now)
        .await
        .unwrap();
    assert!(export(&c, &name).await.is_ok());
    let removed = c
        .clone()
        .remove_volume(pb::RemoveVolumeRequest { name: name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(removed.removed);
    assert!(!volume_exists(&name));
    assert!(a.containers().is_empty());

    // A volume berthd did not make is not a user volume of this node.
    let foreign = unique("berth-test-foreign");
    docker(&["volume", "create", &foreign]);
    let err = export(&c, &foreign).await.unwrap_err();
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::NotFound, "VOLUME_NOT_FOUND")
    );
    docker(&["volume", "rm", &foreign]);
}
