//! Functional evaluation of generated code: HumanEval problems, completions run in a sandboxed Python
//! process, and the unbiased pass@k estimator.

pub mod humaneval;
pub mod pass_at_k;
pub mod python_sandbox;
