//! Using a model to make something other than a training step: self-distillation data.

pub mod distill;
