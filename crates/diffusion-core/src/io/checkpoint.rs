//! Checkpoint IO: safetensors reading and writing with typed errors, atomic file writes, and the
//! [`WeightVisitor`] that maps a module's parameters to checkpoint keys.

use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
};

use burn::{
    module::{Module, ModuleVisitor, Param},
    nn::{LayerNorm, Linear, RmsNorm},
    tensor::{backend::Backend, DType, FloatDType, Tensor, TensorData},
};
use safetensors::{tensor::TensorView, Dtype};

use super::{
    atomic::{folder_of, remove_stale_temporaries, sync_folder, temporary_path, write_synced},
    checksums::{read_checksums, record_checksum, verify_checksum},
    tensor_files::TensorFiles,
};
use crate::error::{CoreError, Result};

pub use super::atomic::{fail_atomic_write_after, replace_folder, write_atomic};

/// Saves a module's record (named MessagePack, full precision) atomically and records its
/// checksum in the folder's `checksums.json` ([`super::checksums`]). For models without a
/// reference layout of their own (reward heads, encoders); DiTs use [`save_safetensors`].
pub fn save_record<B: Backend, M: Module<B>>(module: M, path: &Path) -> Result<()> {
    use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
    let bytes = NamedMpkBytesRecorder::<FullPrecisionSettings>::default()
        .record(module.into_record(), ())
        .map_err(|e| CoreError::InvalidConfig {
            field: "record",
            reason: e.to_string(),
        })?;
    write_atomic(path, &bytes)?;
    record_checksum(path)
}

/// Loads a record written by [`save_record`] into `module` (see [`decode_record`]).
///
/// # Errors
/// `Io` when the file cannot be read; `Checksum` when it differs from the checksum its folder
/// recorded; `Record` naming the file when it does not decode into this module, a parameter's
/// shape differs or a value is not finite.
pub fn load_record<B: Backend, M: Module<B>>(
    module: M,
    path: &Path,
    device: &B::Device,
) -> Result<M> {
    let bytes = std::fs::read(path).map_err(|source| CoreError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    verify_checksum(path, &bytes)?;
    decode_record(module, bytes, device).map_err(|reason| CoreError::Record {
        path: path.to_path_buf(),
        reason,
    })
}

/// Decodes `bytes` (a named MessagePack record, as [`save_record`] writes) into `module`. The
/// record must have the module's structure and each parameter's shape, and hold finite values;
/// every parameter keeps the dtype it had in `module` (records hold f32).
///
/// # Errors
/// What differs, as a sentence (the caller names the file).
pub fn decode_record<B: Backend, M: Module<B>>(
    module: M,
    bytes: Vec<u8>,
    device: &B::Device,
) -> std::result::Result<M, String> {
    use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
    use burn::tensor::ElementConversion;
    // burn's decoder can panic on a record of another structure: contained and reported
    let record = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        NamedMpkBytesRecorder::<FullPrecisionSettings>::default().load(bytes, device)
    }))
    .map_err(|_| "the record does not decode (its structure differs)".to_string())?
    .map_err(|e| format!("does not decode: {e}"))?;
    let want = param_shapes(&module);
    let dtypes = crate::train::precision::param_dtypes(&module);
    let loaded =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| module.load_record(record)))
            .map_err(|_| "the record's structure differs from the model's".to_string())?;
    let found = param_shapes(&loaded);
    if want != found {
        let k = want
            .iter()
            .zip(&found)
            .position(|(w, f)| w != f)
            .unwrap_or(want.len().min(found.len()));
        return Err(format!(
            "parameter {k} (of {} in the model, {} in the file): shape {:?} in the file, {:?} \
             in the model",
            want.len(),
            found.len(),
            found.get(k).cloned().unwrap_or_default(),
            want.get(k).cloned().unwrap_or_default(),
        ));
    }
    // x * 0 sums to 0 exactly when every value is finite
    struct FirstNonFinite(usize, Option<usize>);
    impl<B: Backend> ModuleVisitor<B> for FirstNonFinite {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let zero = p.val().mul_scalar(0.0).sum().into_scalar().elem::<f64>();
            if self.1.is_none() && !zero.is_finite() {
                self.1 = Some(self.0);
            }
            self.0 += 1;
        }
    }
    let mut check = FirstNonFinite(0, None);
    loaded.visit(&mut check);
    if let Some(k) = check.1 {
        return Err(format!(
            "parameter {k} (shape {:?}) holds a NaN or infinite value",
            want[k]
        ));
    }
    Ok(crate::train::precision::with_param_dtypes(loaded, &dtypes))
}

