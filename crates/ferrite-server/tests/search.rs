//! Visual search end to end: the real EfficientNet-Lite0 (the default `search.model`,
//! `image_embedder_onnx`: ONNX Runtime), real FAISS, the real photos of `data/photos`
//! (scripts/fetch_photos.py), over loopback gRPC.

mod common;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ferrite_models::{ModelRepository, OnnxRuntime};
use ferrite_proto::ferrite::v1 as pb;
use ferrite_proto::ferrite::v1::search_service_client::SearchServiceClient;
use ferrite_search::catalog::{
    CatalogItem, CatalogRow, IndexBuildConfig, RowSource, build_index, embed_rows,
};
use ferrite_search::preprocess::{ImageLimits, Preprocessor};
use ferrite_server::{ModelEmbedder, RunningServer, expected_for, preprocess_config};
use ferrite_test_support::{repo_root, venv_python};
use image::{DynamicImage, ImageFormat, RgbImage};
use tonic::Code;
use tonic::transport::Channel;

/// The embedding model the servers of these tests search with (`search.model`, left at its
/// default); the indexes are built with it.
fn model() -> String {
    ferrite_server::config::SearchConfig::default().model
}

/// The photos, their catalog rows and their embeddings, made once per test binary.
struct Fixture {
    photos: Vec<Photo>,
    items: Vec<CatalogItem>,
    model_version: String,
}

struct Photo {
    item_id: String,
    bytes: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let catalog = repo_root().join("data/photos/catalog.jsonl");
        if !catalog.is_file() {
            let status = std::process::Command::new(venv_python())
                .arg(repo_root().join("scripts/fetch_photos.py"))
                .current_dir(repo_root())
                .status()
                .unwrap();
            assert!(status.success(), "scripts/fetch_photos.py failed");
        }
        let mut rows = Vec::new();
        let mut photos = Vec::new();
        for line in std::fs::read_to_string(&catalog).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let path = catalog.parent().unwrap().join(v["image_path"].as_str().unwrap());
            photos.push(Photo {
                item_id: v["item_id"].as_str().unwrap().into(),
                bytes: std::fs::read(&path).unwrap(),
            });
            rows.push(CatalogRow {
                item_id: v["item_id"].as_str().unwrap().into(),
                category: v["category"].as_str().unwrap().into(),
                in_stock: v["in_stock"].as_bool().unwrap(),
                price: v["price"].as_f64().unwrap(),
                source: RowSource::Image(path),
            });
        }
        let models = Arc::new(ModelRepository::new(
            repo_root().join("models"),
            OnnxRuntime::get(None).unwrap(),
        ));
        let model = model();
        if let Err(e) = models.load(&model) {
            panic!("{model} loads (its file is made by scripts/setup.sh): {e}");
        }
        let expected = expected_for(&models, &model).unwrap();
        let preprocessor = Preprocessor::new(preprocess_config(ImageLimits::default())).unwrap();
        let embedder = ModelEmbedder::new(models, &model, &expected.model_version);
        let items = embed_rows(rows, &preprocessor, &embedder, 8).unwrap();
        Fixture {
            photos,
            items,
            model_version: expected.model_version,
        }
    })
}

/// Writes an index of `items` to `dir` the way `ferrite build-index` does (staged, then
/// renamed into place).
fn write_index(dir: &Path, items: Vec<CatalogItem>, model: &str, version: &str) {
    let config = IndexBuildConfig {
        model: model.into(),
        model_version: version.into(),
        ..IndexBuildConfig::default()
    };
    let staging = dir.with_extension("staging");
    let _ = std::fs::remove_dir_all(&staging);
    build_index(items, &config, &staging).unwrap();
    let old = dir.with_extension("old");
    if dir.exists() {
        std::fs::rename(dir, &old).unwrap();
    }
    std::fs::rename(&staging, dir).unwrap();
    let _ = std::fs::remove_dir_all(&old);
}

