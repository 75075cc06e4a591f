//! Sampling and batching (design.md §7): pointwise pipelines take the correct samples; paired pipelines take
//! (correct, incorrect) pairs per problem, shuffled and paired 1:1 up to `max_pairs_per_problem`, seeded;
//! batches are right-padded. Ranks of a data-parallel run share one batcher's stream (the step deals
//! micro-batch r, r + W, … to rank r: `train::step`), so a batcher knows nothing of ranks. The position (epoch, index) is part of the
//! checkpoint, so a resumed run sees the same batches.

use super::dataset::Sample;
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// One micro-batch of token ids with its target mask (1 on trained tokens), right-padded.
#[derive(Debug, Clone)]
pub struct MicroBatch {
    /// Token ids [B, T] (u32).
    pub tokens: Tensor,
    /// m[b,t] flat [B·T].
    pub target_mask: Vec<u8>,
    /// r[b] (is_correct), when the data has it.
    pub rewards: Option<Vec<f32>>,
    /// Pair id per sequence (−1 unpaired), when the data is paired.
    pub pair_ids: Option<Vec<i32>>,
}

/// Items the batcher deals: single samples, or (positive, negative) pairs kept in one batch.
#[derive(Debug, Clone)]
pub enum Items {
    /// Pointwise.
    Single(Vec<Sample>),
    /// Pairs (correct, incorrect).
    Pairs(Vec<(Sample, Sample)>),
}

/// Which samples a pipeline trains on (design.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    /// Pointwise pipelines without rewards (baseline, rho1): the correct samples only.
    CorrectOnly,
    /// Pointwise pipelines that use rewards (verifiable): correct and incorrect samples.
    All,
    /// Paired pipelines (critic): (correct, incorrect) pairs per problem.
    Pairs,
}

/// Builds the items for a pipeline according to `sampling`.
pub fn make_items(
    samples: Vec<Sample>,
    sampling: Sampling,
    max_pairs_per_problem: usize,
    seed: u64,
) -> Result<Items> {
    match sampling {
        Sampling::All => {
            if samples.is_empty() {
                bail!("the dataset has no samples to train on");
            }
            return Ok(Items::Single(samples));
        }
        Sampling::CorrectOnly => {
            let good: Vec<Sample> = samples.into_iter().filter(|s| s.reward > 0.5).collect();
            if good.is_empty() {
                bail!("the dataset has no correct samples to train on");
            }
            return Ok(Items::Single(good));
        }
        Sampling::Pairs => {}
    }
    let mut by_problem: BTreeMap<String, (Vec<Sample>, Vec<Sample>)> = BTreeMap::new();
    for s in samples {
        let e = by_problem.entry(s.problem.clone()).or_default();
        if s.reward > 0.5 {
            e.0.push(s)
        } else {
            e.1.push(s)
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pairs = Vec::new();
    for (_, (mut pos, mut neg)) in by_problem {
        pos.shuffle(&mut rng);
        neg.shuffle(&mut rng);
        pairs.extend(pos.into_iter().zip(neg).take(max_pairs_per_problem));
    }
    if pairs.is_empty() {
        bail!("the dataset has no problem with both a correct and an incorrect sample to pair");
    }
    Ok(Items::Pairs(pairs))
}

/// Deals shuffled batches from items.
#[derive(Debug, Clone)]
pub struct Batcher {
    items: Items,
    /// Items (samples or pairs) per batch.
    pub batch_items: usize,
    seed: u64,
    /// Epoch of the next batch.
    pub epoch: u64,
    /// Index (into this epoch's order) of the next batch's first item.
    pub index: usize,
    order: Vec<usize>,
}

impl Batcher {
    /// A batcher over `items`, `batch_items` per batch, shuffled per epoch from `seed`.
    pub fn new(items: Items, batch_items: usize, seed: u64) -> Result<Self> {
        if batch_items == 0 {
            bail!("batch size must be at least 1");
        }
        let mut b = Batcher {
            items,
            batch_items,
            seed,
            epoch: 0,
            index: 0,
            order: vec![],
        };
        if b.len() == 0 {
            bail!("no samples to batch");
        }
        b.shuffle();
        Ok(b)
    }

    fn len(&self) -> usize {
        match &self.items {
            Items::Single(v) => v.len(),
            Items::Pairs(v) => v.len(),
        }
    }

    fn shuffle(&mut self) {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(
            self.seed ^ self.epoch.wrapping_mul(0x9E37_79B9),
        ));
        self.order = order;
    }

    /// Moves to (epoch, index), e.g. when resuming.
    pub fn seek(&mut self, epoch: u64, index: usize) {
        self.epoch = epoch;
        self.index = index;
        self.shuffle();
    }

    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.order.len().div_ceil(self.batch_items)
    }

    /// The next batch of samples (pairs flattened as pos, neg, with pair ids), wrapping epochs.
    pub fn next_samples(&mut self) -> (Vec<Sample>, Option<Vec<i32>>) {
        if self.index >= self.order.len() {
            self.epoch += 1;
            self.index = 0;
            self.shuffle();
        }
        let end = (self.index + self.batch_items).min(self.order.len());
        let picked: Vec<usize> = self.order[self.index..end].to_vec();
        self.index = end;
        match &self.items {
            Items::Single(v) => (picked.iter().map(|&i| v[i].clone()).collect(), None),
            Items::Pairs(v) => {
                let mut s = Vec::new();
                let mut ids = Vec::new();
                for (n, &i) in picked.iter().enumerate() {
                    s.push(v[i].0.clone());
                    s.push(v[i].1.clone());
                    ids.extend([n as i32, n as i32]);
                }
                (s, Some(ids))
            }
        }
    }
}

