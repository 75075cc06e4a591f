//! The contract versions the host speaks, and a loaded plugin's exports under whichever one it was built
//! against: the current `wmtp:pipeline@0.2.0` directly, `@0.1.0` through conversions (its batch has no
//! token ids and its manifest cannot ask for them; everything else is the same shape). The imports are
//! the same functions in both (`log`, `all-reduce-sum`; 0.2.0 adds `vocabulary`), served by one linker.

use crate::bindings::{self, v0_1, Batch, Coefficients, Manifest, Pipeline};
use crate::host_state::HostState;
use wasmtime::component::Instance;
use wasmtime::Store;

/// A contract version a plugin may be built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractVersion {
    /// `wmtp:pipeline@0.1.0`: no token ids, no vocabulary.
    V0_1,
    /// `wmtp:pipeline@0.2.0` (current): `batch.tokens` and the `vocabulary` import.
    V0_2,
}

impl ContractVersion {
    /// The version named in an import such as `wmtp:pipeline/types@0.1.0` (None: not one the host speaks).
    pub fn parse(v: &str) -> Option<Self> {
        [Self::V0_1, Self::V0_2]
            .into_iter()
            .find(|c| c.as_str() == v)
    }

    /// `0.1.0` ([`bindings::COMPATIBLE_VERSIONS`]), `0.2.0` ([`bindings::CONTRACT_VERSION`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_1 => bindings::COMPATIBLE_VERSIONS[0],
            Self::V0_2 => bindings::CONTRACT_VERSION,
        }
    }
}

/// A plugin instance's exports under its contract version.
pub(crate) enum Exports {
    V0_1(v0_1::Pipeline),
    V0_2(Pipeline),
}

impl Exports {
    /// Looks the exports of `version` up in an instantiated component.
    pub(crate) fn new(
        version: ContractVersion,
        store: &mut Store<HostState>,
        instance: &Instance,
    ) -> wasmtime::Result<Self> {
        Ok(match version {
            ContractVersion::V0_1 => Self::V0_1(v0_1::Pipeline::new(store, instance)?),
            ContractVersion::V0_2 => Self::V0_2(Pipeline::new(store, instance)?),
        })
    }

    /// `describe`, as a current manifest.
    pub(crate) fn describe(&self, st: &mut Store<HostState>) -> wasmtime::Result<Manifest> {
        match self {
            Self::V0_1(p) => Ok(manifest_from_v0_1(p.call_describe(st)?)),
            Self::V0_2(p) => p.call_describe(st),
        }
    }

    /// `configure`.
    pub(crate) fn configure(
        &self,
        st: &mut Store<HostState>,
        toml: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Self::V0_1(p) => p.call_configure(st, toml),
            Self::V0_2(p) => p.call_configure(st, toml),
        }
    }

    /// `weigh` (a 0.1 plugin gets the batch without token ids, which it cannot have asked for).
    pub(crate) fn weigh(
        &self,
        st: &mut Store<HostState>,
        b: &Batch,
        train: bool,
    ) -> wasmtime::Result<Result<Coefficients, String>> {
        match self {
            Self::V0_1(p) => Ok(p
                .call_weigh(st, &batch_to_v0_1(b), train)?
                .map(coefficients_from_v0_1)),
            Self::V0_2(p) => p.call_weigh(st, b, train),
        }
    }

    /// `after-step`.
    pub(crate) fn after_step(
        &self,
        st: &mut Store<HostState>,
        step: u64,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Self::V0_1(p) => p.call_after_step(st, step),
            Self::V0_2(p) => p.call_after_step(st, step),
        }
    }

    /// `save-state`.
    pub(crate) fn save_state(&self, st: &mut Store<HostState>) -> wasmtime::Result<Vec<u8>> {
        match self {
            Self::V0_1(p) => p.call_save_state(st),
            Self::V0_2(p) => p.call_save_state(st),
        }
    }

    /// `load-state`.
    pub(crate) fn load_state(
        &self,
        st: &mut Store<HostState>,
        state: &[u8],
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Self::V0_1(p) => p.call_load_state(st, state),
            Self::V0_2(p) => p.call_load_state(st, state),
        }
    }
}

/// A 0.1 manifest in the current types (its enums are a subset of the current ones).
fn manifest_from_v0_1(m: v0_1::wmtp::pipeline::types::Manifest) -> Manifest {
    use bindings::{ConfigKey, InputKind, ParamGroup};
    use v0_1::wmtp::pipeline::types as old;
    Manifest {
        name: m.name,
        version: m.version,
        description: m.description,
        needs: m
            .needs
            .into_iter()
            .map(|k| match k {
                old::InputKind::Values => InputKind::Values,
                old::InputKind::Reference => InputKind::Reference,
                old::InputKind::Rewards => InputKind::Rewards,
                old::InputKind::Pairs => InputKind::Pairs,
            })
            .collect(),
        trains: m
            .trains
            .into_iter()
            .map(|g| match g {
                old::ParamGroup::Lora => ParamGroup::Lora,
                old::ParamGroup::ValueHead => ParamGroup::ValueHead,
                old::ParamGroup::Heads => ParamGroup::Heads,
                old::ParamGroup::Trunk => ParamGroup::Trunk,
            })
            .collect(),
        uses_ce: m.uses_ce,
        uses_values_grad: m.uses_values_grad,
        config_keys: m
            .config_keys
            .into_iter()
            .map(|k| ConfigKey {
                name: k.name,
                default_value: k.default_value,
                doc: k.doc,
            })
            .collect(),
    }
}

/// The batch a 0.1 plugin sees: the current one without `tokens`.
fn batch_to_v0_1(b: &Batch) -> v0_1::wmtp::pipeline::types::Batch {
    v0_1::wmtp::pipeline::types::Batch {
        sequences: b.sequences,
        positions: b.positions,
        heads: b.heads,
        step: b.step,
        ce: b.ce.clone(),
        ce_mask: b.ce_mask.clone(),
        target_mask: b.target_mask.clone(),
        values: b.values.clone(),
        ref_ce: b.ref_ce.clone(),
        rewards: b.rewards.clone(),
        pair_ids: b.pair_ids.clone(),
    }
}

/// A 0.1 answer in the current types (the same fields).
fn coefficients_from_v0_1(c: v0_1::wmtp::pipeline::types::Coefficients) -> Coefficients {
    Coefficients {
        ce: c.ce,
        values: c.values,
        loss: c.loss,
        metrics: c.metrics,
    }
}
