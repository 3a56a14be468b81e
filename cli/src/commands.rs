//! One function per command: call berthd, print the answer as a table or as JSON.

use std::io::Write;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use berth_proto::v1 as pb;
use futures::StreamExt;
use serde::Serialize;

use crate::endpoint::{self, Conn, Unreachable};
use crate::view::{self, Server};
use crate::{Cli, Command, Output};

/// Deadline of one unary call (streams that follow have none).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the command `cli` names.
pub(crate) async fn run(cli: Cli) -> Result<()> {
    let out = cli.output;
    match cli.command {
        Command::Completions { shell } => return crate::docs::completions(shell),
        Command::Man { dir } => return crate::docs::man(&dir),
        _ => {}
    }
    let conn = endpoint::connect(&cli.conn).await?;
    match cli.command {
        Command::Ps { user, all, state } => {
            let states: Vec<&str> = if all {
                Vec::new()
            } else if state.is_empty() {
                vec!["STARTING", "RUNNING", "STOPPING"]
            } else {
                state.iter().map(|s| s.name()).collect()
            };
            ps(&conn, out, user.unwrap_or_default(), &states).await
        }
        Command::Inspect { user, server } => inspect(&conn, out, user, server).await,
        Command::Logs {
            user,
            server,
            follow,
            tail,
            since,
            timestamps,
        } => {
            let req = pb::LogsRequest {
                key: Some(key(user, server)),
                tail: tail.unwrap_or(0),
                follow,
                since: since.map(prost_types::Timestamp::from),
                timestamps,
            };
            logs(&conn, req).await
        }
        Command::Stop {
            user,
            server,
            now,
            remove,
            grace,
        } => {
            let req = pb::StopRequest {
                key: Some(key(user, server)),
                now,
                grace_seconds: grace.unwrap_or(0),
                remove,
            };
            stop(&conn, out, req).await
        }
        Command::Capacity => capacity(&conn, out).await,
        Command::Drain { reason } => drain(&conn, out, Some(reason)).await,
        Command::Undrain => drain(&conn, out, None).await,
        Command::Reconcile => reconcile(&conn, out).await,
        Command::Volumes { user, sizes } => {
            volumes(&conn, out, user.unwrap_or_default(), sizes).await
        }
        Command::RmVolume { name } => rm_volume(&conn, out, name).await,
        Command::Describe => describe_node(&conn, out).await,
        Command::Events {
            snapshot,
            user,
            count,
        } => events(&conn, out, snapshot, user, count).await,
        Command::Progress {
            user,
            server,
            spawn_id,
        } => {
            let req = pb::ProgressRequest {
                key: Some(key(user, server)),
                spawn_id: spawn_id.unwrap_or_default(),
            };
            progress(&conn, out, req).await
        }
        Command::Images => images(&conn, out).await,
        Command::Top { user, interval } => {
            top(&conn, out, user.unwrap_or_default(), interval).await
        }
        Command::Prepull { images } => prepull(&conn, out, images).await,
        Command::Warm {
            image,
            size,
            port,
            memory_bytes,
        } => {
            let req = pb::WarmRequest {
                image,
                size,
                port,
                memory_bytes,
            };
            warm(&conn, out, req).await
        }
        Command::Version => version(&conn, out).await,
        Command::Completions { .. } | Command::Man { .. } => Ok(()),
    }
}

fn key(user: String, server: String) -> pb::ServerKey {
    pb::ServerKey {
        user,
        server_name: server,
    }
}

fn request<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(CALL_TIMEOUT);
    req
}

/// The node's capacity report (`capacity`, `describe`, `images`).
async fn node_capacity(conn: &Conn) -> Result<pb::NodeCapacity> {
    Ok(conn
        .spawner()
        .capacity(request(pb::CapacityRequest {}))
        .await?
        .into_inner())
}

/// The node's versions and features (`version`, `describe`).
async fn node_version(conn: &Conn) -> Result<pb::VersionResponse> {
    Ok(conn
        .spawner()
        .version(request(pb::VersionRequest {}))
        .await?
        .into_inner())
}

/// Writes `text` to stdout (a closed pipe, as in `| head`, is not an error worth a message).
fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}

