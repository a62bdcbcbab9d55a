//! The ONNX backend: a model file run by ONNX Runtime.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};

use ort::memory::Allocator;
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, Session, SessionInputValue};
use ort::value::{
    DynMapValueType, DynSequenceValueType, DynTensor, DynValue, TensorElementType, TensorRef, ValueType,
};

use crate::trees::TreeEnsemble;
use crate::{DataType, ModelBackend, ModelConfig, ModelError, Tensor, TensorData};

/// Input shapes for which buffers are kept, per model (batch sizes 1..=64 fit).
const MAX_BOUND_SHAPES: usize = 64;

/// Inputs larger than this are handed to ONNX Runtime in place rather than copied into a kept
/// buffer: the copy would cost more than the per-run setup it saves.
const MAX_BOUND_INPUT_BYTES: usize = 64 * 1024;

/// Outputs larger than this in all are not kept: 64 shapes of them would hold too much memory.
const MAX_BOUND_OUTPUT_BYTES: usize = 256 * 1024;

/// One loaded ONNX model. `ort::Session::run` takes `&mut self`, so each session serves one
/// run at a time behind a mutex; with several sessions (`instance_count`) a run takes a free
/// one, else waits for one in turn. The batching queue in front is the other way to keep
/// that cheap.
pub struct OnnxModel {
    runners: Vec<Mutex<Runner>>,
    /// Which session a run that found none free waits for.
    next: std::sync::atomic::AtomicUsize,
    input_names: Vec<String>,
    output_names: Vec<String>,
    /// Per input, in model order: its element type (`None`: one Ferrite does not serve) and
    /// shape (`-1`: any size), when it is a tensor.
    input_specs: Vec<Option<(Option<DataType>, Vec<i64>)>>,
    /// Every input and output is a numeric tensor, so runs can use kept buffers ([`Bound`]).
    bindable: bool,
    /// The graph's tree ensemble, when it has one that [`TreeEnsemble`] evaluates.
    trees: Option<Arc<TreeEnsemble>>,
}

/// The session and, per shape of the inputs, buffers that runs of that shape reuse.
struct Runner {
    session: Session,
    /// Key: for each model input in model order, its element type, rank and dimensions.
    /// `None`: runs of these shapes gave outputs of different shapes; they run without buffers.
    bound: HashMap<Vec<usize>, Option<Bound>>,
    key: Vec<usize>,
}

/// Buffers for one shape of the inputs: the inputs are copied into `inputs` and ONNX Runtime
/// writes the outputs straight into the tensors preallocated in `options`. This skips the
/// per-run creation of input and output values (about a third of a small model's run).
struct Bound {
    /// One per model input, in model order.
    inputs: Vec<DynTensor>,
    options: RunOptions<HasSelectedOutputs>,
}

impl OnnxModel {
    /// Loads `path` with `intra_threads` threads for each run (0 lets ONNX Runtime choose).
    pub fn load(rt: &crate::OnnxRuntime, path: &Path, intra_threads: usize) -> Result<Self, ModelError> {
        Self::load_instances(rt, path, intra_threads, 1)
    }

