//! Third-party readers (candle's pickle, safetensors and GGUF parsers) run behind [`guarded`]: a panic
//! inside one — fuzzing found malformed `.pth` pickles that make candle's pickle reader index out of
//! bounds — becomes an error naming the file, instead of taking the process down. The panic message is
//! kept out of the terminal (the error carries it); panics anywhere else are reported as before.

use anyhow::{anyhow, Result};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// Set while this thread runs a guarded reader: its panics are reported as errors, not printed.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

static HOOK: Once = Once::new();

/// Installs (once) a panic hook that stays silent for guarded panics and defers to the previous hook
/// for all others.
fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// Runs `read` (reading `what`, e.g. "PyTorch checkpoint x.pth"); a panic inside it becomes an error
/// that names `what` and carries the panic message.
pub fn guarded<T>(what: &str, read: impl FnOnce() -> Result<T>) -> Result<T> {
    install_hook();
    let was = GUARDED.with(|g| g.replace(true));
    let r = catch_unwind(AssertUnwindSafe(read));
    GUARDED.with(|g| g.set(was));
    r.unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "no message".into());
        Err(anyhow!(
            "{what}: malformed file (the reader gave up: {msg})"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_becomes_an_error_naming_the_file() {
        let e = guarded("PyTorch checkpoint bad.pth", || -> Result<()> {
            let v: Vec<u8> = vec![];
            let i = v.len() + 3;
            let _byte = v[i];
            Ok(())
        })
        .unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("bad.pth")
                && s.contains("malformed file")
                && s.contains("index out of bounds"),
            "{s}"
        );
        assert_eq!(guarded("x", || Ok(7)).unwrap(), 7);
    }
}
