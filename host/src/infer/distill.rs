//! Self-distillation data, as Medusa-2 trains its heads: the frozen model's own answers to a dataset's
//! instructions. Training the extra heads on them teaches the distribution head 0 actually produces (what
//! self-speculative decoding must draft), not the dataset authors'. One output row per distinct
//! (instruction, input), in first-seen order, with the first such row's `task_id`/`problem_id` (so the
//! validation split by problem stays the same) and `is_correct = true`; the `output` is the model's
//! continuation of the templated prompt, cut at EOS.

use crate::data::dataset::Row;
use crate::data::template::Template;
use crate::data::Tokenizer;
use crate::infer::generate::{generate_with_progress, GenerateOptions, Sampling};
use crate::model::Transformer;
use anyhow::{bail, Result};

/// How [`distill`] generates.
#[derive(Debug, Clone, Copy)]
pub struct DistillOptions {
    /// The prompt template (as training's `data.template`).
    pub template: Template,
    /// Most new tokens per answer.
    pub max_new: usize,
    /// Prompts decoded together.
    pub batch: usize,
    /// Greedy (temperature 0, the default) or sampled.
    pub sampling: Sampling,
}

/// The distinct (instruction, input) prompts of `rows` with the row each came from first; an error names
/// the first row without an instruction (`{text}` rows have nothing to answer).
pub fn prompts_of(rows: &[Row]) -> Result<Vec<(&Row, String, String)>> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let Some(instruction) = r.instruction.clone() else {
            bail!(
                "row {}: no `instruction` (self-distillation answers instruction rows; {{text}} rows have none)",
                i + 1
            );
        };
        let input = r.input.clone().unwrap_or_default();
        if seen.insert((instruction.clone(), input.clone())) {
            out.push((r, instruction, input));
        }
    }
    Ok(out)
}

/// The model's answers as dataset rows (JSON objects with instruction, input, output, task_id,
/// problem_id, is_correct), `progress(done, total)` after every batch.
pub fn distill(
    model: &Transformer,
    tok: &Tokenizer,
    rows: &[Row],
    opts: &DistillOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<serde_json::Value>> {
    let prompts = prompts_of(rows)?;
    let template = opts.template.resolve(tok);
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|(_, ins, inp)| template.encode_prompt(tok, ins, inp))
        .collect::<Result<_>>()?;
    let gen = GenerateOptions {
        max_new: opts.max_new,
        eos: tok.eos_id,
        sampling: opts.sampling,
        batch: opts.batch.max(1),
    };
    let answers = generate_with_progress(model, &ids, &gen, &mut |_, _| false, progress)?;
    prompts
        .iter()
        .zip(answers)
        .map(|((row, instruction, input), new)| {
            let answer: Vec<u32> = new
                .into_iter()
                .take_while(|&t| Some(t) != tok.eos_id)
                .collect();
            Ok(serde_json::json!({
                "instruction": instruction,
                "input": input,
                "output": tok.decode(&answer)?,
                "task_id": row.task_id,
                "problem_id": row.problem_id,
                "is_correct": true,
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_deduplicated_in_order_and_text_rows_refused() {
        let rows = crate::data::dataset::parse_jsonl(
            "{\"instruction\": \"a\", \"output\": \"x\", \"task_id\": \"t1\"}\n\
             {\"instruction\": \"b\", \"input\": \"i\", \"output\": \"y\"}\n\
             {\"instruction\": \"a\", \"output\": \"z\", \"task_id\": \"t2\"}\n",
            "test",
        )
        .unwrap();
        let p = prompts_of(&rows).unwrap();
        let got: Vec<(&str, &str, Option<&str>)> = p
            .iter()
            .map(|(r, i, n)| (i.as_str(), n.as_str(), r.task_id.as_deref()))
            .collect();
        assert_eq!(got, [("a", "", Some("t1")), ("b", "i", None)]);
        let text = crate::data::dataset::parse_jsonl("{\"text\": \"hello\"}\n", "test").unwrap();
        assert!(prompts_of(&text).unwrap_err().to_string().contains("row 1"));
    }
}
