//! Self-speculative greedy decoding with the MTP heads (Gloeckle et al. 2024, §3.2; blockwise parallel
//! decoding, Stern et al. 2018; tree verification as in Medusa, Cai et al. 2024): from the trunk's
//! output at the last accepted position, head 0 gives the next token y₁ (greedy, certain) and heads
//! 1..H−1 draft the tokens after it — the top token each (a chain), or the top few, arranged as a
//! [`DraftTree`]. One forward pass over the tree's nodes (trunk and head 0, KV-cached, each node seeing
//! the past and its own ancestors) verifies them: head 0 at a node gives the greedy token after it, and
//! a child is accepted when its token is that one. The accepted path y₁..y_m is kept (the caches cut
//! back to it, its entries moved into place when it left the top chain), and head 0's token after y_m
//! with the heads' drafts at y_m's position start the next round. Every token emitted is head 0's
//! greedy choice given the tokens before it, so the output is plain greedy decoding's; a round costs
//! one pass of the trunk and head 0 over the tree's nodes (on a GPU at batch 1 about the price of one
//! position) and the extra heads over the accepted ones, and emits 1..H tokens.

use super::draft_tree::DraftTree;
use super::generate::GenerateOptions;
use super::kv_cache::{block_cached, positions, BlockCache, Decoder};
use crate::model::rope::Rope;
use crate::model::{ForwardCtx, Transformer};
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

/// Acceptance counts of a speculative generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpeculativeStats {
    /// Forward passes after the prompt's (verification rounds).
    pub rounds: u64,
    /// Tokens emitted.
    pub tokens: u64,
    /// Per head k = 1..H−1 (index k − 1): drafts checked (all drafts before it accepted) and accepted.
    pub checked: Vec<u64>,
    /// See `checked`.
    pub accepted: Vec<u64>,
    /// Rounds whose accepted path left the top chain (a draft other than a head's top token was
    /// accepted: what a wider [`DraftTree`] is for).
    pub off_chain: u64,
}

impl SpeculativeStats {
    /// accepted / checked of head k ≥ 1 (`None` when it never drafted a checked token).
    pub fn acceptance(&self, k: usize) -> Option<f64> {
        let c = *self.checked.get(k.checked_sub(1)?)?;
        (c > 0).then(|| self.accepted[k - 1] as f64 / c as f64)
    }

    /// Tokens per forward pass (1 when no draft is ever accepted).
    pub fn tokens_per_round(&self) -> f64 {
        self.tokens as f64 / self.rounds.max(1) as f64
    }
}

/// A decoding session of one sequence: the KV-cached decoder of the trunk and head 0 ([`Decoder`]),
/// which runs on every verified position (rejected ones are cut off after), and caches for the extra
/// heads, which run only on accepted positions, their vocabulary projection only at the last.
///
/// Token ids stay on the model's device between rounds: a round gathers the tree's nodes [1, n] from
/// y₁ and the heads' top tokens there, takes head 0's greedy tokens there (argmax on the device), and
/// the extra heads' drafts for the next round are picked there too. The host reads one small vector
/// per round — the nodes it fed and head 0's verdicts, 2n ids — to find the accepted path, emit it
/// and cut the caches back (the caches are device buffers; a cut only moves their length, and a path
/// off the top chain moves its few entries into place).
struct HeadsDecoder<'a> {
    dec: Decoder<'a>,
    extra: Vec<BlockCache>,
    ctx: ForwardCtx,
    /// For top-k drafts (k > 1): the column indices [1, V] u32 and a −∞ fill [H−1, V] f32, made once.
    top_k_scratch: Option<(Tensor, Tensor)>,
}

impl<'a> HeadsDecoder<'a> {
    fn new(model: &'a Transformer) -> Self {
        HeadsDecoder {
            dec: Decoder::new(model),
            extra: vec![BlockCache::default(); model.extra_heads.len()],
            ctx: ForwardCtx::eval(),
            top_k_scratch: None,
        }
    }

