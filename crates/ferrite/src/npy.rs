//! Reads a NumPy `.npy` file of float32 rows (`[n, d]`, C order): the precomputed embeddings
//! `ferrite build-index --embeddings` indexes and `ferrite bench` sends as queries.

use std::path::Path;

use anyhow::{Context, bail, ensure};

/// `n` rows of `d` values, laid end to end.
#[derive(Debug)]
pub struct Matrix {
    pub rows: usize,
    pub dim: usize,
    pub values: Vec<f32>,
}

impl Matrix {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }
}

/// Reads `path`: format version 1, 2 or 3, dtype `<f4`, C order, two dimensions.
pub fn read_f32_matrix(path: &Path) -> anyhow::Result<Matrix> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&bytes).with_context(|| format!("{} is not a float32 [n, d] .npy file", path.display()))
}

/// `matrix` as the bytes of a `.npy` file (format 1.0, `<f4`, C order): what
/// `read_f32_matrix` reads back.
pub fn f32_matrix_bytes(matrix: &Matrix) -> Vec<u8> {
    let header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        matrix.rows, matrix.dim
    );
    with_header(&header, &matrix.values)
}

/// Format 1.0: the magic, `header` padded so that the data starts at a multiple of 64 bytes,
/// then `values` little-endian.
fn with_header(header: &str, values: &[f32]) -> Vec<u8> {
    let mut h = header.to_string();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

fn parse(bytes: &[u8]) -> anyhow::Result<Matrix> {
    ensure!(bytes.len() >= 10 && &bytes[..6] == b"\x93NUMPY", "no .npy magic");
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            ensure!(bytes.len() >= 12, "truncated header");
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => bail!("format version {v}, expected 1, 2 or 3"),
    };
    let body = start + header_len;
    ensure!(bytes.len() >= body, "truncated header");
    let header = std::str::from_utf8(&bytes[start..body]).context("header is not text")?;
    let compact: String = header.chars().filter(|c| !c.is_whitespace()).collect();
    ensure!(
        compact.contains("'descr':'<f4'"),
        "dtype is not little-endian float32 ('<f4'): {header}"
    );
    ensure!(
        compact.contains("'fortran_order':False"),
        "Fortran order; expected C order: {header}"
    );
    let shape = compact
        .split("'shape':(")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .context("no shape")?;
    let dims: Vec<usize> = shape
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().with_context(|| format!("shape ({shape})")))
        .collect::<anyhow::Result<_>>()?;
    let [rows, dim] = dims[..] else {
        bail!("shape ({shape}): expected two dimensions [n, d]")
    };
    ensure!(dim > 0, "shape ({shape}): rows of 0 values");
    let data = &bytes[body..];
    ensure!(
        data.len() == rows * dim * 4,
        "{} data bytes for shape ({shape}), expected {}",
        data.len(),
        rows * dim * 4
    );
    let values = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Matrix { rows, dim, values })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_matrix_reads_back() {
        let m = Matrix {
            rows: 2,
            dim: 2,
            values: vec![0.5, -1.0, 2.0, 3.5],
        };
        let back = parse(&f32_matrix_bytes(&m)).unwrap();
        assert_eq!((back.rows, back.dim, back.values), (2, 2, m.values));
    }

    #[test]
    fn a_float32_matrix_is_read_row_by_row() {
        let bytes = with_header(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        );
        let m = parse(&bytes).unwrap();
        assert_eq!((m.rows, m.dim), (2, 3));
        assert_eq!(m.row(1), &[4.0, 5.0, 6.0]);
    }

    #[test]
    fn other_dtypes_shapes_and_truncated_data_are_refused() {
        let f8 = with_header(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 1), }",
            &[1.0, 2.0],
        );
        assert!(parse(&f8).unwrap_err().to_string().contains("float32"));
        let one_d = with_header(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
            &[1.0; 3],
        );
        assert!(parse(&one_d).unwrap_err().to_string().contains("two dimensions"));
        let short = with_header(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }",
            &[1.0; 3],
        );
        assert!(parse(&short).unwrap_err().to_string().contains("data bytes"));
        assert!(parse(b"not numpy").is_err());
    }
}
