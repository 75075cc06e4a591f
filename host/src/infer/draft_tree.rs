//! Which drafts one self-speculative round verifies (Medusa's tree attention, Cai et al. 2024, §2.1.2):
//! the root y₁ is head 0's greedy token; a node at depth d is one of head d's top-k tokens, and a node's
//! children are drafts for the position after it. All nodes go through the trunk in one pass, each
//! attending to the cached past and to its own ancestors only (the tree mask), at position start +
//! depth. A chain ([`DraftTree::chain`]: every head's top token) verifies one continuation; a wider tree
//! verifies several at the price of more positions in the pass, which on a GPU at batch 1 costs about
//! what one position does (the pass is bound by kernel launches, not arithmetic).
//!
//! Nodes are ordered root first, then the chain of every head's top token, then the rest by depth:
//! every ancestor comes before its descendants (so a prefix of the nodes is a tree too), and when the
//! accepted path is the top chain the caches are already in order (nothing to move).

use anyhow::{bail, Context, Result};

/// The verification tree of one round (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct DraftTree {
    /// Each node's path of ranks from the root: [] for the root, [r₁, …, r_d] for the node that takes
    /// head 1's r₁-th token, then head 2's r₂-th, …, head d's r_d-th (0 = the top token).
    paths: Vec<Vec<usize>>,
    /// Each node's parent (the root's is itself).
    parent: Vec<usize>,
}

/// What a round accepted: the nodes of the accepted path, root first.
pub type AcceptedPath = Vec<usize>;

impl DraftTree {
    /// The chain y₁, head 1's top token, …, head `extra_heads`' top token: one continuation verified.
    pub fn chain(extra_heads: usize) -> Self {
        Self::from_paths((1..=extra_heads).map(|d| vec![0; d]).collect())
            .expect("a chain is a valid tree")
    }

    /// The wide tree for `extra_heads` extra heads (21 nodes with 3; the best of the trees measured in
    /// bench/results/speculative-tree-h100-2026-12-06.md): head 1's top 4; head 2's top 3 after head
    /// 1's first, top 2 after its second, top 1 after its third and fourth; head 3's top token after
    /// the seven likeliest pairs, and its second and third after the top chain. Deeper heads continue
    /// the top chain.
    pub fn wide(extra_heads: usize) -> Self {
        let wide: [&[usize]; 20] = [
            &[0],
            &[1],
            &[2],
            &[3],
            &[0, 0],
            &[0, 1],
            &[0, 2],
            &[1, 0],
            &[1, 1],
            &[2, 0],
            &[3, 0],
            &[0, 0, 0],
            &[0, 1, 0],
            &[1, 0, 0],
            &[0, 0, 1],
            &[0, 2, 0],
            &[2, 0, 0],
            &[1, 1, 0],
            &[0, 0, 2],
            &[3, 0, 0],
        ];
        let mut paths: Vec<Vec<usize>> = wide
            .iter()
            .filter(|p| p.len() <= extra_heads)
            .map(|p| p.to_vec())
            .collect();
        paths.extend((4..=extra_heads).map(|d| vec![0; d]));
        Self::from_paths(paths).expect("the wide tree is valid")
    }

