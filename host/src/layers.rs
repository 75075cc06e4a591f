//! The layer table (docs/design.md, "Layers"): which folders of `host/src` each folder may import
//! (`crate::<folder>`), which may use the plugin host and clap. Every arrow points down; the test below
//! reads every source file and fails on an import that is not in the table, so a circle between folders
//! cannot come back unnoticed.

/// (folder, the folders below it that it may import). A folder may always import itself; `cli` (the
/// binary) and `fuzzing.rs` (the fuzz targets' harness) sit on top and may import everything.
pub const LAYERS: &[(&str, &[&str])] = &[
    ("kernels", &[]),
    ("data", &[]),
    ("model", &["kernels", "data"]),
    ("formats", &["kernels", "data", "model"]),
    ("optim", &["kernels", "model"]),
    ("parallel", &["kernels", "model", "optim"]),
    ("infer", &["kernels", "data", "model"]),
    ("eval", &["kernels", "data", "model", "infer"]),
    (
        "train",
        &[
            "kernels", "data", "model", "formats", "optim", "parallel", "eval", "infer",
        ],
    ),
    (
        "checkpoint",
        &[
            "kernels", "data", "model", "formats", "optim", "parallel", "eval", "infer", "train",
        ],
    ),
    (
        "run",
        &[
            "kernels",
            "data",
            "model",
            "formats",
            "optim",
            "parallel",
            "eval",
            "infer",
            "train",
            "checkpoint",
        ],
    ),
];

/// Folders that may use the plugin runtime (crate `wmtp_plugin_host`) and the command-line parser (clap).
pub const PLUGIN_HOST_USERS: &[&str] = &["train", "checkpoint"];

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// `crate::name` occurrences in `text` (code, doc links and tests alike: all are dependencies).
    fn crate_refs(text: &str) -> Vec<String> {
        text.match_indices("crate::")
            .filter(|(i, _)| {
                // not `wmtp_host::...crate::` nor a longer identifier ending in `crate`
                *i == 0
                    || !text.as_bytes()[i - 1].is_ascii_alphanumeric()
                        && text.as_bytes()[i - 1] != b'_'
            })
            .map(|(i, m)| {
                text[i + m.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect()
            })
            .collect()
    }

    #[test]
    fn every_import_points_down_the_layer_table() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut bad = Vec::new();
        // every folder is in the table (cli, the binary, sits on top of all of them)
        for e in std::fs::read_dir(&src).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if p.is_dir() && name != "cli" && !LAYERS.iter().any(|(f, _)| *f == name) {
                bad.push(format!("{name}/: a folder missing from the layer table"));
            }
        }
        for (folder, allowed) in LAYERS {
            let mut files = Vec::new();
            rust_files(&src.join(folder), &mut files);
            assert!(!files.is_empty(), "no sources under {folder}");
            for f in files {
                let text = std::fs::read_to_string(&f).unwrap();
                let rel = f.strip_prefix(&src).unwrap().display().to_string();
                for r in crate_refs(&text) {
                    if r != *folder && !allowed.contains(&r.as_str()) {
                        bad.push(format!(
                            "{rel}: crate::{r} ({folder} may import {allowed:?})"
                        ));
                    }
                }
                let plugin_host = text.contains("wmtp_plugin_host");
                if plugin_host && !PLUGIN_HOST_USERS.contains(folder) {
                    bad.push(format!(
                        "{rel}: wmtp_plugin_host (only {PLUGIN_HOST_USERS:?})"
                    ));
                }
                if text.contains("clap::") {
                    bad.push(format!("{rel}: clap (the command line belongs to cli/)"));
                }
            }
        }
        assert!(
            bad.is_empty(),
            "imports against the layer table:\n{}",
            bad.join("\n")
        );
    }

    #[test]
    fn the_check_sees_an_upward_import() {
        assert_eq!(
            crate_refs("use crate::train::x; [`crate::model`]"),
            ["train", "model"]
        );
        assert_eq!(crate_refs("mycrate::y; my_crate::z"), Vec::<String>::new());
    }
}