/// The shape of every float parameter of `module`, in visiting order.
fn param_shapes<B: Backend, M: Module<B>>(module: &M) -> Vec<Vec<usize>> {
    struct Shapes(Vec<Vec<usize>>);
    impl<B: Backend> ModuleVisitor<B> for Shapes {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            self.0.push(p.shape().dims::<D>().to_vec());
        }
    }
    let mut s = Shapes(Vec::new());
    module.visit(&mut s);
    s.0
}

/// Initialises every lazily-initialised parameter of `module` in place.
///
/// burn 0.21 initialises parameters on first use, and `clone()` of a module whose parameters
/// were never used gives each clone its *own* random draw: a fresh model and its clone differ.
/// Our `*Config::init` functions call this, so a model and its clones (a frozen reference for a
/// KL term, a saved copy) always hold the same weights.
pub fn materialize<B: Backend, M: Module<B>>(module: M) -> M {
    struct Touch;
    impl<B: Backend> ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Touch);
    module
}

/// How a burn parameter is laid out relative to its PyTorch checkpoint tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamLayout {
    /// Same shape and order.
    Same,
    /// A `Linear` weight: burn stores `[in, out]`, PyTorch `[out, in]`.
    LinearWeight,
    /// PyTorch stores `trailing` more axes of size one (a per-channel scale shaped to
    /// broadcast, such as `[C, 1, 1, 1]`).
    Unsqueezed {
        /// The number of trailing unit axes.
        trailing: usize,
    },
    /// A strided `Conv3d` patch embedding held as a burn `Linear` `[C * k, out]`; PyTorch
    /// stores `[out, C, k_t, k_h, k_w]`.
    Conv3dAsLinear {
        /// The PyTorch kernel shape `[out, C, k_t, k_h, k_w]`.
        torch: [usize; 5],
    },
}

impl ParamLayout {
    /// The checkpoint shape of a parameter whose burn shape is `burn`, and whether the data
    /// is transposed between the two.
    fn torch_shape(&self, burn: &[usize]) -> (Vec<usize>, bool) {
        match self {
            ParamLayout::Same => (burn.to_vec(), false),
            ParamLayout::LinearWeight => (vec![burn[1], burn[0]], true),
            ParamLayout::Unsqueezed { trailing } => {
                let mut shape = burn.to_vec();
                shape.extend(std::iter::repeat_n(1, *trailing));
                (shape, false)
            }
            ParamLayout::Conv3dAsLinear { torch } => (torch.to_vec(), true),
        }
    }
}

/// Visits every parameter of a module under its checkpoint key (reading or writing it).
pub trait WeightVisitor<B: Backend> {
    /// Visits one parameter.
    fn param<const D: usize>(
        &mut self,
        key: &str,
        param: &mut Param<Tensor<B, D>>,
        layout: ParamLayout,
    ) -> Result<()>;

    /// Visits `{prefix}.weight` and, when present, `{prefix}.bias`.
    fn weight_bias<const D: usize>(
        &mut self,
        prefix: &str,
        weight: &mut Param<Tensor<B, D>>,
        layout: ParamLayout,
        bias: Option<&mut Param<Tensor<B, 1>>>,
    ) -> Result<()> {
        self.param(&format!("{prefix}.weight"), weight, layout)?;
        match bias {
            Some(bias) => self.param(&format!("{prefix}.bias"), bias, ParamLayout::Same),
            None => Ok(()),
        }
    }

    /// Visits a linear layer (`{prefix}.weight`, `{prefix}.bias`).
    fn linear(&mut self, prefix: &str, linear: &mut Linear<B>) -> Result<()> {
        self.weight_bias(
            prefix,
            &mut linear.weight,
            ParamLayout::LinearWeight,
            linear.bias.as_mut(),
        )
    }

    /// Visits an RMS norm (`{prefix}.weight`).
    fn rms_norm(&mut self, prefix: &str, norm: &mut RmsNorm<B>) -> Result<()> {
        self.weight_bias(prefix, &mut norm.gamma, ParamLayout::Same, None)
    }

    /// Visits an affine layer norm (`{prefix}.weight`, `{prefix}.bias`).
    fn layer_norm(&mut self, prefix: &str, norm: &mut LayerNorm<B>) -> Result<()> {
        self.weight_bias(
            prefix,
            &mut norm.gamma,
            ParamLayout::Same,
            norm.beta.as_mut(),
        )
    }
}

