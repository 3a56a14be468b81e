//! [`ContainerEngine`] over the Docker Engine API with bollard; every call has a deadline.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::exec::StartExecResults;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, ContainerUpdateBody,
    DeviceMapping, EventMessageTypeEnum, ExecConfig, HealthStatusEnum, HostConfig,
    Mount as DockerMount, MountType, NetworkCreateRequest, PortBinding as DockerPortBinding,
    ResourcesUlimits, RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, EventsOptions, InspectNetworkOptions,
    KillContainerOptions, ListContainersOptions, ListVolumesOptions, LogsOptions,
    RemoveContainerOptions, RemoveVolumeOptions, RenameContainerOptions, StatsOptions,
    StopContainerOptions, UploadToContainerOptions, WaitContainerOptions,
};
use futures::StreamExt;
use futures::stream::BoxStream;

use super::{
    ContainerEngine, ContainerInfo, ContainerSpec, EngineError, EngineEvent, EngineVersion,
    ImageInfo, ImageSummary, Limits, LogChunk, LogStream, LogsWanted, NetworkInfo, NewFile,
    NewVolume, OPTION_ENABLE_ICC, PortBinding, PullEvent, RunStatus, Usage, VolumeInfo,
};

/// Oldest Docker Engine API berthd speaks (Docker 20.10, as Debian 12 ships it).
pub const MIN_API_VERSION: (usize, usize) = (1, 41);

/// A Docker engine reached through bollard.
#[derive(Clone)]
pub struct BollardEngine {
    docker: Docker,
    timeout: Duration,
    /// Held while a network is looked up and made: two spawns on a fresh node would each make
    /// one of the same name (Docker 20.10 lets two networks share a name).
    networks: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl BollardEngine {
    /// Connects to `host` (`unix:///path` or `tcp://host:port`) and negotiates the API version,
    /// falling back to [`MIN_API_VERSION`] when the engine does not answer yet.
    pub async fn connect(host: &str, timeout: Duration) -> Result<Self, EngineError> {
        let secs = timeout.as_secs().max(1);
        let min = &bollard::ClientVersion {
            major_version: MIN_API_VERSION.0,
            minor_version: MIN_API_VERSION.1,
        };
        let docker = if let Some(path) = host.strip_prefix("unix://") {
            Docker::connect_with_socket(path, secs, min)
        } else {
            Docker::connect_with_http(host, secs, min)
        }
        .map_err(|e| unavailable("connect", &e))?;
        // Negotiation only raises the version above the minimum when the engine supports it.
        let docker = match tokio::time::timeout(timeout, docker.clone().negotiate_version()).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Docker API version negotiation failed; using 1.41");
                docker
            }
            Err(_) => {
                tracing::warn!("Docker engine did not answer version negotiation; using 1.41");
                docker
            }
        };
        Ok(Self {
            docker,
            timeout,
            networks: std::sync::Arc::default(),
        })
    }

    /// Of several networks named `name` (made at once by berthds sharing an engine, or by
    /// Docker before names were unique), keeps the one with the most containers (the lowest id
    /// among equals, so every berthd keeps the same) and removes the others that are unused;
    /// returns the kept one's id.
    async fn one_network_of(&self, name: &str) -> Result<String, EngineError> {
        let options = bollard::query_parameters::ListNetworksOptions {
            filters: Some(HashMap::from([(
                "name".to_owned(),
                vec![format!("^{name}$")],
            )])),
        };
        let listed = self
            .bounded("list networks", self.docker.list_networks(Some(options)))
            .await?;
        let mut found = Vec::new();
        for id in listed
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| n.id)
        {
            let n = self
                .bounded(
                    "inspect network",
                    self.docker
                        .inspect_network(&id, None::<InspectNetworkOptions>),
                )
                .await?;
            found.push((n.containers.map_or(0, |c| c.len()), id));
        }
        found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let Some((_, kept)) = found.first().cloned() else {
            return Err(EngineError::NotFound {
                what: format!("network {name}"),
            });
        };
        for (_, id) in &found[1..] {
            match self
                .bounded("remove network", self.docker.remove_network(id))
                .await
            {
                Ok(()) => {
                    tracing::warn!(network = %name, removed = %id, kept = %kept, "removed a second network of the same name")
                }
                Err(e) => {
                    tracing::warn!(network = %name, id = %id, error = %e, "another network of the same name is in use; kept")
                }
            }
        }
        Ok(kept)
    }

    async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, BollardError>>,
    ) -> Result<T, EngineError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(|e| classify(op, e)),
            Err(_) => Err(EngineError::Timeout {
                op,
                after: self.timeout,
            }),
        }
    }
}

