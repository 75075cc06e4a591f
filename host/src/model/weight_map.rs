//! `WeightMap`: named tensors read from a checkpoint (in Meta key names), handed out one by one with
//! shape checks, so that a missing, extra or mis-shaped key is an error naming the file and the key.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeSet, HashMap};

/// Tensors by Meta key name, plus where they came from (for error messages).
#[derive(Debug)]
pub struct WeightMap {
    tensors: HashMap<String, Tensor>,
    source: String,
    dtype: DType,
    device: Device,
}

impl WeightMap {
    /// Wraps `tensors` read from `source`; `take` converts them to `dtype` on `device`.
    pub fn new(
        tensors: HashMap<String, Tensor>,
        source: impl Into<String>,
        dtype: DType,
        device: &Device,
    ) -> Self {
        WeightMap {
            tensors,
            source: source.into(),
            dtype,
            device: device.clone(),
        }
    }

    /// Where the tensors came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether a key is present.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Inserts or replaces a tensor (used for tied embeddings and head copies).
    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) {
        self.tensors.insert(name.into(), t);
    }

    /// Removes and returns `name`, checked against `shape`, in the run dtype and device.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let Some(t) = self.tensors.remove(name) else {
            bail!(
                "{}: missing tensor `{name}` (expected shape {shape:?})",
                self.source
            );
        };
        if t.dims() != shape {
            bail!(
                "{}: tensor `{name}` has shape {:?}, expected {shape:?}",
                self.source,
                t.dims()
            );
        }
        Ok(t.to_device(&self.device)?.to_dtype(self.dtype)?)
    }

    /// Errors if any tensor was not taken: unexpected keys mean a wrong model or wrong shape settings.
    pub fn finish(self) -> Result<()> {
        if self.tensors.is_empty() {
            return Ok(());
        }
        let keys: BTreeSet<_> = self.tensors.keys().collect();
        let shown: Vec<_> = keys.iter().take(8).collect();
        bail!(
            "{}: {} unexpected tensor(s) not used by the model: {shown:?}{}",
            self.source,
            keys.len(),
            if keys.len() > 8 { " …" } else { "" }
        )
    }
}
