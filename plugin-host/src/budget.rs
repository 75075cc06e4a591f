//! `MemoryBudget`: one memory budget per plugin instance, covering every linear memory of every core
//! instance inside the component (a WASI adapter and a Python interpreter each bring their own), every
//! table and every table element. wasmtime's stock `StoreLimits` caps each memory separately, so N
//! memories could hold N × the cap; this limiter keeps a running total instead.
//!
//! Accounting: a linear memory counts its size in bytes; a table element counts
//! [`TABLE_ELEMENT_BYTES`] (wasmtime keeps a pointer-sized slot per element, plus bookkeeping). Memories
//! never shrink, and the whole store is dropped with the instance, so the total only grows.

use wasmtime::ResourceLimiter;

/// Bytes a table element is charged against the budget.
pub const TABLE_ELEMENT_BYTES: usize = 16;
/// Most linear memories one plugin instance may create (all core instances together).
pub const MAX_MEMORIES: usize = 64;
/// Most tables one plugin instance may create.
pub const MAX_TABLES: usize = 256;
/// Most core instances one plugin component may create.
pub const MAX_INSTANCES: usize = 256;

/// The running total of a plugin instance's memories and tables, against one limit.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: usize,
    /// The last growth granted, undone if the growth then fails.
    pending: usize,
    /// Set when a growth was refused (the error message says "memory limit").
    pub exceeded: bool,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        MemoryBudget {
            limit,
            used: 0,
            pending: 0,
            exceeded: false,
        }
    }

    #[cfg(test)]
    /// Bytes charged so far.
    pub fn used(&self) -> usize {
        self.used
    }

    fn grow(&mut self, extra: usize) -> bool {
        match self.used.checked_add(extra) {
            Some(total) if total <= self.limit => {
                self.used = total;
                self.pending = extra;
                true
            }
            _ => {
                self.exceeded = true;
                self.pending = 0;
                false
            }
        }
    }

    fn undo_pending(&mut self) {
        self.used -= self.pending;
        self.pending = 0;
    }
}

impl ResourceLimiter for MemoryBudget {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.grow(desired.saturating_sub(current));
        if !ok {
            // a trap, not memory.grow = -1: a plugin that ignores allocation failure would otherwise
            // keep running on a null pointer, and the message below says what happened
            wasmtime::bail!(
                "memory limit: growing a linear memory by {} MiB would take the plugin's memories and tables to more than {} MiB",
                desired.saturating_sub(current) >> 20,
                self.limit >> 20
            );
        }
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.undo_pending();
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let extra = desired
            .saturating_sub(current)
            .saturating_mul(TABLE_ELEMENT_BYTES);
        if !self.grow(extra) {
            wasmtime::bail!(
                "memory limit: growing a table by {} elements would take the plugin's memories and tables to more than {} MiB",
                desired.saturating_sub(current),
                self.limit >> 20
            );
        }
        Ok(true)
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.undo_pending();
        Ok(())
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_memories_share_one_budget() {
        let mut b = MemoryBudget::new(100 << 20);
        assert!(b.memory_growing(0, 60 << 20, None).unwrap());
        // a second memory of 60 MiB would be allowed by a per-memory cap, not by the shared budget
        assert!(b.memory_growing(0, 60 << 20, None).is_err());
        assert!(b.exceeded);
        assert_eq!(b.used(), 60 << 20);
    }

    #[test]
    fn table_elements_count_and_failed_growth_is_refunded() {
        let mut b = MemoryBudget::new(1 << 20);
        assert!(b.table_growing(0, 1000, None).unwrap());
        assert_eq!(b.used(), 1000 * TABLE_ELEMENT_BYTES);
        b.table_grow_failed(wasmtime::Error::msg("over the table's maximum"))
            .unwrap();
        assert_eq!(b.used(), 0);
        assert!(b.table_growing(0, usize::MAX, None).is_err());
    }
}
