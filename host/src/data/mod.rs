//! Data: tokenizers, JSONL datasets and the Alpaca template, sampling, pairing and batching.

pub mod batcher;
pub mod chat_template;
pub mod conversation;
pub mod dataset;
pub mod sentencepiece;
pub mod sp_model;
pub mod template;
pub mod tokenizer;

pub use batcher::MicroBatch;
pub use tokenizer::Tokenizer;
