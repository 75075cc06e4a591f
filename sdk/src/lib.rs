//! wmtp-sdk: write a wmtp pipeline plugin in a few dozen lines.
//!
//! A plugin turns per-token scalars (cross-entropy of every head, values, reference losses, rewards) into
//! the derivatives of its loss with respect to them (see `wit/pipeline.wit`, the contract). Implement
//! [`Pipeline`], call [`export_pipeline!`], build for `wasm32-unknown-unknown`:
//!
//! ```ignore
//! use wmtp_sdk::*;
//!
//! #[derive(Default)]
//! struct Plain;
//!
//! impl Pipeline for Plain {
//!     fn manifest() -> Manifest {
//!         manifest("plain", "0.1.0", "unweighted MTP cross-entropy", &[], &[ParamGroup::Lora], &[])
//!     }
//!     fn configure(&mut self, _cfg: &Config) -> Result<(), String> { Ok(()) }
//!     fn weigh(&mut self, b: &Batch, _train: bool) -> Result<Coefficients, String> {
//!         let (ce, loss) = weighted_ce(&BatchView::new(b)?, |_, _, _| 1.0);
//!         Ok(Coefficients { ce, values: None, loss, metrics: vec![] })
//!     }
//! }
//! export_pipeline!(Plain);
//! ```

extern crate self as wmtp_sdk;

pub mod config;
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
pub use config::Config;
pub use maths::*;
pub use view::BatchView;
#[doc(hidden)]
pub use wit_bindgen;

/// The version of the contract this SDK speaks (the WIT package version).
pub const CONTRACT_VERSION: &str = "0.1.0";

/// What a pipeline plugin implements. The host calls `configure` once (a call that comes first gets an
/// instance configured with the manifest's defaults), then `weigh` per micro-batch and `after_step` per
/// optimizer step. `Default` only needs to build an instance that `configure` then fills in.
pub trait Pipeline: Default + 'static {
    /// Name, version, needed inputs, trained groups and every config key with its default.
    fn manifest() -> Manifest;
    /// Reads the plugin's settings; `cfg` holds only keys the manifest declares (others were rejected).
    fn configure(&mut self, cfg: &Config) -> Result<(), String>;
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

/// Builds a manifest. `keys` are (name, default as TOML, doc) triples.
pub fn manifest(
    name: &str,
    version: &str,
    description: &str,
    needs: &[InputKind],
    trains: &[ParamGroup],
    keys: &[(&str, &str, &str)],
) -> Manifest {
    Manifest {
        name: name.into(),
        version: version.into(),
        description: description.into(),
        needs: needs.to_vec(),
        trains: trains.to_vec(),
        uses_ce: true,
        uses_values_grad: false,
        config_keys: keys
            .iter()
            .map(|(n, d, doc)| ConfigKey {
                name: (*n).into(),
                default_value: (*d).into(),
                doc: (*doc).into(),
            })
            .collect(),
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