/// A server whose index holds the photos (plus `extra`), and its client.
async fn start(extra: Vec<CatalogItem>) -> (RunningServer, SearchServiceClient<Channel>, PathBuf) {
    let f = tokio::task::spawn_blocking(fixture).await.unwrap();
    let dir = common::scratch_dir("search").join("index");
    let mut items = f.items.clone();
    items.extend(extra);
    write_index(&dir, items, &model(), &f.model_version);
    let (server, client) = start_at(dir.clone()).await;
    (server, client, dir)
}

async fn start_at(index_dir: PathBuf) -> (RunningServer, SearchServiceClient<Channel>) {
    let mut config = common::test_config();
    config.search.index_dir = index_dir;
    config.search.live_recall_sample = 1.0;
    config.models.poll_interval_s = 0.0;
    let (server, channel) = common::start_with(config).await;
    (server, SearchServiceClient::new(channel))
}

fn by_image(bytes: Vec<u8>, top_k: u32, filter: Option<pb::SearchFilter>) -> pb::VisualSearchRequest {
    pb::VisualSearchRequest {
        query: Some(pb::visual_search_request::Query::Image(bytes)),
        top_k,
        filter,
        include_latency: true,
    }
}

fn by_embedding(values: Vec<f32>, top_k: u32, filter: Option<pb::SearchFilter>) -> pb::VisualSearchRequest {
    pb::VisualSearchRequest {
        query: Some(pb::visual_search_request::Query::Embedding(pb::FloatVector {
            values,
        })),
        top_k,
        filter,
        include_latency: false,
    }
}

fn ids(r: &pb::VisualSearchResponse) -> Vec<&str> {
    r.hits.iter().map(|h| h.item_id.as_str()).collect()
}

fn vector_of(item_id: &str) -> Vec<f32> {
    fixture()
        .items
        .iter()
        .find(|i| i.item_id == item_id)
        .unwrap()
        .vector
        .clone()
}

/// splitmix64: a small seeded generator, so the augmentations are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A random crop of 70–90 % of each side, a horizontal flip half the time, a rotation by 90°
/// or by a small angle (±10°), brightness ×0.8–1.2, then JPEG at quality 60–80.
fn augment(bytes: &[u8], rng: &mut Rng) -> (Vec<u8>, String) {
    let img = image::load_from_memory(bytes).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    let (fw, fh) = (rng.uniform(0.7, 0.9), rng.uniform(0.7, 0.9));
    let (cw, ch) = ((w as f64 * fw) as u32, (h as f64 * fh) as u32);
    let (x, y) = (
        rng.uniform(0.0, (w - cw) as f64) as u32,
        rng.uniform(0.0, (h - ch) as f64) as u32,
    );
    let mut img = image::imageops::crop_imm(&img, x, y, cw, ch).to_image();
    let flip = rng.next().is_multiple_of(2);
    if flip {
        img = image::imageops::flip_horizontal(&img);
    }
    let angle = if rng.next().is_multiple_of(3) {
        90.0
    } else {
        rng.uniform(-10.0, 10.0)
    };
    img = if angle == 90.0 {
        image::imageops::rotate90(&img)
    } else {
        rotate(&img, angle)
    };
    let gain = rng.uniform(0.8, 1.2);
    for p in img.pixels_mut() {
        for c in p.0.iter_mut() {
            *c = (*c as f64 * gain).round().clamp(0.0, 255.0) as u8;
        }
    }
    let quality = 60 + (rng.next() % 21) as u8;
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(&DynamicImage::ImageRgb8(img))
        .unwrap();
    let what = format!(
        "crop {fw:.2}x{fh:.2}, flip {flip}, rotate {angle:.1}°, brightness ×{gain:.2}, jpeg q{quality}"
    );
    (out, what)
}

