//! wmtp-sdk: write a wmtp pipeline plugin in a few dozen lines.
//!
//! A plugin turns per-token scalars (cross-entropy of every head, values, reference losses, rewards) into
//! the derivatives of its loss with respect to them (see `wit/pipeline.wit`, the contract, and the repo's
//! `docs/design.md`). Declare the settings with [`settings!`], implement [`Pipeline`], call
//! [`export_pipeline!`], and build with `wmtp plugin build` (`wmtp plugin new NAME` writes a starting crate):
//!
//! ```
//! use wmtp_sdk::*;
//!
//! settings! {
//!     pub struct Scaled {
//!         /// multiplier of every token's loss
//!         scale: f64 = 1.0,
//!     }
//! }
//!
//! #[derive(Default)]
//! struct Plain(Scaled);
//!
//! impl Pipeline for Plain {
//!     type Settings = Scaled;
//!     fn manifest() -> Manifest {
//!         ManifestBuilder::new("plain", "0.1.0").describe("scaled MTP cross-entropy").build()
//!     }
//!     fn configure(&mut self, s: Scaled) -> Result<(), String> {
//!         self.0 = s;
//!         Ok(())
//!     }
//!     fn weigh(&mut self, b: &Batch, _train: bool) -> Result<Coefficients, String> {
//!         let (ce, loss) = weighted_ce(&BatchView::new(b)?, |_, _, _| self.0.scale);
//!         Ok(Coefficients::of_ce(ce, loss))
//!     }
//! }
//! export_pipeline!(Plain);
//! # fn main() {}
//! ```

extern crate self as wmtp_sdk;

pub mod config;
pub mod head_weights;
pub mod maths;
pub mod runtime;
pub mod state;
pub mod view;

/// The bindings generated from `wit/pipeline.wit` (types, host imports, the raw export macro).
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "pipeline",
        pub_export_macro: true,
        export_macro_name: "__export_pipeline_world",
        default_bindings_module: "wmtp_sdk::bindings",
        runtime_path: "wmtp_sdk::wit_bindgen::rt",
    });
}

pub use bindings::wmtp::pipeline::types::{
    Batch, Coefficients, ConfigKey, InputKind, Manifest, ParamGroup,
};
pub use config::{check_range, NoSettings, SettingValue, Settings};
pub use head_weights::HeadWeights;
pub use maths::*;
#[doc(hidden)]
pub use serde;
pub use view::BatchView;
#[doc(hidden)]
pub use wit_bindgen;

/// The version of the contract this SDK speaks (the WIT package version).
pub const CONTRACT_VERSION: &str = "0.2.0";