/// A module whose parameters have stable checkpoint keys.
pub trait NamedWeights<B: Backend> {
    /// Walks every parameter with its key.
    fn visit_weights<V: WeightVisitor<B>>(&mut self, visitor: &mut V) -> Result<()>;
}

/// Reads parameters from [`TensorFiles`], checking keys, shapes, dtypes and finiteness.
///
/// A parameter that was never initialised (burn initialises lazily) is replaced without
/// running its initialiser: a model built and then loaded is never randomly filled first.
pub struct SafetensorsReader<'a, B: Backend> {
    files: &'a TensorFiles,
    used: BTreeSet<String>,
    device: B::Device,
    dtype: DType,
}

impl<'a, B: Backend> SafetensorsReader<'a, B> {
    /// Reads from `files` onto `device`, as f32.
    pub fn new(files: &'a TensorFiles, device: &B::Device) -> Self {
        Self {
            files,
            used: BTreeSet::new(),
            device: device.clone(),
            dtype: DType::F32,
        }
    }

    /// Creates the parameters in `dtype` (converted on the host, so the device never holds
    /// them in f32).
    pub fn with_dtype(mut self, dtype: FloatDType) -> Self {
        self.dtype = dtype.into();
        self
    }

    /// Errors if the files hold keys no parameter was read from.
    pub fn finish(self) -> Result<()> {
        let extra: Vec<&str> = self
            .files
            .keys()
            .filter(|n| !self.used.contains(*n))
            .collect();
        match extra.first() {
            None => Ok(()),
            Some(first) => Err(CoreError::Safetensors {
                path: self
                    .files
                    .file_of(first)
                    .unwrap_or(self.files.path())
                    .into(),
                reason: format!(
                    "unexpected keys (model has no such parameter): {}",
                    extra.join(", ")
                ),
            }),
        }
    }
}

impl<B: Backend> WeightVisitor<B> for SafetensorsReader<'_, B> {
    fn param<const D: usize>(
        &mut self,
        key: &str,
        param: &mut Param<Tensor<B, D>>,
        layout: ParamLayout,
    ) -> Result<()> {
        let burn_shape = param.lazy_shape().dims::<D>().to_vec();
        let (torch_shape, transposed) = layout.torch_shape(&burn_shape);
        let (_, shape) = self.files.info(key)?;
        if shape != torch_shape.as_slice() {
            return Err(CoreError::KeyShape {
                path: self
                    .files
                    .file_of(key)
                    .unwrap_or(self.files.path())
                    .to_path_buf(),
                key: key.to_string(),
                expected: torch_shape,
                found: shape.to_vec(),
            });
        }
        let (_, values) = self.files.read_f32(key)?;
        let tensor = if transposed {
            let mut shape = burn_shape;
            shape.swap(0, 1);
            Tensor::<B, D>::from_data(TensorData::new(values, shape), &self.device)
                .transpose()
                // a contiguous copy: the transposed view would keep strides the kernels
                // then copy on every use
                .into_data()
        } else {
            TensorData::new(values, burn_shape)
        };
        let tensor = Tensor::<B, D>::from_data(tensor, (&self.device, self.dtype));
        let old = std::mem::replace(param, Param::from_tensor(tensor.clone()));
        // keeps the parameter's id, device and trainability without initialising it
        let id = old.id;
        *param = old.transform_for_load(tensor, id);
        self.used.insert(key.to_string());
        Ok(())
    }
}

/// Element type of saved weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// 32-bit float.
    #[default]
    F32,
    /// IEEE half.
    F16,
    /// bfloat16 (rounded to nearest even, as PyTorch's `.to(torch.bfloat16)`).
    BF16,
}

impl WeightDtype {
    fn encode(self, values: &[f32]) -> (Dtype, Vec<u8>) {
        match self {
            WeightDtype::F32 => (
                Dtype::F32,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            WeightDtype::F16 => (
                Dtype::F16,
                values
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect(),
            ),
            WeightDtype::BF16 => (
                Dtype::BF16,
                values
                    .iter()
                    .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                    .collect(),
            ),
        }
    }
}

/// How [`SafetensorsWriter`] lays weights out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SaveLayout {
    /// Element type of every tensor.
    pub dtype: WeightDtype,
    /// A shard is closed before it would exceed this many bytes (a larger single tensor gets a
    /// shard of its own). diffusers' `save_pretrained` default is 10 GB.
    pub max_shard_bytes: u64,
}