fn print_json<T: Serialize>(doc: &T) -> Result<()> {
    print(&(serde_json::to_string_pretty(doc)? + "\n"))
}

/// `ps`: the servers in `states` (empty: all).
async fn ps(conn: &Conn, out: Output, user: String, states: &[&str]) -> Result<()> {
    let mut servers: Vec<Server> = conn
        .spawner()
        .list(request(pb::ListRequest { user }))
        .await?
        .into_inner()
        .servers
        .into_iter()
        .map(Server::from)
        .filter(|s| states.is_empty() || states.contains(&s.state.as_str()))
        .collect();
    servers.sort_by(|a, b| (&a.user, &a.server).cmp(&(&b.user, &b.server)));
    if out == Output::Json {
        return print_json(&view::ServerList { servers });
    }
    let now = SystemTime::now();
    let rows: Vec<Vec<String>> = servers
        .iter()
        .map(|s| {
            vec![
                s.user.clone(),
                view::or_dash(&s.server),
                view::state_cell(s),
                age_of(s, now),
                s.image.clone().unwrap_or_default(),
                view::or_dash(s.url.as_deref().unwrap_or_default()),
            ]
        })
        .collect();
    print(&view::table(
        &["USER", "SERVER", "STATE", "AGE", "IMAGE", "URL"],
        &rows,
    ))
}

fn age_of(s: &Server, now: SystemTime) -> String {
    let t = s
        .started_at
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| prost_types::Timestamp {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: 0,
        });
    view::age(t.as_ref(), now)
}

async fn poll(conn: &Conn, user: String, server: String) -> Result<Server> {
    let status = conn
        .spawner()
        .poll(request(pb::PollRequest {
            key: Some(key(user, server)),
        }))
        .await?
        .into_inner();
    Ok(Server::from(status))
}

/// `key: value` lines, one per field of the server.
fn server_text(s: &Server) -> String {
    let fields = [
        ("user", s.user.clone()),
        ("server", view::or_dash(&s.server)),
        ("state", view::state_cell(s)),
        ("message", s.message.clone().unwrap_or_default()),
        ("health", s.health.clone().unwrap_or_default()),
        ("url", s.url.clone().unwrap_or_default()),
        ("image", s.image.clone().unwrap_or_default()),
        ("container", s.container_id.clone().unwrap_or_default()),
        ("spawn id", s.spawn_id.clone().unwrap_or_default()),
        ("node", s.node_id.clone()),
        ("started", s.started_at.clone().unwrap_or_default()),
        ("finished", s.finished_at.clone().unwrap_or_default()),
        ("last activity", s.last_activity.clone().unwrap_or_default()),
    ];
    fields
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{:<14}{v}\n", format!("{k}:")))
        .collect()
}

async fn inspect(conn: &Conn, out: Output, user: String, server: String) -> Result<()> {
    let s = poll(conn, user, server).await?;
    match out {
        Output::Json => print_json(&s),
        Output::Table => print(&server_text(&s)),
    }
}

async fn logs(conn: &Conn, req: pb::LogsRequest) -> Result<()> {
    let follow = req.follow;
    let mut req = tonic::Request::new(req);
    if !follow {
        req.set_timeout(CALL_TIMEOUT);
    }
    let mut stream = conn.spawner().logs(req).await?.into_inner();
    while let Some(line) = stream.next().await {
        let line = line?;
        let text = line.line + "\n";
        if line.stream == pb::log_line::Stream::Stderr as i32 {
            std::io::stderr().lock().write_all(text.as_bytes())?;
        } else {
            print(&text)?;
        }
    }
    Ok(())
}

async fn stop(conn: &Conn, out: Output, req: pb::StopRequest) -> Result<()> {
    let status = conn
        .spawner()
        .stop(request(req))
        .await?
        .into_inner()
        .status
        .unwrap_or_default();
    let s = Server::from(status);
    match out {
        Output::Json => print_json(&s),
        Output::Table => print(&format!(
            "{}{}: {}\n",
            s.user,
            if s.server.is_empty() {
                String::new()
            } else {
                format!("/{}", s.server)
            },
            view::state_cell(&s)
        )),
    }
}

