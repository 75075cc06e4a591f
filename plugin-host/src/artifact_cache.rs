//! The compiled-plugin cache, made so that it cannot be used to swap code. Compiling a plugin with
//! Cranelift takes a second or more; the cache keeps wasmtime's serialised artifact. Deserialising an
//! artifact runs whatever machine code it holds, so an entry is used only when
//! - its file name is the SHA-256 of (the engine's compatibility hash, the plugin's bytes): an artifact
//!   can only answer for the exact plugin and engine it was compiled from;
//! - the SHA-256 of the artifact's bytes equals the digest written beside it (`<key>.cwasm.sha256`), and
//!   the bytes checked are the bytes deserialised (read once, into memory: nothing to swap in between);
//! - the folder is private: created with mode 0700, and on Unix refused (the plugin is compiled without
//!   the cache, with a warning) when it is not owned by the current user or is writable by group or others.
//!
//! A planted, stale or torn entry fails the check, is ignored with a warning and is overwritten by a
//! fresh compilation.

use anyhow::{anyhow, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use wasmtime::component::Component;
use wasmtime::Engine;

/// A SHA-256 [`std::hash::Hasher`], to digest wasmtime's `impl Hash` compatibility hash stably.
struct ShaHasher(Sha256);

impl std::hash::Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0 // never used: the digest is read with `finalize`
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The cache entry name of `plugin` compiled by `engine`: hex SHA-256 of both.
pub fn entry_key(engine: &Engine, plugin: &[u8]) -> String {
    use std::hash::Hash;
    let mut h = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    h.0.update((plugin.len() as u64).to_le_bytes());
    h.0.update(plugin);
    format!("{:x}", h.0.finalize())
}

/// Why a cache folder may not be used, or None when it is private to this user.
#[cfg(unix)]
fn not_private(dir: &Path) -> Option<String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) => return Some(format!("cannot stat it: {e}")),
    };
    if !meta.is_dir() {
        return Some("it is not a directory (or is a symbolic link)".into());
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    if meta.uid() != uid {
        return Some(format!(
            "it belongs to user {} (this is user {uid})",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Some(format!(
            "group or others may write to it (mode {:o})",
            mode & 0o777
        ));
    }
    None
}

#[cfg(not(unix))]
fn not_private(_dir: &Path) -> Option<String> {
    None
}

/// Creates `dir` (and parents) private to the user.
fn create_private(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// A verified on-disk cache of compiled plugins.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
}

impl ArtifactCache {
    /// The cache in `dir` (created on first write).
    pub fn new(dir: PathBuf) -> Self {
        ArtifactCache { dir }
    }

    fn paths(&self, key: &str) -> (PathBuf, PathBuf) {
        let art = self.dir.join(format!("{key}.cwasm"));
        let digest = self.dir.join(format!("{key}.cwasm.sha256"));
        (art, digest)
    }

    /// The verified cached artifact for `key`, if there is one.
    fn lookup(&self, engine: &Engine, key: &str) -> Option<Component> {
        let (art, digest) = self.paths(key);
        if !art.exists() {
            return None;
        }
        if let Some(why) = not_private(&self.dir) {
            tracing::warn!(
                "compiled-plugin cache {} not used: {why}",
                self.dir.display()
            );
            return None;
        }
        let bytes = std::fs::read(&art).ok()?;
        let expected = std::fs::read_to_string(&digest).unwrap_or_default();
        if format!("{:x}", Sha256::digest(&bytes)) != expected.trim() {
            tracing::warn!(
                "compiled-plugin cache entry {} does not match its digest: ignored and recompiled",
                art.display()
            );
            return None;
        }
        // SAFETY: the bytes are exactly those whose SHA-256 was recorded when this process family wrote
        // the entry (with `Component::serialize`) into a folder only this user can write; the entry's name
        // binds it to this plugin's bytes and this engine's settings, and wasmtime checks the header again.
        unsafe { Component::deserialize(engine, &bytes) }.ok()
    }

    fn store(&self, key: &str, component: &Component) -> Result<()> {
        let art_bytes = component.serialize().map_err(|e| anyhow!("{e}"))?;
        create_private(&self.dir)?;
        if let Some(why) = not_private(&self.dir) {
            anyhow::bail!("{why}");
        }
        let (art, digest) = self.paths(key);
        let pid = std::process::id();
        let (art_tmp, digest_tmp) = (
            art.with_extension(format!("tmp{pid}")),
            digest.with_extension(format!("tmp{pid}")),
        );
        std::fs::write(&art_tmp, &art_bytes)?;
        std::fs::write(&digest_tmp, format!("{:x}", Sha256::digest(&art_bytes)))?;
        std::fs::rename(&digest_tmp, &digest)?;
        std::fs::rename(&art_tmp, &art)?;
        Ok(())
    }

    /// The component for `plugin`: from the cache when a verified entry exists, else compiled (and
    /// cached; a cache that cannot be written costs a warning, never the run).
    pub fn compile(&self, engine: &Engine, plugin: &[u8]) -> Result<Component> {
        let key = entry_key(engine, plugin);
        if let Some(c) = self.lookup(engine, &key) {
            return Ok(c);
        }
        let c = Component::new(engine, plugin).map_err(|e| anyhow!("{e:?}"))?;
        if let Err(e) = self.store(&key, &c) {
            tracing::warn!(
                "compiled-plugin cache {} not written: {e}",
                self.dir.display()
            );
        }
        Ok(c)
    }
}