fn unavailable(op: &'static str, e: &BollardError) -> EngineError {
    EngineError::Unavailable {
        op,
        message: e.to_string(),
    }
}

fn classify(op: &'static str, e: BollardError) -> EngineError {
    match e {
        BollardError::DockerResponseServerError {
            status_code: 404,
            message,
        } => EngineError::NotFound { what: message },
        BollardError::DockerResponseServerError {
            status_code: 409,
            message,
        } => EngineError::Conflict { message },
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => EngineError::Api {
            op,
            status: status_code,
            message,
        },
        other => unavailable(op, &other),
    }
}

fn not_found_is_none<T>(r: Result<T, EngineError>) -> Result<Option<T>, EngineError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(EngineError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A 304 ("already stopped") answer is success for stop.
fn not_modified_is_ok(r: Result<(), EngineError>) -> Result<(), EngineError> {
    match r {
        Err(EngineError::Api { status: 304, .. }) => Ok(()),
        other => other,
    }
}

// Long: a field-by-field translation into Docker's create body, clearer whole.
fn to_create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let port_key = format!("{}/tcp", spec.port);
    let bindings = HashMap::from([(
        port_key.clone(),
        Some(vec![DockerPortBinding {
            host_ip: Some(spec.host_ip.clone()),
            // Empty: Docker picks a free host port.
            host_port: Some(String::new()),
        }]),
    )]);
    let mounts = spec
        .mounts
        .iter()
        .map(|m| DockerMount {
            target: Some(m.target.clone()),
            source: Some(m.volume.clone()),
            typ: Some(if m.bind {
                MountType::BIND
            } else {
                MountType::VOLUME
            }),
            read_only: Some(m.read_only),
            ..Default::default()
        })
        .collect();
    let h = &spec.host;
    let devices = h
        .devices
        .iter()
        .map(|d| DeviceMapping {
            path_on_host: Some(d.clone()),
            path_in_container: Some(d.clone()),
            cgroup_permissions: Some("rwm".to_owned()),
        })
        .collect();
    let device_requests: Vec<bollard::models::DeviceRequest> = spec
        .device_requests
        .iter()
        .map(|r| bollard::models::DeviceRequest {
            driver: Some(r.driver.clone()),
            device_ids: Some(r.device_ids.clone()),
            capabilities: Some(vec![vec!["gpu".to_owned()]]),
            ..Default::default()
        })
        .collect();
    let host = |on: bool| on.then(|| "host".to_owned());
    let o = &spec.options;
    let some = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    let strings = |v: &[std::net::IpAddr]| {
        (!v.is_empty()).then(|| v.iter().map(ToString::to_string).collect())
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        entrypoint: spec.entrypoint.clone(),
        cmd: spec.cmd.clone(),
        env: Some(spec.env.clone()),
        labels: Some(spec.labels.clone()),
        exposed_ports: Some(vec![port_key]),
        user: o.user_string(),
        working_dir: o.working_dir.clone(),
        host_config: Some(HostConfig {
            port_bindings: (!h.host_network).then_some(bindings),
            network_mode: host(h.host_network).or_else(|| o.network_name.clone()),
            group_add: some(&o.group_add),
            shm_size: o.shm_size.map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
            pids_limit: o.pids_limit,
            ulimits: (!o.ulimits.is_empty()).then(|| {
                o.ulimits
                    .iter()
                    .map(|u| ResourcesUlimits {
                        name: Some(u.name.clone()),
                        soft: Some(u.soft),
                        hard: Some(u.hard),
                    })
                    .collect()
            }),
            extra_hosts: (!o.extra_hosts.is_empty()).then(|| {
                o.extra_hosts
                    .iter()
                    .map(|(h, ip)| format!("{h}:{ip}"))
                    .collect()
            }),
            dns: strings(&o.dns),
            dns_search: some(&o.dns_search),
            readonly_rootfs: o.read_only_rootfs.then_some(true),
            tmpfs: (!o.tmpfs.is_empty())
                .then(|| o.tmpfs.iter().map(|t| (t.clone(), String::new())).collect()),
            pid_mode: host(h.host_pid),
            ipc_mode: host(h.host_ipc),
            privileged: Some(h.privileged),
            cap_add: (!h.cap_add.is_empty()).then(|| h.cap_add.clone()),
            devices: Some(devices),
            device_requests: (!device_requests.is_empty()).then_some(device_requests),
            memory: spec.memory,
            memory_reservation: spec.memory_reservation,
            nano_cpus: spec.nano_cpus,
            cpu_shares: spec.cpu_shares,
            mounts: Some(mounts),
            // berthd decides about restarts; Docker must never resurrect a stopped server.
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            init: Some(true),
            ..Default::default()
        }),
        open_stdin: spec.stdin.then_some(true),
        stdin_once: spec.stdin.then_some(true),
        attach_stdin: spec.stdin.then_some(true),
        ..Default::default()
    }
}