    /// [`OnnxModel::load`] with `instances` sessions (at least one).
    pub fn load_instances(
        rt: &crate::OnnxRuntime,
        path: &Path,
        intra_threads: usize,
        instances: usize,
    ) -> Result<Self, ModelError> {
        let fail = |e: ort::Error| ModelError::Load {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let open = || {
            let mut builder = Session::builder(rt.environment()).map_err(fail)?;
            if intra_threads > 0 {
                builder = builder
                    .with_intra_threads(intra_threads)
                    .map_err(|e| fail(e.into()))?;
            }
            builder.commit_from_file(path).map_err(fail)
        };
        let session = open()?;
        let input_names = session.inputs().iter().map(|o| o.name().to_string()).collect();
        let input_specs = session
            .inputs()
            .iter()
            .map(|o| match o.dtype() {
                ValueType::Tensor { ty, shape, .. } => Some((data_type_of(*ty), shape.to_vec())),
                _ => None,
            })
            .collect();
        let output_names = session.outputs().iter().map(|o| o.name().to_string()).collect();
        let numeric = |ty: &ValueType| matches!(ty, ValueType::Tensor { ty, .. } if *ty != TensorElementType::String && data_type_of(*ty).is_some());
        let bindable = session.inputs().iter().all(|o| numeric(o.dtype()))
            && session.outputs().iter().all(|o| numeric(o.dtype()));
        let runner = |session| {
            Mutex::new(Runner {
                session,
                bound: HashMap::new(),
                key: Vec::new(),
            })
        };
        let mut runners = vec![runner(session)];
        for _ in 1..instances.max(1) {
            runners.push(runner(open()?));
        }
        Ok(OnnxModel {
            runners,
            next: std::sync::atomic::AtomicUsize::new(0),
            input_names,
            output_names,
            input_specs,
            bindable,
            trees: read_trees(path),
        })
    }

    /// `config` checked against the file's inputs: each declared input must be one of the
    /// file's, of the same element type and rank; a `-1` dimension the file fixes is narrowed
    /// to the file's size, so that a request of another size is refused as INVALID_ARGUMENT
    /// naming the input and the expected shape (ONNX Runtime would fail the run instead); a
    /// fixed size the file contradicts is refused. The batch dimension is left as it is.
    pub fn fit_config(&self, config: &ModelConfig) -> Result<ModelConfig, String> {
        let mut fitted = config.clone();
        let batch = usize::from(config.max_batch_size > 0);
        for spec in &mut fitted.inputs {
            let Some(at) = self.input_names.iter().position(|n| *n == spec.name) else {
                return Err(format!(
                    "the config declares input {:?}, which the ONNX file does not have; its inputs are {:?}",
                    spec.name, self.input_names
                ));
            };
            let Some((dtype, shape)) = &self.input_specs[at] else {
                continue;
            };
            if let Some(dtype) = dtype
                && *dtype != spec.dtype
            {
                return Err(format!(
                    "input {:?} is {dtype} in the ONNX file, the config says {}",
                    spec.name, spec.dtype
                ));
            }
            let declared = config.full_shape(spec);
            if shape.len() != declared.len() {
                return Err(format!(
                    "input {:?} has shape {shape:?} in the ONNX file (-1: any size), the config says {declared:?}                      ({})",
                    spec.name,
                    if batch == 1 {
                        "the batch dimension first, as max_batch_size > 0"
                    } else {
                        "no batch dimension, as max_batch_size = 0"
                    }
                ));
            }
            for (i, (dim, &file)) in spec.dims.iter_mut().zip(&shape[batch..]).enumerate() {
                if file <= 0 {
                    continue;
                }
                if *dim == -1 {
                    *dim = file;
                } else if *dim != file {
                    return Err(format!(
                        "input {:?}: dims[{i}] is {dim} in the config but {file} in the ONNX file (shape {shape:?})",
                        spec.name
                    ));
                }
            }
        }
        Ok(fitted)
    }

    pub fn input_names(&self) -> &[String] {
        &self.input_names
    }

    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }

    /// How many input shapes run with kept buffers, and how many were found to need plain
    /// runs (their outputs change shape with the values), over every session.
    pub fn kept_shapes(&self) -> (usize, usize) {
        self.runners.iter().fold((0, 0), |(with, without), lock| {
            let runner = lock.lock().unwrap_or_else(|e| e.into_inner());
            let kept = runner.bound.values().filter(|b| b.is_some()).count();
            (with + kept, without + runner.bound.len() - kept)
        })
    }
}

/// The runner of a poisoned lock, its kept buffers dropped, the lock cleared.
fn recovered<'a>(
    lock: &'a Mutex<Runner>,
    poisoned: PoisonError<MutexGuard<'a, Runner>>,
) -> MutexGuard<'a, Runner> {
    let mut runner = poisoned.into_inner();
    runner.bound.clear();
    lock.clear_poison();
    runner
}

