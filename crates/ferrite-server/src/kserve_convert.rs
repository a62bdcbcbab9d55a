//! KServe v2 wire tensors ⇄ `ferrite_models::Tensor`, and checks on what the wire allows.

use ferrite_models::{DataType, ModelConfig, Tensor, TensorData, TensorSpec, VersionPolicy};
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
                decode_raw(&input.name, dtype, &req.raw_input_contents[i])?
            } else {
                typed(input, dtype)?
            };
            // The request's tensor names are not read again: moved, not copied.
            Tensor::new(std::mem::take(&mut input.name), shape, data).map_err(|e| invalid(e.to_string()))
        })
        .collect()
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
