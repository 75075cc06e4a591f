//! Reads the vocabulary of a SentencePiece `.model` file (a `ModelProto` protobuf): field 1 is the
//! repeated `SentencePiece { piece: string = 1; score: float = 2; type: enum = 3 }`. Only these fields are
//! needed to tokenize, so a few lines of wire-format reading replace a protobuf dependency.

use anyhow::{bail, Result};

/// One vocabulary entry. `kind`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The piece text (spaces as `▁`).
    pub piece: String,
    /// Its score (log probability).
    pub score: f32,
    /// Its type.
    pub kind: i32,
}

fn varint(b: &[u8], pos: &mut usize) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&byte) = b.get(*pos) else {
            bail!("truncated varint at byte {pos}")
        };
        *pos += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    bail!("varint too long at byte {pos}")
}

/// Visits the (field, wire type, payload) triples of one message; returns Err on malformed input.
pub(crate) fn fields<'a>(
    b: &'a [u8],
    mut f: impl FnMut(u64, &'a [u8], u64) -> Result<()>,
) -> Result<()> {
    let mut pos = 0;
    while pos < b.len() {
        let key = varint(b, &mut pos)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let v = varint(b, &mut pos)?;
                f(field, &[], v)?;
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                let Some(s) = b.get(pos..pos + n) else {
                    bail!("truncated fixed field at byte {pos}")
                };
                pos += n;
                f(field, s, 0)?;
            }
            2 => {
                let n = varint(b, &mut pos)? as usize;
                let Some(s) = b.get(pos..pos.saturating_add(n)) else {
                    bail!("truncated field {field} at byte {pos}")
                };
                pos += n;
                f(field, s, 0)?;
            }
            w => bail!("unsupported protobuf wire type {w} at byte {pos}"),
        }
    }
    Ok(())
}

/// The pieces of a serialized `ModelProto`, in id order.
pub fn parse_model_proto(bytes: &[u8]) -> Result<Vec<Piece>> {
    let mut pieces = Vec::new();
    fields(bytes, |field, payload, _| {
        if field == 1 {
            let mut p = Piece {
                piece: String::new(),
                score: 0.0,
                kind: 1,
            };
            fields(payload, |f, s, v| {
                match f {
                    1 => p.piece = String::from_utf8(s.to_vec())?,
                    2 if s.len() == 4 => p.score = f32::from_le_bytes([s[0], s[1], s[2], s[3]]),
                    3 => p.kind = v as i32,
                    _ => {}
                }
                Ok(())
            })?;
            pieces.push(p);
        }
        Ok(())
    })?;
    if pieces.is_empty() {
        bail!("no vocabulary pieces found (not a SentencePiece model?)");
    }
    Ok(pieces)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Serialises pieces as a ModelProto (test helper; also used by the tokenizer tests).
    pub fn encode(pieces: &[(&str, f32, i32)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (p, s, k) in pieces {
            let mut m = vec![0x0a, p.len() as u8];
            m.extend_from_slice(p.as_bytes());
            m.push(0x15);
            m.extend_from_slice(&s.to_le_bytes());
            m.extend_from_slice(&[0x18, *k as u8]);
            out.push(0x0a);
            out.push(m.len() as u8);
            out.extend(m);
        }
        // trainer_spec: an input field (skipped), model_type = UNIGRAM, byte_fallback = true
        out.extend_from_slice(&[0x12, 0x07, 0x0a, 0x00, 0x18, 0x01, 0x98, 0x02, 0x01]);
        // normalizer_spec: name = "identity"
        out.extend_from_slice(&[0x1a, 0x0a, 0x0a, 0x08]);
        out.extend_from_slice(b"identity");
        out
    }

    #[test]
    fn parses_pieces_and_rejects_garbage() {
        let bytes = encode(&[("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("▁hi", -1.5, 1)]);
        let p = parse_model_proto(&bytes).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(
            p[2],
            Piece {
                piece: "▁hi".into(),
                score: -1.5,
                kind: 1
            }
        );
        assert!(parse_model_proto(&bytes[..bytes.len() - 7]).is_err());
        assert!(parse_model_proto(b"\x0f\x0f\x0f").is_err());
    }
}
