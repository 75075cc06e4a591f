//! Data: tokenizers (datasets, templates and batching come with training).

pub mod sentencepiece;
pub mod tokenizer;

pub use tokenizer::Tokenizer;
