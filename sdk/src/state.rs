//! Plugin state as bytes: a tag, then little-endian f64s — enough for EMAs and counters.

/// Encodes `values` after a 4-byte `tag` (which names the plugin's state layout).
pub fn encode(tag: &[u8; 4], values: &[f64]) -> Vec<u8> {
    let mut out = tag.to_vec();
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Decodes exactly `n` f64s written by [`encode`] with the same `tag`.
pub fn decode(tag: &[u8; 4], bytes: &[u8], n: usize) -> Result<Vec<f64>, String> {
    if bytes.len() != 4 + 8 * n || &bytes[..4] != tag {
        return Err(format!(
            "state is not a {} state of {n} numbers ({} bytes)",
            String::from_utf8_lossy(tag),
            bytes.len()
        ));
    }
    Ok(bytes[4..]
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip_and_reject() {
        let b = super::encode(b"ema1", &[1.5, -2.0]);
        assert_eq!(super::decode(b"ema1", &b, 2).unwrap(), vec![1.5, -2.0]);
        assert!(super::decode(b"ema2", &b, 2).is_err());
        assert!(super::decode(b"ema1", &b[..10], 2).is_err());
    }
}