/// The centred 85 % of a photo, flipped, as JPEG quality 75.
fn mild_twin(bytes: &[u8]) -> Vec<u8> {
    let img = image::load_from_memory(bytes).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    let (cw, ch) = (w * 85 / 100, h * 85 / 100);
    let img = image::imageops::crop_imm(&img, (w - cw) / 2, (h - ch) / 2, cw, ch).to_image();
    let img = image::imageops::flip_horizontal(&img);
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 75)
        .encode_image(&DynamicImage::ImageRgb8(img))
        .unwrap();
    out
}

/// Rotation about the centre by `degrees` (bilinear; corners filled with mid grey).
fn rotate(img: &RgbImage, degrees: f64) -> RgbImage {
    let (w, h) = img.dimensions();
    let (s, c) = degrees.to_radians().sin_cos();
    let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
    RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f64 - cx, y as f64 - cy);
        let (sx, sy) = (c * dx + s * dy + cx, -s * dx + c * dy + cy);
        if sx < 0.0 || sy < 0.0 || sx >= (w - 1) as f64 || sy >= (h - 1) as f64 {
            return image::Rgb([128, 128, 128]);
        }
        let (x0, y0) = (sx.floor() as u32, sy.floor() as u32);
        let (ax, ay) = (sx - x0 as f64, sy - y0 as f64);
        let px = |x, y, k: usize| img.get_pixel(x, y).0[k] as f64;
        image::Rgb(std::array::from_fn(|k| {
            let top = px(x0, y0, k) * (1.0 - ax) + px(x0 + 1, y0, k) * ax;
            let bottom = px(x0, y0 + 1, k) * (1.0 - ax) + px(x0 + 1, y0 + 1, k) * ax;
            (top * (1.0 - ay) + bottom * ay).round() as u8
        }))
    })
}

