//! JSONL datasets (design.md §7): rows `{instruction, input, output, task_id, is_correct, problem_id?,
//! difficulty?}`, `{text}`, `{prompt, completion}` or `{messages}` (data/conversation.rs), under an
//! instruction template (data/template.rs); tokenisation with BOS (raw text and
//! `{prompt, completion}`: when the tokenizer adds one), EOS appended, prompt tokens masked; samples longer than `max_length` dropped and counted.

use super::template::{joined, model_template, Template};
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
    /// With `completion`: text continued as given, masked (no template).
    #[serde(default)]
    pub prompt: Option<String>,
    /// The continuation of `prompt` (trained on).
    #[serde(default)]
    pub completion: Option<String>,
    /// A conversation (`role`: system, user, assistant), rendered with the chat template; every
    /// assistant turn is trained.
    #[serde(default)]
    pub messages: Option<Vec<super::conversation::Turn>>,
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
    /// BOS (when added) + prompt + response + EOS.
    pub ids: Vec<u32>,
    /// 1 on trained tokens (response and EOS), 0 on BOS and prompt.
    pub mask: Vec<u8>,
    /// r = is_correct as 1/0.
    pub reward: f32,
    /// Problem id for pairing.
    pub problem: String,
}

/// Reads a JSONL file; a malformed line is an error naming the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading dataset {}", path.display()))?;
    parse_jsonl(&text, &path.display().to_string())
}

/// Reads a JSONL file of rows to be answered (`wmtp distill`): every row needs an `instruction`, and an
/// `output` is not needed (the model writes it).
pub fn read_instruction_rows(path: &Path) -> Result<Vec<Row>> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {source}"))?;
    parse_rows(&text, &source, |row| {
        row.instruction
            .is_none()
            .then_some("no `instruction` to answer")
    })
}

/// Parses JSONL text (`source` names it in errors).
pub fn parse_jsonl(text: &str, source: &str) -> Result<Vec<Row>> {
    parse_rows(text, source, |row| {
        let forms = [
            row.text.is_some(),
            row.instruction.is_some() && row.output.is_some(),
            row.prompt.is_some() && row.completion.is_some(),
            row.messages.is_some(),
        ];
        (!forms.contains(&true)).then_some(
            "a row needs `text`, `instruction` and `output`, `prompt` and `completion`, or `messages`",
        )
    })
}

/// The rows of JSONL `text` (blank lines skipped); `missing` names what a row lacks (None: it will do),
/// and the error names `source` and the line. No rows at all is an error too.
fn parse_rows(
    text: &str,
    source: &str,
    missing: impl Fn(&Row) -> Option<&'static str>,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(line)
            .with_context(|| format!("{source}:{}: not a valid dataset row", i + 1))?;
        if let Some(what) = missing(&row) {
            bail!("{source}:{}: {what}", i + 1);
        }
        rows.push(row);
    }
    if rows.is_empty() {
        bail!("{source}: the dataset has no rows");
    }
    Ok(rows)
}

/// Tokenises one row under `template` (resolved: [`Template::resolve`]): the prompt is masked, the
/// response and the appended EOS are trained (ChatML: the response closed by `<|im_end|>`, then EOS
/// when the tokenizer's EOS is another token).
pub fn encode_row(tok: &Tokenizer, row: &Row, template: Template) -> Result<Sample> {
    let (ids, mask) = match (&row.messages, &row.prompt, &row.completion) {
        (Some(turns), _, _) if row.text.is_none() => {
            super::conversation::conversation(tok, turns, template)?
        }
        // no template: the prompt continued as given, BOS as the tokenizer adds it
        (None, Some(p), Some(c)) if row.text.is_none() && row.instruction.is_none() => {
            prompt_and_response(tok, p, c, tok.add_bos, None, true)?
        }
        _ => instruction_or_text(tok, row, template)?,
    };
    Ok(Sample {
        ids,
        mask,
        reward: if row.is_correct.unwrap_or(true) {
            1.0
        } else {
            0.0
        },
        problem: row_problem(row),
    })
}

