//! The gRPC surface: the Spawner service, the edge conversions and the error-to-status mapping.

pub mod convert;
pub mod spawner;
pub mod status;

pub use spawner::SpawnerService;
