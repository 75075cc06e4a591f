//! JSONL datasets (design.md §7): rows `{instruction, input, output, task_id, is_correct, problem_id?,
//! difficulty?}` or `{text}`; the Alpaca template; tokenisation with BOS, EOS appended, prompt tokens
//! masked; samples longer than `max_length` dropped and counted.

use super::Tokenizer;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

/// One JSONL row (unknown fields are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct Row {
    /// The task (Alpaca rows).
    #[serde(default)]
    pub instruction: Option<String>,
    /// Optional context for the instruction.
    #[serde(default)]
    pub input: Option<String>,
    /// The response (trained on).
    #[serde(default)]
    pub output: Option<String>,
    /// Plain text (all tokens trained on).
    #[serde(default)]
    pub text: Option<String>,
    /// Task id.
    #[serde(default)]
    pub task_id: Option<String>,
    /// Problem id used for pairing (defaults to task_id).
    #[serde(default)]
    pub problem_id: Option<String>,
    /// Whether the output is correct (reward 1/0); absent = correct.
    #[serde(default)]
    pub is_correct: Option<bool>,
}

/// A tokenised sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// BOS + prompt + response + EOS.
    pub ids: Vec<u32>,
    /// 1 on trained tokens (response and EOS), 0 on BOS and prompt.
    pub mask: Vec<u8>,
    /// r = is_correct as 1/0.
    pub reward: f32,
    /// Problem id for pairing.
    pub problem: String,
}

/// The Alpaca prompt (everything before the response).
pub fn alpaca_prompt(instruction: &str, input: &str) -> String {
    let head = "Below is an instruction that describes a task. Write a response that appropriately completes the request.";
    if input.is_empty() {
        format!("{head}\n\n### Instruction:\n{instruction}\n\n### Response:\n")
    } else {
        format!(
            "{head}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        )
    }
}

/// Reads a JSONL file; a malformed line is an error naming the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading dataset {}", path.display()))?;
    parse_jsonl(&text, &path.display().to_string())
}

/// Parses JSONL text (`source` names it in errors).
pub fn parse_jsonl(text: &str, source: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(line)
            .with_context(|| format!("{source}:{}: not a valid dataset row", i + 1))?;
        if row.text.is_none() && (row.instruction.is_none() || row.output.is_none()) {
            bail!(
                "{source}:{}: a row needs `text`, or `instruction` and `output`",
                i + 1
            );
        }
        rows.push(row);
    }
    if rows.is_empty() {
        bail!("{source}: the dataset has no rows");
    }
    Ok(rows)
}

/// Tokenises one row: the prompt is masked, the response and the appended EOS are trained.
pub fn encode_row(tok: &Tokenizer, row: &Row) -> Result<Sample> {
    let (prompt, response) = match (&row.text, &row.instruction, &row.output) {
        (Some(t), _, _) => (String::new(), t.clone()),
        (None, Some(ins), Some(out)) => (
            alpaca_prompt(ins, row.input.as_deref().unwrap_or("")),
            out.clone(),
        ),
        _ => bail!("row has neither text nor instruction/output"),
    };
    let prompt_ids = tok.encode(&prompt, true)?;
    let full = tok.encode(&format!("{prompt}{response}"), true)?;
    // the response's tokens are those after the prompt's (tokenizers may merge across the boundary:
    // the shared prefix decides)
    let split = prompt_ids
        .iter()
        .zip(&full)
        .take_while(|(a, b)| a == b)
        .count();
    let mut ids = full;
    if let Some(eos) = tok.eos_id {
        ids.push(eos);
    }
    let mask = (0..ids.len()).map(|i| (i >= split.max(1)) as u8).collect();
    Ok(Sample {
        ids,
        mask,
        reward: if row.is_correct.unwrap_or(true) {
            1.0
        } else {
            0.0
        },
        problem: row
            .problem_id
            .clone()
            .or_else(|| row.task_id.clone())
            .unwrap_or_default(),
    })
}

/// Tokenises rows, dropping samples longer than `max_length` tokens; returns (samples, dropped count).
pub fn encode_all(
    tok: &Tokenizer,
    rows: &[Row],
    max_length: usize,
) -> Result<(Vec<Sample>, usize)> {
    let mut out = Vec::with_capacity(rows.len());
    let mut dropped = 0;
    for (i, r) in rows.iter().enumerate() {
        let s = encode_row(tok, r).with_context(|| format!("row {}", i + 1))?;
        if s.ids.len() > max_length {
            dropped += 1;
        } else {
            out.push(s);
        }
    }
    Ok((out, dropped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpaca_masks_prompt_and_appends_eos() {
        let tok = Tokenizer::bytes();
        let rows = parse_jsonl(r#"{"instruction": "Add 2 and 3.", "output": "5", "is_correct": false, "task_id": "t1"}"#, "mem").unwrap();
        let s = encode_row(&tok, &rows[0]).unwrap();
        let prompt = alpaca_prompt("Add 2 and 3.", "");
        assert_eq!(s.ids.len(), 1 + prompt.len() + 1 + 1);
        assert_eq!(s.ids[0], 256);
        assert_eq!(*s.ids.last().unwrap(), 257);
        assert_eq!(
            s.mask.iter().filter(|&&m| m == 1).count(),
            2,
            "'5' and EOS are trained"
        );
        assert_eq!((s.reward, s.problem.as_str()), (0.0, "t1"));
        assert!(prompt.ends_with("### Response:\n"));
        assert!(alpaca_prompt("x", "ctx").contains("### Input:\nctx\n\n### Response:\n"));
    }

    #[test]
    fn bad_lines_name_the_line() {
        let err = format!(
            "{:#}",
            parse_jsonl("{\"text\": \"ok\"}\n{broken", "d.jsonl").unwrap_err()
        );
        assert!(err.contains("d.jsonl:2"), "{err}");
        let err = format!(
            "{:#}",
            parse_jsonl("{\"output\": \"no instruction\"}", "d.jsonl").unwrap_err()
        );
        assert!(
            err.contains("d.jsonl:1") && err.contains("instruction"),
            "{err}"
        );
    }

    #[test]
    fn length_filter_reports_drops() {
        let tok = Tokenizer::bytes();
        let rows = parse_jsonl(
            "{\"text\": \"short\"}\n{\"text\": \"a much longer text that will not fit\"}",
            "m",
        )
        .unwrap();
        let (kept, dropped) = encode_all(&tok, &rows, 12).unwrap();
        assert_eq!((kept.len(), dropped), (1, 1));
    }
}
