//! Model file formats, each read and written in one place, above the network they describe: Meta
//! checkpoints ([`meta`]: `params.json` + safetensors or `.pth`), GGUF ([`gguf`]), Hugging Face LLaMA
//! folders ([`hf`] reads, [`hf_export`] writes, with the ONE HF↔Meta parameter-name table,
//! [`hf_names`]), PEFT LoRA adapters and wmtp's full checkpoints ([`adapter`]); [`load`] turns any model
//! source (a preset, a folder, a file) into a [`crate::model::Transformer`], widening next-token models to
//! H heads. Readers of untrusted files run under [`guarded`] (a panic in a parser becomes an error naming
//! the file).

pub mod adapter;
pub mod checkpoint;
pub mod checkpoint_layout;
pub mod gguf;
pub mod guarded;
pub mod hf;
pub mod hf_export;
pub mod hf_layout;
pub mod hf_names;
pub mod load;
pub mod meta;
