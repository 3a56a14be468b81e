//! The lifecycle of a server: the operations the hub and the node drive, on top of the view,
//! the resources, the images and the volumes.
//!
//! | file | what |
//! |---|---|
//! | `start.rs` | Start: idempotent by spawn id, serialised per key, done when the server answers |
//! | `resume.rs` | restarting a kept container when nothing that matters changed; naming a drift |
//! | `ready.rs` | the readiness probe (HTTP, or TLS under internal_ssl) |
//! | `options.rs` | container options that need the engine beyond create (network, command) |
//! | `callers.rs` | who still waits for each spawn; abandonment after the grace |
//! | `fence.rs` | the hub's last contact, and stopping servers once it is out of touch too long |
//! | `stop.rs` | Stop: graceful or immediate, optionally removing the container |
//! | `state_ops.rs` | the hub's state blob (compare-and-swap) and DeleteForever |
//! | `observe.rs` | Docker's reports of containers taken into the view, in order |
//! | `reconcile.rs` | the view rebuilt from the records and the containers Docker runs |
//! | `logs.rs` | a server's output, for the Logs RPC and failure messages |

pub mod callers;
pub mod fence;
pub(crate) mod logs;
pub(crate) mod observe;
pub(crate) mod options;
pub mod ready;
pub(crate) mod reconcile;
pub mod resume;
pub(crate) mod start;
pub mod state_ops;
pub(crate) mod stop;
