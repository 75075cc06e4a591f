//! The parallel-strategy seam (`wmtp_host::parallel::strategy`): the engine reaches units and hands back
//! their gradients only through `Strategy`. A second implementation here — one that records every call
//! and otherwise lends the model like `NoSharding` — gets the same gradients bit for bit, is asked for
//! every unit in the forward, is told of each trainable unit's gradients exactly once, when they are
//! complete (what FSDP's reduce-scatter relies on), and every prefetch hint names the unit asked for
//! next (the engine walks one declared schedule, train/schedule.rs).

use candle_core::{DType, Device, Tensor};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use wmtp_host::data::MicroBatch;
use wmtp_host::model::grads::Grads;
use wmtp_host::model::{ModelArgs, ParamGroup, Transformer, Unit, VisitParams};
use wmtp_host::optim::Optimizer;
use wmtp_host::parallel::strategy::{NoSharding, Replicated, Strategy, Update};
use wmtp_host::train::engine::Engine;

/// Records the units asked for, and for each unit handed back the gradient names it held then.
#[derive(Default)]
struct Recording {
    asked: RefCell<Vec<(Unit, Option<Unit>)>>,
    done: RefCell<Vec<(Unit, BTreeSet<String>)>>,
}

impl Strategy for Recording {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn with_units<'m>(
        &self,
        model: &'m Transformer,
        units: &[Unit],
        next: Option<Unit>,
    ) -> anyhow::Result<Cow<'m, Transformer>> {
        assert_eq!(units.len(), 1, "the engine lends one unit at a time");
        self.asked.borrow_mut().push((units[0], next));
        Ok(Cow::Borrowed(model))
    }
    fn unit_backward_done(&self, unit: Unit, grads: &mut Grads) -> anyhow::Result<()> {
        let held = grads
            .by_name
            .keys()
            .filter(|n| Unit::of(n) == Some(unit))
            .cloned()
            .collect();
        self.done.borrow_mut().push((unit, held));
        Ok(())
    }
    fn sum_over_ranks(&self, xs: &[f64]) -> anyhow::Result<Vec<f64>> {
        Ok(xs.to_vec())
    }
    fn update(
        &mut self,
        policy: &mut Transformer,
        replicated: &mut [Replicated<'_>],
        opt: &mut dyn Optimizer,
        grads: &mut Grads,
        max_grad_norm: f64,
    ) -> anyhow::Result<Update> {
        NoSharding.update(policy, replicated, opt, grads, max_grad_norm)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn grads_with(m: &Transformer, strategy: &dyn Strategy) -> Grads {
    let (b, t) = (2, 12);
    let ids: Vec<u32> = (0..b * t)
        .map(|i| (i * 7 % m.args.vocab_size) as u32)
        .collect();
    let mut target = vec![1u8; b * t];
    target[..2].fill(0);
    let mb = MicroBatch {
        tokens: Tensor::from_vec(ids, (b, t), &Device::Cpu).unwrap(),
        target_mask: target,
        rewards: None,
        pair_ids: None,
    };
    let engine = Engine {
        model: m,
        value_head: None,
        chunk_rows: 5,
        seed: 0,
        train: false,
        checkpointing: wmtp_host::train::config::ActivationCheckpointing::Blocks,
        selective_blocks: None,
        strategy,
        detach_extra_heads: false,
    };
    let st = engine.forward(&mb).unwrap();
    let c_ce = vec![1.0 / (b * t) as f32; st.ce.len()];
    let mut g = Grads::default();
    engine.backward(&st, &c_ce, None, &mut g).unwrap();
    g
}

#[test]
fn a_second_strategy_sees_every_unit_and_each_units_complete_gradients_once() {
    let mut m = Transformer::random(
        ModelArgs::preset("tiny").unwrap(),
        3,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    m.set_trainable_groups(&[ParamGroup::Trunk, ParamGroup::Heads])
        .unwrap();
    let plain = grads_with(&m, &NoSharding);
    let rec = Recording::default();
    let recorded = grads_with(&m, &rec);
    assert_eq!(
        plain.by_name.keys().collect::<Vec<_>>(),
        recorded.by_name.keys().collect::<Vec<_>>()
    );
    for (name, g) in &plain.by_name {
        let d = crate::common::max_abs_diff(g, &recorded.by_name[name]);
        assert_eq!(d, 0.0, "{name}: the strategy changed a gradient");
    }
    // every unit of the model is asked for in the forward (and again in the backward)
    let mut units: BTreeMap<Unit, BTreeSet<String>> = BTreeMap::new();
    m.visit("", &mut |name, p| {
        let u = Unit::of(name).expect("every policy parameter belongs to a unit");
        let e = units.entry(u).or_default();
        if p.is_trainable() {
            e.insert(name.to_string());
        }
    });
    let calls = rec.asked.borrow();
    let asked: BTreeSet<Unit> = calls.iter().map(|c| c.0).collect();
    assert_eq!(asked, units.keys().copied().collect());
    // each hint is the unit asked for next; no hint only at the end of the forward and of the backward
    for w in calls.windows(2) {
        if let Some(next) = w[0].1 {
            assert_eq!(
                w[1].0, next,
                "prefetch hinted {next:?}, the engine asked for {:?}",
                w[1].0
            );
        }
    }
    assert_eq!(calls.iter().filter(|c| c.1.is_none()).count(), 2);
    assert_eq!(calls.last().map(|c| c.1), Some(None));
    // each unit with trainable weights is handed back once, holding all of its gradients by then
    let done = rec.done.borrow();
    let mut seen = BTreeSet::new();
    for (unit, held) in done.iter() {
        assert!(seen.insert(*unit), "{unit:?} handed back twice");
        assert_eq!(
            held, &units[unit],
            "{unit:?}: its gradients were not complete when handed back"
        );
    }
    let trainable: BTreeSet<Unit> = units
        .iter()
        .filter(|(_, names)| !names.is_empty())
        .map(|(u, _)| *u)
        .collect();
    assert_eq!(seen, trainable);
}
