//! KServe v2 wire tensors ⇄ `ferrite_models::Tensor`, and checks on what the wire allows; a
//! pipeline's inputs and answers as KServe tensors.

use ferrite_features::{DType, Value};
use ferrite_models::{DataType, ModelConfig, Tensor, TensorData, TensorSpec, VersionPolicy};
use ferrite_pipelines::{CallInput, Pipeline, RowAnswer};
use ferrite_proto::inference::model_infer_request::InferInputTensor;
use ferrite_proto::inference::model_infer_response::InferOutputTensor;
use ferrite_proto::inference::model_metadata_response::TensorMetadata;
use ferrite_proto::inference::{self as pb, ModelInferRequest, ModelInferResponse};
use tonic::Status;

fn invalid(message: String) -> Status {
    Status::invalid_argument(message)
}

fn datatype(input: &InferInputTensor) -> Result<DataType, Status> {
    DataType::parse(&input.datatype).ok_or_else(|| {
        let supported: Vec<&str> = DataType::ALL.iter().map(|d| d.as_str()).collect();
        invalid(format!(
            "input {:?}: datatype {:?} is not one of {supported:?}",
            input.name, input.datatype
        ))
    })
}

fn shape(input: &InferInputTensor) -> Result<Vec<usize>, Status> {
    input
        .shape
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| invalid(format!("input {:?}: negative dimension {d}", input.name)))
        })
        .collect()
}

/// The request's input tensors, from `raw_input_contents` when present, else the typed
/// contents, which are moved out of the request rather than copied.
pub fn request_tensors(req: &mut ModelInferRequest) -> Result<Vec<Tensor>, Status> {
    let raw = !req.raw_input_contents.is_empty();
    if raw && req.raw_input_contents.len() != req.inputs.len() {
        return Err(invalid(format!(
            "{} inputs but {} raw_input_contents entries; expected one per input",
            req.inputs.len(),
            req.raw_input_contents.len()
        )));
    }
    req.inputs
        .iter_mut()
        .enumerate()
        .map(|(i, input)| {
            let dtype = datatype(input)?;
            let shape = shape(input)?;
            let data = if raw {
                if input.contents.as_ref().is_some_and(has_elements) {
                    return Err(invalid(format!(
                        "input {:?} has both typed contents and an entry in raw_input_contents; \
                         send its data one way: raw_input_contents for every input, or contents for every input",
                        input.name
                    )));
                }
                decode_raw(&input.name, dtype, &req.raw_input_contents[i])?
            } else {
                typed(input, dtype)?
            };
            // The request's tensor names are not read again: moved, not copied.
            Tensor::new(std::mem::take(&mut input.name), shape, data).map_err(|e| invalid(e.to_string()))
        })
        .collect()
}

/// Whether typed contents carry any element (an empty `contents` message carries none).
fn has_elements(c: &pb::InferTensorContents) -> bool {
    !(c.bool_contents.is_empty()
        && c.int_contents.is_empty()
        && c.int64_contents.is_empty()
        && c.uint_contents.is_empty()
        && c.uint64_contents.is_empty()
        && c.fp32_contents.is_empty()
        && c.fp64_contents.is_empty()
        && c.bytes_contents.is_empty())
}

fn typed(input: &mut InferInputTensor, dtype: DataType) -> Result<TensorData, Status> {
    let c = input.contents.take().unwrap_or_default();
    Ok(match dtype {
        DataType::Bool => TensorData::Bool(c.bool_contents),
        DataType::Int32 => TensorData::Int32(c.int_contents),
        DataType::Int64 => TensorData::Int64(c.int64_contents),
        DataType::Fp32 => TensorData::Fp32(c.fp32_contents),
        DataType::Fp64 => TensorData::Fp64(c.fp64_contents),
        DataType::Bytes => TensorData::Bytes(c.bytes_contents),
    })
}