/// Files larger than this are not read a second time for a tree ensemble.
const MAX_TREES_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// The tree ensemble of the ONNX file at `path`, when it has one evaluated here; why not
/// goes to the log (the model is served by ONNX Runtime either way).
fn read_trees(path: &Path) -> Option<Arc<TreeEnsemble>> {
    if std::fs::metadata(path).ok()?.len() > MAX_TREES_FILE_BYTES {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    match TreeEnsemble::from_onnx(&bytes) {
        Ok(trees) => trees.map(Arc::new),
        Err(why) => {
            tracing::info!(path = %path.display(), "tree ensemble not evaluated natively: {why}");
            None
        }
    }
}

impl ModelBackend for OnnxModel {
    fn tree_ensemble(&self) -> Option<&Arc<TreeEnsemble>> {
        self.trees.as_ref()
    }

    fn infer(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
        for t in inputs {
            if !self.input_names.contains(&t.name) {
                return Err(ModelError::InvalidInput(format!(
                    "no input named {:?}; the model takes {:?}",
                    t.name, self.input_names
                )));
            }
        }
        let mut runner = self.runner();
        let Runner { session, bound, key } = &mut *runner;
        let order = if self.bindable {
            self.model_order(inputs)
        } else {
            None
        };
        if let Some(order) = &order {
            shape_key(key, order.iter().map(|&j| &inputs[j]));
            match bound.get_mut(key.as_slice()) {
                Some(Some(b)) => match b.run(session, inputs, order, (&self.input_names, &self.output_names))
                {
                    Ok(outputs) => return Ok(outputs),
                    // Outputs of another shape than last time (they depend on the values), or
                    // any other failure: run without buffers, which reports a real error.
                    Err(_) => {
                        bound.insert(key.clone(), None);
                    }
                },
                Some(None) => {}
                None => {
                    let outputs = self.run_plain(session, inputs)?;
                    if bound.len() < MAX_BOUND_SHAPES {
                        // Failing to set up buffers only means later runs take the plain path.
                        // Without buffers (outputs too large, or they could not be set up),
                        // this shape runs plainly from now on.
                        bound.insert(key.clone(), Bound::new(inputs, order, &outputs).ok());
                    }
                    return Ok(outputs);
                }
            }
        }
        self.run_plain(session, inputs)
    }
}

impl OnnxModel {
    /// Sessions this model runs on.
    pub fn instances(&self) -> usize {
        self.runners.len()
    }

    /// A free session, else the next one in turn, waited for. A run that panicked (caught by
    /// the repository or the batching queue) poisons its lock. The session itself is ONNX
    /// Runtime's and was not mid-change in Rust; the kept buffers might be, so they are
    /// dropped and rebuilt as runs come.
    fn runner(&self) -> MutexGuard<'_, Runner> {
        if self.runners.len() > 1 {
            for lock in &self.runners {
                match lock.try_lock() {
                    Ok(runner) => return runner,
                    Err(TryLockError::Poisoned(p)) => return recovered(lock, p),
                    Err(TryLockError::WouldBlock) => {}
                }
            }
        }
        let at = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.runners.len();
        let lock = &self.runners[at];
        lock.lock().unwrap_or_else(|p| recovered(lock, p))
    }

    /// For each model input, the position of the request tensor that feeds it, when the
    /// request names each input exactly once with a small numeric tensor.
    fn model_order(&self, inputs: &[Tensor]) -> Option<Vec<usize>> {
        if inputs.len() != self.input_names.len() {
            return None;
        }
        self.input_names
            .iter()
            .map(|name| {
                let mut found = inputs.iter().enumerate().filter(|(_, t)| t.name == *name);
                let (j, t) = found.next()?;
                let small = !matches!(t.data, TensorData::Bytes(_))
                    && t.data.len() * t.dtype().element_size().unwrap_or(usize::MAX) <= MAX_BOUND_INPUT_BYTES;
                (found.next().is_none() && small).then_some(j)
            })
            .collect()
    }

    fn run_plain(&self, session: &mut Session, inputs: &[Tensor]) -> Result<Vec<Tensor>, ModelError> {
        let values = inputs
            .iter()
            .map(|t| Ok((t.name.clone(), to_ort(t)?)))
            .collect::<Result<Vec<(String, SessionInputValue<'_>)>, ModelError>>()?;
        let outputs = session.run(values)?;
        self.output_names
            .iter()
            .map(|name| from_ort(name, &outputs[name.as_str()]))
            .collect()
    }
}

/// Writes the lookup key of `inputs` (in model order) into `key`.
fn shape_key<'a>(key: &mut Vec<usize>, inputs: impl Iterator<Item = &'a Tensor>) {
    key.clear();
    for t in inputs {
        key.push(t.dtype() as usize);
        key.push(t.shape.len());
        key.extend_from_slice(&t.shape);
    }
}

