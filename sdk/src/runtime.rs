//! The glue behind [`crate::export_pipeline!`]: one lazily created pipeline instance, a panic hook that
//! reports the panic text through the host's `log` before the trap, and settings parsing.

use crate::{Batch, Coefficients, Manifest, Pipeline, Settings};
use std::any::Any;
use std::cell::RefCell;

thread_local! {
    static INSTANCE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            crate::log(0, &format!("plugin panicked: {info}"))
        }));
    });
}

/// A pipeline configured with its default settings (used when a call comes before `configure`).
fn with_defaults<T: Pipeline>() -> T {
    let mut p = T::default();
    p.configure(T::Settings::default())
        .unwrap_or_else(|e| panic!("configure with the default settings failed: {e}"));
    p
}

fn with<T: Pipeline, R>(f: impl FnOnce(&mut T) -> R) -> R {
    install_panic_hook();
    INSTANCE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let inst = slot.get_or_insert_with(|| Box::new(with_defaults::<T>()));
        f(inst
            .downcast_mut::<T>()
            .expect("one pipeline type per plugin"))
    })
}

/// `describe` export: the pipeline's manifest with the config keys of its settings.
pub fn describe<T: Pipeline>() -> Manifest {
    install_panic_hook();
    let mut m = T::manifest();
    m.config_keys = T::Settings::keys();
    m
}

/// `configure` export: parses the TOML into the pipeline's settings, then hands them to a fresh instance;
/// on error the previous instance is kept unchanged.
pub fn configure<T: Pipeline>(toml: &str) -> Result<(), String> {
    install_panic_hook();
    let settings = T::Settings::parse(toml)?;
    let mut fresh = T::default();
    fresh.configure(settings)?;
    INSTANCE.with(|cell| *cell.borrow_mut() = Some(Box::new(fresh)));
    Ok(())
}

/// `weigh` export.
pub fn weigh<T: Pipeline>(b: &Batch, train: bool) -> Result<Coefficients, String> {
    with::<T, _>(|p| p.weigh(b, train))
}

/// `after-step` export.
pub fn after_step<T: Pipeline>(step: u64) -> Result<(), String> {
    with::<T, _>(|p| p.after_step(step))
}

/// `save-state` export.
pub fn save_state<T: Pipeline>() -> Vec<u8> {
    with::<T, _>(|p| p.save_state())
}

/// `load-state` export.
pub fn load_state<T: Pipeline>(s: &[u8]) -> Result<(), String> {
    with::<T, _>(|p| p.load_state(s))
}
