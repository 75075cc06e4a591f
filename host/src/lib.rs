//! wmtp host: the LoRA-injected multi-token-prediction Transformer, its loaders and the `wmtp` command.
//! The layers (docs/design.md, [`layers::LAYERS`], checked by a test): `run` (`wmtp run`'s setup and
//! loop) on `train` (sessions, the engine, the step) on `eval`, `infer` and `parallel` (on `optim`) on
//! `model` on `data` and `kernels`; only `train` uses the plugin host (crate
//! `wmtp-plugin-host`); nothing here depends on the command line (the `wmtp` binary's `cli`).

pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod formats;
pub mod fuzzing;
pub mod infer;
pub mod kernels;
pub mod layers;
pub mod model;
pub mod optim;
pub mod parallel;
pub mod run;
pub mod train;