impl Bound {
    /// Buffers shaped like `inputs` (`order`: model order) and like the outputs a run of
    /// them gave.
    fn new(inputs: &[Tensor], order: &[usize], outputs: &[Tensor]) -> Result<Bound, ModelError> {
        let output_bytes: usize = outputs
            .iter()
            .map(|t| {
                t.data
                    .len()
                    .saturating_mul(t.dtype().element_size().unwrap_or(usize::MAX))
            })
            .fold(0usize, usize::saturating_add);
        if output_bytes > MAX_BOUND_OUTPUT_BYTES {
            return Err(ModelError::Inference(format!(
                "{output_bytes} bytes of outputs are not kept"
            )));
        }
        let allocator = Allocator::default();
        let tensor = |t: &Tensor| -> Result<DynTensor, ModelError> {
            let ty = element_type_of(t.dtype()).ok_or_else(|| {
                ModelError::Inference(format!("{}: no kept buffer for {:?}", t.name, t.dtype()))
            })?;
            Ok(DynTensor::new(&allocator, ty, t.shape.clone())?)
        };
        let inputs = order
            .iter()
            .map(|&j| tensor(&inputs[j]))
            .collect::<Result<Vec<_>, _>>()?;
        let mut selector = OutputSelector::default();
        for out in outputs {
            selector = selector.preallocate(out.name.clone(), tensor(out)?);
        }
        Ok(Bound {
            inputs,
            options: RunOptions::new()?.with_outputs(selector),
        })
    }