/// Little-endian elements; BYTES elements each carry a 4-byte little-endian length first.
fn decode_raw(name: &str, dtype: DataType, bytes: &[u8]) -> Result<TensorData, Status> {
    if let Some(size) = dtype.element_size()
        && !bytes.len().is_multiple_of(size)
    {
        return Err(invalid(format!(
            "input {name:?}: {} raw bytes is not a whole number of {dtype} elements ({size} bytes each)",
            bytes.len()
        )));
    }
    macro_rules! le {
        ($t:ty, $n:expr) => {
            bytes
                .chunks_exact($n)
                .map(|c| <$t>::from_le_bytes(c.try_into().expect("exact chunk")))
                .collect()
        };
    }
    Ok(match dtype {
        DataType::Bool => TensorData::Bool(bytes.iter().map(|&b| b != 0).collect()),
        DataType::Int32 => TensorData::Int32(le!(i32, 4)),
        DataType::Int64 => TensorData::Int64(le!(i64, 8)),
        DataType::Fp32 => TensorData::Fp32(le!(f32, 4)),
        DataType::Fp64 => TensorData::Fp64(le!(f64, 8)),
        DataType::Bytes => {
            let mut out = Vec::new();
            let mut rest = bytes;
            while !rest.is_empty() {
                let truncated = || invalid(format!("input {name:?}: truncated BYTES element {}", out.len()));
                let len_bytes: [u8; 4] = rest.get(..4).ok_or_else(truncated)?.try_into().expect("4 bytes");
                let len = u32::from_le_bytes(len_bytes) as usize;
                let element = rest.get(4..4 + len).ok_or_else(truncated)?;
                out.push(element.to_vec());
                rest = &rest[4 + len..];
            }
            TensorData::Bytes(out)
        }
    })
}

fn encode_raw(data: &TensorData) -> Vec<u8> {
    fn le<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        // Sized once: collecting a flat_map would grow the buffer step by step.
        let mut out = Vec::with_capacity(v.len() * N);
        for &x in v {
            out.extend_from_slice(&f(x));
        }
        out
    }
    match data {
        TensorData::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
        TensorData::Int32(v) => le(v, i32::to_le_bytes),
        TensorData::Int64(v) => le(v, i64::to_le_bytes),
        TensorData::Fp32(v) => le(v, f32::to_le_bytes),
        TensorData::Fp64(v) => le(v, f64::to_le_bytes),
        TensorData::Bytes(v) => v
            .iter()
            .flat_map(|e| {
                (e.len() as u32)
                    .to_le_bytes()
                    .into_iter()
                    .chain(e.iter().copied())
            })
            .collect(),
    }
}

/// The answer, with every output (or just those requested) as raw bytes, as Triton answers.
/// The request's model name and id move into the answer.
pub fn response(
    req: &mut ModelInferRequest,
    version: u64,
    outputs: Vec<Tensor>,
) -> Result<ModelInferResponse, Status> {
    for wanted in &req.outputs {
        if !outputs.iter().any(|o| o.name == wanted.name) {
            let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
            return Err(invalid(format!(
                "requested output {:?} does not exist; the model has {names:?}",
                wanted.name
            )));
        }
    }
    let n = outputs.len();
    let selected = outputs
        .into_iter()
        .filter(|o| req.outputs.is_empty() || req.outputs.iter().any(|w| w.name == o.name));
    let mut response = ModelInferResponse {
        model_name: std::mem::take(&mut req.model_name),
        model_version: version.to_string(),
        id: std::mem::take(&mut req.id),
        outputs: Vec::with_capacity(n),
        raw_output_contents: Vec::with_capacity(n),
        ..Default::default()
    };
    for out in selected {
        response.raw_output_contents.push(encode_raw(&out.data));
        response.outputs.push(InferOutputTensor {
            name: out.name,
            datatype: out.data.dtype().as_str().to_string(),
            shape: out.shape.iter().map(|&d| d as i64).collect(),
            ..Default::default()
        });
    }
    Ok(response)
}

pub fn tensor_metadata(config: &ModelConfig, spec: &TensorSpec) -> TensorMetadata {
    TensorMetadata {
        name: spec.name.clone(),
        datatype: spec.dtype.as_str().to_string(),
        shape: config.full_shape(spec),
    }
}

fn triton_type(d: DataType) -> pb::DataType {
    match d {
        DataType::Bool => pb::DataType::TypeBool,
        DataType::Int32 => pb::DataType::TypeInt32,
        DataType::Int64 => pb::DataType::TypeInt64,
        DataType::Fp32 => pb::DataType::TypeFp32,
        DataType::Fp64 => pb::DataType::TypeFp64,
        DataType::Bytes => pb::DataType::TypeString,
    }
}