/// Right-pads samples into a micro-batch (pad id `pad`, mask 0 on padding).
pub fn collate(
    samples: &[Sample],
    pair_ids: Option<Vec<i32>>,
    pad: u32,
    dev: &Device,
) -> Result<MicroBatch> {
    let t = samples
        .iter()
        .map(|s| s.ids.len())
        .max()
        .unwrap_or(1)
        .max(2);
    let mut ids = Vec::with_capacity(samples.len() * t);
    let mut mask = Vec::with_capacity(samples.len() * t);
    for s in samples {
        ids.extend(&s.ids);
        ids.extend(std::iter::repeat_n(pad, t - s.ids.len()));
        mask.extend(&s.mask);
        mask.extend(std::iter::repeat_n(0u8, t - s.mask.len()));
    }
    Ok(MicroBatch {
        tokens: Tensor::from_vec(ids, (samples.len(), t), dev)?,
        target_mask: mask,
        rewards: Some(samples.iter().map(|s| s.reward).collect()),
        pair_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(p: &str, r: f32, n: u32) -> Sample {
        Sample {
            ids: vec![1; n as usize],
            mask: vec![1; n as usize],
            reward: r,
            problem: p.into(),
        }
    }

    #[test]
    fn pairs_are_per_problem_and_seeded() {
        let data = vec![
            s("a", 1.0, 3),
            s("a", 0.0, 4),
            s("a", 0.0, 5),
            s("b", 1.0, 2),
            s("c", 0.0, 2),
        ];
        let Items::Pairs(p) = make_items(data.clone(), Sampling::Pairs, 4, 1).unwrap() else {
            panic!()
        };
        assert_eq!(p.len(), 1, "only problem a has both kinds");
        let Items::Pairs(q) = make_items(data.clone(), Sampling::Pairs, 4, 1).unwrap() else {
            panic!()
        };
        assert_eq!(p[0].1, q[0].1, "seeded");
        let Items::Single(g) = make_items(data.clone(), Sampling::CorrectOnly, 4, 1).unwrap()
        else {
            panic!()
        };
        assert_eq!(g.len(), 2);
        let Items::Single(all) = make_items(data, Sampling::All, 4, 1).unwrap() else {
            panic!()
        };
        assert_eq!(all.len(), 5, "reward users see incorrect samples too");
    }

    #[test]
    fn batches_and_resumes() {
        let data: Vec<Sample> = (0..10).map(|i| s(&i.to_string(), 1.0, 2 + i)).collect();
        let items = make_items(data, Sampling::CorrectOnly, 1, 0).unwrap();
        let mut r0 = Batcher::new(items.clone(), 4, 5).unwrap();
        assert_eq!(r0.batches_per_epoch(), 3);
        let first: Vec<_> = (0..4).map(|_| r0.next_samples().0).collect();
        let mut again = Batcher::new(items, 4, 5).unwrap();
        again.seek(first.len() as u64 / 3, 4); // after 4 batches of 4 (4, 4, 2 | 4): epoch 1, item 4
        let mut replay = Batcher::new(
            make_items(
                (0..10).map(|i| s(&i.to_string(), 1.0, 2 + i)).collect(),
                Sampling::CorrectOnly,
                1,
                0,
            )
            .unwrap(),
            4,
            5,
        )
        .unwrap();
        for _ in 0..4 {
            replay.next_samples();
        }
        assert_eq!((replay.epoch, replay.index), (1, 4));
        assert_eq!(again.next_samples().0, replay.next_samples().0);
        let mb = collate(&first[0], None, 0, &Device::Cpu).unwrap();
        assert_eq!(mb.tokens.dims()[0], first[0].len());
    }
}