/// What a pipeline plugin implements. The host calls `configure` once (a call that comes first gets an
/// instance configured with the default settings), then `weigh` per micro-batch and `after_step` per
/// optimizer step. `Default` only needs to build an instance that `configure` then fills in.
pub trait Pipeline: Default + 'static {
    /// The `[plugin]` table, declared with [`settings!`] ([`NoSettings`] when there is none); the
    /// manifest's config keys are generated from it.
    type Settings: Settings;
    /// Name, version, description, needed inputs and trained groups ([`ManifestBuilder`]).
    fn manifest() -> Manifest;
    /// Takes the settings (already parsed and type-checked); check ranges here ([`check_range`]).
    fn configure(&mut self, settings: Self::Settings) -> Result<(), String> {
        let _ = settings;
        Ok(())
    }
    /// Coefficients ∂L/∂CE (and ∂L/∂V) for one micro-batch; `train` is false in validation.
    fn weigh(&mut self, batch: &Batch, train: bool) -> Result<Coefficients, String>;
    /// Called after every optimizer step.
    fn after_step(&mut self, _step: u64) -> Result<(), String> {
        Ok(())
    }
    /// State to checkpoint.
    fn save_state(&self) -> Vec<u8> {
        Vec::new()
    }
    /// Restores [`Pipeline::save_state`]'s bytes.
    fn load_state(&mut self, _state: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// Builds a [`Manifest`]: `ManifestBuilder::new(name, version)`, then what differs from the defaults
/// (no extra inputs; trains LoRA, the heads and the trunk like the baseline plugin — with LoRA on, the
/// adapters; in full fine-tuning, every block; returns ∂L/∂CE only).
pub struct ManifestBuilder(Manifest);

impl ManifestBuilder {
    /// A manifest named `name` (version: semver, usually `env!("CARGO_PKG_VERSION")`).
    pub fn new(name: &str, version: &str) -> Self {
        ManifestBuilder(Manifest {
            name: name.into(),
            version: version.into(),
            description: String::new(),
            needs: vec![],
            trains: vec![ParamGroup::Lora, ParamGroup::Heads, ParamGroup::Trunk],
            uses_ce: true,
            uses_values_grad: false,
            config_keys: vec![],
        })
    }
    /// One line saying what the pipeline does.
    pub fn describe(mut self, text: &str) -> Self {
        self.0.description = text.into();
        self
    }
    /// Inputs the host must send besides CE (values, reference losses, rewards, pairs, token ids).
    pub fn needs(mut self, inputs: &[InputKind]) -> Self {
        self.0.needs = inputs.to_vec();
        self
    }
    /// Parameter groups the pipeline trains (default LoRA, heads and trunk, as baseline).
    pub fn trains(mut self, groups: &[ParamGroup]) -> Self {
        self.0.trains = groups.to_vec();
        self
    }
    /// The pipeline returns ∂L/∂V (it trains the value head).
    pub fn value_gradients(mut self) -> Self {
        self.0.uses_values_grad = true;
        self
    }
    /// The pipeline returns no ∂L/∂CE (it leaves the policy's CE untrained, like the critic).
    pub fn no_ce_gradients(mut self) -> Self {
        self.0.uses_ce = false;
        self
    }
    /// The manifest (its config keys are filled from the pipeline's settings when exported).
    pub fn build(self) -> Manifest {
        self.0
    }
}

impl Coefficients {
    /// Coefficients of the CE only (no value gradients, no metrics) with the loss L for logging.
    pub fn of_ce(ce: Vec<f32>, loss: f64) -> Self {
        Coefficients {
            ce,
            values: None,
            loss,
            metrics: vec![],
        }
    }
    /// Adds a logged metric, written to metrics.jsonl as `plugin.<name>`. The host refuses names that
    /// are not 1–64 characters of `[A-Za-z0-9_.]`, repeated names, non-finite values and more than 256
    /// metrics per call.
    pub fn metric(mut self, name: &str, value: f64) -> Self {
        self.metrics.push((name.into(), value));
        self
    }
}

/// Sends a message to the host's log (0 error, 1 warn, 2 info, 3 debug). A no-op outside Wasm.
pub fn log(level: u8, msg: &str) {
    #[cfg(target_arch = "wasm32")]
    bindings::log(level, msg);
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (level, msg);
}

/// Element-wise sum over all ranks (identity on one rank, and outside Wasm).
pub fn all_reduce_sum(xs: &[f64]) -> Vec<f64> {
    #[cfg(target_arch = "wasm32")]
    return bindings::all_reduce_sum(xs);
    #[cfg(not(target_arch = "wasm32"))]
    xs.to_vec()
}

/// The tokenizer's pieces by token id (`vocabulary()[x]` is token x's piece, spelled as the vocabulary
/// spells it: `Ġdef`, `▁def`, `<0x0A>`); empty when the run has no tokenizer. Ask from `configure` on
/// (the host sets it before). Outside Wasm (native tests) it returns what [`set_native_vocabulary`]
/// gave this thread, else nothing.
pub fn vocabulary() -> Vec<String> {
    #[cfg(target_arch = "wasm32")]
    return bindings::vocabulary();
    #[cfg(not(target_arch = "wasm32"))]
    NATIVE_VOCABULARY.with(|v| v.borrow().clone())
}

#[cfg(not(target_arch = "wasm32"))]
thread_local! {
    static NATIVE_VOCABULARY: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What [`vocabulary`] returns on this thread outside Wasm (for a plugin's native unit tests; no effect
/// in Wasm, where the host gives the model's vocabulary).
pub fn set_native_vocabulary(pieces: Vec<String>) {
    #[cfg(not(target_arch = "wasm32"))]
    NATIVE_VOCABULARY.with(|v| *v.borrow_mut() = pieces);
    #[cfg(target_arch = "wasm32")]
    let _ = pieces;
}

/// Exports a [`Pipeline`] type as the plugin's implementation of the contract.
#[macro_export]
macro_rules! export_pipeline {
    ($t:ty) => {
        #[doc(hidden)]
        pub struct __WmtpGuest;
        impl $crate::bindings::Guest for __WmtpGuest {
            fn describe() -> $crate::Manifest {
                $crate::runtime::describe::<$t>()
            }
            fn configure(toml: String) -> Result<(), String> {
                $crate::runtime::configure::<$t>(&toml)
            }
            fn weigh(b: $crate::Batch, train: bool) -> Result<$crate::Coefficients, String> {
                $crate::runtime::weigh::<$t>(&b, train)
            }
            fn after_step(step: u64) -> Result<(), String> {
                $crate::runtime::after_step::<$t>(step)
            }
            fn save_state() -> Vec<u8> {
                $crate::runtime::save_state::<$t>()
            }
            fn load_state(state: Vec<u8>) -> Result<(), String> {
                $crate::runtime::load_state::<$t>(&state)
            }
        }
        // The raw exports only on Wasm: natively (unit tests, benchmarks linking several plugins) they
        // would be duplicate symbols.
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_pipeline_world!(__WmtpGuest with_types_in $crate::bindings);
    };
}