async fn capacity(conn: &Conn, out: Output) -> Result<()> {
    let c = node_capacity(conn).await?;
    let c = view::Capacity::from(c);
    if out == Output::Json {
        return print_json(&c);
    }
    print(&capacity_text(&c))
}

/// The capacity report as `capacity` and `describe` print it.
fn capacity_text(c: &view::Capacity) -> String {
    let max = if c.max_servers == 0 {
        "no limit".to_owned()
    } else {
        format!("max {}", c.max_servers)
    };
    let mut text = format!(
        "node:         {}\n\
         cpus:         {} (allocatable {:.1}, committed {:.2})\n\
         memory:       {} total, {} available\n\
         allocatable:  {}, committed {}\n\
         servers:      {} running ({max})\n\
         draining:     {}\n\
         images:       {}\n\n",
        c.node_id,
        c.cpus,
        c.allocatable.cpu,
        c.committed.cpu,
        view::size(c.memory_total_bytes),
        view::size(c.memory_available_bytes),
        view::size(c.allocatable.memory_bytes),
        view::size(c.committed.memory_bytes),
        c.running_servers,
        if c.draining { "yes" } else { "no" },
        c.images.len(),
    );
    let rows: Vec<Vec<String>> = c
        .conditions
        .iter()
        .map(|k| {
            vec![
                k.kind.clone(),
                k.status.clone(),
                k.reason.clone(),
                k.message.clone(),
            ]
        })
        .collect();
    text.push_str(&view::table(
        &["CONDITION", "STATUS", "REASON", "MESSAGE"],
        &rows,
    ));
    if !c.labels.is_empty() {
        let labels: Vec<String> = c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        text.push_str(&format!("\nlabels:       {}\n", labels.join(", ")));
    }
    text.push_str(&format!(
        "fencing:      {}\n",
        if c.fence_after_seconds == 0 {
            "off (servers may ask for their own)".to_owned()
        } else {
            format!(
                "servers stopped {} s after the hub's last contact (stop grace {} s)",
                c.fence_after_seconds, c.stop_grace_seconds
            )
        }
    ));
    for w in &c.warm {
        text.push_str(&format!(
            "warm:         {} (port {}): {} of {} ready\n",
            w.image, w.port, w.ready, w.size
        ));
    }
    if !c.devices.is_empty() {
        let rows: Vec<Vec<String>> = c
            .devices
            .iter()
            .map(|d| {
                vec![
                    d.class.clone(),
                    d.total.to_string(),
                    d.allocatable.to_string(),
                    d.committed.to_string(),
                    d.free_devices.to_string(),
                    view::or_dash(&d.models.join(", ")),
                    view::or_dash(&d.discovery_error),
                ]
            })
            .collect();
        text.push('\n');
        text.push_str(&view::table(
            &[
                "DEVICES",
                "TOTAL",
                "ALLOCATABLE",
                "COMMITTED",
                "FREE",
                "MODELS",
                "ERROR",
            ],
            &rows,
        ));
    }
    text
}

/// Drains with `reason`, or undrains when `None`.
async fn drain(conn: &Conn, out: Output, reason: Option<String>) -> Result<()> {
    let mut admin = conn.admin()?;
    let draining = match reason {
        Some(reason) => admin.drain(request(pb::DrainRequest { reason })).await?,
        None => admin.undrain(request(pb::DrainRequest::default())).await?,
    }
    .into_inner()
    .draining;
    match out {
        Output::Json => print_json(&serde_json::json!({ "draining": draining })),
        Output::Table if draining => {
            print("draining: new servers are refused; running servers keep running\n")
        }
        Output::Table => print("not draining: new servers are accepted\n"),
    }
}

async fn reconcile(conn: &Conn, out: Output) -> Result<()> {
    let r = conn
        .admin()?
        .reconcile(request(pb::ReconcileRequest {}))
        .await?
        .into_inner();
    match out {
        Output::Json => print_json(&serde_json::json!({
            "adopted": r.adopted, "rebuilt": r.rebuilt, "vanished": r.vanished,
        })),
        Output::Table => print(&format!(
            "reconciled: {} adopted, {} records rebuilt, {} vanished\n",
            r.adopted, r.rebuilt, r.vanished
        )),
    }
}

