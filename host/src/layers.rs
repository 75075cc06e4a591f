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
    use std::collections::{BTreeMap, BTreeSet};
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

    /// The files (and sub-folders) of `folder` that `text` refers to: `super::name` from a file directly
    /// in the folder (`from_sub`: from a sub-folder's `mod.rs`, whose `super` is the folder too) and
    /// `crate::<folder>::name` from anywhere in it. Test modules are left out (their `super` is the file).
    fn sibling_refs(text: &str, folder: &str, direct: bool) -> Vec<String> {
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let own = format!("crate::{folder}::");
        let mut out = Vec::new();
        let mut prefixes = vec![own.as_str()];
        if direct {
            prefixes.push("super::");
        }
        for pre in prefixes {
            for (i, m) in code.match_indices(pre) {
                if i > 0
                    && (code.as_bytes()[i - 1].is_ascii_alphanumeric()
                        || code.as_bytes()[i - 1] == b'_'
                        || code.as_bytes()[i - 1] == b':')
                {
                    continue;
                }
                let name: String = code[i + m.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                out.push(name);
            }
        }
        out
    }

    /// The import graph between the files of `folder` (a sub-folder counts as one node).
    fn file_graph(src: &Path, folder: &str) -> BTreeMap<String, BTreeSet<String>> {
        let dir = src.join(folder);
        let mut nodes: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let stem = p.file_stem().unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                let mut files = Vec::new();
                rust_files(&p, &mut files);
                let texts: Vec<(String, bool)> = files
                    .iter()
                    .map(|f| {
                        let sub_mod = f.parent() == Some(p.as_path())
                            && f.file_name().is_some_and(|n| n == "mod.rs");
                        (std::fs::read_to_string(f).unwrap(), sub_mod)
                    })
                    .collect();
                nodes.entry(stem).or_default().extend(texts);
            } else if p.extension().is_some_and(|x| x == "rs") && stem != "mod" {
                // `engine.rs` and its sub-modules in `engine/` are one node
                nodes
                    .entry(stem)
                    .or_default()
                    .push((std::fs::read_to_string(&p).unwrap(), true));
            }
        }
        let names: BTreeSet<String> = nodes.keys().cloned().collect();
        nodes
            .iter()
            .map(|(n, texts)| {
                let deps = texts
                    .iter()
                    .flat_map(|(t, direct)| sibling_refs(t, folder, *direct))
                    .filter(|d| d != n && names.contains(d))
                    .collect();
                (n.clone(), deps)
            })
            .collect()
    }

    /// A circle in `g` (a list of nodes, the first repeated at the end), if any.
    fn find_circle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
        fn visit(
            n: &str,
            g: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(i) = path.iter().position(|p| p == n) {
                let mut c = path[i..].to_vec();
                c.push(n.to_string());
                return Some(c);
            }
            if done.contains(n) {
                return None;
            }
            path.push(n.to_string());
            for d in &g[n] {
                if let Some(c) = visit(d, g, path, done) {
                    return Some(c);
                }
            }
            path.pop();
            done.insert(n.to_string());
            None
        }
        let mut done = BTreeSet::new();
        g.keys()
            .find_map(|n| visit(n, g, &mut Vec::new(), &mut done))
    }

    #[test]
    fn the_files_of_every_folder_import_each_other_without_circles() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut bad = Vec::new();
        for folder in LAYERS.iter().map(|(f, _)| *f).chain(["cli"]) {
            if let Some(c) = find_circle(&file_graph(&src, folder)) {
                bad.push(format!("{folder}/: {}", c.join(" → ")));
            }
        }
        assert!(bad.is_empty(), "circles between files:\n{}", bad.join("\n"));
    }

    #[test]
    fn the_circle_check_sees_a_circle() {
        let g: BTreeMap<String, BTreeSet<String>> = [
            ("a", vec!["b"]),
            ("b", vec!["c"]),
            ("c", vec!["a"]),
            ("d", vec![]),
        ]
        .into_iter()
        .map(|(n, d)| (n.to_string(), d.into_iter().map(String::from).collect()))
        .collect();
        assert_eq!(find_circle(&g).unwrap(), ["a", "b", "c", "a"]);
        let mut refs = sibling_refs("use super::x; crate::m::y; s::super::z", "m", true);
        refs.sort();
        assert_eq!(refs, ["x", "y"]);
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
