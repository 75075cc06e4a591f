//! Flat sharding of a unit's parameters over W ranks (FSDP FULL_SHARD): the unit's tensors are flattened
//! and concatenated, padded with zeros to a multiple of W, and rank r holds elements
//! [r·n/W, (r+1)·n/W) of the padded vector. All-gather rebuilds the vector; the unpadded prefix splits
//! back into the tensors.

use candle_core::{bail, DType, Result, Tensor};

/// Where each tensor of a unit sits in its flat vector, and the padding.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatLayout {
    /// (shape, offset) of each tensor, in order.
    pub parts: Vec<(Vec<usize>, usize)>,
    /// Elements of all tensors together.
    pub numel: usize,
    /// `numel` rounded up to a multiple of the world size.
    pub padded: usize,
    /// Ranks.
    pub world: usize,
}

impl FlatLayout {
    /// The layout of `shapes` over `world` ranks.
    pub fn new(shapes: &[Vec<usize>], world: usize) -> Self {
        let world = world.max(1);
        let mut parts = Vec::with_capacity(shapes.len());
        let mut off = 0;
        for s in shapes {
            parts.push((s.clone(), off));
            off += s.iter().product::<usize>();
        }
        FlatLayout {
            parts,
            numel: off,
            padded: off.div_ceil(world) * world,
            world,
        }
    }

    /// Elements per rank.
    pub fn shard_len(&self) -> usize {
        self.padded / self.world
    }

    /// Errors unless `tensors` match the layout's parts in number and shape.
    fn check(&self, what: &str, tensors: &[Tensor]) -> Result<()> {
        if tensors.len() != self.parts.len() {
            bail!(
                "{what}: {} tensors for a layout of {}",
                tensors.len(),
                self.parts.len()
            );
        }
        for (t, (shape, _)) in tensors.iter().zip(&self.parts) {
            if t.dims() != shape.as_slice() {
                bail!(
                    "{what}: a tensor of {:?} where the layout has {shape:?}",
                    t.dims()
                );
            }
        }
        if tensors.is_empty() {
            bail!("{what}: an empty layout");
        }
        Ok(())
    }

    /// `tensors` (laid out as `self`) flattened, concatenated and zero-padded: [`FlatLayout::padded`]
    /// elements.
    pub fn flatten(&self, tensors: &[Tensor]) -> Result<Tensor> {
        self.check("flatten", tensors)?;
        let first = &tensors[0];
        let mut flat: Vec<Tensor> = tensors
            .iter()
            .map(|t| t.flatten_all())
            .collect::<Result<_>>()?;
        if self.padded > self.numel {
            flat.push(Tensor::zeros(
                self.padded - self.numel,
                first.dtype(),
                first.device(),
            )?);
        }
        Tensor::cat(&flat, 0)
    }

    /// Indices of the parts that overlap rank `rank`'s slice [r·n/W, (r+1)·n/W): the only tensors its
    /// shard reads (FSDP start-up draws just these for a random model, see `model::init`).
    pub fn parts_in_shard(&self, rank: usize) -> Vec<usize> {
        let (lo, hi) = (rank * self.shard_len(), (rank + 1) * self.shard_len());
        self.parts
            .iter()
            .enumerate()
            .filter(|(_, (shape, off))| *off < hi && off + shape.iter().product::<usize>() > lo)
            .map(|(i, _)| i)
            .collect()
    }

    /// Rank `rank`'s shard of `tensors` (laid out as `self`) as a 1-D tensor of
    /// [`FlatLayout::shard_len`] in storage of its own (a view of the flattened whole would keep the
    /// whole alive: candle's `copy` and uploads copy a view's entire storage).
    pub fn shard(&self, tensors: &[Tensor], rank: usize) -> Result<Tensor> {
        match tensors.first() {
            Some(t) => self.shard_as(tensors, rank, t.dtype()),
            None => bail!("shard: an empty layout"),
        }
    }

    /// [`FlatLayout::shard`] in `dtype`. Only the pieces of the tensors that fall in the slice are read
    /// and converted ([`FlatLayout::parts_in_shard`]): the other tensors are never touched, so a rank's
    /// start-up costs its 1/W of the unit, not the whole unit.
    pub fn shard_as(&self, tensors: &[Tensor], rank: usize, dtype: DType) -> Result<Tensor> {
        self.check("shard", tensors)?;
        if rank >= self.world {
            bail!("shard: rank {rank} of a layout over {}", self.world);
        }
        let (lo, hi) = (rank * self.shard_len(), (rank + 1) * self.shard_len());
        let mut pieces = Vec::new();
        for i in self.parts_in_shard(rank) {
            let (shape, off) = &self.parts[i];
            let n: usize = shape.iter().product();
            let (a, b) = (lo.max(*off), hi.min(off + n));
            pieces.push(
                tensors[i]
                    .flatten_all()?
                    .narrow(0, a - off, b - a)?
                    .to_dtype(dtype)?,
            );
        }
        if hi > self.numel {
            let pad = hi - lo.max(self.numel);
            pieces.push(Tensor::zeros(pad, dtype, tensors[0].device())?);
        }
        Tensor::cat(&pieces, 0)?.force_contiguous()
    }

