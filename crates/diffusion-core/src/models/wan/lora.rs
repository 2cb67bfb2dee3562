//! LoRA on the Wan transformer, stored in the PEFT layout diffusers reads
//! (`WanPipeline.load_lora_weights`, `WanTransformer3DModel.load_lora_adapter`).

use std::{collections::BTreeMap, path::Path};

use burn::{
    module::{Module, Param},
    tensor::{backend::Backend, Tensor, TensorData},
};
use safetensors::{tensor::TensorView, Dtype};

use super::WanTransformer;
use crate::{
    error::{invalid, CoreError, Result},
    io::{checkpoint::write_atomic, tensor_files::TensorFiles},
    ops::lora::{LoraConfig, LoraLinear, LoraTarget},
};

/// The file name diffusers gives a pipeline's LoRA weights.
pub const LORA_WEIGHTS: &str = "pytorch_lora_weights.safetensors";

impl<B: Backend> WanTransformer<B> {
    /// Every adaptable layer with its diffusers module name and target class.
    fn lora_layers(&mut self) -> Vec<(String, LoraTarget, &mut LoraLinear<B>)> {
        let mut out = Vec::new();
        for (i, block) in self.blocks.iter_mut().enumerate() {
            for (name, target, attn) in [
                ("attn1", LoraTarget::SelfAttention, &mut block.attn1),
                ("attn2", LoraTarget::CrossAttention, &mut block.attn2),
            ] {
                for (proj, layer) in [
                    ("to_q", &mut attn.to_q),
                    ("to_k", &mut attn.to_k),
                    ("to_v", &mut attn.to_v),
                    ("to_out.0", &mut attn.to_out),
                ] {
                    out.push((format!("blocks.{i}.{name}.{proj}"), target, layer));
                }
            }
            out.push((
                format!("blocks.{i}.ffn.net.0.proj"),
                LoraTarget::FeedForward,
                &mut block.ffn_in,
            ));
            out.push((
                format!("blocks.{i}.ffn.net.2"),
                LoraTarget::FeedForward,
                &mut block.ffn_out,
            ));
        }
        out
    }

    /// Freezes every weight and adds fresh adapters (zero update) on `config.targets`: after
    /// this only the adapters train.
    pub fn with_lora(self, config: &LoraConfig, device: &B::Device) -> Result<Self> {
        self.adapt_where(config, device, |_, target| config.targets.contains(&target))
    }

    fn adapt_where(
        self,
        config: &LoraConfig,
        device: &B::Device,
        adapt: impl Fn(&str, LoraTarget) -> bool,
    ) -> Result<Self> {
        config.validate()?;
        let checkpointing = self.checkpointing();
        let mut model = self.no_grad();
        for (name, target, layer) in model.lora_layers() {
            if adapt(&name, target) {
                let base = std::mem::replace(layer, placeholder(device));
                *layer = base.adapt(config, device);
            }
        }
        // checks that the adapted blocks can still be checkpointed
        model.with_checkpointing(checkpointing)
    }

    /// Freezes every weight and loads the adapters of a PEFT-layout file (as
    /// [`WanTransformer::load_lora`] reads it) onto exactly the layers the file adapts, with
    /// the file's rank and `alpha = rank` (diffusers' reading).
    ///
    /// # Errors
    /// As [`WanTransformer::load_lora`]; `Safetensors` naming the file when it holds no
    /// adapter or adapters of several ranks.
    pub fn with_lora_file(mut self, path: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let path = path.as_ref();
        let files = TensorFiles::open_file(path)?;
        let bad = |reason: String| CoreError::Safetensors {
            path: path.to_path_buf(),
            reason,
        };
        let names: Vec<String> = self.lora_layers().into_iter().map(|(n, ..)| n).collect();
        let mut adapted = std::collections::BTreeSet::new();
        let mut ranks = std::collections::BTreeSet::new();
        for key in files.keys() {
            let plain = key.strip_prefix("transformer.").unwrap_or(key);
            if let Some(layer) = plain
                .strip_suffix(".lora_A.weight")
                .or_else(|| plain.strip_suffix(".lora_A.default.weight"))
            {
                if names.iter().any(|n| n == layer) {
                    ranks.insert(files.info(key)?.1[0]);
                    adapted.insert(layer.to_string());
                }
            }
        }
        let rank = match (ranks.first(), ranks.len()) {
            (Some(&r), 1) => r,
            (None, _) => return Err(bad("holds no LoRA adapter of this model".into())),
            _ => return Err(bad(format!("adapters of several ranks {ranks:?}"))),
        };
        let config = LoraConfig::new(rank).with_targets(vec![
            LoraTarget::SelfAttention,
            LoraTarget::CrossAttention,
            LoraTarget::FeedForward,
        ]);
        self.adapt_where(&config, device, |name, _| adapted.contains(name))?
            .load_lora(path, device)
    }

    /// Number of adapted layers.
    pub fn lora_layer_count(&mut self) -> usize {
        self.lora_layers()
            .iter()
            .filter(|(_, _, l)| l.adapter.is_some())
            .count()
    }

    /// Folds every adapter into its base weight (inference, or saving a full model).
    pub fn merge_lora(mut self) -> Self {
        for (_, _, layer) in self.lora_layers() {
            let l = std::mem::replace(layer, placeholder(&Default::default()));
            *layer = l.merge();
        }
        self
    }

    /// Takes merged adapters out of the base weights again.
    pub fn unmerge_lora(mut self) -> Self {
        for (_, _, layer) in self.lora_layers() {
            let l = std::mem::replace(layer, placeholder(&Default::default()));
            *layer = l.unmerge();
        }
        self
    }