/// The model's config in Triton's `ModelConfig` message.
/// A `[[model_warmup]]` entry as Triton's `ModelWarmup`: dims default to the input's, -1 as 1.
fn warmup(config: &ModelConfig, w: &ferrite_models::warmup::Warmup) -> pb::ModelWarmup {
    use pb::model_warmup::input::InputDataType;
    let inputs = w
        .inputs
        .iter()
        .map(|(name, input)| {
            let spec = config.inputs.iter().find(|s| s.name == *name);
            let dims = input.dims.clone().unwrap_or_else(|| {
                spec.map(|s| s.dims.iter().map(|&d| d.max(1)).collect())
                    .unwrap_or_default()
            });
            let data = match (&input.input_data_file, input.random_data) {
                (Some(file), _) => InputDataType::InputDataFile(file.clone()),
                (None, true) => InputDataType::RandomData(true),
                (None, false) => InputDataType::ZeroData(true),
            };
            let input = pb::model_warmup::Input {
                data_type: spec.map(|s| triton_type(s.dtype) as i32).unwrap_or_default(),
                dims,
                input_data_type: Some(data),
            };
            (name.clone(), input)
        })
        .collect();
    pb::ModelWarmup {
        name: w.name.clone(),
        batch_size: w.batch_size as u32,
        inputs,
        count: w.count as u32,
    }
}

pub fn triton_config(name: &str, config: &ModelConfig) -> pb::ModelConfig {
    use pb::model_version_policy::{All, Latest, PolicyChoice, Specific};
    let policy = match &config.version_policy {
        VersionPolicy::Latest(n) => PolicyChoice::Latest(Latest { num_versions: *n }),
        VersionPolicy::All => PolicyChoice::All(All {}),
        VersionPolicy::Specific(v) => PolicyChoice::Specific(Specific {
            versions: v.iter().map(|&x| x as i64).collect(),
        }),
    };
    let (platform, backend) = match config.backend {
        ferrite_models::BackendKind::Onnx => ("onnxruntime_onnx", "onnxruntime"),
        ferrite_models::BackendKind::Candle => ("candle", "candle"),
    };
    pb::ModelConfig {
        name: name.to_string(),
        platform: platform.into(),
        backend: backend.into(),
        version_policy: Some(pb::ModelVersionPolicy {
            policy_choice: Some(policy),
        }),
        max_batch_size: config.max_batch_size as i32,
        input: config
            .inputs
            .iter()
            .map(|s| pb::ModelInput {
                name: s.name.clone(),
                data_type: triton_type(s.dtype) as i32,
                dims: s.dims.clone(),
            })
            .collect(),
        output: config
            .outputs
            .iter()
            .map(|s| pb::ModelOutput {
                name: s.name.clone(),
                data_type: triton_type(s.dtype) as i32,
                dims: s.dims.clone(),
            })
            .collect(),
        model_warmup: config.model_warmup.iter().map(|w| warmup(config, w)).collect(),
        dynamic_batching: config
            .dynamic_batching
            .as_ref()
            .map(|b| pb::ModelDynamicBatching {
                preferred_batch_size: b.preferred_batch_sizes.iter().map(|&x| x as i32).collect(),
                max_queue_delay_microseconds: b.max_queue_delay_us,
            }),
    }
}

/// One version's statistics in Triton's message.
pub fn statistics(name: &str, v: &ferrite_models::repository::LoadedVersion) -> pb::ModelStatistics {
    use std::sync::atomic::Ordering::Relaxed;
    let d = |x: &ferrite_models::stats::Duration64| {
        let (count, ns) = x.get();
        Some(pb::StatisticDuration { count, ns })
    };
    let s = &v.stats;
    pb::ModelStatistics {
        name: name.to_string(),
        version: v.version.to_string(),
        last_inference: s.last_inference_ms.load(Relaxed),
        inference_count: s.inference_count.load(Relaxed),
        execution_count: s.execution_count.load(Relaxed),
        inference_stats: Some(pb::InferStatistics {
            success: d(&s.success),
            fail: d(&s.fail),
            queue: d(&s.queue),
            compute_infer: d(&s.compute),
            ..Default::default()
        }),
        batch_stats: s
            .batches()
            .into_iter()
            .map(|(size, count, ns)| pb::InferBatchStatistics {
                batch_size: size as u64,
                compute_infer: Some(pb::StatisticDuration { count, ns }),
                ..Default::default()
            })
            .collect(),
    }
}

