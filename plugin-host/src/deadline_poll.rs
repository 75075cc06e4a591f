//! `wasi:io/poll` with the per-call wall-clock cap. A WASI-p2 component waits in `poll` or
//! `pollable.block` (a `sleep`, a monotonic-clock subscription): the wait happens in host code, where
//! wasmtime's epoch interruption cannot reach, so wasmtime-wasi's own implementation would let a plugin
//! outlive its cap forever. This one runs the same wait (wasmtime-wasi-io's, so every pollable keeps its
//! meaning: a 1 ms sleep still sleeps 1 ms) under a timeout that ends at the call's deadline, and turns an
//! expired wait into a trap the host reports as the wall-clock limit.
//!
//! Every other WASI import that could block is harmless in this sandbox: stdin is empty (reads end at
//! once), stdout and stderr are sinks, no directory is preopened, and sockets are refused at load. Their
//! `blocking-*` variants wait on the same pollables only through this module's `block`.

use std::time::Instant;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::sync::io::poll as sync_poll;
use wasmtime_wasi::runtime::in_tokio;
use wasmtime_wasi_io::bindings::wasi::io::poll as async_poll;
use wasmtime_wasi_io::poll::DynPollable;

/// The error a wait past the deadline traps with (recognised by the host's error text).
#[derive(Debug)]
pub struct BlockedPastDeadline {
    /// The WASI function the plugin was blocked in.
    pub function: &'static str,
}

impl std::fmt::Display for BlockedPastDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "blocked in {} past the call's wall-clock deadline",
            self.function
        )
    }
}

impl std::error::Error for BlockedPastDeadline {}

/// The view the shadowed `wasi:io/poll` works on: the store's resource table and the current call's
/// deadline.
pub struct DeadlinePoll<'a> {
    /// The store's WASI resource table (the pollables live there).
    pub table: &'a mut ResourceTable,
    /// When the current call's wall-clock cap runs out.
    pub deadline: Instant,
}

impl DeadlinePoll<'_> {
    /// Runs `wait` until it finishes or the deadline passes, whichever is first.
    fn until_deadline<R>(
        deadline: Instant,
        function: &'static str,
        wait: impl std::future::Future<Output = wasmtime::Result<R>>,
    ) -> wasmtime::Result<R> {
        let left = deadline.saturating_duration_since(Instant::now());
        match in_tokio(async { tokio::time::timeout(left, wait).await }) {
            Ok(r) => r,
            Err(_elapsed) => Err(wasmtime::Error::new(BlockedPastDeadline { function })),
        }
    }
}

impl sync_poll::Host for DeadlinePoll<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        let table = &mut *self.table;
        Self::until_deadline(self.deadline, "wasi:io/poll.poll", async move {
            async_poll::Host::poll(table, pollables).await
        })
    }
}

impl sync_poll::HostPollable for DeadlinePoll<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        let table = &mut *self.table;
        // `ready` only checks; it still runs the pollable's future once, so it gets the cap too
        Self::until_deadline(self.deadline, "wasi:io/poll.pollable.ready", async move {
            async_poll::HostPollable::ready(table, pollable).await
        })
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        let table = &mut *self.table;
        Self::until_deadline(self.deadline, "wasi:io/poll.pollable.block", async move {
            async_poll::HostPollable::block(table, pollable).await
        })
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.table, pollable)
    }
}

/// The `HasData` marker that projects a store's data to a [`DeadlinePoll`].
pub struct HasDeadlinePoll;

impl wasmtime::component::HasData for HasDeadlinePoll {
    type Data<'a> = DeadlinePoll<'a>;
}