impl Default for SaveLayout {
    fn default() -> Self {
        Self {
            dtype: WeightDtype::F32,
            max_shard_bytes: 10_000_000_000,
        }
    }
}

/// Writes parameters (PyTorch layout and key names) into a folder as safetensors shards, one
/// shard in memory at a time.
pub struct SafetensorsWriter {
    layout: SaveLayout,
    dir: std::path::PathBuf,
    shard: Vec<(String, Vec<usize>, Dtype, Vec<u8>)>,
    shard_bytes: u64,
    parts: Vec<(std::path::PathBuf, Vec<String>)>,
    total_bytes: u64,
}

impl SafetensorsWriter {
    /// Writes into `dir` (created when missing).
    pub fn new(dir: &Path, layout: SaveLayout) -> Self {
        Self {
            layout,
            dir: dir.to_path_buf(),
            shard: Vec::new(),
            shard_bytes: 0,
            parts: Vec::new(),
            total_bytes: 0,
        }
    }

    fn flush(&mut self) -> Result<()> {
        if self.shard.is_empty() {
            return Ok(());
        }
        let path = temporary_path(&self.dir.join(format!("part-{}", self.parts.len())));
        let err = |e: safetensors::SafeTensorError| CoreError::Safetensors {
            path: path.clone(),
            reason: e.to_string(),
        };
        let mut views = Vec::with_capacity(self.shard.len());
        for (key, shape, dtype, bytes) in &self.shard {
            views.push((
                key.as_str(),
                TensorView::new(*dtype, shape.clone(), bytes).map_err(err)?,
            ));
        }
        let format = HashMap::from([("format".to_string(), "pt".to_string())]);
        let bytes = safetensors::serialize(views, Some(format)).map_err(err)?;
        write_synced(&path, &bytes)?;
        let keys = self.shard.drain(..).map(|(k, ..)| k).collect();
        self.parts.push((path, keys));
        self.shard_bytes = 0;
        Ok(())
    }

    /// Closes the last shard and names the files as `save_pretrained` does:
    /// `{stem}.safetensors` for one shard, else `{stem}-00001-of-0000N.safetensors` and
    /// `{stem}.safetensors.index.json`. Returns the files written.
    pub fn finish(mut self, stem: &str) -> Result<Vec<std::path::PathBuf>> {
        self.flush()?;
        let n = self.parts.len();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CoreError::Io { path, source }
        };
        let mut written = Vec::with_capacity(n + 1);
        let mut weight_map = serde_json::Map::new();
        for (i, (part, keys)) in self.parts.iter().enumerate() {
            let name = if n == 1 {
                format!("{stem}.safetensors")
            } else {
                format!("{stem}-{:05}-of-{n:05}.safetensors", i + 1)
            };
            let path = self.dir.join(&name);
            std::fs::rename(part, &path).map_err(io(&path))?;
            for key in keys {
                weight_map.insert(key.clone(), name.clone().into());
            }
            written.push(path);
        }
        if n > 1 {
            let index = serde_json::json!({
                "metadata": { "total_size": self.total_bytes },
                "weight_map": weight_map,
            });
            let path = self.dir.join(format!("{stem}.safetensors.index.json"));
            let text = serde_json::to_string_pretty(&index).map_err(|e| CoreError::Io {
                path: path.clone(),
                source: e.into(),
            })?;
            write_atomic(&path, text.as_bytes())?;
            written.push(path);
        }
        sync_folder(&self.dir)?;
        Ok(written)
    }
}

impl<B: Backend> WeightVisitor<B> for SafetensorsWriter {
    fn param<const D: usize>(
        &mut self,
        key: &str,
        param: &mut Param<Tensor<B, D>>,
        layout: ParamLayout,
    ) -> Result<()> {
        let value = param.val();
        let (torch_shape, transposed) = layout.torch_shape(&value.dims());
        let value = if transposed { value.transpose() } else { value };
        let floats: Vec<f32> =
            value
                .into_data()
                .convert::<f32>()
                .to_vec()
                .map_err(|e| CoreError::NonFinite {
                    what: format!("{key}: {e:?}"),
                })?;
        if let Some(i) = floats.iter().position(|v| !v.is_finite()) {
            return Err(CoreError::NonFinite {
                what: format!("`{key}` (element {i} is {}), not saved", floats[i]),
            });
        }
        let (dtype, bytes) = self.layout.dtype.encode(&floats);
        let size = bytes.len() as u64;
        if self.shard_bytes > 0 && self.shard_bytes + size > self.layout.max_shard_bytes {
            self.flush()?;
        }
        self.shard_bytes += size;
        self.total_bytes += size;
        self.shard
            .push((key.to_string(), torch_shape, dtype, bytes));
        Ok(())
    }
}

