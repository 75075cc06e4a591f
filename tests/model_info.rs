//! `wmtp info`: what it counts and prints for a model.

use crate::common;

/// `wmtp info` on a loaded model (SmolLM2, 4 heads) counts the parameters it allocates the way the
/// formula does, LoRA and full fine-tuning alike, and prints the per-rank memory table.
#[test]
fn info_on_a_loaded_model_allocates_what_the_formula_counts() {
    let gguf = common::fixture("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    // the number after `key` on the line that starts with it ("1,234" → 1234)
    let number_after = |text: &str, line_start: &str, key: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no `{line_start}` line in:\n{text}"));
        let rest = &line[line.find(key).unwrap() + key.len()..];
        rest.split_whitespace()
            .next()
            .unwrap()
            .replace([',', '('], "")
            .parse()
            .unwrap()
    };
    for lora in [true, false] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wmtp"));
        cmd.args(["info", "--model"])
            .arg(&gguf)
            .args(["--n-future-tokens", "4"]);
        if lora {
            cmd.arg("--lora");
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let of = number_after(&text, "trainable", "of");
        let allocated = number_after(&text, "allocated", "allocated");
        assert_eq!(allocated, of, "lora {lora}:\n{text}");
        assert!(
            text.lines().any(|l| l.trim_start().starts_with("total ")),
            "{text}"
        );
    }
}
