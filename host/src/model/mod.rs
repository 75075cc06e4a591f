//! The model half of the host: the MTP Transformer, its value head, LoRA, loading and saving.

pub mod activation_memory;
pub mod args;
pub mod block;
pub mod block_grad;
pub mod device;
pub mod forward_ctx;
pub mod frozen_linear;
pub mod grads;
pub mod init;
pub mod lora;
pub mod memory;
pub mod norm;
pub mod param;
pub mod rope;
pub mod transformer;
pub mod unit;
pub mod value_head;
pub mod weight_map;

pub use args::ModelArgs;
pub use device::{DeviceSpec, Precision};
pub use forward_ctx::ForwardCtx;
pub use lora::{LoraConfig, LoraLinear};
pub use param::{Param, ParamGroup, VisitParams};
pub use transformer::Transformer;
pub use unit::Unit;
pub use value_head::{ValueHead, ValueHeadConfig, ValueHeadKind};
