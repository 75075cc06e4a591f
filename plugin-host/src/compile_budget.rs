//! Compiling a plugin under a budget. wasmtime's per-call caps cover running plugin code, not cranelift
//! compiling it, and a small valid component can be built to compile for minutes or to take gigabytes
//! (one enormous function, deeply nested blocks, a million functions). Two bounds, checked in this order:
//! 1. a structure check of every core module inside the component before anything is compiled:
//!    function count, code bytes, one function's body size, locals and block nesting depth, each at
//!    about 10× what the largest plugin we know needs (the componentize-py example, which bundles
//!    CPython; docs/sandbox.md has the measured figures), so the memory a compile can take is bounded;
//! 2. a wall-clock limit on the compile itself (`runtime.plugin_compile_s`): past it, loading fails with
//!    an error naming the plugin (the compiling thread is abandoned; the process is about to report the
//!    error and exit).

use anyhow::{anyhow, bail, Result};
use std::time::Duration;
use wasmparser::{Operator, Parser, Payload};

/// The structure a plugin may have and how long its compile may take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompileBudget {
    /// Defined functions over all core modules.
    pub max_functions: usize,
    /// Bytes of function bodies over all core modules.
    pub max_code_bytes: usize,
    /// Bytes of one function body.
    pub max_body_bytes: usize,
    /// Locals of one function (declared, parameters not counted).
    pub max_locals: u64,
    /// Depth of nested blocks (`block`, `loop`, `if`, `try_table`) in one function.
    pub max_nesting: usize,
    /// Wall-clock limit of one compile.
    pub time: Duration,
}

impl Default for CompileBudget {
    /// At least 10× the largest plugin measured, examples/python-focal.wasm (CPython inside: 13,492
    /// functions, 6.5 MB of code, a 427 KB function, 271 locals, blocks 781 deep; docs/sandbox.md).
    fn default() -> Self {
        CompileBudget {
            max_functions: 150_000,
            max_code_bytes: 96 << 20,
            max_body_bytes: 5 << 20,
            max_locals: 50_000,
            max_nesting: 8_192,
            time: Duration::from_secs(60),
        }
    }
}

/// What [`measure`] finds in a component: the largest figures that [`CompileBudget`] bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CodeShape {
    /// Defined functions over all core modules.
    pub functions: usize,
    /// Bytes of function bodies over all core modules.
    pub code_bytes: usize,
    /// The largest function body, in bytes.
    pub largest_body: usize,
    /// The most locals of one function.
    pub most_locals: u64,
    /// The deepest block nesting of one function.
    pub deepest_nesting: usize,
}

/// Measures the code of every core module in `bytes` (a component or a core module), stopping with an
/// error as soon as a figure passes `budget` (so a hostile file costs at most one pass over its bytes).
pub fn measure(bytes: &[u8], budget: &CompileBudget) -> Result<CodeShape> {
    let mut s = CodeShape::default();
    let invalid = |e: wasmparser::BinaryReaderError| {
        anyhow!("not a valid Wasm component (build it with the wmtp SDK as a component): {e}")
    };
    for payload in Parser::new(0).parse_all(bytes) {
        let Payload::CodeSectionEntry(body) = payload.map_err(invalid)? else {
            continue;
        };
        s.functions += 1;
        let size = body.range().len();
        s.code_bytes += size;
        s.largest_body = s.largest_body.max(size);
        if s.functions > budget.max_functions {
            bail!(
                "refused before compiling: has more than {} functions (compile budget)",
                budget.max_functions
            );
        }
        if s.code_bytes > budget.max_code_bytes {
            bail!(
                "refused before compiling: has more than {} MiB of code (compile budget)",
                budget.max_code_bytes >> 20
            );
        }
        if size > budget.max_body_bytes {
            bail!(
                "refused before compiling: function {} is {size} bytes long (at most {} bytes: compile budget)",
                s.functions - 1,
                budget.max_body_bytes
            );
        }
        let mut locals = 0u64;
        for l in body.get_locals_reader().map_err(invalid)? {
            locals += u64::from(l.map_err(invalid)?.0);
            if locals > budget.max_locals {
                bail!(
                    "refused before compiling: function {} declares more than {} locals (compile budget)",
                    s.functions - 1,
                    budget.max_locals
                );
            }
        }
        s.most_locals = s.most_locals.max(locals);
        let mut depth = 0usize;
        let mut ops = body.get_operators_reader().map_err(invalid)?;
        while !ops.eof() {
            match ops.read().map_err(invalid)? {
                Operator::Block { .. }
                | Operator::Loop { .. }
                | Operator::If { .. }
                | Operator::TryTable { .. } => {
                    depth += 1;
                    s.deepest_nesting = s.deepest_nesting.max(depth);
                    if depth > budget.max_nesting {
                        bail!(
                            "refused before compiling: function {} nests blocks more than {} deep (compile budget)",
                            s.functions - 1,
                            budget.max_nesting
                        );
                    }
                }
                Operator::End => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(funcs: &str) -> Vec<u8> {
        wat::parse_str(format!("(module {funcs})")).unwrap()
    }

    #[test]
    fn measures_functions_locals_and_nesting() {
        let m = module(
            "(func (local i32 i64 i64) (block (loop (if (i32.const 0) (then nop)))))
             (func nop)",
        );
        let s = measure(&m, &CompileBudget::default()).unwrap();
        assert_eq!(s.functions, 2);
        assert_eq!(s.most_locals, 3);
        assert_eq!(s.deepest_nesting, 3);
        assert!(s.largest_body > 0 && s.code_bytes > s.largest_body);
    }

    #[test]
    fn each_bound_is_enforced() {
        let tight = CompileBudget {
            max_functions: 1,
            max_code_bytes: 1 << 20,
            max_body_bytes: 64,
            max_locals: 2,
            max_nesting: 2,
            time: Duration::from_secs(1),
        };
        let cases = [
            ("(func) (func)", "more than 1 functions"),
            ("(func (local i32 i32 i32))", "more than 2 locals"),
            (
                "(func (block (block (block))))",
                "nests blocks more than 2 deep",
            ),
            (
                &format!("(func {})", "nop ".repeat(100)),
                "bytes long (at most 64 bytes",
            ),
        ];
        for (funcs, want) in cases {
            let err = measure(&module(funcs), &tight).unwrap_err().to_string();
            assert!(err.contains(want), "{funcs}: {err}");
        }
    }
}