// Pipelines as KServe models: entity ids and request fields in, one row per element of the
// first dimension; the row's answer out.

/// The platform a pipeline reports in ModelMetadata and ModelConfig.
pub const PIPELINE_PLATFORM: &str = "ferrite_pipeline";
/// A pipeline has one version: its definition. (Its model's version is an output.)
pub const PIPELINE_VERSION: u64 = 1;

/// What a pipeline input becomes in the call.
#[derive(Debug, Clone, Copy)]
enum Column {
    Entity,
    Field(DType),
}

impl Column {
    /// The datatype metadata advertises. Ids are BYTES (decimal strings) so that one input
    /// type fits every key type.
    fn datatype(self) -> DataType {
        match self {
            Column::Entity | Column::Field(DType::String) => DataType::Bytes,
            Column::Field(DType::Float) => DataType::Fp64,
            Column::Field(DType::Int) => DataType::Int64,
            Column::Field(DType::Bool) => DataType::Bool,
            Column::Field(DType::FloatVector) => DataType::Fp32,
        }
    }

    /// Alternatives that lose nothing are accepted too (ids as integers, FP32 for FP64, INT32
    /// for INT64); vectors become f32 either way.
    fn accepts(self) -> &'static [DataType] {
        use DataType::*;
        match self {
            Column::Entity => &[Bytes, Int64, Int32],
            Column::Field(DType::String) => &[Bytes],
            Column::Field(DType::Float) => &[Fp64, Fp32],
            Column::Field(DType::Int) => &[Int64, Int32],
            Column::Field(DType::Bool) => &[Bool],
            Column::Field(DType::FloatVector) => &[Fp32, Fp64],
        }
    }

    /// One row's shape after the batch dimension: a value, or a vector of any length.
    fn dims(self) -> Vec<i64> {
        match self {
            Column::Field(DType::FloatVector) => vec![-1],
            _ => vec![1],
        }
    }
}

/// The pipeline's inputs in metadata order: entity keys, then request fields.
fn pipeline_columns(p: &Pipeline) -> Vec<(&str, Column)> {
    p.input
        .entity_keys
        .iter()
        .map(|(k, _)| (k.as_str(), Column::Entity))
        .chain(
            p.input
                .request_fields
                .iter()
                .map(|(f, &t)| (f.as_str(), Column::Field(t))),
        )
        .collect()
}

const PIPELINE_OUTPUTS: [(&str, DataType); 4] = [
    ("score", DataType::Fp64),
    ("decision", DataType::Bytes),
    ("fallback", DataType::Bool),
    ("model_version", DataType::Bytes),
];

fn with_batch(dims: Vec<i64>) -> Vec<i64> {
    std::iter::once(-1).chain(dims).collect()
}

pub fn pipeline_metadata(p: &Pipeline) -> pb::ModelMetadataResponse {
    pb::ModelMetadataResponse {
        name: p.name.clone(),
        versions: vec![PIPELINE_VERSION.to_string()],
        platform: PIPELINE_PLATFORM.into(),
        inputs: pipeline_columns(p)
            .into_iter()
            .map(|(name, c)| TensorMetadata {
                name: name.to_string(),
                datatype: c.datatype().as_str().to_string(),
                shape: with_batch(c.dims()),
            })
            .collect(),
        outputs: PIPELINE_OUTPUTS
            .iter()
            .map(|(name, d)| TensorMetadata {
                name: name.to_string(),
                datatype: d.as_str().to_string(),
                shape: vec![-1, 1],
            })
            .collect(),
    }
}

/// As Triton describes a batching model: `max_batch_size` is the pipeline's `max_batch` and
/// dims leave out the batch dimension, so perf_analyzer sends `[batch, 1]` per input.
pub fn pipeline_config(p: &Pipeline) -> pb::ModelConfig {
    use pb::model_version_policy::{PolicyChoice, Specific};
    pb::ModelConfig {
        name: p.name.clone(),
        platform: PIPELINE_PLATFORM.into(),
        backend: PIPELINE_PLATFORM.into(),
        version_policy: Some(pb::ModelVersionPolicy {
            policy_choice: Some(PolicyChoice::Specific(Specific {
                versions: vec![PIPELINE_VERSION as i64],
            })),
        }),
        max_batch_size: i32::try_from(p.max_batch).unwrap_or(i32::MAX),
        input: pipeline_columns(p)
            .into_iter()
            .map(|(name, c)| pb::ModelInput {
                name: name.to_string(),
                data_type: triton_type(c.datatype()) as i32,
                dims: c.dims(),
            })
            .collect(),
        output: PIPELINE_OUTPUTS
            .iter()
            .map(|&(name, d)| pb::ModelOutput {
                name: name.to_string(),
                data_type: triton_type(d) as i32,
                dims: vec![1],
            })
            .collect(),
        model_warmup: Vec::new(),
        dynamic_batching: None,
    }
}

