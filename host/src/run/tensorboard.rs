//! A TensorBoard event file of scalars (`events.out.tfevents.<seconds>.<host>`), written directly: each
//! record is TFRecord-framed — u64 length, masked CRC-32C of it, the bytes, their masked CRC-32C, where
//! masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 — and holds one protobuf `Event { wall_time = 1
//! (double), step = 2 (int64), file_version = 3 (string, first record: "brain.Event:2"), summary = 5 {
//! value = 1 { tag = 1 (string), simple_value = 2 (float) } } }`. Written here rather than through a crate:
//! the one that did only this (syntaxdot-summary 0.4, a sub-crate of an NLP project) pulled prost 0.8,
//! syn 1 and hostname 0.3, and the format is these ~60 lines; CRC-32C comes from the `crc` crate.
//! tests/train_tools.rs reads the file back with its own parser.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Writes scalar events to one file, flushed after every [`EventWriter::scalars`] call.
pub struct EventWriter {
    file: std::io::BufWriter<std::fs::File>,
}

impl EventWriter {
    /// Creates `dir` and a fresh event file in it, and writes the file-version record.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let path = dir.join(format!("events.out.tfevents.{secs}.{}", host_name()));
        let file = std::fs::File::create(&path)
            .with_context(|| format!("creating the TensorBoard event file {}", path.display()))?;
        let mut w = EventWriter {
            file: std::io::BufWriter::new(file),
        };
        let mut ev = event_head(0);
        put_bytes(&mut ev, 3, b"brain.Event:2");
        w.record(&ev)?;
        w.file.flush()?;
        Ok(w)
    }

    /// One event at `step` holding every (tag, value) of `values` as a scalar.
    pub fn scalars(&mut self, step: i64, values: &[(&str, f32)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, x) in values {
            let mut value = Vec::new();
            put_bytes(&mut value, 1, tag.as_bytes());
            value.push(2 << 3 | 5); // field 2, 32-bit
            value.extend_from_slice(&x.to_le_bytes());
            put_bytes(&mut summary, 1, &value);
        }
        let mut ev = event_head(step);
        put_bytes(&mut ev, 5, &summary);
        self.record(&ev)?;
        self.file.flush().context("writing TensorBoard events")
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        self.file.write_all(&len)?;
        self.file.write_all(&masked_crc(&len).to_le_bytes())?;
        self.file.write_all(data)?;
        self.file.write_all(&masked_crc(data).to_le_bytes())?;
        Ok(())
    }
}

/// An Event's wall_time (now) and step fields.
fn event_head(step: i64) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut ev = vec![1 << 3 | 1]; // field 1, 64-bit
    ev.extend_from_slice(&now.to_le_bytes());
    ev.push(2 << 3); // field 2, varint
    put_varint(&mut ev, step as u64);
    ev
}

/// A length-delimited field.
fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, field << 3 | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn masked_crc(bytes: &[u8]) -> u32 {
    CASTAGNOLI
        .checksum(bytes)
        .rotate_right(15)
        .wrapping_add(0xa282_ead8)
}

/// This machine's name for the file name (TensorBoard's convention), "localhost" when unknown.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        })
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_the_masked_crc_follow_the_formats() {
        let mut v = Vec::new();
        put_varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]); // protobuf's documented example
                                     // CRC-32C check value of "123456789" is 0xe3069283; masked as TFRecord does
        let c: u32 = 0xe306_9283;
        assert_eq!(
            masked_crc(b"123456789"),
            c.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }
}
