//! Mutation checks: a test switches on a named break in the runtime to prove that the property
//! test guarding an invariant notices when the code stops holding it (`tests/fake_faults.rs`).
//!
//! Each hook is one line at the place its invariant depends on, `mutation::active("name")`:
//! - `devices.held_by_stopped` (`runtime/resources/devices.rs`, `holds`): a stopped container keeps its
//!   devices — invariant (a);
//! - `resume.secret_in_config` (`runtime/lifecycle/start.rs`, `container_spec`): a resumable container
//!   gets the per-spawn env in its config — (b);
//! - `stop.skip_remove` (`runtime/lifecycle/stop.rs`, `halt`): Stop(remove) leaves the container — (c);
//! - `start.ignore_abandon` (`runtime/lifecycle/start.rs`, `hand_over`): a Start whose callers went
//!   away makes its server RUNNING all the same — (d);
//! - `start.exit_code_of_unstarted` (`runtime/lifecycle/start.rs`, `clean_up_spawn`): the record of a
//!   failed start's removed container that never ran is given exit code 0 — (e).
//!
//! Only with the `test-util` feature; otherwise `active` is a constant `false` the compiler
//! removes. The switches are per thread: a test drives its runtimes on a current-thread tokio
//! runtime, so tests running side by side never see each other's mutations.

#[cfg(feature = "test-util")]
mod switches {
    use std::cell::RefCell;

    thread_local! {
        static ACTIVE: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
    }

    /// Whether the mutation `name` is switched on for this thread.
    pub fn active(name: &str) -> bool {
        ACTIVE.with(|a| a.borrow().contains(&name))
    }

    /// Switches `name` on for this thread until the guard drops.
    pub fn enable(name: &'static str) -> Guard {
        ACTIVE.with(|a| a.borrow_mut().push(name));
        Guard(name)
    }

    /// Switches its mutation off when dropped.
    #[derive(Debug)]
    pub struct Guard(&'static str);

    impl Drop for Guard {
        fn drop(&mut self) {
            ACTIVE.with(|a| a.borrow_mut().retain(|n| *n != self.0));
        }
    }
}

#[cfg(feature = "test-util")]
pub use switches::{Guard, active, enable};

/// Never: mutations exist only in test builds.
#[cfg(not(feature = "test-util"))]
#[inline(always)]
pub fn active(_: &str) -> bool {
    false
}
