//! The gRPC surface: the Spawner and Admin services (and the Spawner's operator subset on the Admin socket), the edge conversions and the error-to-status mapping.

pub mod admin;
pub mod auth;
pub mod convert;
pub mod operator;
mod prepull;
pub mod spawner;
pub mod status;

pub use admin::AdminService;
pub use spawner::SpawnerService;
