//! The engine's unit schedule: the order in which the forward and the backward ask for the policy's
//! units ([`Unit`]), declared once here. The engine walks it — each unit it asks for must be the
//! schedule's next — and the unit after the current one is what the parallel strategy may fetch ahead
//! (prefetch), so the prefetch hint cannot disagree with the order the engine runs in.
//!
//! The schedule depends only on the model (its shape and which parameters train), never on a rank's
//! data, so every rank of a sharded run walks the same one (the strategy's calls are collectives).

use crate::model::{Transformer, Unit};
use anyhow::{bail, Result};
use std::cell::Cell;

/// One pass's units in order, and how far the engine has walked.
#[derive(Debug)]
pub struct Schedule {
    units: Vec<Unit>,
    pos: Cell<usize>,
}

impl Schedule {
    /// The forward's order: the embedding, the trunk blocks bottom up, the shared output (final norm
    /// and projection), then every head 0..H−1.
    pub fn forward(m: &Transformer) -> Self {
        let n_trunk = m.layers.len() - 1;
        let mut units = vec![Unit::Embedding];
        units.extend((0..n_trunk).map(Unit::Layer));
        units.push(Unit::Output);
        units.extend((0..m.args.n_future_tokens).map(|k| Unit::head(m, k)));
        Self::of(units)
    }

    /// The backward's order: the shared output, the heads it visits (`visits(k)`: the head's block
    /// trains, or its gradient flows on into trained weights), then — when anything below the heads
    /// trains (`trunk_trainable`) — the trunk blocks top down and the embedding when it trains.
    pub fn backward(
        m: &Transformer,
        visits: &dyn Fn(usize) -> bool,
        trunk_trainable: bool,
        embedding_trainable: bool,
    ) -> Self {
        let n_trunk = m.layers.len() - 1;
        let mut units = vec![Unit::Output];
        units.extend(
            (0..m.args.n_future_tokens)
                .filter(|&k| visits(k))
                .map(|k| Unit::head(m, k)),
        );
        if trunk_trainable {
            units.extend((0..n_trunk).rev().map(Unit::Layer));
            if embedding_trainable {
                units.push(Unit::Embedding);
            }
        }
        Self::of(units)
    }

    fn of(units: Vec<Unit>) -> Self {
        Schedule {
            units,
            pos: Cell::new(0),
        }
    }

    /// The units in order.
    pub fn units(&self) -> &[Unit] {
        &self.units
    }

    /// Steps past `unit`, which must be the schedule's next (an error names both otherwise: the
    /// engine's walk and the declared order disagree); returns the unit after it, the prefetch hint.
    pub fn advance(&self, unit: Unit) -> Result<Option<Unit>> {
        let i = self.pos.get();
        match self.units.get(i) {
            Some(&u) if u == unit => {
                self.pos.set(i + 1);
                Ok(self.units.get(i + 1).copied())
            }
            expected => bail!(
                "engine: asked for {unit:?} where the unit schedule has {expected:?} (step {i} of {:?})",
                self.units
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelArgs, Transformer};
    use candle_core::{DType, Device};

    #[test]
    fn the_walk_must_follow_the_declared_order_and_each_step_names_the_next() -> Result<()> {
        let m = Transformer::random(
            ModelArgs::preset("tiny").unwrap(),
            3,
            DType::F32,
            &Device::Cpu,
        )?;
        let n_trunk = m.layers.len() - 1;
        let f = Schedule::forward(&m);
        assert_eq!(f.units()[0], Unit::Embedding);
        assert_eq!(f.units().len(), 1 + n_trunk + 1 + m.args.n_future_tokens);
        assert_eq!(f.advance(Unit::Embedding)?, Some(Unit::Layer(0)));
        assert!(
            f.advance(Unit::Output).is_err(),
            "a unit out of order is refused"
        );
        // head 1 not visited; frozen embedding
        let h = m.args.n_future_tokens;
        assert!(h >= 2);
        let b = Schedule::backward(&m, &|k| k != 1, true, false);
        let want: Vec<Unit> = std::iter::once(Unit::Output)
            .chain((0..h).filter(|&k| k != 1).map(|k| Unit::head(&m, k)))
            .chain((0..n_trunk).rev().map(Unit::Layer))
            .collect();
        assert!(!want.contains(&Unit::head(&m, 1)));
        assert_eq!(b.units(), &want[..]);
        for (i, &u) in want.iter().enumerate() {
            assert_eq!(b.advance(u)?, want.get(i + 1).copied());
        }
        let heads_only = Schedule::backward(&m, &|_| true, false, true);
        assert_eq!(heads_only.units().len(), 1 + m.args.n_future_tokens);
        Ok(())
    }
}