async fn volumes(conn: &Conn, out: Output, user: String, sizes: bool) -> Result<()> {
    let r = conn
        .spawner()
        .list_volumes(request(pb::ListVolumesRequest { user, sizes }))
        .await?
        .into_inner();
    let mut volumes: Vec<view::Volume> = r.volumes.into_iter().map(view::Volume::from).collect();
    volumes.sort_by(|a, b| a.name.cmp(&b.name));
    if out == Output::Json {
        return print_json(&view::VolumeList {
            node_id: r.node_id,
            volumes,
        });
    }
    let now = SystemTime::now();
    let rows: Vec<Vec<String>> = volumes
        .iter()
        .map(|v| {
            let used = v
                .last_used
                .as_deref()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| prost_types::Timestamp {
                    seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                    nanos: 0,
                });
            vec![
                v.name.clone(),
                v.user.clone(),
                view::or_dash(&v.server),
                v.driver.clone(),
                v.size_bytes.map_or_else(|| "-".to_owned(), view::size),
                view::age(used.as_ref(), now),
            ]
        })
        .collect();
    print(&view::table(
        &["VOLUME", "USER", "SERVER", "DRIVER", "SIZE", "LAST USED"],
        &rows,
    ))
}

async fn rm_volume(conn: &Conn, out: Output, name: String) -> Result<()> {
    let removed = conn
        .spawner()
        .remove_volume(request(pb::RemoveVolumeRequest { name: name.clone() }))
        .await?
        .into_inner()
        .removed;
    match out {
        Output::Json => print_json(&serde_json::json!({ "volume": name, "removed": removed })),
        Output::Table if removed => print(&format!("removed {name}\n")),
        Output::Table => print(&format!("no volume {name}\n")),
    }
}

/// `describe`: the node's versions and its capacity in full.
async fn describe_node(conn: &Conn, out: Output) -> Result<()> {
    let v = node_version(conn).await?;
    let c = node_capacity(conn).await?;
    let c = view::Capacity::from(c);
    if out == Output::Json {
        return print_json(&serde_json::json!({
            "node_id": v.node_id,
            "berthd": v.daemon_version,
            "api_version": v.api_version,
            "docker_version": v.docker_version,
            "docker_api_version": v.docker_api_version,
            "features": v.features,
            "capacity": c,
        }));
    }
    let mut text = format!(
        "berthd:       {} (API {}), Docker {} (API {})\nfeatures:     {}\n",
        v.daemon_version,
        v.api_version,
        v.docker_version,
        v.docker_api_version,
        v.features.join(", ")
    );
    text.push_str(&capacity_text(&c));
    print(&text)
}

async fn events(
    conn: &Conn,
    out: Output,
    snapshot: bool,
    user: Option<String>,
    count: Option<u64>,
) -> Result<()> {
    let mut stream = conn
        .spawner()
        .watch(pb::WatchRequest {
            snapshot,
            capacity: false,
        })
        .await?
        .into_inner();
    let mut seen = 0u64;
    if out == Output::Table {
        print(&format!(
            "{:<24} {:<13} {:<16} {:<10} {:<10} {}\n",
            "TIME", "EVENT", "USER", "SERVER", "STATE", "REASON"
        ))?;
    }
    while count.is_none_or(|n| seen < n) {
        let Some(ev) = stream.next().await else {
            anyhow::bail!("berthd ended the event stream");
        };
        let ev = view::Event::from(ev?);
        if ev.kind == "SNAPSHOT_END" && !snapshot {
            continue;
        }
        if user.as_deref().is_some_and(|u| ev.user != u) {
            continue;
        }
        seen += 1;
        match out {
            Output::Json => print(&(serde_json::to_string(&ev)? + "\n"))?,
            Output::Table => print(&format!(
                "{:<24} {:<13} {:<16} {:<10} {:<10} {}\n",
                ev.at.as_deref().unwrap_or("-"),
                ev.kind,
                view::or_dash(&ev.user),
                view::or_dash(&ev.server),
                view::or_dash(&ev.state),
                view::or_dash(ev.reason.as_deref().unwrap_or_default()),
            ))?,
        }
    }
    Ok(())
}