    /// Runs a round's tree nodes `ids` [1, n] (on the device) through the trunk and head 0 at
    /// positions `start` + depth under the tree's mask; returns the trunk's output [1, n, D] and head
    /// 0's greedy token after each node, [n] u32 on the device.
    fn feed(&mut self, ids: &Tensor, tree: &DraftTree, start: usize) -> Result<(Tensor, Tensor)> {
        let m = self.dec.model();
        let dev = m.device();
        let at: Vec<usize> = tree.depths().iter().map(|d| start + d).collect();
        let rope = Rope::at(m.args.head_dim(), m.args.rope_theta, &at, dev)?;
        let n = tree.len();
        let mask = Tensor::from_vec(tree.mask(start), (n, start + n), dev)?;
        let (x, z) = self.dec.feed_tree(ids, &rope, &mask)?;
        let logits = m.logits(&z, &self.ctx)?;
        let greedy = logits.squeeze(0)?.to_dtype(DType::F32)?.argmax(1)?;
        Ok((x, greedy))
    }

    /// Runs the prompt `ids` [1, T] through the trunk and head 0; returns the trunk's output [1, T, D]
    /// and head 0's greedy token after the prompt, [1] u32 on the device (the vocabulary projection
    /// runs at the last position only).
    fn prefill(&mut self, ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let (x, z) = self.dec.feed_ids(ids)?;
        let t = z.dim(1)?;
        let last = z.narrow(1, t - 1, 1)?.contiguous()?;
        let logits = self.dec.model().logits(&last, &self.ctx)?.flatten_all()?;
        Ok((x, logits.to_dtype(DType::F32)?.argmax_keepdim(0)?))
    }

    /// Runs the extra heads over the trunk outputs `x` [1, n, D] of positions start.. (the accepted
    /// ones: their caches never hold a rejected position); returns each extra head's `k` likeliest
    /// tokens at the last of them, best first — the next round's drafts, [H−1, k] u32 on the device.
    fn draft(&mut self, x: &Tensor, start: usize, k: usize) -> Result<Tensor> {
        let m = self.dec.model();
        let n = x.dim(1)?;
        let (rope, mask) = positions(m, start, n)?;
        let mut last = Vec::with_capacity(self.extra.len());
        for (head, cache) in m.extra_heads.iter().zip(self.extra.iter_mut()) {
            let z = block_cached(head, x, &rope, &mask, cache, &self.ctx)?;
            last.push(z.narrow(1, n - 1, 1)?);
        }
        // one vocabulary projection for all heads' last states: [H−1, 1, D] → [H−1, 1, V]
        let logits = m.logits(&Tensor::cat(&last, 0)?.contiguous()?, &self.ctx)?;
        let logits = logits.squeeze(1)?.to_dtype(DType::F32)?;
        if k == 1 {
            return Ok(logits.argmax_keepdim(1)?);
        }
        self.top_k(logits, k)
    }

    /// The `k` largest columns of each row of `logits` [R, V], best first ([R, k] u32): k argmaxes,
    /// each after the previous winners are set to −∞ (on the device; k is small).
    fn top_k(&mut self, mut logits: Tensor, k: usize) -> Result<Tensor> {
        let (rows, v) = logits.dims2()?;
        let dev = logits.device().clone();
        let (cols, fill) = match &self.top_k_scratch {
            Some(s) if s.1.dims2()? == (rows, v) => s.clone(),
            _ => {
                let s = (
                    Tensor::arange(0u32, v as u32, &dev)?.unsqueeze(0)?,
                    Tensor::full(f32::NEG_INFINITY, (rows, v), &dev)?,
                );
                self.top_k_scratch = Some(s.clone());
                s
            }
        };
        let mut picks = Vec::with_capacity(k);
        for i in 0..k {
            let best = logits.argmax_keepdim(1)?;
            if i + 1 < k {
                let hit = cols.broadcast_eq(&best)?;
                logits = hit.where_cond(&fill, &logits)?;
            }
            picks.push(best);
        }
        Ok(Tensor::cat(&picks, 1)?)
    }
}

