//! `ferrite build-index`: a catalog table (Parquet or JSON Lines) → the visual-search index
//! directory `ferrite serve` loads (`[search] index_dir`).
//!
//! Each row is an item (`item_id`, `category`, `in_stock`, `price`) with an `image_path`
//! (relative to the catalog file) embedded here through the model repository, or, with
//! `--embeddings`, row `i` of a float32 `[n, d]` .npy file as its embedding.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail, ensure};
use ferrite_models::{ModelRepository, OnnxRuntime};
use ferrite_search::catalog::{CatalogRow, IndexBuildConfig, IndexMeta, RowSource, build_index, embed_rows};
use ferrite_search::preprocess::{ImageLimits, Preprocessor};
use ferrite_server::{ModelEmbedder, expected_for, preprocess_config};

#[derive(clap::Args, Debug, Clone)]
pub struct BuildIndexArgs {
    /// The catalog: Parquet, or JSON Lines (`.jsonl`), one item a row: item_id, category,
    /// in_stock, price, and image_path (relative to the catalog file) unless --embeddings.
    #[arg(long)]
    pub catalog: PathBuf,
    /// The index directory to write (replaced whole when it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// A float32 [n, d] .npy whose row i is catalog row i's embedding; images are not read.
    #[arg(long)]
    pub embeddings: Option<PathBuf>,
    /// A FAISS index factory string: Flat, HNSW32, IVF1024,Flat, IVF4096,PQ64, …
    #[arg(long, default_value = "Flat")]
    pub factory: String,
    /// The embedding model, as served (its version and width are stored in the index).
    #[arg(long, default_value = "image_embedder_onnx")]
    pub model: String,
    /// The model repository.
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// Images embedded per model run.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Project embeddings to this many dimensions with PCA fitted on the catalog.
    #[arg(long)]
    pub pca_dim: Option<usize>,
}

/// One row of a `.jsonl` catalog; other fields (e.g. `sha256`) are ignored.
#[derive(serde::Deserialize)]
struct JsonRow {
    item_id: String,
    category: String,
    in_stock: bool,
    price: f64,
    #[serde(default)]
    image_path: Option<String>,
}

/// Builds and writes the index; returns its metadata.
pub fn run(args: &BuildIndexArgs) -> anyhow::Result<IndexMeta> {
    let mut rows = read_catalog(&args.catalog)?;
    ensure!(!rows.is_empty(), "{} holds no item", args.catalog.display());
    if let Some(path) = &args.embeddings {
        let matrix = crate::npy::read_f32_matrix(path)?;
        ensure!(
            matrix.rows == rows.len(),
            "{} has {} rows, the catalog {} items",
            path.display(),
            matrix.rows,
            rows.len()
        );
        for (i, row) in rows.iter_mut().enumerate() {
            row.source = RowSource::Embedding(matrix.row(i).to_vec());
        }
    } else if let Some(row) = rows.iter().find(|r| !matches!(r.source, RowSource::Image(_))) {
        bail!(
            "item {:?} has no image_path: give every row one, or pass --embeddings",
            row.item_id
        );
    }

    let runtime = OnnxRuntime::get(None)?;
    let models = Arc::new(ModelRepository::new(args.models.clone(), runtime));
    models
        .load(&args.model)
        .with_context(|| format!("loading model {:?} from {}", args.model, args.models.display()))?;
    let expected = expected_for(&models, &args.model)?;
    if let Some(RowSource::Embedding(v)) = rows.first().map(|r| &r.source) {
        ensure!(
            v.len() == expected.dim,
            "the embeddings have {} values, model {:?} embeds to {}",
            v.len(),
            args.model,
            expected.dim
        );
    }
    let preprocessor = Preprocessor::new(preprocess_config(ImageLimits::default()))?;
    let embedder = ModelEmbedder::new(models.clone(), &args.model, &expected.model_version);
    let items = embed_rows(rows, &preprocessor, &embedder, args.batch_size)?;

    let config = IndexBuildConfig {
        factory: args.factory.clone(),
        model: expected.model.clone(),
        model_version: expected.model_version.clone(),
        dim: expected.dim,
        pca_dim: args.pca_dim,
        ..IndexBuildConfig::default()
    };
    // Written beside the target, then swapped in, so a server reloading meanwhile never
    // reads a half-written index.
    let name = args
        .out
        .file_name()
        .map_or("index".into(), |n| n.to_string_lossy().into_owned());
    let parent = args.out.parent().unwrap_or(Path::new(".")).to_path_buf();
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = parent.join(format!(".{name}.building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let meta = build_index(items, &config, &staging)?;
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    if args.out.exists() {
        std::fs::rename(&args.out, &old).with_context(|| format!("moving {} aside", args.out.display()))?;
    }
    std::fs::rename(&staging, &args.out).with_context(|| format!("writing {}", args.out.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(meta)
}

/// Reads catalog rows from Parquet or JSON Lines (by extension: `.jsonl`/`.json`).
pub fn read_catalog(path: &Path) -> anyhow::Result<Vec<CatalogRow>> {
    let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if matches!(ext, "jsonl" | "json" | "ndjson") {
        read_jsonl(path, &base)
    } else {
        read_parquet(path, &base)
    }
}

fn read_jsonl(path: &Path, base: &Path) -> anyhow::Result<Vec<CatalogRow>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: JsonRow =
            serde_json::from_str(line).with_context(|| format!("{} line {}", path.display(), n + 1))?;
        rows.push(CatalogRow {
            item_id: row.item_id,
            category: row.category,
            in_stock: row.in_stock,
            price: row.price,
            source: source_of(row.image_path.as_deref(), base),
        });
    }
    Ok(rows)
}

fn source_of(image_path: Option<&str>, base: &Path) -> RowSource {
    match image_path {
        Some(p) if !p.is_empty() => RowSource::Image(base.join(p)),
        _ => RowSource::Embedding(Vec::new()),
    }
}

fn read_parquet(path: &Path, base: &Path) -> anyhow::Result<Vec<CatalogRow>> {
    use polars::prelude::{DataType, ParquetReader, SerReader};
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let df = ParquetReader::new(file)
        .finish()
        .with_context(|| format!("reading {} as Parquet", path.display()))?;
    let column = |name: &str| {
        df.column(name)
            .with_context(|| format!("{}: no column {name:?}", path.display()))
    };
    let ids = column("item_id")?.str()?.clone();
    let categories = column("category")?.str()?.clone();
    let in_stock = column("in_stock")?.bool()?.clone();
    let price = column("price")?.cast(&DataType::Float64)?;
    let price = price.f64()?;
    let images = match df.column("image_path") {
        Ok(c) => Some(c.str()?.clone()),
        Err(_) => None,
    };
    let mut rows = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        let item_id = ids
            .get(i)
            .with_context(|| format!("{}: row {i} has no item_id", path.display()))?;
        rows.push(CatalogRow {
            item_id: item_id.to_string(),
            category: categories.get(i).unwrap_or("").to_string(),
            in_stock: in_stock.get(i).unwrap_or(false),
            price: price.get(i).unwrap_or(f64::NAN),
            source: source_of(images.as_ref().and_then(|c| c.get(i)), base),
        });
    }
    Ok(rows)
}
