//! Fault injection: a seeded schedule decides, call by call, whether an engine call fails,
//! times out, loses its reply, hangs until dropped, or "crashes" berthd there; the test reads
//! back what was injected, to reproduce a failing sequence.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;

use super::FakeEngine;
use crate::docker::EngineError;

/// What an engine call does instead of answering normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fails at once without doing anything (dockerd answered 500, or was unreachable).
    Fail,
    /// Does nothing and answers `Timeout`, as the call deadline does.
    Timeout,
    /// Does what it was asked, then answers `Timeout`: the reply was lost.
    LostReply,
    /// Never answers, until the caller drops the call.
    Hang,
    /// Never answers, and marks the engine crashed: the test drops the berthd that made the
    /// call (its tasks and all) at this point. Every later call hangs until
    /// [`FakeEngine::clear_crash`].
    Crash,
}

/// How often each fault happens, per thousand calls, and the seed that picks them.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultPlan {
    /// Seeds the schedule.
    pub seed: u64,
    /// Calls that fail, time out or lose their reply, per thousand.
    pub errors: u32,
    /// Calls that hang, per thousand.
    pub hangs: u32,
    /// Calls at which berthd crashes, per thousand.
    pub crashes: u32,
}

/// The schedule in force and what it injected so far.
#[derive(Default)]
pub(super) struct Schedule {
    plan: Option<FaultPlan>,
    state: u64,
    paused: bool,
    crashed: bool,
    injected: Vec<(&'static str, Fault)>,
}

impl Schedule {
    /// SplitMix64: small, seedable and good enough to spread faults over calls.
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn draw(&mut self, op: &'static str) -> Option<Fault> {
        if self.crashed {
            return Some(Fault::Hang);
        }
        let plan = self.plan.filter(|_| !self.paused)?;
        let roll = u32::try_from(self.next() % 1000).unwrap_or(0);
        let fault = if roll < plan.crashes {
            self.crashed = true;
            Fault::Crash
        } else if roll < plan.crashes + plan.hangs {
            Fault::Hang
        } else if roll < plan.crashes + plan.hangs + plan.errors {
            match self.next() % 3 {
                0 => Fault::Fail,
                1 => Fault::Timeout,
                _ => Fault::LostReply,
            }
        } else {
            return None;
        };
        self.injected.push((op, fault));
        Some(fault)
    }
}

fn injected_error(op: &'static str) -> EngineError {
    EngineError::Api {
        op,
        status: 500,
        message: "injected fault".to_owned(),
    }
}

fn timeout(op: &'static str) -> EngineError {
    EngineError::Timeout {
        op,
        after: Duration::from_secs(1),
    }
}

impl FakeEngine {
    /// Injects faults by `plan` from now on (`None`: none), with a fresh schedule.
    pub fn set_faults(&self, plan: Option<FaultPlan>) {
        let mut s = self.schedule();
        s.plan = plan;
        s.state = plan.map_or(0, |p| p.seed);
        s.injected.clear();
    }

    /// While `paused`, the schedule injects nothing (a crash already injected still holds).
    pub fn pause_faults(&self, paused: bool) {
        self.schedule().paused = paused;
    }

    /// Every fault injected since [`FakeEngine::set_faults`], with the call it hit.
    pub fn injected(&self) -> Vec<(&'static str, Fault)> {
        self.schedule().injected.clone()
    }

    /// Whether a [`Fault::Crash`] was injected and not yet cleared.
    pub fn crashed(&self) -> bool {
        self.schedule().crashed || *self.shared.crash.borrow()
    }

    /// Waits until a [`Fault::Crash`] is injected.
    pub async fn wait_crashed(&self) {
        let mut rx = self.shared.crash.subscribe();
        // The sender lives as long as `self`, so this cannot end early.
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Ends the crash: calls answer again (for the berthd that replaces the crashed one).
    pub fn clear_crash(&self) {
        self.schedule().crashed = false;
        self.shared.crash.send_replace(false);
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.shared
            .faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn draw(&self, op: &'static str) -> Option<Fault> {
        let fault = self.schedule().draw(op);
        if fault == Some(Fault::Crash) {
            self.shared.crash.send_replace(true);
        }
        fault
    }

    /// Runs the call `op` as the schedule says: `call` is the call as it would answer.
    pub(super) async fn faulty<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, EngineError>>,
    ) -> Result<T, EngineError> {
        match self.draw(op) {
            None => call.await,
            Some(Fault::Fail) => Err(injected_error(op)),
            Some(Fault::Timeout) => Err(timeout(op)),
            Some(Fault::LostReply) => {
                let _ = call.await;
                Err(timeout(op))
            }
            Some(Fault::Hang | Fault::Crash) => {
                self.shared.hung.send_modify(|n| *n += 1);
                let _counted = super::Delayed(&self.shared.hung);
                std::future::pending().await
            }
        }
    }

    /// How many calls hang now (a hanging stream is not counted).
    pub fn hung_calls(&self) -> usize {
        *self.shared.hung.borrow()
    }

    /// Waits until at least one call hangs.
    pub async fn wait_hung(&self) {
        let mut rx = self.shared.hung.subscribe();
        // The sender lives as long as `self`, so this cannot end early.
        let _ = rx.wait_for(|n| *n > 0).await;
    }

    /// The stream call `op` as the schedule says (a lost reply is a timeout after the call
    /// began: the stream is made, then dropped).
    pub(super) fn faulty_stream<T: Send + 'static>(
        &self,
        op: &'static str,
        call: impl FnOnce() -> BoxStream<'static, Result<T, EngineError>>,
    ) -> BoxStream<'static, Result<T, EngineError>> {
        match self.draw(op) {
            None => call(),
            Some(Fault::Fail) => {
                futures::stream::once(async move { Err(injected_error(op)) }).boxed()
            }
            Some(Fault::Timeout) => futures::stream::once(async move { Err(timeout(op)) }).boxed(),
            Some(Fault::LostReply) => {
                drop(call());
                futures::stream::once(async move { Err(timeout(op)) }).boxed()
            }
            Some(Fault::Hang | Fault::Crash) => futures::stream::pending().boxed(),
        }
    }
}
