//! berthd, the node daemon of berth: it runs JupyterHub single-user servers as Docker containers
//! on this node and serves the hub over gRPC.
//!
//! - [`config`]: the typed configuration (defaults < TOML < `BERTH_*` env < flags).
//! - [`key`] and [`spec`]: validated domain types of a request (names, images, resources, env).
//! - [`docker`]: the narrow [`docker::ContainerEngine`] trait and its bollard implementation.
//! - [`capacity`]: host readings and the pure arithmetic of allocatable, committed, admission.
//! - [`state`]: the durable per-server records (atomic, checksummed files).
//! - [`policy`]: the node policy every Start is checked against (images, mounts, privileges).
//! - [`hostpath`]: host paths resolved beneath their allowed root by the kernel and pinned for
//!   Docker (never checked as text).
//! - [`runtime`]: the lifecycle: per-key serialisation, start with readiness, stop, poll, progress.
//! - [`monitor`]: the Docker events subscription and periodic relist that keep the view current.
//! - [`reporter`]: container activity (network, CPU) reported to the hub's activity API.
//! - [`api`]: the `berth.v1.Spawner` gRPC service; the only module that sees proto types.
//! - [`serve`]: the wiring: engine, runtime, gRPC server, health, shutdown.

pub mod api;
pub mod capacity;
pub mod config;
pub mod docker;
pub mod hostpath;
pub mod key;
pub mod monitor;
pub mod policy;
pub mod reporter;
pub mod runtime;
pub mod serve;
pub mod spec;
pub mod state;