async fn progress(conn: &Conn, out: Output, req: pb::ProgressRequest) -> Result<()> {
    let mut stream = conn.spawner().progress(req).await?.into_inner();
    while let Some(ev) = stream.next().await {
        let ev = ev?;
        let phase = pb::progress_event::Phase::try_from(ev.phase)
            .unwrap_or(pb::progress_event::Phase::Unspecified)
            .as_str_name();
        match out {
            Output::Json => print(
                &(serde_json::to_string(&serde_json::json!({
                    "phase": phase,
                    "percent": ev.progress,
                    "message": (!ev.message.is_empty()).then_some(&ev.message),
                    "at": ev.time.as_ref().map(view::rfc3339),
                    "ready": ev.ready,
                    "failed": ev.failed,
                    "reason": (!ev.reason.is_empty()).then_some(&ev.reason),
                    "url": (!ev.url.is_empty()).then_some(&ev.url),
                }))? + "\n"),
            )?,
            Output::Table if !ev.message.is_empty() => {
                print(&format!(
                    "{:>3}%  {phase:<16} {}\n",
                    ev.progress, ev.message
                ))?;
            }
            Output::Table => {}
        }
        if ev.failed {
            anyhow::bail!(
                "the spawn failed{}",
                if ev.reason.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", ev.reason)
                }
            );
        }
        if ev.ready {
            break;
        }
    }
    Ok(())
}

async fn images(conn: &Conn, out: Output) -> Result<()> {
    let c = node_capacity(conn).await?;
    let servers = conn
        .spawner()
        .list(request(pb::ListRequest::default()))
        .await?
        .into_inner()
        .servers;
    let mut list: Vec<view::Image> = c
        .images
        .into_iter()
        .map(|reference| {
            let using = |live: bool| {
                servers
                    .iter()
                    .filter(|s| view::same_image(&s.image, &reference))
                    .filter(|s| !live || view::is_live(s.state))
                    .count()
            };
            view::Image {
                size_bytes: c.image_sizes.get(&reference).copied(),
                servers_running: using(true),
                servers_kept: using(false) - using(true),
                reference,
            }
        })
        .collect();
    list.sort_by(|a, b| a.reference.cmp(&b.reference));
    if out == Output::Json {
        return print_json(&serde_json::json!({ "node_id": c.node_id, "images": list }));
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            vec![
                i.reference.clone(),
                i.size_bytes.map_or_else(|| "-".to_owned(), view::size),
                i.servers_running.to_string(),
                i.servers_kept.to_string(),
            ]
        })
        .collect();
    print(&view::table(
        &["IMAGE", "SIZE", "RUNNING", "STOPPED"],
        &rows,
    ))
}

async fn top(conn: &Conn, out: Output, user: String, interval: Duration) -> Result<()> {
    let ask = || async {
        let r = conn
            .spawner()
            .stats(request(pb::StatsRequest { user: user.clone() }))
            .await?
            .into_inner();
        anyhow::Ok(r.servers)
    };
    let first = ask().await?;
    tokio::time::sleep(interval).await;
    let second = ask().await?;
    let mut rows: Vec<view::Top> = second
        .into_iter()
        .map(|now| {
            let before = first.iter().find(|b| b.container_id == now.container_id);
            view::Top::from_samples(before, now)
        })
        .collect();
    rows.sort_by(|a, b| (&a.user, &a.server).cmp(&(&b.user, &b.server)));
    if out == Output::Json {
        return print_json(&serde_json::json!({ "servers": rows }));
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|t| {
            vec![
                t.user.clone(),
                view::or_dash(&t.server),
                t.cpu_percent
                    .map_or_else(|| "-".to_owned(), |p| format!("{p:.1}%")),
                view::size(t.memory_bytes),
                view::size(t.memory_limit_bytes),
                view::size(t.network_bytes),
            ]
        })
        .collect();
    print(&view::table(
        &["USER", "SERVER", "CPU", "MEMORY", "LIMIT", "NET I/O"],
        &table,
    ))
}

