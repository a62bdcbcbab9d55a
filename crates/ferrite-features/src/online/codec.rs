//! The byte layout of a stored row, shared by every backend (version 1):
//!
//! ```text
//! 16 hex digits  event time, µs since the epoch, as u64 with the sign bit flipped
//! 16 hex digits  created time, same encoding
//! 16 hex digits  view fingerprint
//! rest           the values, postcard-encoded
//! ```
//!
//! The fixed-width hex header sorts like (event time, created time), so Redis compares
//! the first 32 bytes as strings to keep only the newest row, without decoding.

use super::StoredRow;
use crate::value::Value;

pub const HEADER_LEN: usize = 48;

fn ordered(ts: i64) -> u64 {
    (ts as u64) ^ (1 << 63)
}

fn unordered(v: u64) -> i64 {
    (v ^ (1 << 63)) as i64
}

pub fn encode_row(row: &StoredRow) -> Vec<u8> {
    let mut out = format!(
        "{:016x}{:016x}{:016x}",
        ordered(row.event_ts),
        ordered(row.created_ts),
        row.fingerprint
    )
    .into_bytes();
    // Encoding a Vec<Value> into a Vec cannot fail.
    let body = postcard::to_stdvec(&row.values).unwrap_or_default();
    out.extend_from_slice(&body);
    out
}

/// Decodes a stored row; `None` if the bytes are not a version-1 row.
pub fn decode_row(bytes: &[u8]) -> Option<StoredRow> {
    if bytes.len() < HEADER_LEN {
        return None;
    }
    let values: Vec<Value> = postcard::from_bytes(&bytes[HEADER_LEN..]).ok()?;
    Some(StoredRow {
        event_ts: unordered(hex_u64(&bytes[0..16])?),
        created_ts: unordered(hex_u64(&bytes[16..32])?),
        fingerprint: hex_u64(&bytes[32..48])?,
        values,
    })
}

/// 16 hex digits (either case) as a u64. Every read decodes three per row, so this is a
/// plain loop rather than a UTF-8 check and `from_str_radix`.
fn hex_u64(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        Some(acc << 4 | u64::from(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_headers_sort_by_time() {
        let row = |e, c| StoredRow {
            event_ts: e,
            created_ts: c,
            fingerprint: 42,
            values: vec![
                Value::Int(-1),
                Value::Float(0.5),
                Value::Str("x".into()),
                Value::Null,
                Value::Bool(true),
                Value::FloatVec(vec![1.0, 2.5]),
            ],
        };
        let a = row(-5, 7);
        assert_eq!(decode_row(&encode_row(&a)), Some(a.clone()));
        let order = [
            row(-10, 0),
            row(-5, 3),
            row(-5, 4),
            row(0, -1),
            row(1_700_000_000_000_000, 0),
        ];
        for w in order.windows(2) {
            assert!(encode_row(&w[0])[..32] < encode_row(&w[1])[..32]);
        }
        assert_eq!(decode_row(b"garbage"), None);
        // Headers in either case; anything but hex digits is not a row.
        let mut upper = encode_row(&a);
        upper[..HEADER_LEN].make_ascii_uppercase();
        assert_eq!(decode_row(&upper), Some(a.clone()));
        for (at, byte) in [(0, b'g'), (20, b' '), (47, b'-')] {
            let mut bad = encode_row(&a);
            bad[at] = byte;
            assert_eq!(decode_row(&bad), None, "byte {at} = {:?}", byte as char);
        }
        assert_eq!(hex_u64(b"ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(hex_u64(b"00000000000000A5"), Some(0xa5));
        let mut bad = encode_row(&a);
        bad.truncate(HEADER_LEN + 2);
        assert_eq!(decode_row(&bad), None);
    }
}