/// An in-memory tar of `files`, owned by root.
fn tar_of(files: &[NewFile]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for f in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(f.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match &f.contents {
            Some(bytes) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(bytes.len() as u64);
                b.append_data(&mut h, &f.path, bytes.as_slice())?;
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, &f.path, std::io::empty())?;
            }
        }
    }
    b.into_inner()
}

fn volume_info(v: bollard::models::Volume) -> VolumeInfo {
    VolumeInfo {
        name: v.name,
        driver: v.driver,
        options: v.options,
        labels: v.labels,
        mountpoint: v.mountpoint,
    }
}

// Long: a field-by-field translation of Docker's inspect answer, clearer whole.
fn to_info(c: ContainerInspectResponse) -> ContainerInfo {
    let state = c.state.clone().unwrap_or_default();
    let status = match state.status {
        Some(ContainerStateStatusEnum::CREATED) => RunStatus::Created,
        Some(ContainerStateStatusEnum::RUNNING) => RunStatus::Running,
        Some(ContainerStateStatusEnum::PAUSED) => RunStatus::Paused,
        Some(ContainerStateStatusEnum::RESTARTING) => RunStatus::Restarting,
        Some(ContainerStateStatusEnum::REMOVING | ContainerStateStatusEnum::STOPPING) => {
            RunStatus::Removing
        }
        Some(ContainerStateStatusEnum::DEAD) => RunStatus::Dead,
        Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::EMPTY) | None => {
            RunStatus::Exited
        }
    };
    let exited = matches!(status, RunStatus::Exited | RunStatus::Dead);
    let ports = c
        .network_settings
        .and_then(|n| n.ports)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|(key, bindings)| {
            let container_port = key
                .split('/')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .unwrap_or(0);
            bindings
                .unwrap_or_default()
                .into_iter()
                .map(move |b| PortBinding {
                    container_port,
                    host_ip: b.host_ip.unwrap_or_default(),
                    host_port: b.host_port.and_then(|p| p.parse().ok()).unwrap_or(0),
                })
        })
        .collect();
    let config = c.config.unwrap_or_default();
    let host = c.host_config.unwrap_or_default();
    let real_time = |t: Option<String>| t.filter(|t| !t.starts_with("0001-"));
    ContainerInfo {
        id: c.id.unwrap_or_default(),
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        image: config.image.unwrap_or_default(),
        labels: config.labels.unwrap_or_default(),
        status,
        exit_code: if exited { state.exit_code } else { None },
        oom_killed: state.oom_killed.unwrap_or(false),
        error: state.error.unwrap_or_default(),
        started_at: real_time(state.started_at),
        finished_at: real_time(state.finished_at),
        ports,
        memory: host.memory.unwrap_or(0),
        nano_cpus: host.nano_cpus.unwrap_or(0),
        memory_reservation: host.memory_reservation.unwrap_or(0),
        cpu_shares: host.cpu_shares.unwrap_or(0),
        pids_limit: host.pids_limit.unwrap_or(0).max(0),
        health: state
            .health
            .and_then(|h| h.status)
            .map(|s| match s {
                HealthStatusEnum::STARTING => "starting",
                HealthStatusEnum::HEALTHY => "healthy",
                HealthStatusEnum::UNHEALTHY => "unhealthy",
                HealthStatusEnum::NONE | HealthStatusEnum::EMPTY => "",
            })
            .unwrap_or_default()
            .to_owned(),
        restart_count: c.restart_count.unwrap_or(0),
        pid: state
            .pid
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0),
    }
}