/// Loads every parameter of `module` from one safetensors file (PyTorch layout and key names),
/// failing with the first missing or mis-shaped key, or with the list of unexpected keys; a
/// file whose folder recorded its checksum is checked first (`Checksum`).
pub fn load_safetensors<B: Backend, M: NamedWeights<B>>(
    module: M,
    path: impl AsRef<Path>,
    device: &B::Device,
) -> Result<M> {
    let path = path.as_ref();
    if !read_checksums(folder_of(path))?.is_empty() {
        let bytes = std::fs::read(path).map_err(|source| CoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        verify_checksum(path, &bytes)?;
    }
    load_from(module, &TensorFiles::open_file(path)?, device)
}

/// Loads every parameter of `module` from [`TensorFiles`] (see [`load_safetensors`]).
pub fn load_from<B: Backend, M: NamedWeights<B>>(
    mut module: M,
    files: &TensorFiles,
    device: &B::Device,
) -> Result<M> {
    let mut reader = SafetensorsReader::<B>::new(files, device);
    module.visit_weights(&mut reader)?;
    reader.finish()?;
    Ok(module)
}

/// Saves every parameter of `module` to one safetensors file (F32, PyTorch layout),
/// atomically, and records its checksum in the folder's `checksums.json`.
pub fn save_safetensors<B: Backend, M: NamedWeights<B> + Clone>(
    module: &M,
    path: impl AsRef<Path>,
) -> Result<()> {
    let path = path.as_ref();
    let layout = SaveLayout {
        dtype: WeightDtype::F32,
        max_shard_bytes: u64::MAX,
    };
    let dir = folder_of(path);
    std::fs::create_dir_all(dir).map_err(|source| CoreError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    remove_stale_temporaries(dir)?;
    let mut writer = SafetensorsWriter::new(dir, layout);
    module.clone().visit_weights(&mut writer)?;
    let stem = temporary_path(path);
    let files = writer.finish(&stem.file_name().unwrap_or_default().to_string_lossy())?;
    std::fs::rename(&files[0], path).map_err(|source| CoreError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    sync_folder(dir)?;
    record_checksum(path)
}

/// File stem of a diffusers model folder's weights.
pub const DIFFUSERS_WEIGHTS: &str = "diffusion_pytorch_model";

/// Streams the weights of a diffusers model folder (`diffusion_pytorch_model.safetensors` or
/// its shards with their index) into `module`, built from the folder's `config.json` and
/// never initialised (see [`SafetensorsReader`]).
pub fn load_diffusers_folder<B: Backend, M: NamedWeights<B>>(
    module: M,
    dir: &Path,
    device: &B::Device,
) -> Result<M> {
    load_from(
        module,
        &TensorFiles::open_folder(dir, DIFFUSERS_WEIGHTS)?,
        device,
    )
}

/// Saves `module` as a diffusers model folder: `config` as `config.json`, the weights in
/// `layout`; `dir` is replaced as a whole ([`replace_folder`]).
pub fn save_diffusers_folder<B: Backend, M: NamedWeights<B> + Clone>(
    module: &M,
    dir: &Path,
    layout: SaveLayout,
    config: &str,
) -> Result<()> {
    save_folder(
        module,
        dir,
        DIFFUSERS_WEIGHTS,
        layout,
        &[("config.json", config.as_bytes())],
    )
}

/// Saves every parameter of `module` as a diffusers model folder's weights (`{stem}` shards in
/// `layout`), plus `extra` files (such as `config.json`), replacing `dir` as a whole
/// ([`replace_folder`]).
pub fn save_folder<B: Backend, M: NamedWeights<B> + Clone>(
    module: &M,
    dir: impl AsRef<Path>,
    stem: &str,
    layout: SaveLayout,
    extra: &[(&str, &[u8])],
) -> Result<()> {
    replace_folder(dir.as_ref(), |staging| {
        for (name, bytes) in extra {
            write_atomic(&staging.join(name), bytes)?;
        }
        let mut writer = SafetensorsWriter::new(staging, layout);
        module.clone().visit_weights(&mut writer)?;
        writer.finish(stem).map(drop)
    })
}
