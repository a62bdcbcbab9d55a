//! Building a catalog from rows: images are preprocessed and embedded in batches, rows
//! that already hold an embedding are kept, and the result builds and loads as an index.
//! Compaction while updates keep arriving loses none of them.

use std::cell::RefCell;

use ferrite_search::catalog::{
    CatalogError, CatalogIndex, CatalogItem, CatalogRow, Embedder, Expected, IndexBuildConfig, ItemFilter,
    RowSource, SearchConfig, build_index, embed_rows,
};
use ferrite_search::preprocess::{ImageBatch, PreprocessConfig, Preprocessor};
use image::{Rgb, RgbImage};

/// Embeds an image as its mean red, green and blue values, and records batch sizes.
struct MeanColour {
    batches: RefCell<Vec<usize>>,
}

impl Embedder for MeanColour {
    fn embed(&self, images: &ImageBatch) -> Result<Vec<Vec<f32>>, String> {
        self.batches.borrow_mut().push(images.n);
        let plane = images.side * images.side;
        Ok((0..images.n)
            .map(|i| {
                let image = images.image(i);
                (0..3)
                    .map(|c| image[c * plane..(c + 1) * plane].iter().sum::<f32>() / plane as f32)
                    .collect()
            })
            .collect())
    }
}

fn write_png(path: &std::path::Path, colour: [u8; 3]) {
    RgbImage::from_pixel(40, 30, Rgb(colour)).save(path).unwrap();
}

fn row(id: &str, source: RowSource) -> CatalogRow {
    CatalogRow {
        item_id: id.into(),
        category: "shirts".into(),
        in_stock: true,
        price: 20.0,
        source,
    }
}

#[test]
fn image_rows_are_embedded_in_batches_and_the_index_finds_them() {
    let dir = tempfile::tempdir().unwrap();
    let colours = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]];
    let mut rows = Vec::new();
    for (i, colour) in colours.iter().enumerate() {
        let path = dir.path().join(format!("{i}.png"));
        write_png(&path, *colour);
        rows.push(row(&format!("img-{i}"), RowSource::Image(path)));
    }
    rows.insert(2, row("given", RowSource::Embedding(vec![0.5, 0.5, -1.0])));
    let embedder = MeanColour {
        batches: RefCell::new(Vec::new()),
    };
    let preprocessor = Preprocessor::new(PreprocessConfig::default()).unwrap();
    let items = embed_rows(rows, &preprocessor, &embedder, 2).unwrap();
    assert_eq!(*embedder.batches.borrow(), vec![2, 2, 1]);
    let ids: Vec<&str> = items.iter().map(|i| i.item_id.as_str()).collect();
    assert_eq!(ids, ["img-0", "img-1", "given", "img-2", "img-3", "img-4"]);
    // Red under the default normalisation: (1 - 0.5) / 0.5 = 1, (0 - 0.5) / 0.5 = -1.
    assert_eq!(items[0].vector, vec![1.0, -1.0, -1.0]);
    assert_eq!(items[2].vector, vec![0.5, 0.5, -1.0]);

    let config = IndexBuildConfig {
        metric: ferrite_search::catalog::Metric::L2,
        model: "mean_colour".into(),
        model_version: "1".into(),
        ..IndexBuildConfig::default()
    };
    let out = dir.path().join("index");
    build_index(items, &config, &out).unwrap();
    let expected = Expected {
        model: "mean_colour".into(),
        model_version: "1".into(),
        dim: 3,
    };
    let index = CatalogIndex::load(&out, &expected, SearchConfig::default()).unwrap();
    let hits = index
        .search(&[-1.0, -1.0, 0.9], 1, &ItemFilter::default())
        .unwrap()
        .hits;
    assert_eq!(hits[0].item_id, "img-2", "blue is nearest to a bluish query");
}

#[test]
fn a_bad_image_names_its_item() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.png");
    write_png(&good, [1, 2, 3]);
    let bad = dir.path().join("bad.png");
    std::fs::write(&bad, b"not an image").unwrap();
    let rows = vec![
        row("good", RowSource::Image(good)),
        row("bad", RowSource::Image(bad)),
    ];
    let embedder = MeanColour {
        batches: RefCell::new(Vec::new()),
    };
    let preprocessor = Preprocessor::new(PreprocessConfig::default()).unwrap();
    let err = embed_rows(rows, &preprocessor, &embedder, 8).unwrap_err();
    assert!(
        matches!(&err, CatalogError::InvalidItem { item_id, .. } if item_id == "bad"),
        "{err}"
    );
}

/// A unit vector of 8 pseudo-random values seeded by `seed`.
fn spread(seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..8)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

#[test]
fn updates_made_during_a_compaction_survive_it() {
    let item = |i: usize| CatalogItem {
        item_id: format!("item-{i}"),
        category: "c".into(),
        in_stock: true,
        price: 1.0,
        vector: spread(i as u64),
    };
    let config = IndexBuildConfig {
        factory: "HNSW16".into(),
        model: "m".into(),
        model_version: "1".into(),
        ..IndexBuildConfig::default()
    };
    let index = CatalogIndex::build((0..2_000).map(item), &config, SearchConfig::default()).unwrap();
    index.remove(&(0..300).map(|i| format!("item-{i}")).collect::<Vec<_>>());
    std::thread::scope(|scope| {
        let compaction = scope.spawn(|| index.compact());
        for i in 2_000..2_100 {
            index.upsert(vec![item(i)]).unwrap();
            index.remove(&[format!("item-{}", i - 1_000)]);
        }
        assert!(compaction.join().unwrap().unwrap());
    });
    assert_eq!(index.len(), 2_000 - 300 + 100 - 100);
    for i in [2_000usize, 2_050, 2_099] {
        let hits = index
            .search(&item(i).vector, 1, &ItemFilter::default())
            .unwrap()
            .hits;
        assert_eq!(hits[0].item_id, format!("item-{i}"));
    }
    let hits = index
        .search(&item(1_050).vector, 5, &ItemFilter::default())
        .unwrap()
        .hits;
    assert!(hits.iter().all(|h| h.item_id != "item-1050"));
}