    fn run(
        &mut self,
        session: &mut Session,
        inputs: &[Tensor],
        order: &[usize],
        names: (&[String], &[String]),
    ) -> Result<Vec<Tensor>, ModelError> {
        let (input_names, output_names) = names;
        for (buffer, &j) in self.inputs.iter_mut().zip(order) {
            copy_into(buffer, &inputs[j].data)?;
        }
        let values: Vec<(&str, SessionInputValue<'_>)> = input_names
            .iter()
            .zip(&self.inputs)
            .map(|(name, buffer)| (name.as_str(), buffer.view().into()))
            .collect();
        let outputs = session.run_with_options(values, &self.options)?;
        output_names
            .iter()
            .map(|name| from_ort(name, &outputs[name.as_str()]))
            .collect()
    }
}

fn copy_into(buffer: &mut DynTensor, data: &TensorData) -> Result<(), ModelError> {
    macro_rules! copy {
        ($t:ty, $v:expr) => {{
            let (_, dst) = buffer.try_extract_tensor_mut::<$t>()?;
            if dst.len() != $v.len() {
                return Err(ModelError::Inference("kept buffer has another size".into()));
            }
            dst.copy_from_slice($v);
        }};
    }
    match data {
        TensorData::Fp32(v) => copy!(f32, v),
        TensorData::Fp64(v) => copy!(f64, v),
        TensorData::Int32(v) => copy!(i32, v),
        TensorData::Int64(v) => copy!(i64, v),
        TensorData::Bool(v) => copy!(bool, v),
        TensorData::Bytes(_) => return Err(ModelError::Inference("strings are not kept in buffers".into())),
    }
    Ok(())
}

/// The ONNX element type that a numeric protocol type is run as.
fn element_type_of(ty: DataType) -> Option<TensorElementType> {
    Some(match ty {
        DataType::Fp32 => TensorElementType::Float32,
        DataType::Fp64 => TensorElementType::Float64,
        DataType::Int32 => TensorElementType::Int32,
        DataType::Int64 => TensorElementType::Int64,
        DataType::Bool => TensorElementType::Bool,
        _ => return None,
    })
}

/// A view of the tensor's data for ONNX Runtime; strings are copied, numbers are not.
fn to_ort(t: &Tensor) -> Result<SessionInputValue<'_>, ModelError> {
    let shape = t.shape.clone();
    let value: SessionInputValue<'_> = match &t.data {
        TensorData::Fp32(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
        TensorData::Fp64(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
        TensorData::Int32(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
        TensorData::Int64(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
        TensorData::Bool(v) => TensorRef::from_array_view((shape, v.as_slice()))?.into(),
        TensorData::Bytes(v) => {
            let strings = v
                .iter()
                .map(|b| String::from_utf8(b.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    ModelError::InvalidInput(format!(
                        "{}: BYTES elements must be UTF-8 for ONNX strings",
                        t.name
                    ))
                })?;
            ort::value::Tensor::from_string_array((shape, strings.as_slice()))?.into()
        }
    };
    Ok(value)
}

fn from_ort(name: &str, value: &DynValue) -> Result<Tensor, ModelError> {
    let unsupported = |what: String| {
        ModelError::Inference(format!(
            "output {name:?} is {what}, which Ferrite does not serve; export the model with plain \
             tensor outputs (for scikit-learn/LightGBM/XGBoost classifiers: without ZipMap)"
        ))
    };
    let ty = match value.dtype() {
        ValueType::Tensor { ty, .. } => ty,
        ValueType::Sequence(inner) if is_class_probability_map(inner) => return zipmap_rows(name, value),
        other => return Err(unsupported(format!("{other:?}"))),
    };
    macro_rules! numeric {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value.try_extract_tensor::<$t>()?;
            (
                shape.iter().map(|&d| d as usize).collect::<Vec<_>>(),
                TensorData::$variant(data.to_vec()),
            )
        }};
    }
    let (shape, data) = match ty {
        TensorElementType::Float32 => numeric!(f32, Fp32),
        TensorElementType::Float64 => numeric!(f64, Fp64),
        TensorElementType::Int32 => numeric!(i32, Int32),
        TensorElementType::Int64 => numeric!(i64, Int64),
        TensorElementType::Bool => numeric!(bool, Bool),
        TensorElementType::String => {
            let (shape, strings) = value.try_extract_strings()?;
            let shape = shape.iter().map(|&d| d as usize).collect::<Vec<_>>();
            (
                shape,
                TensorData::Bytes(strings.into_iter().map(String::into_bytes).collect()),
            )
        }
        other => return Err(unsupported(format!("a {other:?} tensor"))),
    };
    Tensor::new(name, shape, data)
}

/// What classifier converters emit with ZipMap: one `{class: probability}` map per row.
fn is_class_probability_map(ty: &ValueType) -> bool {
    matches!(
        ty,
        ValueType::Map {
            key: TensorElementType::Int64,
            value: TensorElementType::Float32
        }
    )
}

/// A sequence of `{class: probability}` maps, served as an FP32 `[rows, classes]` tensor with
/// classes in ascending order: the same answer as the model exported without ZipMap.
fn zipmap_rows(name: &str, value: &DynValue) -> Result<Tensor, ModelError> {
    let sequence = value.view().downcast::<DynSequenceValueType>()?;
    let maps = sequence.try_extract_sequence::<DynMapValueType>()?;
    let mut data = Vec::new();
    let mut classes = None;
    for map in &maps {
        let mut pairs = map.try_extract_key_values::<i64, f32>()?;
        pairs.sort_unstable_by_key(|(class, _)| *class);
        let keys: Vec<i64> = pairs.iter().map(|(class, _)| *class).collect();
        match &classes {
            None => classes = Some(keys),
            Some(first) if *first != keys => {
                return Err(ModelError::Inference(format!(
                    "output {name:?}: rows have different classes"
                )));
            }
            Some(_) => {}
        }
        data.extend(pairs.into_iter().map(|(_, p)| p));
    }
    let width = classes.map_or(0, |c| c.len());
    Tensor::new(name, vec![maps.len(), width], TensorData::Fp32(data))
}

/// The protocol type that an ONNX tensor element type is served as, if any.
pub fn data_type_of(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}
