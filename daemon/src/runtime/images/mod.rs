//! The node's images: pulls (one per image however many spawns wait, with per-layer bytes for
//! the progress bar) and image garbage collection. Uses the view and the progress registry.
//!
//! | file | what |
//! |---|---|
//! | `pull.rs` | the pull policy of a Start, shared pulls, registry auth, the pull's progress |
//! | `image_gc.rs` | removing unused images, least recently used first, above a disk mark |

pub mod image_gc;
pub mod pull;