    /// `chain`, `wide`, or the nodes as rank paths separated by `;`, ranks by `,` (e.g.
    /// `0;1;0,0;1,0;0,0,0`); the root is implied. Checks every path against `extra_heads`.
    pub fn parse(spec: &str, extra_heads: usize) -> Result<Self> {
        let tree = match spec.trim() {
            "chain" => Self::chain(extra_heads),
            "wide" => Self::wide(extra_heads),
            s => {
                let paths = s
                    .split(';')
                    .filter(|p| !p.trim().is_empty())
                    .map(|p| {
                        p.split(',')
                            .map(|r| r.trim().parse::<usize>())
                            .collect::<std::result::Result<Vec<_>, _>>()
                            .with_context(|| {
                                format!("draft tree node {p:?}: ranks are numbers such as 0,1")
                            })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Self::from_paths(paths)?
            }
        };
        if tree.depth() > extra_heads {
            bail!(
                "draft tree {spec:?} is {} deep, but the model has {extra_heads} extra heads",
                tree.depth()
            );
        }
        Ok(tree)
    }

    /// A tree of the given non-root nodes (rank paths); each node's parent path must be among them.
    fn from_paths(mut paths: Vec<Vec<usize>>) -> Result<Self> {
        paths.sort_by_key(|p| (p.len(), p.clone()));
        paths.dedup();
        // root, the top chain by depth, then the rest by depth
        let (chain, rest): (Vec<_>, Vec<_>) =
            paths.into_iter().partition(|p| p.iter().all(|&r| r == 0));
        let ordered: Vec<Vec<usize>> = std::iter::once(Vec::new())
            .chain(chain)
            .chain(rest)
            .collect();
        let mut parent = Vec::with_capacity(ordered.len());
        for (i, p) in ordered.iter().enumerate() {
            if p.is_empty() {
                parent.push(i);
                continue;
            }
            let up = &p[..p.len() - 1];
            match ordered[..i].iter().position(|q| q.as_slice() == up) {
                Some(j) => parent.push(j),
                None => bail!("draft tree node {p:?} has no parent {up:?} in the tree"),
            }
        }
        Ok(DraftTree {
            paths: ordered,
            parent,
        })
    }

    /// The index of the node with these ranks ([] for the root), if the tree has it.
    pub fn node(&self, ranks: &[usize]) -> Option<usize> {
        self.paths.iter().position(|p| p.as_slice() == ranks)
    }

    /// Nodes, the root included.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Never: the root is always there.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// The deepest node's depth (0 for the root alone): the extra heads the tree uses.
    pub fn depth(&self) -> usize {
        self.paths.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// How many top tokens of each extra head the tree takes (1 for a chain).
    pub fn top_k(&self) -> usize {
        self.paths.iter().flatten().max().map_or(1, |&r| r + 1)
    }

    /// The tree cut to nodes at most `depth` deep and then to its first `nodes` nodes (the root always
    /// stays): what fits in the room left in the sequence and in the tokens still to generate.
    pub fn limited(&self, depth: usize, nodes: usize) -> Self {
        let keep: Vec<usize> = (0..self.len())
            .filter(|&i| self.paths[i].len() <= depth)
            .take(nodes.max(1))
            .collect();
        let mut new_index = vec![usize::MAX; self.len()];
        for (n, &i) in keep.iter().enumerate() {
            new_index[i] = n;
        }
        DraftTree {
            paths: keep.iter().map(|&i| self.paths[i].clone()).collect(),
            parent: keep.iter().map(|&i| new_index[self.parent[i]]).collect(),
        }
    }

    /// Each node's position offset from the round's start: its depth.
    pub fn depths(&self) -> Vec<usize> {
        self.paths.iter().map(Vec::len).collect()
    }

    /// For each node, where its token sits in the flat vector [y₁, head 1's top k, head 2's top k, …]
    /// (`k` = [`DraftTree::top_k`]).
    pub fn token_sources(&self) -> Vec<u32> {
        let k = self.top_k();
        self.paths
            .iter()
            .map(|p| match p.last() {
                None => 0,
                Some(&r) => (1 + (p.len() - 1) * k + r) as u32,
            })
            .collect()
    }

    /// The additive attention mask [n, start + n] (row-major) of the nodes at positions start..: every
    /// node sees the `start` cached positions, itself and its ancestors (0), no other node (−∞).
    pub fn mask(&self, start: usize) -> Vec<f32> {
        let n = self.len();
        let mut m = vec![f32::NEG_INFINITY; n * (start + n)];
        for i in 0..n {
            let row = &mut m[i * (start + n)..(i + 1) * (start + n)];
            row[..start].fill(0.0);
            let mut j = i;
            loop {
                row[start + j] = 0.0;
                if self.parent[j] == j {
                    break;
                }
                j = self.parent[j];
            }
        }
        m
    }

    /// The accepted path given each node's token and head 0's greedy token after each node: the root,
    /// then while the last accepted node has a child whose token is head 0's choice after it, that
    /// child. Counts, per depth d ≥ 1 (index d − 1), the rounds that checked a draft at d
    /// (`checked`) and those that accepted one (`accepted`).
    pub fn accept(
        &self,
        tokens: &[u32],
        greedy: &[u32],
        checked: &mut [u64],
        accepted: &mut [u64],
    ) -> AcceptedPath {
        let mut path = vec![0];
        let mut at = 0;
        loop {
            let mut children = (0..self.len()).filter(|&c| c != at && self.parent[c] == at);
            let Some(first) = children.next() else { break };
            let d = self.paths[first].len() - 1;
            checked[d] += 1;
            let want = greedy[at];
            let hit = std::iter::once(first)
                .chain(children)
                .find(|&c| tokens[c] == want);
            match hit {
                Some(c) => {
                    accepted[d] += 1;
                    path.push(c);
                    at = c;
                }
                None => break,
            }
        }
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_is_the_top_token_of_each_head_in_order() {
        let t = DraftTree::chain(3);
        assert_eq!(t.len(), 4);
        assert_eq!((t.depth(), t.top_k()), (3, 1));
        assert_eq!(t.depths(), vec![0, 1, 2, 3]);
        assert_eq!(t.token_sources(), vec![0, 1, 2, 3]);
        // a chain's mask is the causal mask
        let m = t.mask(1);
        let causal: Vec<f32> = (0..4)
            .flat_map(|i| (0..5).map(move |k| if k <= i + 1 { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        assert_eq!(m, causal);
    }

    #[test]
    fn the_wide_tree_puts_the_top_chain_first_and_ancestors_before_descendants() {
        let t = DraftTree::wide(3);
        assert_eq!(t.len(), 21);
        assert_eq!(t.paths[..4], [vec![], vec![0], vec![0, 0], vec![0, 0, 0]]);
        for i in 1..t.len() {
            assert!(t.parent[i] < i, "node {i}");
            assert_eq!(t.paths[t.parent[i]], t.paths[i][..t.paths[i].len() - 1]);
        }
        assert_eq!(t.top_k(), 4);
        // head 2's second token after head 1's first: 1 + (2 − 1)·4 + 1
        let i = t.paths.iter().position(|p| p == &[0, 1]).unwrap();
        assert_eq!(t.token_sources()[i], 6);
        assert_eq!(DraftTree::wide(1).len(), 5);
        assert_eq!(DraftTree::wide(5).depth(), 5);
    }

    #[test]
    fn a_node_sees_the_past_itself_and_its_ancestors_only() {
        let t = DraftTree::parse("0;1;1,0", 2).unwrap();
        // order: root, [0], then [1], [1,0]
        let m = t.mask(2);
        let row =
            |i: usize| -> Vec<bool> { m[i * 6..(i + 1) * 6].iter().map(|v| *v == 0.0).collect() };
        assert_eq!(row(0), [true, true, true, false, false, false]);
        assert_eq!(row(1), [true, true, true, true, false, false]);
        assert_eq!(row(2), [true, true, true, false, true, false]);
        assert_eq!(row(3), [true, true, true, false, true, true]);
    }

    #[test]
    fn acceptance_follows_the_child_that_head_zero_agrees_with() {
        let t = DraftTree::parse("0;1;0,0;1,0", 2).unwrap();
        // nodes: root 10, [0] 20, [0,0] 30, [1] 21, [1,0] 31
        let tokens = [10, 20, 30, 21, 31];
        let (mut c, mut a) = (vec![0; 2], vec![0; 2]);
        // head 0 after the root says 21 (the second draft), after [1] says 31
        let path = t.accept(&tokens, &[21, 0, 0, 31, 7], &mut c, &mut a);
        assert_eq!(path, vec![0, 3, 4]);
        assert_eq!((c.clone(), a.clone()), (vec![1, 1], vec![1, 1]));
        // nothing agrees: the root alone
        let path = t.accept(&tokens, &[99, 0, 0, 0, 0], &mut c, &mut a);
        assert_eq!(path, vec![0]);
        assert_eq!((c, a), (vec![2, 1], vec![1, 1]));
    }

    #[test]
    fn a_limited_tree_keeps_a_tree() {
        let t = DraftTree::wide(3);
        let l = t.limited(1, 100);
        assert_eq!(l.depths(), vec![0, 1, 1, 1, 1]);
        assert!(l.parent.iter().all(|&p| p == 0));
        let l = t.limited(3, 2);
        assert_eq!(l.len(), 2);
        assert_eq!(t.limited(3, 0).len(), 1);
    }

    #[test]
    fn bad_trees_are_refused_with_the_node_named() {
        let e = DraftTree::parse("0;1,0", 3).unwrap_err().to_string();
        assert!(e.contains("[1, 0]") && e.contains("no parent"), "{e}");
        let e = DraftTree::parse("0;x", 3).unwrap_err().to_string();
        assert!(e.contains("\"x\""), "{e}");
        let e = DraftTree::parse("0;0,0", 1).unwrap_err().to_string();
        assert!(e.contains("1 extra heads"), "{e}");
    }
}
