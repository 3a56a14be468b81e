//! The berth wire contract. `proto/berth/v1/*.proto` is the source of truth; this crate only
//! re-exports what `build.rs` generates from it (Rust types, tonic client and server).

#![allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]

/// Package `berth.v1`.
pub mod v1 {
    tonic::include_proto!("berth.v1");
}
