//! Checkpoint IO: safetensors reading and writing with typed errors, atomic file writes, and the
//! [`WeightVisitor`] that maps a module's parameters to checkpoint keys.

use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
};

use burn::{
    module::{Module, ModuleVisitor, Param},
    nn::{LayerNorm, Linear, RmsNorm},
    tensor::{backend::Backend, Tensor, TensorData},
};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};

use crate::error::{CoreError, Result};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename,
/// fsync of the folder.
/// A crash leaves either the old file or the new one, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let io = |source| CoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)?;
    // the rename itself is durable only once the folder is synced
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

/// Saves a module's record (named MessagePack, full precision) atomically. For models without a
/// reference layout of their own (reward heads, encoders); DiTs use [`save_safetensors`].
pub fn save_record<B: Backend, M: Module<B>>(module: M, path: &Path) -> Result<()> {
    use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
    let bytes = NamedMpkBytesRecorder::<FullPrecisionSettings>::default()
        .record(module.into_record(), ())
        .map_err(|e| CoreError::InvalidConfig {
            field: "record",
            reason: e.to_string(),
        })?;
    write_atomic(path, &bytes)
}

/// Loads a record written by [`save_record`] into `module` (built with the same config).
///
/// # Errors
/// `Io` when the file cannot be read; `Safetensors` (naming the file) when it does not decode
/// into this module's structure.
pub fn load_record<B: Backend, M: Module<B>>(
    module: M,
    path: &Path,
    device: &B::Device,
) -> Result<M> {
    use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
    let bytes = std::fs::read(path).map_err(|source| CoreError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let record = NamedMpkBytesRecorder::<FullPrecisionSettings>::default()
        .load(bytes, device)
        .map_err(|e| CoreError::Safetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(module.load_record(record))
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

/// Reads parameters from a parsed safetensors file, checking keys, shapes and dtypes.
pub struct SafetensorsReader<'a, B: Backend> {
    file: SafeTensors<'a>,
    path: &'a Path,
    used: BTreeSet<String>,
    device: B::Device,
}

impl<'a, B: Backend> SafetensorsReader<'a, B> {
    /// Parses the container held in `bytes` (read from `path`, used in messages).
    pub fn new(bytes: &'a [u8], path: &'a Path, device: &B::Device) -> Result<Self> {
        let file = SafeTensors::deserialize(bytes).map_err(|e| CoreError::Safetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            file,
            path,
            used: BTreeSet::new(),
            device: device.clone(),
        })
    }

    /// Errors if the file holds keys no parameter was read from.
    pub fn finish(self) -> Result<()> {
        let extra: Vec<String> = self
            .file
            .names()
            .into_iter()
            .filter(|n| !self.used.contains(*n))
            .map(str::to_string)
            .collect();
        if extra.is_empty() {
            Ok(())
        } else {
            Err(CoreError::Safetensors {
                path: self.path.to_path_buf(),
                reason: format!(
                    "unexpected keys (model has no such parameter): {}",
                    extra.join(", ")
                ),
            })
        }
    }
}

/// Decodes little-endian F32 / F16 / BF16 bytes.
fn to_f32(key: &str, view: &TensorView<'_>) -> Result<Vec<f32>> {
    let data = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(CoreError::KeyDtype {
                key: key.to_string(),
                dtype: format!("{other:?}"),
            })
        }
    })
}

impl<B: Backend> WeightVisitor<B> for SafetensorsReader<'_, B> {
    fn param<const D: usize>(
        &mut self,
        key: &str,
        param: &mut Param<Tensor<B, D>>,
        layout: ParamLayout,
    ) -> Result<()> {
        let burn_shape = param.dims();
        let (torch_shape, transposed) = layout.torch_shape(&burn_shape);
        let view = self.file.tensor(key).map_err(|_| CoreError::MissingKey {
            key: key.to_string(),
        })?;
        if view.shape() != torch_shape.as_slice() {
            return Err(CoreError::KeyShape {
                key: key.to_string(),
                expected: torch_shape,
                found: view.shape().to_vec(),
            });
        }
        let values = to_f32(key, &view)?;
        let tensor = if transposed {
            let mut shape = burn_shape;
            shape.swap(0, 1);
            Tensor::<B, D>::from_data(TensorData::new(values, shape), &self.device).transpose()
        } else {
            Tensor::<B, D>::from_data(TensorData::new(values, burn_shape), &self.device)
        };
        let old = std::mem::replace(param, Param::from_tensor(tensor.clone()));
        // keep the parameter's id and trainability: a tensor made from data requires no grad
        let require_grad = old.is_require_grad();
        *param = old.map(|_| tensor.set_require_grad(require_grad));
        self.used.insert(key.to_string());
        Ok(())
    }
}

/// Collects parameters as F32 tensors for [`SafetensorsWriter::write`].
#[derive(Debug, Default)]
pub struct SafetensorsWriter {
    tensors: HashMap<String, (Vec<usize>, Vec<u8>)>,
}

impl SafetensorsWriter {
    /// Serialises everything collected and writes it to `path` atomically.
    pub fn write(self, path: &Path) -> Result<()> {
        let err = |e: safetensors::SafeTensorError| CoreError::Safetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let mut views = Vec::with_capacity(self.tensors.len());
        for (k, (shape, bytes)) in &self.tensors {
            views.push((
                k.clone(),
                TensorView::new(Dtype::F32, shape.clone(), bytes).map_err(err)?,
            ));
        }
        let bytes = safetensors::serialize(views, None).map_err(err)?;
        write_atomic(path, &bytes)
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
        let data = value.into_data().convert::<f32>();
        let floats: Vec<f32> = data.to_vec().map_err(|e| CoreError::NonFinite {
            what: format!("{key}: {e:?}"),
        })?;
        let bytes = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
        self.tensors.insert(key.to_string(), (torch_shape, bytes));
        Ok(())
    }
}

/// Loads every parameter of `module` from a safetensors file (PyTorch layout and key names),
/// failing with the first missing or mis-shaped key, or with the list of unexpected keys.
pub fn load_safetensors<B: Backend, M: NamedWeights<B>>(
    mut module: M,
    path: impl AsRef<Path>,
    device: &B::Device,
) -> Result<M> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| CoreError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut reader = SafetensorsReader::<B>::new(&bytes, path, device)?;
    module.visit_weights(&mut reader)?;
    reader.finish()?;
    Ok(module)
}

/// Saves every parameter of `module` to a safetensors file (F32, PyTorch layout), atomically.
pub fn save_safetensors<B: Backend, M: NamedWeights<B> + Clone>(
    module: &M,
    path: impl AsRef<Path>,
) -> Result<()> {
    let mut writer = SafetensorsWriter::default();
    module.clone().visit_weights(&mut writer)?;
    writer.write(path.as_ref())
}
