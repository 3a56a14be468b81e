//! The gRPC surface: the Spawner and Admin services, the edge conversions and the error-to-status mapping.

pub mod admin;
pub mod auth;
pub mod convert;
mod prepull;
pub mod spawner;
pub mod status;

pub use admin::AdminService;
pub use spawner::SpawnerService;