    /// The tensors back from the gathered flat vector (length `padded`).
    pub fn unflatten(&self, flat: &Tensor) -> Result<Vec<Tensor>> {
        if flat.dims() != [self.padded] {
            bail!(
                "unflatten: expected [{}], got {:?}",
                self.padded,
                flat.dims()
            );
        }
        self.parts
            .iter()
            .map(|(shape, off)| {
                flat.narrow(0, *off, shape.iter().product())?
                    .reshape(shape.as_slice())
            })
            .collect()
    }
}

/// How the flat vectors of a per-rank checkpoint split into tensors: enough to read the files back on
/// any world size (`shards/index.json`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShardIndex {
    /// Slices each flat vector was cut into: one file per slice (`rank-00000.safetensors`, …).
    pub slices: usize,
    /// The trainable buckets.
    pub buckets: Vec<BucketEntry>,
}

/// One trainable bucket of a [`ShardIndex`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BucketEntry {
    /// Its key (`fsdp.<unit>.<group>.<decay|no_decay>`).
    pub key: String,
    /// The tensors flattened into it, in order.
    pub names: Vec<String>,
    /// Their shapes.
    pub shapes: Vec<Vec<usize>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn shards_gather_back_to_the_tensors_for_any_world_size() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 6.0, &dev)?.reshape((2, 3))?;
        let b = Tensor::arange(100f32, 105.0, &dev)?;
        for world in 1..=4 {
            let l = FlatLayout::new(&[vec![2, 3], vec![5]], world);
            assert_eq!(l.numel, 11);
            assert_eq!(l.padded % world, 0);
            assert!(l.padded - l.numel < world);
            let shards: Vec<Tensor> = (0..world)
                .map(|r| l.shard(&[a.clone(), b.clone()], r))
                .collect::<Result<_>>()?;
            let back = l.unflatten(&Tensor::cat(&shards, 0)?)?;
            assert_eq!(back[0].to_vec2::<f32>()?, a.to_vec2::<f32>()?);
            assert_eq!(back[1].to_vec1::<f32>()?, b.to_vec1::<f32>()?);
        }
        Ok(())
    }

    #[test]
    fn a_shard_reads_only_the_parts_in_its_slice_and_equals_the_flat_cut() -> Result<()> {
        let dev = Device::Cpu;
        let shapes = [vec![3, 5], vec![7], vec![2, 2], vec![9]];
        let ts: Vec<Tensor> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let n = s.iter().product::<usize>();
                let base = 100.0 * i as f32;
                Tensor::arange(base, base + n as f32, &dev)?.reshape(s.as_slice())
            })
            .collect::<Result<_>>()?;
        for world in 1..=7 {
            let l = FlatLayout::new(&shapes, world);
            let flat = l.flatten(&ts)?;
            for r in 0..world {
                let want = flat.narrow(0, r * l.shard_len(), l.shard_len())?;
                let got = l.shard_as(&ts, r, candle_core::DType::F64)?;
                assert_eq!(got.dtype(), candle_core::DType::F64);
                assert_eq!(
                    got.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?,
                    want.to_vec1::<f32>()?
                );
                // the parts it reads are exactly those whose elements fall in [r·L, (r+1)·L)
                let (lo, hi) = (r * l.shard_len(), (r + 1) * l.shard_len());
                let reads: Vec<usize> = (0..ts.len())
                    .filter(|&i| {
                        let (s, off) = &l.parts[i];
                        (*off..off + s.iter().product::<usize>()).any(|e| lo <= e && e < hi)
                    })
                    .collect();
                assert_eq!(l.parts_in_shard(r), reads, "world {world} rank {r}");
            }
        }
        Ok(())
    }

    /// Elements in the storage behind a CPU f32 tensor (not its view).
    fn storage_len(t: &Tensor) -> usize {
        let (s, _) = t.storage_and_layout();
        match &*s {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => v.len(),
            _ => panic!("a CPU f32 tensor was expected"),
        }
    }

    #[test]
    fn a_shard_owns_only_its_own_elements() -> Result<()> {
        // a view of the flattened unit would keep all of it (and copies of a view copy all of it)
        let w = Tensor::zeros((64, 64), candle_core::DType::F32, &Device::Cpu)?;
        let l = FlatLayout::new(&[vec![64, 64]], 4);
        let s = l.shard(std::slice::from_ref(&w), 1)?;
        assert_eq!(s.elem_count(), 1024);
        assert_eq!(storage_len(&s), 1024);
        assert_eq!(storage_len(&s.copy()?), 1024);
        Ok(())
    }
}
