//! Training: the block-wise engine, gradients, the optimiser.

pub mod config;
pub mod engine;
pub mod grads;
pub mod optim;
