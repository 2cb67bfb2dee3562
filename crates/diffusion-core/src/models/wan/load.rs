use std::path::Path;

use burn::{module::Module, tensor::backend::Backend};

use super::{WanConfig, WanTransformer};
use crate::{
    error::Result,
    io::atomic::recover_folder,
    io::checkpoint::{
        load_diffusers_folder, save_diffusers_folder, NamedWeights, ParamLayout, SafetensorsReader,
        SaveLayout, WeightVisitor, DIFFUSERS_WEIGHTS,
    },
    io::tensor_files::TensorFiles,
    train::precision::Precision,
};

/// Keys of diffusers' `WanTransformer3DModel` state dict.
impl<B: Backend> NamedWeights<B> for WanTransformer<B> {
    fn visit_weights<V: WeightVisitor<B>>(&mut self, v: &mut V) -> Result<()> {
        let d = self.dim();
        let [pt, ph, pw] = self.patch_size();
        let c = self.patch_embedding.weight.lazy_shape().dims::<2>()[0] / (pt * ph * pw);
        let patch = &mut self.patch_embedding;
        v.weight_bias(
            "patch_embedding",
            &mut patch.weight,
            ParamLayout::Conv3dAsLinear {
                torch: [d, c, pt, ph, pw],
            },
            patch.bias.as_mut(),
        )?;
        let ce = &mut self.condition;
        v.linear(
            "condition_embedder.time_embedder.linear_1",
            &mut ce.time_linear_1,
        )?;
        v.linear(
            "condition_embedder.time_embedder.linear_2",
            &mut ce.time_linear_2,
        )?;
        v.linear("condition_embedder.time_proj", &mut ce.time_proj)?;
        v.linear(
            "condition_embedder.text_embedder.linear_1",
            &mut ce.text_linear_1,
        )?;
        v.linear(
            "condition_embedder.text_embedder.linear_2",
            &mut ce.text_linear_2,
        )?;
        for (i, block) in self.blocks.iter_mut().enumerate() {
            let p = format!("blocks.{i}");
            for (name, attn) in [("attn1", &mut block.attn1), ("attn2", &mut block.attn2)] {
                for (proj, lin) in [
                    ("to_q", &mut attn.to_q),
                    ("to_k", &mut attn.to_k),
                    ("to_v", &mut attn.to_v),
                    ("to_out.0", &mut attn.to_out),
                ] {
                    v.linear(&format!("{p}.{name}.{proj}"), &mut lin.base)?;
                }
                v.rms_norm(&format!("{p}.{name}.norm_q"), &mut attn.norm_q)?;
                v.rms_norm(&format!("{p}.{name}.norm_k"), &mut attn.norm_k)?;
            }
            if let Some(norm) = block.norm2.as_mut() {
                v.layer_norm(&format!("{p}.norm2"), norm)?;
            }
            v.linear(&format!("{p}.ffn.net.0.proj"), &mut block.ffn_in.base)?;
            v.linear(&format!("{p}.ffn.net.2"), &mut block.ffn_out.base)?;
            v.param(
                &format!("{p}.scale_shift_table"),
                &mut block.scale_shift_table,
                ParamLayout::Same,
            )?;
        }
        v.linear("proj_out", &mut self.proj_out)?;
        v.param(
            "scale_shift_table",
            &mut self.scale_shift_table,
            ParamLayout::Same,
        )
    }
}

impl<B: Backend> WanTransformer<B> {
    /// Loads a diffusers `WanTransformer3DModel` folder as the Hub ships it: `config.json`
    /// (checked by [`WanConfig::load_diffusers`]) and `diffusion_pytorch_model.safetensors` or
    /// its shards with their index, in F32, F16 or BF16. Tensors stream from memory-mapped
    /// files into a model whose parameters are never randomly initialised, so peak host memory
    /// is about the f32 model plus its largest tensor.
    ///
    /// # Errors
    /// `Io`, `ConfigKey`, `InvalidConfig` for the config; `Io` / `Safetensors` naming the file
    /// for a missing shard or a bad index; `MissingKey`, `KeyShape`, `KeyDtype`, `NonFinite`
    /// naming the key; `Safetensors` listing keys the model has no parameter for.
    pub fn load_folder(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        recover_folder(dir)?;
        let cfg = WanConfig::load_diffusers(dir.join("config.json"))?;
        load_diffusers_folder(WanTransformer::new(&cfg, device), dir, device)
    }

    /// [`WanTransformer::load_folder`] with every weight frozen and created in `precision`
    /// (converted on the host, so a half-precision model never holds its f32 weights on the
    /// device): the base of a LoRA run or a frozen reward trunk, as
    /// [`WanTransformer::with_frozen_precision`] would leave it.
    ///
    /// # Errors
    /// As [`WanTransformer::load_folder`]; `Invalid` naming `precision` when the backend does
    /// not support it on `device`.
    pub fn load_folder_frozen(
        dir: impl AsRef<Path>,
        precision: Precision,
        device: &B::Device,
    ) -> Result<Self> {
        precision.check::<B>(device, "precision")?;
        let dir = dir.as_ref();
        recover_folder(dir)?;
        let cfg = WanConfig::load_diffusers(dir.join("config.json"))?;
        let files = TensorFiles::open_folder(dir, DIFFUSERS_WEIGHTS)?;
        let mut reader = SafetensorsReader::new(&files, device).with_dtype(precision.dtype());
        let mut model = WanTransformer::new(&cfg, device);
        model.visit_weights(&mut reader)?;
        reader.finish()?;
        Ok(model.no_grad())
    }

    /// Saves the model as a diffusers folder (`config.json` and weights in `layout`) that
    /// `WanTransformer3DModel.from_pretrained` and [`WanTransformer::load_folder`] read,
    /// replacing `dir` as a whole.
    pub fn save_folder(&self, dir: impl AsRef<Path>, layout: SaveLayout) -> Result<()> {
        save_diffusers_folder(
            self,
            dir.as_ref(),
            layout,
            &self.config().to_diffusers_json(),
        )
    }
}