    /// Saves the adapters as `pytorch_lora_weights.safetensors` in PEFT's layout with a
    /// pipeline's prefix (`transformer.blocks.0.attn1.to_q.lora_A.weight`, f32): `lora_A` is
    /// `A^T`, `lora_B` is `(alpha / rank) B^T`. The scale is folded into `lora_B` because
    /// diffusers loads an adapter file with `alpha = rank`; the file holds no other metadata.
    ///
    /// # Errors
    /// `InvalidConfig` when the model has no adapter; `NonFinite` naming the key; `Io`.
    pub fn save_lora(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut model = self.clone();
        for (name, _, layer) in model.lora_layers() {
            let Some(adapter) = &layer.adapter else {
                continue;
            };
            let a = adapter.down.val().transpose();
            let b = adapter.up.val().transpose().mul_scalar(adapter.scale());
            for (key, t) in [("lora_A", a), ("lora_B", b)] {
                let key = format!("transformer.{name}.{key}.weight");
                let dims = t.dims().to_vec();
                let values: Vec<f32> =
                    t.into_data()
                        .convert::<f32>()
                        .to_vec()
                        .map_err(|e| CoreError::NonFinite {
                            what: format!("{key}: {e:?}"),
                        })?;
                if values.iter().any(|v| !v.is_finite()) {
                    return Err(CoreError::NonFinite {
                        what: format!("`{key}`, not saved"),
                    });
                }
                tensors.push((
                    key,
                    dims,
                    values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ));
            }
        }
        if tensors.is_empty() {
            return Err(invalid("lora", "the model has no adapter to save"));
        }
        let path = path.as_ref();
        let views = tensors
            .iter()
            .map(|(k, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (k.as_str(), v)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .and_then(|views| {
                let meta = [("format".to_string(), "pt".to_string())].into();
                safetensors::serialize(views, Some(meta))
            })
            .map_err(|e| CoreError::Safetensors {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        write_atomic(path, &views)
    }

    /// Loads adapters saved by [`WanTransformer::save_lora`] or by diffusers / PEFT (keys with
    /// or without the `transformer.` prefix, F32/F16/BF16) into the adapters of this model
    /// (made by [`WanTransformer::with_lora`] with the file's rank and targets). The file's
    /// `lora_B` is taken as already scaled (diffusers' convention, `alpha = rank`).
    ///
    /// # Errors
    /// `Safetensors` naming the file for keys that are not LoRA keys of this model or an
    /// adapted layer the file lacks; `KeyShape` for another rank or width; `KeyDtype`,
    /// `NonFinite` naming the key.
    pub fn load_lora(mut self, path: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let path = path.as_ref();
        let files = TensorFiles::open_file(path)?;
        let bad = |reason: String| CoreError::Safetensors {
            path: path.to_path_buf(),
            reason,
        };
        // file key without prefix -> key as stored
        let mut keys: BTreeMap<String, String> = BTreeMap::new();
        for key in files.keys() {
            let plain = key.strip_prefix("transformer.").unwrap_or(key);
            let plain = plain
                .replace(".lora_A.default.", ".lora_A.")
                .replace(".lora_B.default.", ".lora_B.");
            keys.insert(plain, key.to_string());
        }
        let mut used = 0;
        for (name, _, layer) in self.lora_layers() {
            let a_key = format!("{name}.lora_A.weight");
            let b_key = format!("{name}.lora_B.weight");
            let Some(adapter) = layer.adapter.as_mut() else {
                if keys.contains_key(&a_key) || keys.contains_key(&b_key) {
                    return Err(bad(format!(
                        "holds an adapter for `{name}`, which this model does not adapt (targets differ)"
                    )));
                }
                continue;
            };
            let scale = adapter.scale();
            for (key, param, divide) in [
                (&a_key, &mut adapter.down, 1.0),
                (&b_key, &mut adapter.up, scale),
            ] {
                let stored = keys
                    .get(key)
                    .ok_or_else(|| bad(format!("no `{key}` for the adapted layer `{name}`")))?;
                let [rows, cols] = param.dims();
                let (shape, values) = files.read_f32(stored)?;
                if shape != [cols, rows] {
                    return Err(CoreError::KeyShape {
                        path: path.to_path_buf(),
                        key: stored.clone(),
                        expected: vec![cols, rows],
                        found: shape,
                    });
                }
                let t = Tensor::<B, 2>::from_data(TensorData::new(values, [cols, rows]), device)
                    .transpose()
                    .div_scalar(divide);
                let t = Tensor::from_data(t.into_data(), device);
                *param = Param::initialized(param.id, t.require_grad());
                used += 1;
            }
        }
        if used != keys.len() {
            let ours: Vec<String> = self
                .lora_layers()
                .iter()
                .filter(|(_, _, l)| l.adapter.is_some())
                .flat_map(|(n, ..)| [format!("{n}.lora_A.weight"), format!("{n}.lora_B.weight")])
                .collect();
            let extra: Vec<&str> = keys
                .iter()
                .filter(|(k, _)| !ours.contains(k))
                .map(|(_, v)| v.as_str())
                .take(5)
                .collect();
            return Err(bad(format!(
                "keys that are not adapters of this model: {}",
                extra.join(", ")
            )));
        }
        Ok(self)
    }
}

/// A throw-away layer to move a `LoraLinear` out of a `&mut` and back.
fn placeholder<B: Backend>(device: &B::Device) -> LoraLinear<B> {
    burn::nn::LinearConfig::new(1, 1)
        .with_bias(false)
        .init(device)
        .into()
}