/// Augmentations per photo: 5 by default; `FERRITE_AUGMENTATIONS=10` for the README's
/// measurement.
fn augmentations() -> usize {
    std::env::var("FERRITE_AUGMENTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn augmented_photos_find_their_original() {
    let (server, mut client, _) = start(Vec::new()).await;
    let mut rng = Rng(20261202);
    let (mut queries, mut first) = (0, 0);
    let mut misses = Vec::new();
    let mut latency = Vec::new();
    for photo in &fixture().photos {
        for _ in 0..augmentations() {
            let (bytes, what) = augment(&photo.bytes, &mut rng);
            let r = client
                .visual_search(by_image(bytes, 5, None))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.plan, "unfiltered");
            let meta = r.meta.as_ref().unwrap();
            assert_eq!(
                (meta.model_name.as_str(), meta.model_version.as_str()),
                (model().as_str(), "1")
            );
            latency.push(r.latency.unwrap());
            queries += 1;
            if ids(&r).first() == Some(&photo.item_id.as_str()) {
                first += 1;
            } else {
                misses.push(format!("{} ({what}) → {:?}", photo.item_id, ids(&r)));
            }
        }
    }
    let rate = first as f64 / queries as f64;
    let mean = |f: fn(&pb::SearchLatency) -> u64| latency.iter().map(f).sum::<u64>() / latency.len() as u64;
    println!(
        "rank-1 {first}/{queries} = {:.1} %; mean µs: decode {}, embed {}, search {}, total {}; misses: {misses:#?}",
        rate * 100.0,
        mean(|l| l.decode_us),
        mean(|l| l.embed_us),
        mean(|l| l.search_us),
        mean(|l| l.total_us),
    );
    assert!(
        rate >= 0.95,
        "the original is rank 1 in {first} of {queries} augmented queries ({:.1} %), expected ≥ 95 %; misses: {misses:#?}",
        rate * 100.0
    );
    let metrics = common::scrape(&server).await;
    assert!(
        metrics.contains("ferrite_search_stage_seconds"),
        "stage latencies exported"
    );
    assert!(metrics.contains("ferrite_search_plans_total"), "plans counted");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_are_honoured_and_the_plan_reported() {
    let (server, mut client, _) = start(Vec::new()).await;
    let query = vector_of("photo-grass");
    let f = |categories: &[&str], in_stock_only, min_price, max_price| {
        Some(pb::SearchFilter {
            categories: categories.iter().map(|c| c.to_string()).collect(),
            in_stock_only,
            min_price,
            max_price,
        })
    };
    let r = client
        .visual_search(by_embedding(query.clone(), 0, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.hits.len(), 10, "top_k 0 answers 10");
    assert_eq!(r.hits[0].item_id, "photo-grass");
    assert_eq!(r.plan, "unfiltered");
    assert!(!r.index_version.is_empty());

    let r = client
        .visual_search(by_embedding(
            query.clone(),
            5,
            f(&["lab", "books"], false, None, None),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.hits.len(), 5);
    assert!(
        r.hits
            .iter()
            .all(|h| h.category == "lab" || h.category == "books"),
        "{:?}",
        r.hits
    );
    assert_eq!(r.plan, "exact_scan", "few items match: an exact scan");

    let r = client
        .visual_search(by_embedding(query.clone(), 30, f(&["lab"], true, None, None)))
        .await
        .unwrap()
        .into_inner();
    let mut got: Vec<&str> = ids(&r);
    got.sort();
    assert_eq!(
        got,
        ["photo-cell", "photo-phantom", "photo-retina"],
        "lab items in stock"
    );

    let r = client
        .visual_search(by_embedding(
            query.clone(),
            30,
            f(&[], false, Some(10.0), Some(20.0)),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.hits.is_empty());
    assert!(
        r.hits.iter().all(|h| (10.0..=20.0).contains(&h.price)),
        "{:?}",
        r.hits
    );
    assert_eq!(r.hits.len(), 6, "{:?}", ids(&r));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn similar_items_and_live_updates() {
    let (server, mut client, _) = start(Vec::new()).await;
    let similar = |id: &str| pb::SimilarItemsRequest {
        item_id: id.into(),
        top_k: 5,
        filter: None,
        include_latency: true,
    };
    let r = client
        .similar_items(similar("photo-chelsea"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.hits.len(), 5);
    assert!(
        !ids(&r).contains(&"photo-chelsea"),
        "the item itself is left out: {:?}",
        ids(&r)
    );

    // An augmented twin of chelsea, upserted from its image, is chelsea's nearest item.
    let chelsea = &fixture()
        .photos
        .iter()
        .find(|p| p.item_id == "photo-chelsea")
        .unwrap()
        .bytes;
    let twin = mild_twin(chelsea);
    let item = |id: &str, vector| pb::CatalogItem {
        item_id: id.into(),
        category: "pets".into(),
        in_stock: true,
        price: 11.0,
        vector: Some(vector),
    };
    let up = client
        .upsert_items(pb::UpsertItemsRequest {
            items: vec![item("twin", pb::catalog_item::Vector::Image(twin.clone()))],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((up.upserted, up.index_size), (1, 25));
    let r = client
        .similar_items(similar("photo-chelsea"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&r)[0], "twin", "{:?}", ids(&r));
    let r = client
        .visual_search(by_image(twin, 3, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&r)[0], "twin");

    // Upsert by embedding, then remove: never answered again.
    let fresh = vector_of("photo-coffee");
    client
        .upsert_items(pb::UpsertItemsRequest {
            items: vec![item(
                "coffee-copy",
                pb::catalog_item::Vector::Embedding(pb::FloatVector {
                    values: fresh.clone(),
                }),
            )],
        })
        .await
        .unwrap();
    let r = client
        .visual_search(by_embedding(fresh.clone(), 2, None))
        .await
        .unwrap()
        .into_inner();
    assert!(ids(&r).contains(&"coffee-copy"), "{:?}", ids(&r));
    let rm = client
        .remove_items(pb::RemoveItemsRequest {
            item_ids: vec!["coffee-copy".into(), "photo-coffee".into(), "nope".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (rm.removed, rm.not_found.clone(), rm.index_size),
        (2, vec!["nope".to_string()], 24)
    );
    for filter in [
        None,
        Some(pb::SearchFilter {
            categories: vec!["kitchen".into()],
            ..Default::default()
        }),
    ] {
        let r = client
            .visual_search(by_embedding(fresh.clone(), 30, filter))
            .await
            .unwrap()
            .into_inner();
        assert!(!ids(&r).iter().any(|id| id.contains("coffee")), "{:?}", ids(&r));
    }
    // All or nothing: one bad item and nothing is written.
    let err = client
        .upsert_items(pb::UpsertItemsRequest {
            items: vec![
                item(
                    "ok",
                    pb::catalog_item::Vector::Embedding(pb::FloatVector {
                        values: fresh.clone(),
                    }),
                ),
                item(
                    "bad",
                    pb::catalog_item::Vector::Embedding(pb::FloatVector { values: vec![0.5; 3] }),
                ),
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("items[1].embedding"), "{}", err.message());
    let r = client
        .visual_search(by_embedding(fresh, 30, None))
        .await
        .unwrap()
        .into_inner();
    assert!(!ids(&r).contains(&"ok"));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_a_rebuilt_index_while_searches_run() {
    let (server, client, dir) = start(Vec::new()).await;
    let before = client
        .clone()
        .visual_search(by_embedding(vector_of("photo-moon"), 1, None))
        .await
        .unwrap()
        .into_inner();
    let mut searches = Vec::new();
    for t in 0..4 {
        let mut c = client.clone();
        searches.push(tokio::spawn(async move {
            for i in 0..40 {
                // Not photo-moon: the rebuilt index adds a copy of it.
                let id = &fixture().items[(t * 40 + i) % 24].item_id;
                if id == "photo-moon" {
                    continue;
                }
                let r = c
                    .visual_search(by_embedding(vector_of(id), 3, None))
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(&r.hits[0].item_id, id);
            }
        }));
    }
    let mut items = fixture().items.clone();
    items.push(CatalogItem {
        item_id: "new-moon".into(),
        ..items.iter().find(|i| i.item_id == "photo-moon").unwrap().clone()
    });
    let version = fixture().model_version.clone();
    tokio::task::spawn_blocking(move || write_index(&dir, items, &model(), &version))
        .await
        .unwrap();
    let reloaded = client
        .clone()
        .reload_index(pb::ReloadIndexRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reloaded.index_size, 25);
    assert_ne!(reloaded.index_version, before.index_version);
    for s in searches {
        s.await.unwrap();
    }
    let r = client
        .clone()
        .visual_search(by_embedding(vector_of("photo-moon"), 2, None))
        .await
        .unwrap()
        .into_inner();
    assert!(ids(&r).contains(&"new-moon"), "{:?}", ids(&r));
    assert_eq!(r.index_version, reloaded.index_version);
    server.shutdown().await.unwrap();
}

/// A PNG whose header declares `w × h` pixels (valid chunks and CRCs) over a few bytes of
/// image data: what a decoder reads before it allocates.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut body = kind.to_vec();
        body.extend(data);
        let crc = body.iter().fold(!0u32, |mut c, &b| {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xedb8_8320
                } else {
                    c >> 1
                };
            }
            c
        });
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend(body);
        out.extend((!crc).to_be_bytes());
        out
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(chunk(b"IHDR", &ihdr));
    out.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01],
    ));
    out.extend(chunk(b"IEND", &[]));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_invalid_argument_naming_the_field() {
    let (server, mut client, _) = start(Vec::new()).await;
    let coffee = fixture()
        .photos
        .iter()
        .find(|p| p.item_id == "photo-coffee")
        .unwrap();
    let mut jpeg = Vec::new();
    image::load_from_memory(&coffee.bytes)
        .unwrap()
        .write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
        .unwrap();
    // Cut inside its headers. (A JPEG cut inside its entropy-coded data still decodes: the
    // decoder fills the missing rows, as browsers do.)
    let truncated = jpeg[..100].to_vec();
    let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec();
    let cases: Vec<(pb::VisualSearchRequest, Code, &[&str])> = vec![
        (
            by_image(Vec::new(), 5, None),
            Code::InvalidArgument,
            &["image", "empty"],
        ),
        (
            by_image(truncated, 5, None),
            Code::InvalidArgument,
            &["image", "corrupt or truncated"],
        ),
        (
            by_image(png_header(100_000, 100_000), 5, None),
            Code::InvalidArgument,
            &["image", "100000x100000"],
        ),
        (
            by_image(gif, 5, None),
            Code::InvalidArgument,
            &["image", "Gif", "expected JPEG, PNG or WebP"],
        ),
        (
            by_embedding(vec![0.1; 7], 5, None),
            Code::InvalidArgument,
            &["embedding", "7 values", "1280"],
        ),
        (
            by_embedding(vector_of("photo-moon"), 5000, None),
            Code::InvalidArgument,
            &["top_k", "5000", "1000"],
        ),
        (
            by_embedding(
                vector_of("photo-moon"),
                5,
                Some(pb::SearchFilter {
                    min_price: Some(5.0),
                    max_price: Some(1.0),
                    ..Default::default()
                }),
            ),
            Code::InvalidArgument,
            &["filter.min_price"],
        ),
        (
            pb::VisualSearchRequest::default(),
            Code::InvalidArgument,
            &["query"],
        ),
    ];
    for (request, code, words) in cases {
        let err = client.visual_search(request).await.unwrap_err();
        assert_eq!(err.code(), code, "{}", err.message());
        for w in words {
            assert!(
                err.message().to_lowercase().contains(&w.to_lowercase()),
                "{w:?} in {:?}",
                err.message()
            );
        }
    }
    let err = client
        .similar_items(pb::SimilarItemsRequest {
            item_id: "photo-nothing".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("item_id") && err.message().contains("photo-nothing"),
        "{}",
        err.message()
    );
    let err = client
        .similar_items(pb::SimilarItemsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("item_id"), "{}", err.message());
    // The server is still up.
    client
        .visual_search(by_embedding(vector_of("photo-moon"), 1, None))
        .await
        .unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_index_or_one_for_another_model_is_refused_and_the_server_still_starts() {
    let f = tokio::task::spawn_blocking(fixture).await.unwrap();
    let missing = common::scratch_dir("search-none").join("index");
    let (server, mut client) = start_at(missing.clone()).await;
    let err = client
        .visual_search(by_embedding(vector_of("photo-moon"), 1, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("no index") && err.message().contains("ferrite build-index"),
        "{}",
        err.message()
    );

    // Built later (by another model's name): ReloadIndex refuses it and keeps answering
    // FAILED_PRECONDITION; built for the served model: ReloadIndex serves it.
    write_index(&missing, f.items.clone(), "other_embedder", &f.model_version);
    let err = client.reload_index(pb::ReloadIndexRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("other_embedder") && err.message().contains(&model()),
        "{}",
        err.message()
    );
    write_index(&missing, f.items.clone(), &model(), &f.model_version);
    let r = client
        .reload_index(pb::ReloadIndexRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.index_size, 24);
    client
        .visual_search(by_embedding(vector_of("photo-moon"), 1, None))
        .await
        .unwrap();
    server.shutdown().await.unwrap();

    let other = common::scratch_dir("search-other").join("index");
    write_index(&other, f.items.clone(), &model(), "99");
    let (server, mut client) = start_at(other).await;
    let err = client
        .visual_search(by_embedding(vector_of("photo-moon"), 1, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("99"), "{}", err.message());
    server.shutdown().await.unwrap();
}