/// [`super::generate::generate`]'s greedy decoding done self-speculatively with the MTP heads (see the
/// module doc), verifying the drafts of `tree` each round ([`DraftTree::chain`]: one continuation;
/// [`DraftTree::wide`]: several): the same tokens, fewer forward passes when the heads' drafts are
/// right. Greedy only (`opts.sampling.temperature` must be 0); stop conditions as `generate`'s.
/// Returns the new tokens of each prompt and the acceptance counts over all of them.
pub fn generate_speculative(
    model: &Transformer,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    tree: &DraftTree,
    stop: &mut dyn FnMut(usize, &[u32]) -> bool,
) -> Result<(Vec<Vec<u32>>, SpeculativeStats)> {
    if opts.sampling.temperature > 0.0 {
        bail!("speculative decoding is greedy: use temperature 0");
    }
    let extra = model.extra_heads.len();
    if tree.depth() > extra {
        bail!(
            "the draft tree is {} deep, but the model has {extra} extra heads",
            tree.depth()
        );
    }
    let mut stats = SpeculativeStats {
        checked: vec![0; extra],
        accepted: vec![0; extra],
        ..Default::default()
    };
    let mut out = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        if prompt.is_empty() {
            bail!("prompt {i} is empty");
        }
        out.push(decode_one(
            model,
            prompt,
            opts,
            tree,
            &mut stats,
            &mut |new| stop(i, new),
        )?);
    }
    Ok((out, stats))
}

/// One prompt's speculative decoding (see [`generate_speculative`]); one device-to-host read per round.
fn decode_one(
    model: &Transformer,
    prompt: &[u32],
    opts: &GenerateOptions,
    tree: &DraftTree,
    stats: &mut SpeculativeStats,
    stop: &mut dyn FnMut(&[u32]) -> bool,
) -> Result<Vec<u32>> {
    let dev = model.device();
    let mut dec = HeadsDecoder::new(model);
    let ids = Tensor::new(prompt, dev)?.unsqueeze(0)?;
    let (x, mut y1) = dec.prefill(&ids)?;
    let k = tree.top_k();
    let drafting = tree.len() > 1;
    // the drafts after y₁ (heads 1.., at the prompt's last position)
    let mut top = if drafting {
        Some(dec.draft(&x, 0, k)?)
    } else {
        None
    };
    let sources = Tensor::new(tree.token_sources().as_slice(), dev)?;
    let mut new: Vec<u32> = Vec::new();
    while new.len() < opts.max_new {
        let start = dec.dec.len();
        let room = model.args.max_seq_len - start;
        if room == 0 {
            // no position left to verify in: y₁ is still head 0's greedy token, as plain decoding's last
            new.push(y1.to_vec1::<u32>()?[0]);
            stats.tokens += 1;
            break;
        }
        // at most the tokens still wanted (a node at depth d is the (d + 1)-th) and the room left:
        // the whole tree but near the end
        let (depth, nodes) = (opts.max_new - new.len() - 1, room);
        let cut;
        let (round, src) = if tree.depth() <= depth && tree.len() <= nodes {
            (tree, sources.clone())
        } else {
            cut = tree.limited(depth, nodes);
            (&cut, Tensor::new(cut.token_sources().as_slice(), dev)?)
        };
        let tokens = match &top {
            Some(top) if round.len() > 1 => {
                Tensor::cat(&[&y1, &top.flatten_all()?], 0)?.index_select(&src, 0)?
            }
            _ => y1.clone(),
        };
        let n = round.len();
        let (x, greedy) = dec.feed(&tokens.unsqueeze(0)?, round, start)?;
        stats.rounds += 1;
        // the round's one read: the nodes fed and head 0's greedy token after each
        let both = Tensor::cat(&[&tokens, &greedy], 0)?.to_vec1::<u32>()?;
        let (fed, verdict) = both.split_at(n);
        let path = round.accept(fed, verdict, &mut stats.checked, &mut stats.accepted);
        for &node in &path {
            new.push(fed[node]);
            stats.tokens += 1;
            if Some(fed[node]) == opts.eos || stop(&new) || new.len() == opts.max_new {
                return Ok(new);
            }
        }
        let x_path = keep_accepted(&mut dec, &x, &path, start, stats)?;
        y1 = greedy.narrow(0, path[path.len() - 1], 1)?;
        if new.len() + 1 < opts.max_new && drafting {
            top = Some(dec.draft(&x_path, start, k)?);
        }
    }
    Ok(new)
}

