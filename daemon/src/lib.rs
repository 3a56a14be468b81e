//! berthd, the node daemon of berth: it runs JupyterHub single-user servers as Docker containers
//! on this node and serves the hub over gRPC.
//!
//! - [`config`]: the typed configuration (defaults < TOML < `BERTH_*` env < flags).
//! - [`key`] and [`spec`]: validated domain types of a request (names, images, resources, env).
//! - [`docker`]: the narrow [`docker::ContainerEngine`] trait, its bollard implementation and
//!   (feature `test-util`) an in-memory fake for fast lifecycle tests.
//! - [`devices`]: GPUs and other device classes the node owns: config, `nvidia-smi` discovery,
//!   the inventory and the pure choice of free devices (who holds what: `runtime/resources/devices.rs`).
//! - [`capacity`]: host readings and the pure arithmetic of allocatable, committed, admission.
//! - [`state`]: the durable per-server records (atomic, checksummed files).
//! - [`registry`]: images from registries: the pull policy and the node's registry
//!   credentials (Docker's `config.json`), by registry host.
//! - [`policy`]: the node policy every Start is checked against (images, mounts, privileges).
//! - [`hostpath`]: host paths resolved beneath their allowed root by the kernel and pinned for
//!   Docker (never checked as text), in process or by `berth-pin`, the privileged helper
//!   (`hostpath::helper`, binary `src/bin/berth-pin.rs`) a sandboxed berthd asks.
//! - [`runtime`]: the lifecycle, one folder per concern: `lifecycle` (start, stop, resume,
//!   reconcile, readiness) on top of `resources` (admission, devices, the capacity report),
//!   `images` (pulls, GC) and `volumes`, which use `view` (records, keys, status, Watch) and
//!   `progress`; its module docs give the table of parts and the lock order.
//! - [`metrics`]: the Prometheus families and `/metrics`, reading the runtime through
//!   [`metrics::Scraped`].
//! - [`monitor`]: the Docker events subscription and periodic relist that keep the view current.
//! - [`logging`]: the log's format (text or JSON), its filter, the start-up warnings.
//! - [`notify`]: systemd notifications (READY, STATUS, STOPPING, the watchdog), written out.
//! - [`reporter`]: container activity (network, CPU) reported to the hub's activity API.
//! - [`api`]: the `berth.v1.Spawner` gRPC service; the only module that sees proto types.
//! - [`serve`]: the wiring: engine, runtime, gRPC server, health, shutdown, SIGHUP.
//! - [`tls`]: the gRPC listener's TLS, done by berthd itself so SIGHUP can swap the files.
//! - [`netguard`]: the container networks' subnets, whose peers berthd's listeners refuse.
//!
//! Dependencies point one way: `api` → `runtime` → (`docker`, `state`, `capacity`, `policy`,
//! `hostpath`, `config`); `monitor` and `reporter` feed and read `runtime`; nothing depends on
//! `api`; only `serve` names bollard. No file names one that names it back
//! (`scripts/check-module-cycles.py`, run by CI).
//!
//! Where a change goes, in one sentence each:
//! - **A new RPC**: the message and method in `proto/berth/v1/*.proto` (errors: a reason in the
//!   list at its top), a thin handler in `api/spawner.rs` (or `api/admin.rs`) converting with
//!   `api/convert.rs`, the work as a `Runtime` method in the `runtime/` folder of its concern
//!   (`view/read.rs` for a read of the view, a file of its own in `lifecycle/` for a new
//!   operation), and a new error as a
//!   `runtime::Error` variant classified once in `api/status.rs`.
//! - **A new container option**: the field in `StartRequest`, validated into `spec::StartSpec`
//!   by `api/convert.rs` (the checks themselves in `spec.rs`, a node rule in `policy.rs`),
//!   carried into `docker::ContainerSpec` by `runtime/lifecycle/start.rs::container_spec`, and translated
//!   for Docker in `docker/bollard_engine.rs::to_create_body` (and modelled in `docker/fake`).
//! - **A new Docker call**: a method on `docker::ContainerEngine` (bounded by the call deadline,
//!   Docker's 404/409 as typed `EngineError`s), implemented in `docker/bollard_engine.rs` and in
//!   `docker/fake/engine.rs`, and called from the runtime through `self.inner.engine` (from the
//!   monitor or reporter through `Runtime::engine()`).
//! - **A new configuration key**: one line in its `section!` (`config.rs`; `[policy]` in
//!   `policy.rs`, `[activity]` in `reporter.rs`) with its doc, type, default, `BERTH_*`
//!   variable and flag (`BERTH_<SECTION>_<KEY>`, `--<section>-<key>`), the key with its default
//!   in `systemd/config.toml`, and a sample in `config/tests.rs` (`SAMPLES`); the tests fail on
//!   a key that is in the file but not settable from env and flags, or not in the file.

pub mod api;
pub mod capacity;
#[macro_use]
pub mod config;
pub mod devices;
pub mod docker;
pub mod hostpath;
pub mod key;
pub mod logging;
pub mod metrics;
pub mod monitor;
pub mod mutation;
pub mod netguard;
pub mod notify;
pub mod policy;
pub mod registry;
pub(crate) mod reporter;
pub mod runtime;
pub mod serve;
pub mod spec;
pub mod state;
pub mod tls;
pub mod warm;