/// Ids and mask of an instruction row under `template`, or of a `{text}` row (trained whole).
fn instruction_or_text(
    tok: &Tokenizer,
    row: &Row,
    template: Template,
) -> Result<(Vec<u32>, Vec<u8>)> {
    let input = row.input.as_deref().unwrap_or("");
    let (prompt, response) = match (&row.text, &row.instruction, &row.output) {
        (Some(t), _, _) => (String::new(), t.clone()),
        (None, Some(ins), Some(out)) if template == Template::Model => {
            model_template(tok)?.split(&joined(ins, input), out)?
        }
        (None, Some(ins), Some(out)) => (template.prompt(ins, input), out.clone()),
        _ => bail!("row has neither text nor instruction/output"),
    };
    let im_end = (template == Template::Chatml && row.text.is_none())
        .then(|| tok.token_id("<|im_end|>"))
        .flatten()
        .filter(|&e| Some(e) != tok.eos_id);
    // raw text starts with BOS when the tokenizer adds one (GGUF `tokenizer.ggml.add_bos_token`, HF
    // `add_bos_token`), as transformers tokenises it; a templated prompt as its template says
    let bos = match row.text {
        Some(_) => tok.add_bos,
        None => template.adds_bos(tok),
    };
    // the model's template closes the answer itself: the sample is exactly the rendered conversation
    let append_eos = !(template == Template::Model && row.text.is_none());
    prompt_and_response(tok, &prompt, &response, bos, im_end, append_eos)
}

/// Ids and mask of `prompt` (masked) followed by `response`, then `closing` and EOS when asked (both
/// trained). The response's tokens are those after the prompt's: tokenizers may merge across the
/// boundary, so the shared prefix of the prompt's and the whole text's ids decides.
pub fn prompt_and_response(
    tok: &Tokenizer,
    prompt: &str,
    response: &str,
    bos: bool,
    closing: Option<u32>,
    append_eos: bool,
) -> Result<(Vec<u32>, Vec<u8>)> {
    let prompt_ids = tok.encode(prompt, bos)?;
    let mut ids = tok.encode(&format!("{prompt}{response}"), bos)?;
    let split = prompt_ids
        .iter()
        .zip(&ids)
        .take_while(|(a, b)| a == b)
        .count();
    ids.extend(closing);
    ids.extend(tok.eos_id.filter(|_| append_eos));
    let mask = (0..ids.len()).map(|i| (i >= split.max(1)) as u8).collect();
    Ok((ids, mask))
}

/// The row's problem id (`problem_id`, else `task_id`; "" when neither: [`encode_all`] names it).
fn row_problem(row: &Row) -> String {
    row.problem_id
        .clone()
        .or_else(|| row.task_id.clone())
        .unwrap_or_default()
}

/// Tokenises rows under `template` (resolved), dropping samples longer than `max_length` tokens;
/// returns (samples, dropped count).
pub fn encode_all(
    tok: &Tokenizer,
    rows: &[Row],
    max_length: usize,
    template: Template,
) -> Result<(Vec<Sample>, usize)> {
    let mut out = Vec::with_capacity(rows.len());
    let (mut dropped, mut longest, mut unnamed) = (0, 0, 0);
    for (i, r) in rows.iter().enumerate() {
        let mut s = encode_row(tok, r, template).with_context(|| format!("row {}", i + 1))?;
        if s.problem.is_empty() {
            // no task_id / problem_id: the row is its own problem for the validation split
            s.problem = format!("row-{}", i + 1);
            unnamed += 1;
        }
        longest = longest.max(s.ids.len());
        if s.ids.len() > max_length {
            dropped += 1;
        } else {
            out.push(s);
        }
    }
    if unnamed > 0 {
        tracing::warn!(
            "{unnamed} of {} rows have no task_id or problem_id: each is its own problem for the \
             validation split (data.val_fraction), so variants of one problem may land on both sides",
            rows.len()
        );
    }
    if out.is_empty() && dropped > 0 {
        bail!(
            "all {dropped} samples are longer than data.max_length = {max_length} tokens (the longest \
             has {longest}): raise data.max_length"
        );
    }
    Ok((out, dropped))
}

