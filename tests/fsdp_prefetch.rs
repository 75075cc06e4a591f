//! FSDP prefetch on the in-process communicator: a communicator that claims a second stream makes the
//! engine gather each next unit ahead — the same losses and weights as gathering on demand, and every
//! unit gathered ahead is the one asked for next.

use crate::fsdp_support;

use fsdp_support::*;
use std::sync::Arc;
use wmtp_host::parallel::local;

/// The in-process communicator claiming a second stream: its gathers "ahead" are plain gathers, so the
/// prefetch bookkeeping (the engine naming the next unit, the stash, joins, dropping a wrong guess)
/// runs on the CPU with results that must not change.
struct AheadProbe(local::LocalComm);

impl wmtp_host::parallel::Communicator for AheadProbe {
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn world_size(&self) -> usize {
        self.0.world_size()
    }
    fn all_reduce_sum(&self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        self.0.all_reduce_sum(x)
    }
    fn all_gather(&self, shard: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        self.0.all_gather(shard)
    }
    fn reduce_scatter_sum(
        &self,
        full: &candle_core::Tensor,
    ) -> candle_core::Result<candle_core::Tensor> {
        self.0.reduce_scatter_sum(full)
    }
    fn broadcast(
        &self,
        x: &candle_core::Tensor,
        root: usize,
    ) -> candle_core::Result<candle_core::Tensor> {
        self.0.broadcast(x, root)
    }
    fn barrier(&self) -> candle_core::Result<()> {
        self.0.barrier()
    }
    fn gathers_ahead(&self) -> bool {
        true
    }
}

#[test]
fn prefetching_the_next_unit_changes_nothing_and_the_engine_names_it_right() {
    // the prefetched weights are used in place of gathered ones, for LoRA (only the attention
    // projections trained) and full fine-tuning (every unit trained, embedding included)
    for lora in [true, false] {
        let plain = sharded(2, 2, lora, BASELINE);
        assert_eq!(plain.prefetched, (0, 0), "no second stream, no prefetch");
        let ahead = sharded_over(2, 2, lora, BASELINE, |c| Arc::new(AheadProbe(c)));
        assert_eq!(plain.losses, ahead.losses, "lora {lora}: losses");
        assert_eq!(plain.weights, ahead.weights, "lora {lora}: weights");
        let (issued, used) = ahead.prefetched;
        // per micro-batch, U units: the forward visits all U and prefetches all but the first; the
        // backward visits all U (LoRA: all but the frozen embedding) and prefetches all but the first
        let u = ahead.units;
        let per_micro = (u - 1) + if lora { u - 2 } else { u - 1 };
        assert_eq!(
            issued,
            STEPS * 2 * per_micro,
            "lora {lora}: units prefetched ({u} units)"
        );
        assert_eq!(
            issued, used,
            "lora {lora}: {issued} units prefetched, {used} used"
        );
    }
}