impl ContainerEngine for BollardEngine {
    async fn version(&self) -> Result<EngineVersion, EngineError> {
        let v = self.bounded("version", self.docker.version()).await?;
        Ok(EngineVersion {
            version: v.version.unwrap_or_default(),
            api_version: self.docker.client_version().to_string(),
        })
    }

    async fn ping(&self) -> Result<(), EngineError> {
        self.bounded("ping", self.docker.ping()).await.map(drop)
    }

    async fn image(&self, reference: &str) -> Result<Option<ImageInfo>, EngineError> {
        let r = self
            .bounded("inspect image", self.docker.inspect_image(reference))
            .await;
        Ok(not_found_is_none(r)?.map(|i| {
            let config = i.config.unwrap_or_default();
            ImageInfo {
                id: i.id.unwrap_or_default(),
                cmd: config.cmd.unwrap_or_default(),
                entrypoint: config.entrypoint.unwrap_or_default(),
            }
        }))
    }

    fn pull(
        &self,
        reference: &str,
        auth: Option<&crate::registry::RegistryAuth>,
    ) -> BoxStream<'static, Result<PullEvent, EngineError>> {
        let options = bollard::query_parameters::CreateImageOptions {
            from_image: Some(reference.to_owned()),
            ..Default::default()
        };
        let credentials = auth.map(|a| bollard::auth::DockerCredentials {
            username: Some(a.username.clone()),
            password: Some(a.password.clone()),
            serveraddress: Some(crate::registry::registry_host(reference).to_owned()),
            ..Default::default()
        });
        let to_u64 = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok());
        self.docker
            .create_image(Some(options), None, credentials)
            .map(move |item| match item {
                Ok(info) => {
                    let detail = info.progress_detail.unwrap_or_default();
                    Ok(PullEvent {
                        layer: info.id.unwrap_or_default(),
                        status: info.status.unwrap_or_default(),
                        current: to_u64(detail.current),
                        total: to_u64(detail.total),
                    })
                }
                // An error in the middle of the stream carries no HTTP status.
                Err(BollardError::DockerStreamError { error }) => Err(EngineError::Api {
                    op: "pull",
                    status: 500,
                    message: error,
                }),
                Err(e) => Err(classify("pull", e)),
            })
            .boxed()
    }

    async fn image_summaries(&self) -> Result<Vec<ImageSummary>, EngineError> {
        let list = self
            .bounded(
                "list images",
                self.docker
                    .list_images(None::<bollard::query_parameters::ListImagesOptions>),
            )
            .await?;
        Ok(list
            .into_iter()
            .map(|i| ImageSummary {
                id: i.id,
                refs: i
                    .repo_tags
                    .into_iter()
                    .filter(|t| t != "<none>:<none>")
                    .collect(),
                size: u64::try_from(i.size).unwrap_or(0),
                created: i.created,
            })
            .collect())
    }

    async fn images_in_use(&self) -> Result<Vec<String>, EngineError> {
        let options = ListContainersOptions {
            all: true,
            ..Default::default()
        };
        let list = self
            .bounded(
                "list containers",
                self.docker.list_containers(Some(options)),
            )
            .await?;
        Ok(list.into_iter().filter_map(|c| c.image_id).collect())
    }

    async fn remove_image(&self, reference: &str) -> Result<(), EngineError> {
        let options = bollard::query_parameters::RemoveImageOptions {
            force: false,
            noprune: false,
            platforms: None,
        };
        match self
            .bounded(
                "remove image",
                self.docker.remove_image(reference, Some(options), None),
            )
            .await
        {
            Err(EngineError::NotFound { .. }) => Ok(()),
            other => other.map(drop),
        }
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, EngineError> {
        let options = CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let body = to_create_body(spec);
        let r = self
            .bounded("create", self.docker.create_container(Some(options), body))
            .await?;
        Ok(r.id)
    }

    async fn start(&self, id: &str) -> Result<(), EngineError> {
        self.bounded("start", self.docker.start_container(id, None))
            .await
    }

    async fn rename(&self, id: &str, name: &str) -> Result<(), EngineError> {
        let options = RenameContainerOptions {
            name: name.to_owned(),
        };
        self.bounded("rename", self.docker.rename_container(id, options))
            .await
    }

    async fn update_limits(&self, id: &str, limits: Limits) -> Result<(), EngineError> {
        let body = ContainerUpdateBody {
            memory: limits.memory,
            // Docker's default at create: swap as large again as the memory.
            memory_swap: limits.memory.map(|m| m.saturating_mul(2)),
            memory_reservation: limits.memory_reservation,
            nano_cpus: limits.nano_cpus,
            cpu_shares: limits.cpu_shares,
            ..Default::default()
        };
        self.bounded("update", self.docker.update_container(id, body))
            .await
    }

    async fn send_stdin(&self, id: &str, data: Vec<u8>) -> Result<(), EngineError> {
        use tokio::io::AsyncWriteExt;
        let options = AttachContainerOptions {
            stdin: true,
            stream: true,
            ..Default::default()
        };
        let mut attached = self
            .bounded("attach", self.docker.attach_container(id, Some(options)))
            .await?;
        let write = async {
            attached.input.write_all(&data).await?;
            attached.input.flush().await?;
            attached.input.shutdown().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(EngineError::Unavailable {
                op: "attach",
                message: e.to_string(),
            }),
            Err(_) => Err(EngineError::Timeout {
                op: "attach",
                after: self.timeout,
            }),
        }
    }

    async fn network(&self, name: &str) -> Result<Option<NetworkInfo>, EngineError> {
        let inspect = |name: String| async move {
            self.bounded(
                "inspect network",
                self.docker
                    .inspect_network(&name, None::<InspectNetworkOptions>),
            )
            .await
        };
        let r = match inspect(name.to_owned()).await {
            Err(EngineError::Api {
                status: 400,
                message,
                ..
            }) if message.contains("ambiguous") => {
                let kept = self.one_network_of(name).await?;
                inspect(kept).await
            }
            other => other,
        };
        Ok(not_found_is_none(r)?.map(|n| NetworkInfo {
            subnets: n
                .ipam
                .and_then(|i| i.config)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|c| c.subnet)
                .collect(),
            icc: n
                .options
                .as_ref()
                .and_then(|o| o.get(OPTION_ENABLE_ICC))
                .is_none_or(|v| v != "false"),
        }))
    }

    async fn create_network(
        &self,
        name: &str,
        labels: &HashMap<String, String>,
        icc: bool,
    ) -> Result<(), EngineError> {
        let _one_at_a_time = self.networks.lock().await;
        if self.network(name).await?.is_some() {
            return Ok(());
        }
        let req = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".to_owned()),
            labels: Some(labels.clone()),
            options: (!icc)
                .then(|| HashMap::from([(OPTION_ENABLE_ICC.to_owned(), "false".to_owned())])),
            ..Default::default()
        };
        match self
            .bounded("create network", self.docker.create_network(req))
            .await
        {
            Err(EngineError::Conflict { .. }) => Ok(()),
            other => other.map(drop),
        }
    }

    async fn exec(&self, id: &str, argv: &[String]) -> Result<(i64, String), EngineError> {
        let config = ExecConfig {
            cmd: Some(argv.to_vec()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let created = self
            .bounded("exec", self.docker.create_exec(id, config))
            .await?;
        let started = self
            .bounded("exec", self.docker.start_exec(&created.id, None))
            .await?;
        // The output is kept only to show why a command failed: its last bytes.
        let mut tail = String::new();
        if let StartExecResults::Attached { mut output, .. } = started {
            let read = async {
                while let Some(Ok(chunk)) = output.next().await {
                    tail.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                    if tail.len() > 4096 {
                        tail.drain(..tail.len() - 2048);
                    }
                }
            };
            if tokio::time::timeout(self.timeout, read).await.is_err() {
                return Err(EngineError::Timeout {
                    op: "exec",
                    after: self.timeout,
                });
            }
        }
        let inspected = self
            .bounded("exec", self.docker.inspect_exec(&created.id))
            .await?;
        Ok((inspected.exit_code.unwrap_or(-1), tail.trim().to_owned()))
    }

    async fn put_files(&self, id: &str, files: &[NewFile]) -> Result<(), EngineError> {
        let tar = tar_of(files).map_err(|e| EngineError::Api {
            op: "put files",
            status: 0,
            message: format!("cannot build the archive: {e}"),
        })?;
        let options = UploadToContainerOptions {
            path: "/".to_owned(),
            no_overwrite_dir_non_dir: Some("true".to_owned()),
            ..Default::default()
        };
        self.bounded(
            "put files",
            self.docker
                .upload_to_container(id, Some(options), bollard::body_full(tar.into())),
        )
        .await
    }

    async fn inspect(&self, name_or_id: &str) -> Result<Option<ContainerInfo>, EngineError> {
        let r = self
            .bounded("inspect", self.docker.inspect_container(name_or_id, None))
            .await;
        Ok(not_found_is_none(r)?.map(to_info))
    }

    async fn list(&self, labels: &[(&str, &str)]) -> Result<Vec<String>, EngineError> {
        let label = |(k, v): &(&str, &str)| {
            if *v == super::ANY_VALUE {
                (*k).to_owned()
            } else {
                format!("{k}={v}")
            }
        };
        let filters = HashMap::from([("label".to_owned(), labels.iter().map(label).collect())]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let list = self
            .bounded("list", self.docker.list_containers(Some(options)))
            .await?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    async fn kill(&self, id: &str) -> Result<(), EngineError> {
        let options = KillContainerOptions {
            signal: "SIGKILL".to_owned(),
        };
        match self
            .bounded("kill", self.docker.kill_container(id, Some(options)))
            .await
        {
            // "is not running": already where we want it.
            Err(EngineError::Conflict { .. }) => Ok(()),
            other => other,
        }
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), EngineError> {
        let secs = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptions {
            t: Some(secs),
            signal: None,
        };
        // Docker itself waits `grace` before it kills, so the deadline must cover it.
        let deadline = self.timeout + grace;
        let fut = self.docker.stop_container(id, Some(options));
        let r = match tokio::time::timeout(deadline, fut).await {
            Ok(r) => r.map_err(|e| classify("stop", e)),
            Err(_) => Err(EngineError::Timeout {
                op: "stop",
                after: deadline,
            }),
        };
        not_modified_is_ok(r)
    }

    async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let options = RemoveContainerOptions {
            force: true,
            v: false,
            link: false,
        };
        match self
            .bounded("remove", self.docker.remove_container(id, Some(options)))
            .await
        {
            Err(EngineError::NotFound { .. }) => Ok(()),
            // "removal already in progress"
            Err(EngineError::Conflict { .. }) => Ok(()),
            other => other,
        }
    }

    async fn wait_exit(&self, id: &str) -> Result<i64, EngineError> {
        let options = WaitContainerOptions {
            condition: "not-running".to_owned(),
        };
        let mut stream = self.docker.wait_container(id, Some(options));
        match stream.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(classify("wait", e)),
            None => Err(EngineError::Unavailable {
                op: "wait",
                message: "the wait stream ended without a result".to_owned(),
            }),
        }
    }

    async fn root_dir(&self) -> Result<String, EngineError> {
        let info = self.bounded("info", self.docker.info()).await?;
        Ok(info.docker_root_dir.unwrap_or_default())
    }

    async fn usage(&self, id: &str) -> Result<Usage, EngineError> {
        let options = StatsOptions {
            stream: false,
            one_shot: true,
        };
        let mut stream = self.docker.stats(id, Some(options));
        let stats = match tokio::time::timeout(self.timeout, stream.next()).await {
            Err(_) => {
                return Err(EngineError::Timeout {
                    op: "stats",
                    after: self.timeout,
                });
            }
            Ok(None) => {
                return Err(EngineError::Unavailable {
                    op: "stats",
                    message: "no stats returned".to_owned(),
                });
            }
            Ok(Some(r)) => r.map_err(|e| classify("stats", e))?,
        };
        let cpu_ns = stats
            .cpu_stats
            .and_then(|c| c.cpu_usage)
            .and_then(|u| u.total_usage)
            .unwrap_or(0);
        let net_bytes = stats
            .networks
            .unwrap_or_default()
            .values()
            .map(|n| n.rx_bytes.unwrap_or(0) + n.tx_bytes.unwrap_or(0))
            .sum();
        let memory = stats.memory_stats.unwrap_or_default();
        // As `docker stats`: the page cache does not count (cgroup v1 "cache"/"total_inactive_file",
        // v2 "inactive_file").
        let cache = memory.stats.as_ref().map_or(0, |s| {
            ["total_inactive_file", "inactive_file", "cache"]
                .iter()
                .find_map(|k| s.get(*k).copied())
                .unwrap_or(0)
        });
        Ok(Usage {
            cpu_ns,
            net_bytes,
            memory_bytes: memory.usage.unwrap_or(0).saturating_sub(cache),
            memory_limit_bytes: memory.limit.unwrap_or(0),
        })
    }

    async fn volume(&self, name: &str) -> Result<Option<VolumeInfo>, EngineError> {
        match self
            .bounded("inspect volume", self.docker.inspect_volume(name))
            .await
        {
            Ok(v) => Ok(Some(volume_info(v))),
            Err(EngineError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn create_volume(&self, v: &NewVolume) -> Result<(), EngineError> {
        let req = VolumeCreateRequest {
            name: Some(v.name.clone()),
            driver: (!v.driver.is_empty()).then(|| v.driver.clone()),
            driver_opts: Some(v.options.clone()),
            labels: Some(v.labels.clone()),
            cluster_volume_spec: None,
        };
        self.bounded("create volume", self.docker.create_volume(req))
            .await
            .map(drop)
    }

    async fn list_volumes(&self, labels: &[(&str, &str)]) -> Result<Vec<VolumeInfo>, EngineError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        )]);
        let options = ListVolumesOptions {
            filters: Some(filters),
        };
        let listed = self
            .bounded("list volumes", self.docker.list_volumes(Some(options)))
            .await?;
        Ok(listed
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(volume_info)
            .collect())
    }

    async fn volume_users(&self, name: &str) -> Result<Vec<String>, EngineError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "volume".to_owned(),
                vec![name.to_owned()],
            )])),
            ..Default::default()
        };
        let list = self
            .bounded(
                "list volume users",
                self.docker.list_containers(Some(options)),
            )
            .await?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    async fn remove_volume(&self, name: &str) -> Result<(), EngineError> {
        let options = RemoveVolumeOptions { force: false };
        match self
            .bounded(
                "remove volume",
                self.docker.remove_volume(name, Some(options)),
            )
            .await
        {
            Err(EngineError::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    fn events(
        &self,
        labels: &[(&str, &str)],
        since: Option<i64>,
    ) -> BoxStream<'static, Result<EngineEvent, EngineError>> {
        let mut label_filters: Vec<String> =
            labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        label_filters.sort();
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("label".to_owned(), label_filters),
        ]);
        let options = EventsOptions {
            since: since.map(|s| s.to_string()),
            until: None,
            filters: Some(filters),
        };
        self.docker
            .events(Some(options))
            .filter_map(|item| async move {
                match item {
                    Ok(m) if m.typ == Some(EventMessageTypeEnum::CONTAINER) => {
                        let actor = m.actor.unwrap_or_default();
                        Some(Ok(EngineEvent {
                            container_id: actor.id.unwrap_or_default(),
                            action: m.action.unwrap_or_default(),
                            labels: actor.attributes.unwrap_or_default(),
                            time_nano: m
                                .time_nano
                                .unwrap_or_else(|| m.time.unwrap_or(0) * 1_000_000_000),
                        }))
                    }
                    Ok(_) => None,
                    Err(e) => Some(Err(classify("events", e))),
                }
            })
            .boxed()
    }

    fn logs(
        &self,
        id: &str,
        want: LogsWanted,
    ) -> BoxStream<'static, Result<LogChunk, EngineError>> {
        let options = LogsOptions {
            follow: want.follow,
            stdout: true,
            stderr: true,
            tail: want
                .tail
                .map_or_else(|| "all".to_owned(), |n| n.to_string()),
            since: want
                .since
                .map_or(0, |s| i32::try_from(s).unwrap_or(i32::MAX)),
            timestamps: want.timestamps,
            ..Default::default()
        };
        self.docker
            .logs(id, Some(options))
            .filter_map(|item| async move {
                match item {
                    Ok(bollard::container::LogOutput::StdErr { message }) => Some(Ok(LogChunk {
                        stream: LogStream::Stderr,
                        data: message.to_vec(),
                    })),
                    Ok(
                        bollard::container::LogOutput::StdOut { message }
                        | bollard::container::LogOutput::Console { message },
                    ) => Some(Ok(LogChunk {
                        stream: LogStream::Stdout,
                        data: message.to_vec(),
                    })),
                    Ok(bollard::container::LogOutput::StdIn { .. }) => None,
                    Err(e) => Some(Err(classify("logs", e))),
                }
            })
            .boxed()
    }
}
