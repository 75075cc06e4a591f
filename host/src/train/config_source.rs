//! Where a run config's values come from: a config file or the embedded default, `--set key=value`
//! overrides parsed as TOML (for an error, the `--set` or the file's line that gave the offending key),
//! or a checkpoint's saved config ([`read_meta`]).

use super::config::{RunConfig, EMBEDDED_DEFAULT};
use crate::formats::checkpoint::TrainerState;
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;

impl RunConfig {
    /// Reads a config file (or the defaults when `path` is None) and applies `--set` overrides.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let (mut table, source, text) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config {}", p.display()))?;
                let t: toml::Table = toml::from_str(&text)
                    .with_context(|| format!("parsing config {}", p.display()))?;
                (t, p.display().to_string(), Some(text))
            }
            None => (
                toml::from_str(EMBEDDED_DEFAULT).context("the embedded default config")?,
                "the embedded default (configs/default.toml)".to_string(),
                None,
            ),
        };
        for o in overrides {
            let (k, v) = o
                .split_once('=')
                .ok_or_else(|| anyhow!("--set expects key=value, got `{o}`"))?;
            set_key(&mut table, k.trim(), v.trim())?;
        }
        let mut cfg: RunConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let key = e.path().to_string();
                let at = origin_of(&key, overrides, text.as_deref(), &source);
                anyhow!("config key `{key}` ({at}): {}", e.inner().message())
            })?;
        super::stages::resolve(&mut cfg).with_context(|| format!("config ({source})"))?;
        cfg.validate()
            .with_context(|| format!("config ({source})"))?;
        Ok(cfg)
    }
}

/// Reads a checkpoint's config (with `overrides`, `--set key=value`, parsed and validated as for a fresh
/// run) and trainer state.
pub fn read_meta(ckpt: &Path, overrides: &[String]) -> Result<(RunConfig, TrainerState)> {
    let cfg = RunConfig::load(
        Some(&ckpt.join(crate::formats::checkpoint_layout::CONFIG)),
        overrides,
    )
    .with_context(|| format!("checkpoint {}", ckpt.display()))?;
    Ok((cfg, crate::formats::checkpoint::read_trainer_state(ckpt)?))
}

/// Sets `key` (dotted) in `table` to `value` parsed as TOML; a bare word (`cuda`, `bf16`) becomes a
/// string, but a value that starts like a TOML array, table, string or number and does not parse is an
/// error (`[wq, wk` must not silently become the string "[wq, wk").
pub fn set_key(table: &mut toml::Table, key: &str, value: &str) -> Result<()> {
    let parsed: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut t) => t.remove("v").ok_or_else(|| anyhow!("empty value"))?,
        Err(e) if looks_like_toml(value) => bail!(
            "--set {key}={value}: not a valid TOML value ({}); strings inside arrays and tables need \
             quotes, e.g. --set 'lora.target_modules=[\"wq\", \"wv\"]'",
            e.message().trim()
        ),
        Err(_) => toml::Value::String(value.to_string()),
    };
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("--set {key}: bad key");
    }
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => bail!("--set {key}: `{p}` is not a table"),
        };
    }
    cur.insert(parts[parts.len() - 1].to_string(), parsed);
    Ok(())
}

/// Whether a `--set` value is meant as TOML rather than a bare word: it starts like an array, inline
/// table or quoted string, or it is made of number characters only (`0.1.2`, `1e-`). A word that
/// starts with a digit but holds letters other than an exponent (`1b_mtp`, `7b_1t_4`: preset names)
/// is a bare word.
fn looks_like_toml(value: &str) -> bool {
    let numeric = |c: char| c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | '_' | 'e' | 'E');
    value.starts_with(['[', '{', '"', '\''])
        || (value.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '-' | '+' | '.'))
            && value.chars().all(numeric))
}

/// Where a key's value came from, for error messages: the `--set` that gave it, else the line of the
/// config file that holds it (found by section header and key name), else the file alone.
pub fn origin_of(path: &str, overrides: &[String], text: Option<&str>, source: &str) -> String {
    if let Some(o) = overrides.iter().rev().find(|o| {
        o.split_once('=').is_some_and(|(k, _)| {
            let k = k.trim();
            path.strip_prefix(k)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }) {
        return format!("--set {o}");
    }
    let (section, key) = match path.split_once('.') {
        Some((sec, rest)) => (sec, rest.split('.').next().unwrap_or(rest)),
        None => ("", path),
    };
    let line = text.and_then(|t| {
        let mut in_section = section.is_empty();
        t.lines().enumerate().find_map(|(i, l)| {
            let l = l.trim();
            if l.starts_with('[') {
                in_section =
                    l.trim_matches(['[', ']', ' ']) == section.split('[').next().unwrap_or(section);
                return None;
            }
            let k = l.split('=').next().unwrap_or("").trim();
            (in_section && k == key).then_some(i + 1)
        })
    });
    match line {
        Some(n) => format!("{source}, line {n}"),
        None => source.to_string(),
    }
}

#[cfg(test)]
mod error_tests {
    use crate::train::config::RunConfig;

    fn err(path: Option<&std::path::Path>, set: &[&str]) -> String {
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        format!("{:#}", RunConfig::load(path, &set).unwrap_err())
    }

    /// A type error names the key and where its value came from: the `--set`, or the file's line.
    #[test]
    fn type_errors_name_the_key_and_the_line_or_the_set() {
        let e = err(None, &["training.steps=\"2\""]);
        assert!(
            e.contains("`training.steps`") && e.contains("--set training.steps=\"2\""),
            "{e}"
        );
        let e = err(None, &["stages=[{steps = \"x\"}]"]);
        assert!(
            e.contains("`stages[0].steps`") && e.contains("--set stages="),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(
            &file,
            "[model]\npath = \"tiny\"\n\n[training]\nlr = 0.1\nbatch_size = \"four\"\n",
        )
        .unwrap();
        let e = err(Some(&file), &[]);
        assert!(
            e.contains("`training.batch_size`") && e.contains("bad.toml, line 6"),
            "{e}"
        );
    }

    /// A `--set` value that starts like TOML but does not parse is an error, not a string; a bare word
    /// is still a string.
    #[test]
    fn broken_toml_in_set_is_an_error_and_bare_words_are_strings() {
        let e = err(None, &["lora.target_modules=[wq,wk"]);
        assert!(
            e.contains("not a valid TOML value") && e.contains("lora.target_modules"),
            "{e}"
        );
        let c = RunConfig::load(None, &["model.device=cpu".into()]).unwrap();
        assert_eq!(c.model.device, crate::model::DeviceSpec::Cpu);
        // preset names start with a digit but are words, as bench/gpu/run.py passes them
        for preset in ["1b_mtp", "7b_1t_4"] {
            let c = RunConfig::load(None, &[format!("model.path={preset}")]).unwrap();
            assert_eq!(c.model.path, preset);
        }
        for broken in ["training.lr=0.1.2", "training.lr=1e-"] {
            let e = err(None, &[broken]);
            assert!(e.contains("not a valid TOML value"), "{broken}: {e}");
        }
        // one target as a plain string, as PEFT accepts it
        let c = RunConfig::load(None, &["lora.target_modules=\"all-linear\"".into()]).unwrap();
        assert_eq!(c.lora.target_modules, ["all-linear"]);
    }
}
