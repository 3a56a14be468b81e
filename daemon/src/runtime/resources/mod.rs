//! What a node can give: admission (draining, capacity, the spawn queue), devices (who holds
//! which, assignment at Start), the capacity report and the feed that pushes it on Watch. Reads
//! the view; the lifecycle asks it before and after each Start.
//!
//! | file | what |
//! |---|---|
//! | `admission.rs` | draining, memory/cpu/server count over the view, the bounded spawn queue |
//! | `devices.rs` | the device inventory, who holds which device, assignment to a Start |
//! | `report.rs` | the capacity report: host readings, what servers hold, the conditions |
//! | `capfeed.rs` | the report pushed on Watch, recomputed at each change |
//! | `usage.rs` | what running servers use now (Docker's stats), for the Stats RPC |

pub mod admission;
pub mod capfeed;
pub mod devices;
pub mod report;
pub mod usage;
