//! Principal components of the catalog's embeddings, for a smaller index: the covariance of
//! a sample, then orthogonal (block power) iteration for its leading eigenvectors.

use super::build::training_rows;
use super::error::CatalogError;
use super::types::Projection;

/// Deterministic start vectors (a linear congruential generator), so builds repeat.
fn start_values(count: usize) -> Vec<f64> {
    let mut state = 0x5EED_u64;
    (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        })
        .collect()
}

/// Orthonormalises `columns` in place (modified Gram-Schmidt, twice for round-off); a
/// column that vanishes is replaced by a unit axis not yet spanned.
fn orthonormalise(columns: &mut [Vec<f64>]) {
    for pass in 0..2 {
        for i in 0..columns.len() {
            let (done, rest) = columns.split_at_mut(i);
            let v = &mut rest[0];
            for u in done.iter() {
                let dot: f64 = u.iter().zip(v.iter()).map(|(a, b)| a * b).sum();
                v.iter_mut().zip(u).for_each(|(x, a)| *x -= dot * a);
            }
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm > 1e-12 {
                v.iter_mut().for_each(|x| *x /= norm);
            } else if pass == 0 {
                v.iter_mut().for_each(|x| *x = 0.0);
                let axis = i % v.len();
                v[axis] = 1.0;
            }
        }
    }
}

/// The projection onto the `out_dim` leading principal components of `vectors` (rows of
/// `dim` values), estimated from at most `sample` evenly spread rows.
pub fn fit_pca(
    vectors: &[f32],
    dim: usize,
    out_dim: usize,
    sample: usize,
    iterations: usize,
) -> Result<Projection, CatalogError> {
    if out_dim == 0 || out_dim > dim {
        return Err(CatalogError::Config(format!(
            "pca_dim must be between 1 and the embedding's dimension {dim}; got {out_dim}"
        )));
    }
    let rows = training_rows(vectors, dim, sample);
    let n = rows.len() / dim;
    if n < 2 {
        return Err(CatalogError::Config(format!(
            "PCA needs at least 2 items, the catalog has {n}"
        )));
    }
    let mut mean = vec![0.0f64; dim];
    for row in rows.chunks(dim) {
        mean.iter_mut().zip(row).for_each(|(m, &x)| *m += f64::from(x));
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);

    // Upper triangle of the covariance, then mirrored.
    let mut cov = vec![0.0f64; dim * dim];
    let mut centred = vec![0.0f64; dim];
    for row in rows.chunks(dim) {
        centred
            .iter_mut()
            .zip(row.iter().zip(&mean))
            .for_each(|(c, (&x, m))| *c = f64::from(x) - m);
        for i in 0..dim {
            let ci = centred[i];
            let line = &mut cov[i * dim + i..(i + 1) * dim];
            line.iter_mut()
                .zip(&centred[i..])
                .for_each(|(acc, cj)| *acc += ci * cj);
        }
    }
    for i in 0..dim {
        for j in i..dim {
            let v = cov[i * dim + j] / (n - 1) as f64;
            cov[i * dim + j] = v;
            cov[j * dim + i] = v;
        }
    }
    let times = |v: &[f64]| -> Vec<f64> {
        cov.chunks(dim)
            .map(|line| line.iter().zip(v).map(|(a, b)| a * b).sum())
            .collect()
    };

    let start = start_values(dim * out_dim);
    let mut columns: Vec<Vec<f64>> = start.chunks(dim).map(<[f64]>::to_vec).collect();
    orthonormalise(&mut columns);
    for _ in 0..iterations.max(1) {
        columns = columns.iter().map(|v| times(v)).collect();
        orthonormalise(&mut columns);
    }
    // Order by explained variance (the Rayleigh quotient of each column).
    let mut ranked: Vec<(f64, Vec<f64>)> = columns
        .into_iter()
        .map(|v| {
            let cv = times(&v);
            (v.iter().zip(&cv).map(|(a, b)| a * b).sum(), v)
        })
        .collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));

    Ok(Projection {
        in_dim: dim,
        out_dim,
        mean: mean.iter().map(|&m| m as f32).collect(),
        matrix: ranked
            .iter()
            .flat_map(|(_, v)| v.iter().map(|&x| x as f32))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points spread along three known directions of a 12-d space, with a little noise.
    fn planted(n: usize) -> Vec<f32> {
        let noise = start_values(n * 12);
        let noise = &noise;
        (0..n)
            .flat_map(|i| {
                let (a, b, c) = (
                    (i as f64 * 0.37).sin() * 5.0,
                    (i as f64 * 0.11).cos() * 3.0,
                    (i as f64 * 0.73).sin(),
                );
                let mut v = [0.0f64; 12];
                v[0] = a + 1.0;
                v[4] = b;
                v[7] = c;
                (0..12).map(move |j| (v[j] + 0.01 * noise[i * 12 + j]) as f32)
            })
            .collect()
    }

    #[test]
    fn finds_the_planted_directions_in_order() {
        let vectors = planted(2_000);
        let p = fit_pca(&vectors, 12, 3, 10_000, 60).unwrap();
        assert_eq!((p.in_dim, p.out_dim, p.matrix.len()), (12, 3, 36));
        for (row, axis) in p.matrix.chunks(12).zip([0, 4, 7]) {
            assert!(row[axis].abs() > 0.99, "row {row:?} should be axis {axis}");
        }
        // Rows are orthonormal.
        for i in 0..3 {
            for j in 0..3 {
                let dot: f32 = p.matrix[i * 12..(i + 1) * 12]
                    .iter()
                    .zip(&p.matrix[j * 12..(j + 1) * 12])
                    .map(|(a, b)| a * b)
                    .sum();
                let expected = if i == j { 1.0 } else { 0.0 };
                assert!((dot - expected).abs() < 1e-4, "rows {i},{j}: {dot}");
            }
        }
        assert!((p.mean[0] - 1.0).abs() < 0.1);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(fit_pca(&[0.0; 8], 4, 5, 10, 5).is_err());
        assert!(fit_pca(&[0.0; 4], 4, 2, 10, 5).is_err());
    }
}
