//! Warm-up input data: zeros, seeded pseudo-random values, and raw little-endian files.

use crate::{DataType, TensorData};

pub(super) fn zeros(dtype: DataType, n: usize) -> TensorData {
    match dtype {
        DataType::Bool => TensorData::Bool(vec![false; n]),
        DataType::Int32 => TensorData::Int32(vec![0; n]),
        DataType::Int64 => TensorData::Int64(vec![0; n]),
        DataType::Fp32 => TensorData::Fp32(vec![0.0; n]),
        DataType::Fp64 => TensorData::Fp64(vec![0.0; n]),
        DataType::Bytes => TensorData::Bytes(vec![Vec::new(); n]),
    }
}

/// SplitMix64: a fixed generator, so the values do not change with a dependency's version.
pub(super) fn random(dtype: DataType, n: usize, seed: u64) -> TensorData {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    match dtype {
        DataType::Bool => TensorData::Bool((0..n).map(|_| next() & 1 == 1).collect()),
        DataType::Int32 => TensorData::Int32((0..n).map(|_| (next() & 1) as i32).collect()),
        DataType::Int64 => TensorData::Int64((0..n).map(|_| (next() & 1) as i64).collect()),
        DataType::Fp32 => TensorData::Fp32(
            (0..n)
                .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32)
                .collect(),
        ),
        DataType::Fp64 => TensorData::Fp64(
            (0..n)
                .map(|_| (next() >> 11) as f64 / (1u64 << 53) as f64)
                .collect(),
        ),
        // Refused by `check`.
        DataType::Bytes => TensorData::Bytes(vec![Vec::new(); n]),
    }
}

/// Raw little-endian values holding either one row (`row` elements) or the whole batch
/// (`all` elements). The error says what was found and what was expected.
pub(super) fn decode(dtype: DataType, bytes: &[u8], row: usize, all: usize) -> Result<TensorData, String> {
    let size = match dtype.element_size() {
        Some(size) => size,
        None => return decode_bytes(bytes, row, all),
    };
    if bytes.len() != row * size && bytes.len() != all * size {
        let batch = if all == row {
            String::new()
        } else {
            format!(" or {} ({all} elements: the whole batch)", all * size)
        };
        return Err(format!(
            "has {} bytes; expected {} ({row} {dtype} elements of {size} bytes: one row){batch}",
            bytes.len(),
            row * size
        ));
    }
    Ok(match dtype {
        DataType::Bool => TensorData::Bool(bytes.iter().map(|&b| b != 0).collect()),
        DataType::Int32 => TensorData::Int32(le(bytes, i32::from_le_bytes)),
        DataType::Int64 => TensorData::Int64(le(bytes, i64::from_le_bytes)),
        DataType::Fp32 => TensorData::Fp32(le(bytes, f32::from_le_bytes)),
        DataType::Fp64 => TensorData::Fp64(le(bytes, f64::from_le_bytes)),
        DataType::Bytes => return decode_bytes(bytes, row, all),
    })
}

/// Whole `N`-byte values; `bytes.len()` is a multiple of `N` (checked by the caller).
fn le<const N: usize, T>(bytes: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| {
            let mut value = [0u8; N];
            value.copy_from_slice(c);
            from(value)
        })
        .collect()
}

/// BYTES elements, each a 4-byte little-endian length and then that many bytes.
fn decode_bytes(mut bytes: &[u8], row: usize, all: usize) -> Result<TensorData, String> {
    let mut elements = Vec::new();
    while !bytes.is_empty() {
        let truncated = || format!("has a truncated BYTES element {}", elements.len());
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(truncated)?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(truncated());
        }
        elements.push(rest[..len].to_vec());
        bytes = &rest[len..];
    }
    if elements.len() != row && elements.len() != all {
        return Err(format!(
            "has {} BYTES elements; expected {row} (one row) or {all} (the whole batch)",
            elements.len()
        ));
    }
    Ok(TensorData::Bytes(elements))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_files_decode_as_one_row_or_the_whole_batch() {
        let f: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            decode(DataType::Fp32, &f, 2, 6).unwrap(),
            TensorData::Fp32(vec![1.5, -2.0])
        );
        assert_eq!(
            decode(DataType::Fp32, &f, 1, 2).unwrap(),
            TensorData::Fp32(vec![1.5, -2.0])
        );
        assert!(
            decode(DataType::Fp64, &f, 2, 6)
                .unwrap_err()
                .contains("has 8 bytes; expected 16")
        );
        assert_eq!(
            decode(DataType::Bool, &[0, 1, 2], 3, 3).unwrap(),
            TensorData::Bool(vec![false, true, true])
        );

        let mut s = Vec::new();
        for word in [&b"ab"[..], b"", b"xyz"] {
            s.extend((word.len() as u32).to_le_bytes());
            s.extend(word);
        }
        assert_eq!(
            decode(DataType::Bytes, &s, 3, 6).unwrap(),
            TensorData::Bytes(vec![b"ab".to_vec(), Vec::new(), b"xyz".to_vec()])
        );
        assert!(
            decode(DataType::Bytes, &s, 2, 4)
                .unwrap_err()
                .contains("has 3 BYTES elements")
        );
        assert!(
            decode(DataType::Bytes, &s[..s.len() - 1], 3, 3)
                .unwrap_err()
                .contains("truncated")
        );
    }
}
