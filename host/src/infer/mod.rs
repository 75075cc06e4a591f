//! Using a trained model rather than training it: KV-cached decoding ([`kv_cache`]), text generation with
//! head 0, greedy or sampled on the device ([`generate`]), self-speculative decoding with the MTP heads
//! ([`speculative`]), and self-distillation data, a model's own answers ([`distill`]).

pub mod distill;
pub mod draft_tree;
pub mod generate;
pub mod kv_cache;
pub mod speculative;