/// The call's rows from the request's tensors: every input present once, of an accepted
/// datatype, with as many rows as the first.
pub fn pipeline_call(p: &Pipeline, tensors: Vec<Tensor>) -> Result<CallInput, Status> {
    let columns = pipeline_columns(p);
    let names = || columns.iter().map(|(n, _)| *n).collect::<Vec<_>>();
    let mut input = CallInput::default();
    let mut first: Option<(String, usize)> = None;
    for t in tensors {
        let Some(&(_, column)) = columns.iter().find(|(n, _)| *n == t.name) else {
            return Err(invalid(format!(
                "input {:?}: not an input of pipeline {:?}; its inputs are {:?}",
                t.name,
                p.name,
                names()
            )));
        };
        let target = match column {
            Column::Entity => &mut input.entities,
            Column::Field(_) => &mut input.fields,
        };
        if target.contains_key(&t.name) {
            return Err(invalid(format!("input {:?}: given twice", t.name)));
        }
        let dtype = t.data.dtype();
        if !column.accepts().contains(&dtype) {
            let accepted: Vec<&str> = column.accepts().iter().map(|d| d.as_str()).collect();
            return Err(invalid(format!(
                "input {:?}: datatype {dtype}, expected {} (accepted: {})",
                t.name,
                column.datatype(),
                accepted.join(", ")
            )));
        }
        let Some(&rows) = t.shape.first() else {
            return Err(invalid(format!(
                "input {:?}: shape [] has no batch dimension; expected [rows, 1]",
                t.name
            )));
        };
        let (first_name, want) = first.get_or_insert_with(|| (t.name.clone(), rows));
        if rows != *want {
            return Err(invalid(format!(
                "input {:?}: {rows} rows (shape {:?}), but input {first_name:?} has {want}; every input needs one value per row",
                t.name, t.shape
            )));
        }
        let values = column_values(&t, column, rows)?;
        target.insert(t.name, values);
    }
    for (name, column) in &columns {
        let given = match column {
            Column::Entity => input.entities.contains_key(*name),
            Column::Field(_) => input.fields.contains_key(*name),
        };
        if !given {
            return Err(invalid(format!(
                "input {name:?}: missing; pipeline {:?} takes inputs {:?}",
                p.name,
                names()
            )));
        }
    }
    Ok(input)
}

/// One value per row: shape `[rows]` or `[rows, 1]`, or `[rows, n]` for a vector field.
fn column_values(t: &Tensor, column: Column, rows: usize) -> Result<Vec<Value>, Status> {
    let name = &t.name;
    if let Column::Field(DType::FloatVector) = column {
        if t.shape.len() != 2 {
            return Err(invalid(format!(
                "input {name:?}: shape {:?}; expected [rows, length]",
                t.shape
            )));
        }
        let width = t.shape[1];
        let floats: Vec<f32> = match &t.data {
            TensorData::Fp32(v) => v.clone(),
            TensorData::Fp64(v) => v.iter().map(|&x| x as f32).collect(),
            d => {
                return Err(invalid(format!(
                    "input {name:?}: datatype {}, expected FP32 or FP64",
                    d.dtype()
                )));
            }
        };
        return Ok(if width == 0 {
            vec![Value::FloatVec(Vec::new()); rows]
        } else {
            floats
                .chunks(width)
                .map(|c| Value::FloatVec(c.to_vec()))
                .collect()
        });
    }
    if t.data.len() != rows || t.shape.len() > 2 {
        return Err(invalid(format!(
            "input {name:?}: shape {:?}; expected [{rows}] or [{rows}, 1], one value per row",
            t.shape
        )));
    }
    Ok(match &t.data {
        TensorData::Bool(v) => v.iter().map(|&b| Value::Bool(b)).collect(),
        TensorData::Int32(v) => v.iter().map(|&i| Value::Int(i64::from(i))).collect(),
        TensorData::Int64(v) => v.iter().map(|&i| Value::Int(i)).collect(),
        TensorData::Fp32(v) => v.iter().map(|&x| Value::Float(f64::from(x))).collect(),
        TensorData::Fp64(v) => v.iter().map(|&x| Value::Float(x)).collect(),
        TensorData::Bytes(v) => v
            .iter()
            .enumerate()
            .map(|(row, b)| {
                std::str::from_utf8(b)
                    .map(|s| Value::Str(s.to_string()))
                    .map_err(|_| invalid(format!("input {name:?}: row {row} is not UTF-8 text")))
            })
            .collect::<Result<_, _>>()?,
    })
}