/// Packs samples into sequences of at most `max_length` tokens (`data.pack`): samples are taken in
/// order and appended whole (ids and masks, each keeping its BOS and EOS) to the current sequence while
/// it has room, else they start the next one; no sample is split. Attention and the extra heads'
/// targets cross the documents of a sequence, as in GPT-style packed pretraining: the boundary is
/// marked only by the EOS between them, and the BOS when the tokenizer adds one (BOS is never a target). Each sequence takes the
/// first sample's problem id and reward. Samples longer than `max_length` are already dropped.
pub fn pack(samples: Vec<Sample>, max_length: usize) -> Vec<Sample> {
    let mut out: Vec<Sample> = Vec::new();
    for s in samples {
        match out.last_mut() {
            Some(cur) if cur.ids.len() + s.ids.len() <= max_length => {
                cur.ids.extend_from_slice(&s.ids);
                cur.mask.extend_from_slice(&s.mask);
            }
            _ => out.push(s),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::template::alpaca_prompt;

    #[test]
    fn packing_appends_whole_samples_in_order_within_max_length() {
        let sample = |n: usize, tag: u32| Sample {
            ids: vec![tag; n],
            mask: (0..n).map(|i| (i > 0) as u8).collect(),
            reward: 1.0,
            problem: format!("p{tag}"),
        };
        let samples = vec![
            sample(3, 1),
            sample(4, 2),
            sample(5, 3),
            sample(8, 4),
            sample(1, 5),
        ];
        let packed = pack(samples.clone(), 8);
        let lens: Vec<usize> = packed.iter().map(|s| s.ids.len()).collect();
        assert_eq!(lens, vec![7, 5, 8, 1]);
        assert_eq!(packed[0].ids, vec![1, 1, 1, 2, 2, 2, 2]);
        assert_eq!(packed[0].mask, vec![0, 1, 1, 0, 1, 1, 1]);
        assert_eq!(packed[0].problem, "p1");
        // nothing lost, nothing reordered
        let flat: Vec<u32> = packed.iter().flat_map(|s| s.ids.clone()).collect();
        let orig: Vec<u32> = samples.iter().flat_map(|s| s.ids.clone()).collect();
        assert_eq!(flat, orig);
        assert!(packed
            .iter()
            .all(|s| s.ids.len() == s.mask.len() && s.ids.len() <= 8));
    }

    #[test]
    fn rows_to_answer_need_an_instruction_but_no_output() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("wmtp-instr-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let ok = dir.join("ok.jsonl");
        std::fs::write(&ok, "{\"instruction\": \"Add.\", \"input\": \"1 2\"}\n\n")?;
        let rows = read_instruction_rows(&ok)?;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].input.as_deref(), Some("1 2"));
        let bad = dir.join("bad.jsonl");
        std::fs::write(&bad, "{\"instruction\": \"Add.\"}\n{\"text\": \"x\"}\n")?;
        let err = format!("{:#}", read_instruction_rows(&bad).unwrap_err());
        assert!(
            err.contains("bad.jsonl:2") && err.contains("instruction"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn alpaca_masks_prompt_and_appends_eos() {
        let tok = Tokenizer::bytes();
        let rows = parse_jsonl(r#"{"instruction": "Add 2 and 3.", "output": "5", "is_correct": false, "task_id": "t1"}"#, "mem").unwrap();
        let s = encode_row(&tok, &rows[0], Template::Alpaca).unwrap();
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
    fn templates_shape_the_prompt_and_mask_only_it() {
        let tok = Tokenizer::bytes();
        // the byte tokenizer has no <|im_start|>: auto is Alpaca
        assert_eq!(Template::Auto.resolve(&tok), Template::Alpaca);
        let rows = parse_jsonl(
            r#"{"instruction": "Add 2 and 3.", "input": "x", "output": "5"}"#,
            "mem",
        )
        .unwrap();
        for (t, prompt) in [
            (
                Template::Chatml,
                "<|im_start|>user\nAdd 2 and 3.\n\nx<|im_end|>\n<|im_start|>assistant\n",
            ),
            (Template::None, "Add 2 and 3.\n\nx\n"),
        ] {
            assert_eq!(t.prompt("Add 2 and 3.", "x"), prompt);
            let s = encode_row(&tok, &rows[0], t).unwrap();
            // BOS + prompt bytes masked; "5" and EOS trained (no <|im_end|> token to add here)
            assert_eq!(s.ids.len(), 1 + prompt.len() + 1 + 1, "{t:?}");
            assert!(s.mask[..1 + prompt.len()].iter().all(|&m| m == 0), "{t:?}");
            assert!(s.mask[1 + prompt.len()..].iter().all(|&m| m == 1), "{t:?}");
        }
        // text rows are trained whole under any template
        let text = parse_jsonl(r#"{"text": "abc"}"#, "mem").unwrap();
        let s = encode_row(&tok, &text[0], Template::Chatml).unwrap();
        assert_eq!(s.ids.len(), 1 + 3 + 1);
        for name in ["auto", "alpaca", "chatml", "none"] {
            assert_eq!(name.parse::<Template>().unwrap().name(), name);
        }
        assert!("chat".parse::<Template>().is_err());
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

    /// `{prompt, completion}`: BOS + prompt (masked) + completion + EOS (trained), no template.
    #[test]
    fn prompt_is_masked_and_completion_trained() {
        let tok = Tokenizer::bytes();
        let rows = parse_jsonl(r#"{"prompt": "2 + 3 =", "completion": " 5"}"#, "m").unwrap();
        let s = encode_row(&tok, &rows[0], Template::Chatml).unwrap();
        let (ids, mask) = (s.ids, s.mask);
        assert_eq!(ids.len(), 1 + 7 + 2 + 1, "BOS, prompt, completion, EOS");
        assert_eq!(mask.iter().filter(|&&m| m == 1).count(), 3, "' 5' and EOS");
        let trained: Vec<u32> = ids[..ids.len() - 1]
            .iter()
            .zip(&mask)
            .filter(|(_, &m)| m == 1)
            .map(|(&i, _)| i)
            .collect();
        assert_eq!(tok.decode(&trained).unwrap(), " 5");
    }

    /// Raw text and `{prompt, completion}` rows start with BOS exactly when the tokenizer adds one
    /// (SmolLM2's GGUF says it does not: its BOS is `<|im_start|>`), as transformers tokenises them.
    #[test]
    fn raw_rows_follow_the_tokenizers_add_bos() {
        let rows = parse_jsonl(
            "{\"text\": \"def f(): pass\"}\n{\"prompt\": \"2 + 3 =\", \"completion\": \" 5\"}",
            "m",
        )
        .unwrap();
        let with = Tokenizer::bytes();
        let mut without = Tokenizer::bytes();
        without.add_bos = false;
        let bos = with.bos_id.unwrap();
        for row in &rows {
            let a = encode_row(&with, row, Template::Chatml).unwrap();
            let b = encode_row(&without, row, Template::Chatml).unwrap();
            assert_eq!(a.ids[0], bos);
            assert_ne!(b.ids[0], bos);
            assert_eq!(&a.ids[1..], &b.ids[..], "the same tokens after the BOS");
            // (a first token is never a target: nothing before it predicts it)
            assert_eq!(&a.mask[2..], &b.mask[1..]);
        }
    }

    #[test]
    fn length_filter_reports_drops() {
        let tok = Tokenizer::bytes();
        let rows = parse_jsonl(
            "{\"text\": \"short\"}\n{\"text\": \"a much longer text that will not fit\"}",
            "m",
        )
        .unwrap();
        let (kept, dropped) = encode_all(&tok, &rows, 12, Template::Alpaca).unwrap();
        assert_eq!((kept.len(), dropped), (1, 1));
        // rows without ids are each their own problem (so val_fraction can split them)
        assert_eq!(kept[0].problem, "row-1");
        // nothing fits: the error says so, with the longest length and the limit
        let e = format!(
            "{:#}",
            encode_all(&tok, &rows, 3, Template::Alpaca).unwrap_err()
        );
        assert!(
            e.contains("all 2 samples are longer than data.max_length = 3")
                && e.contains("the longest has 38"),
            "{e}"
        );
    }
}