async fn prepull(conn: &Conn, out: Output, images: Vec<String>) -> Result<()> {
    let mut stream = conn
        .spawner()
        .prepull(pb::PrepullRequest { images })
        .await?
        .into_inner();
    let mut failed = Vec::new();
    while let Some(ev) = stream.next().await {
        let ev = ev?;
        if out == Output::Json {
            print(
                &(serde_json::to_string(&serde_json::json!({
                    "image": ev.image,
                    "done": ev.done,
                    "error": (!ev.error.is_empty()).then_some(&ev.error),
                    "reason": (!ev.reason.is_empty()).then_some(&ev.reason),
                    "percent": ev.progress.as_ref().map(|p| p.progress),
                    "bytes_done": ev.progress.as_ref().map(|p| p.bytes_done),
                    "bytes_total": ev.progress.as_ref().map(|p| p.bytes_total),
                }))? + "\n"),
            )?;
        } else if !ev.error.is_empty() {
            print(&format!(
                "{}: failed: {} [{}]\n",
                ev.image, ev.error, ev.reason
            ))?;
        } else if ev.done {
            print(&format!("{}: on the node\n", ev.image))?;
        } else if let Some(p) = ev.progress.as_ref().filter(|p| !p.message.is_empty()) {
            print(&format!("{}: {}\n", ev.image, p.message))?;
        }
        if !ev.error.is_empty() {
            failed.push(ev.image);
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("not pulled: {}", failed.join(", "))
    }
}

async fn warm(conn: &Conn, out: Output, req: pb::WarmRequest) -> Result<()> {
    let w = view::WarmPool::from(conn.spawner().warm(req).await?.into_inner());
    if out == Output::Json {
        print(&(serde_json::to_string(&w)? + "\n"))
    } else {
        print(&format!(
            "{}: {} of {} ready (port {})\n",
            w.image, w.ready, w.size, w.port
        ))
    }
}

async fn version(conn: &Conn, out: Output) -> Result<()> {
    let v = node_version(conn).await?;
    let doc = view::Version {
        client: view::ClientVersion {
            version: env!("CARGO_PKG_VERSION").to_owned(),
        },
        server: view::ServerVersion {
            api_version: v.api_version,
            daemon_version: v.daemon_version,
            node_id: v.node_id,
            docker_api_version: v.docker_api_version,
            docker_version: v.docker_version,
            features: v.features,
        },
    };
    match out {
        Output::Json => print_json(&doc),
        Output::Table => print(&format!(
            "berthctl:  {}\nberthd:    {} (API {}, node {}, via {})\ndocker:    {} (API {})\n",
            doc.client.version,
            doc.server.daemon_version,
            doc.server.api_version,
            doc.server.node_id,
            conn.target,
            doc.server.docker_version,
            doc.server.docker_api_version,
        )),
    }
}

/// The error for people: a gRPC status with its code and berthd's reason.
pub(crate) fn describe(e: &anyhow::Error) -> String {
    if let Some(s) = e.downcast_ref::<tonic::Status>() {
        let reason = reason(s).map(|r| format!(" [{r}]")).unwrap_or_default();
        // A status the transport made (the connection failed or the node closed it, e.g. a
        // TLS refusal of the client's certificate) carries its cause only as a source.
        let mut cause = String::new();
        let mut source = std::error::Error::source(s);
        while let Some(c) = source {
            cause.push_str(&format!(": {c}"));
            source = c.source();
        }
        // How hyper words a connection the other side ended, by when it noticed.
        let closed = [
            "connection closed",
            "broken pipe",
            "connection reset",
            "stream closed",
        ];
        if closed.iter().any(|w| cause.contains(w)) {
            cause.push_str(
                " (by the node; over TLS it closes at once on a client certificate it refuses: \
                 not signed by its client CA, or not in its hub_client_names; its log says which)",
            );
        }
        return format!("{:?}{reason}: {}{cause}", s.code(), s.message());
    }
    format!("{e:#}")
}

/// berthd's machine-readable reason (`google.rpc.ErrorInfo`), if the status carries one.
fn reason(s: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt;
    s.get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
}

/// 69 (EX_UNAVAILABLE) when no berthd answered, 2 for bad usage (an endpoint that cannot be
/// one, a credential file that cannot be read), 1 for any other failure.
pub(crate) fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<Unreachable>().is_some() {
        69
    } else if e.downcast_ref::<crate::endpoint::Usage>().is_some() {
        2
    } else {
        1
    }
}