/// Every output for the answered rows, each `[rows, 1]`.
pub fn pipeline_outputs(rows: &[RowAnswer]) -> Vec<Tensor> {
    let shape = vec![rows.len(), 1];
    let text = |f: fn(&RowAnswer) -> &str| {
        TensorData::Bytes(rows.iter().map(|r| f(r).as_bytes().to_vec()).collect())
    };
    let data = [
        TensorData::Fp64(rows.iter().map(|r| r.score).collect()),
        text(|r| r.decision.as_str()),
        TensorData::Bool(rows.iter().map(|r| r.fallback.is_some()).collect()),
        text(|r| &r.model_version),
    ];
    PIPELINE_OUTPUTS
        .iter()
        .zip(data)
        .map(|(&(name, _), data)| Tensor {
            name: name.to_string(),
            shape: shape.clone(),
            data,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_bytes_round_trip_for_every_type() {
        for data in [
            TensorData::Bool(vec![true, false]),
            TensorData::Int32(vec![-1, 7]),
            TensorData::Int64(vec![i64::MIN, 3]),
            TensorData::Fp32(vec![1.5, -0.25]),
            TensorData::Fp64(vec![std::f64::consts::PI]),
            TensorData::Bytes(vec![b"abc".to_vec(), Vec::new(), "é".as_bytes().to_vec()]),
        ] {
            let decoded = decode_raw("x", data.dtype(), &encode_raw(&data)).unwrap();
            assert_eq!(decoded, data);
        }
    }

    #[test]
    fn bad_raw_lengths_are_invalid_argument() {
        let s = decode_raw("x", DataType::Fp32, &[0; 7]).unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().contains("7 raw bytes"), "{}", s.message());
        let s = decode_raw("x", DataType::Bytes, &[5, 0, 0, 0, b'a']).unwrap_err();
        assert!(s.message().contains("truncated BYTES"), "{}", s.message());
    }

    #[test]
    fn pipeline_columns_take_one_value_per_row() {
        let t = |shape: Vec<usize>, data| Tensor::new("x", shape, data).unwrap();
        let values = column_values(
            &t(vec![2], TensorData::Fp32(vec![1.5, 2.0])),
            Column::Field(DType::Float),
            2,
        );
        assert_eq!(values.unwrap(), [Value::Float(1.5), Value::Float(2.0)]);
        let values = column_values(&t(vec![2, 1], TensorData::Int32(vec![7, 8])), Column::Entity, 2);
        assert_eq!(values.unwrap(), [Value::Int(7), Value::Int(8)]);
        let vectors = t(vec![2, 3], TensorData::Fp32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        let values = column_values(&vectors, Column::Field(DType::FloatVector), 2).unwrap();
        assert_eq!(values[1], Value::FloatVec(vec![4.0, 5.0, 6.0]));
        let s = column_values(&vectors, Column::Field(DType::Float), 2).unwrap_err();
        assert!(s.message().contains("expected [2] or [2, 1]"), "{}", s.message());
        let bytes = t(vec![1], TensorData::Bytes(vec![vec![0xff]]));
        let s = column_values(&bytes, Column::Entity, 1).unwrap_err();
        assert!(s.message().contains("not UTF-8"), "{}", s.message());
    }

    #[test]
    fn element_count_must_match_the_shape() {
        let mut req = ModelInferRequest {
            inputs: vec![InferInputTensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![2, 2],
                ..Default::default()
            }],
            raw_input_contents: vec![vec![0; 12]],
            ..Default::default()
        };
        let s = request_tensors(&mut req).unwrap_err();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().contains("needs 4 elements, got 3"), "{}", s.message());
    }
}