/// Keeps the accepted `path` (node indices of the round fed at position `start`) in the decoder's cache
/// and returns its hidden states `x` [1, path, D]: nodes already in place (the top chain's prefix) stay,
/// the rest move down to follow them.
fn keep_accepted(
    dec: &mut HeadsDecoder<'_>,
    x: &Tensor,
    path: &[usize],
    start: usize,
    stats: &mut SpeculativeStats,
) -> Result<Tensor> {
    let dev = x.device();
    let m = path.len();
    let j0 = path.iter().enumerate().take_while(|(j, p)| j == *p).count();
    stats.off_chain += u64::from(j0 < m);
    if j0 == m {
        dec.dec.truncate(start + m)?;
        return Ok(x.narrow(1, 0, m)?);
    }
    let at: Vec<u32> = path[j0..].iter().map(|&p| (start + p) as u32).collect();
    dec.dec
        .keep_path(start, j0, &Tensor::new(at.as_slice(), dev)?)?;
    let nodes: Vec<u32> = path.iter().map(|&p| p as u32).collect();
    Ok(x.index_select(&Tensor::new(nodes.as_slice(), dev)?, 1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::generate::{generate, Sampling};
    use crate::model::ModelArgs;
    use candle_core::Device;

    fn opts(max_new: usize) -> GenerateOptions {
        GenerateOptions {
            max_new,
            eos: None,
            sampling: Sampling::default(),
            batch: 1,
        }
    }

    /// The tiny preset with 4 heads (3 extra heads: trees 3 deep).
    fn four_heads() -> ModelArgs {
        let mut args = ModelArgs::preset("tiny").expect("tiny preset");
        args.n_future_tokens = 4;
        args
    }

    fn trees(m: &Transformer) -> [DraftTree; 2] {
        let extra = m.extra_heads.len();
        [DraftTree::chain(extra), DraftTree::wide(extra)]
    }

    #[test]
    fn speculative_greedy_decoding_gives_plain_greedy_decodings_tokens() -> Result<()> {
        let m = Transformer::random(four_heads(), 3, DType::F32, &Device::Cpu)?;
        let prompts = vec![vec![5u32], vec![1, 2, 3, 4, 5, 6, 7], (0..40).collect()];
        for tree in trees(&m) {
            for max_new in [1, 7, 30] {
                let plain = generate(&m, &prompts, &opts(max_new), &mut |_, _| false)?;
                let (spec, stats) =
                    generate_speculative(&m, &prompts, &opts(max_new), &tree, &mut |_, _| false)?;
                assert_eq!(spec, plain, "max_new {max_new}, {} nodes", tree.len());
                assert_eq!(
                    stats.tokens as usize,
                    spec.iter().map(Vec::len).sum::<usize>()
                );
                assert!(stats.rounds <= stats.tokens);
                for k in 1..m.args.n_future_tokens {
                    assert!(stats.accepted[k - 1] <= stats.checked[k - 1]);
                }
            }
        }
        Ok(())
    }

    #[test]
    fn heads_that_copy_head_zero_get_their_drafts_accepted_on_a_repeated_token() -> Result<()> {
        // extra heads identical to head 0 draft the same token again: accepted exactly when head 0
        // repeats itself, as a model stuck on one token does
        let mut m = Transformer::random(four_heads(), 3, DType::F32, &Device::Cpu)?;
        let head0 = m.layers[m.layers.len() - 1].clone();
        for h in m.extra_heads.iter_mut() {
            *h = head0.clone();
        }
        let prompts = vec![vec![9u32, 9, 9, 9]];
        let plain = generate(&m, &prompts, &opts(24), &mut |_, _| false)?;
        let [chain, wide] = trees(&m);
        let (spec, stats) =
            generate_speculative(&m, &prompts, &opts(24), &chain, &mut |_, _| false)?;
        assert_eq!(spec, plain);
        let repeats = plain[0].windows(2).filter(|w| w[0] == w[1]).count() as u64;
        assert!(stats.accepted[0] <= repeats);
        let (spec, wide_stats) =
            generate_speculative(&m, &prompts, &opts(24), &wide, &mut |_, _| false)?;
        assert_eq!(spec, plain);
        // the wide tree verifies the chain's drafts among others
        assert!(wide_stats.accepted[0] >= stats.accepted[0]);
        Ok(())
    }

    #[test]
    fn paths_off_the_top_chain_still_give_plain_greedy_decodings_tokens() -> Result<()> {
        // a vocabulary of 5: head 1's top 3 hold the right token most of the time, so many rounds
        // accept a draft that is not a head's top token and move cache entries into place
        let mut args = four_heads();
        args.vocab_size = 5;
        let m = Transformer::random(args, 29, DType::F32, &Device::Cpu)?;
        let prompts = vec![vec![1u32, 4, 2], vec![3u32; 20]];
        let plain = generate(&m, &prompts, &opts(40), &mut |_, _| false)?;
        let [chain, wide] = trees(&m);
        let (spec, chain_stats) =
            generate_speculative(&m, &prompts, &opts(40), &chain, &mut |_, _| false)?;
        assert_eq!(spec, plain);
        let (spec, stats) =
            generate_speculative(&m, &prompts, &opts(40), &wide, &mut |_, _| false)?;
        assert_eq!(spec, plain);
        assert!(stats.off_chain > 0, "{stats:?}");
        assert!(
            stats.rounds < chain_stats.rounds,
            "{stats:?} {chain_stats:?}"
        );
        Ok(())
    }

    #[test]
    fn a_tree_pass_then_keeping_a_path_equals_feeding_that_path_alone() -> Result<()> {
        let m = Transformer::random(four_heads(), 3, DType::F32, &Device::Cpu)?;
        let tree = DraftTree::wide(m.extra_heads.len());
        let prompt = [1u32, 2, 3, 4, 5];
        let nodes: Vec<u32> = (0..tree.len() as u32).map(|i| 10 + 3 * i).collect();
        // off the top chain: root → head 1's second token → head 2's top token after it
        let path = [0, tree.node(&[1]).unwrap(), tree.node(&[1, 0]).unwrap()];
        assert!(path[1] != 1);

        let mut hd = HeadsDecoder::new(&m);
        hd.dec.feed(&prompt)?;
        let ids = Tensor::new(nodes.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let (_, greedy) = hd.feed(&ids, &tree, prompt.len())?;
        let greedy = greedy.to_vec1::<u32>()?;
        let moved: Vec<u32> = path[1..]
            .iter()
            .map(|&p| (prompt.len() + p) as u32)
            .collect();
        hd.dec.keep_path(
            prompt.len(),
            1,
            &Tensor::new(moved.as_slice(), &Device::Cpu)?,
        )?;
        let after_tree = hd.dec.feed(&[77])?.to_vec1::<f32>()?;

        let mut alone = Decoder::new(&m);
        alone.feed(&prompt)?;
        for &p in &path {
            let logits = alone.feed(&[nodes[p]])?;
            assert_eq!(logits.argmax(0)?.to_scalar::<u32>()?, greedy[p], "node {p}");
        }
        let after_path = alone.feed(&[77])?.to_vec1::<f32>()?;
        assert_eq!(hd.dec.len(), alone.len());
        let diff = after_tree
            .iter()
            .zip(&after_path)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "logits differ by {diff}");
        Ok(())
    }

    #[test]
    fn a_model_without_extra_heads_decodes_one_token_a_round() -> Result<()> {
        let mut args = ModelArgs::preset("tiny").expect("tiny preset");
        args.n_future_tokens = 1;
        let m = Transformer::random(args, 3, DType::F32, &Device::Cpu)?;
        let prompts = vec![vec![3u32, 1, 4, 1, 5]];
        let plain = generate(&m, &prompts, &opts(12), &mut |_, _| false)?;
        for tree in trees(&m) {
            let (spec, stats) =
                generate_speculative(&m, &prompts, &opts(12), &tree, &mut |_, _| false)?;
            assert_eq!(spec, plain);
            assert_eq!((stats.rounds, stats.tokens), (12, 12));
        }
        Ok(())
    }

    #[test]
    fn speculative_decoding_refuses_sampling_and_trees_deeper_than_its_heads() {
        let m = Transformer::random(four_heads(), 3, DType::F32, &Device::Cpu).unwrap();
        let chain = DraftTree::chain(m.extra_heads.len());
        let mut o = opts(4);
        o.sampling.temperature = 0.7;
        assert!(generate_speculative(&m, &[vec![1]], &o, &chain, &mut |_, _| false).is_err());
        let deep = DraftTree::chain(m.extra_heads.len() + 1);
        let e = generate_speculative(&m, &[vec![1]], &opts(4), &deep, &mut |_, _| false);
        assert!(e.unwrap_err().to_string().contains("extra heads"));
    }
}
