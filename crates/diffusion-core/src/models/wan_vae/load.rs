use std::path::Path;

use burn::{
    nn::conv::{Conv2d, Conv3d},
    tensor::backend::Backend,
};

use super::{
    coder::DownLayer,
    layers::{
        ChannelRmsNorm, WanAttentionBlock, WanCausalConv3d, WanMidBlock, WanResBlock, WanResample,
    },
    WanVae, WanVaeConfig,
};
use crate::{
    error::Result,
    io::atomic::recover_folder,
    io::checkpoint::{
        load_diffusers_folder, save_diffusers_folder, NamedWeights, ParamLayout, SaveLayout,
        WeightVisitor,
    },
};

fn conv3d<B: Backend, V: WeightVisitor<B>>(v: &mut V, p: &str, c: &mut Conv3d<B>) -> Result<()> {
    v.weight_bias(p, &mut c.weight, ParamLayout::Same, c.bias.as_mut())
}

fn conv2d<B: Backend, V: WeightVisitor<B>>(v: &mut V, p: &str, c: &mut Conv2d<B>) -> Result<()> {
    v.weight_bias(p, &mut c.weight, ParamLayout::Same, c.bias.as_mut())
}

fn causal<B: Backend, V: WeightVisitor<B>>(
    v: &mut V,
    p: &str,
    c: &mut WanCausalConv3d<B>,
) -> Result<()> {
    conv3d(v, p, &mut c.conv)
}

/// `gamma` of `WanRMS_norm`: `[C, 1, 1, 1]` over videos, `[C, 1, 1]` over images.
fn norm<B: Backend, V: WeightVisitor<B>>(
    v: &mut V,
    p: &str,
    n: &mut ChannelRmsNorm<B>,
    trailing: usize,
) -> Result<()> {
    v.param(
        &format!("{p}.gamma"),
        &mut n.gamma,
        ParamLayout::Unsqueezed { trailing },
    )
}

fn res<B: Backend, V: WeightVisitor<B>>(v: &mut V, p: &str, r: &mut WanResBlock<B>) -> Result<()> {
    norm(v, &format!("{p}.norm1"), &mut r.norm1, 3)?;
    causal(v, &format!("{p}.conv1"), &mut r.conv1)?;
    norm(v, &format!("{p}.norm2"), &mut r.norm2, 3)?;
    causal(v, &format!("{p}.conv2"), &mut r.conv2)?;
    match r.shortcut.as_mut() {
        Some(s) => causal(v, &format!("{p}.conv_shortcut"), s),
        None => Ok(()),
    }
}

fn attention<B: Backend, V: WeightVisitor<B>>(
    v: &mut V,
    p: &str,
    a: &mut WanAttentionBlock<B>,
) -> Result<()> {
    norm(v, &format!("{p}.norm"), &mut a.norm, 2)?;
    conv2d(v, &format!("{p}.to_qkv"), &mut a.to_qkv)?;
    conv2d(v, &format!("{p}.proj"), &mut a.proj)
}

fn mid<B: Backend, V: WeightVisitor<B>>(v: &mut V, p: &str, m: &mut WanMidBlock<B>) -> Result<()> {
    res(v, &format!("{p}.resnets.0"), &mut m.resnets[0])?;
    attention(v, &format!("{p}.attentions.0"), &mut m.attention)?;
    res(v, &format!("{p}.resnets.1"), &mut m.resnets[1])
}

fn resample<B: Backend, V: WeightVisitor<B>>(
    v: &mut V,
    p: &str,
    r: &mut WanResample<B>,
) -> Result<()> {
    conv2d(v, &format!("{p}.resample.1"), &mut r.conv)?;
    match r.time_conv.as_mut() {
        Some(t) => causal(v, &format!("{p}.time_conv"), t),
        None => Ok(()),
    }
}

/// Keys of diffusers' `AutoencoderKLWan` state dict.
impl<B: Backend> NamedWeights<B> for WanVae<B> {
    fn visit_weights<V: WeightVisitor<B>>(&mut self, v: &mut V) -> Result<()> {
        let e = &mut self.encoder;
        causal(v, "encoder.conv_in", &mut e.conv_in)?;
        for (i, layer) in e.down.iter_mut().enumerate() {
            let p = format!("encoder.down_blocks.{i}");
            match layer {
                DownLayer::Res(r) => res(v, &p, r)?,
                DownLayer::Resample(r) => resample(v, &p, r)?,
            }
        }
        mid(v, "encoder.mid_block", &mut e.mid)?;
        norm(v, "encoder.norm_out", &mut e.norm_out, 3)?;
        causal(v, "encoder.conv_out", &mut e.conv_out)?;
        causal(v, "quant_conv", &mut self.quant_conv)?;
        causal(v, "post_quant_conv", &mut self.post_quant_conv)?;
        let d = &mut self.decoder;
        causal(v, "decoder.conv_in", &mut d.conv_in)?;
        mid(v, "decoder.mid_block", &mut d.mid)?;
        for (i, block) in d.up.iter_mut().enumerate() {
            for (j, r) in block.resnets.iter_mut().enumerate() {
                res(v, &format!("decoder.up_blocks.{i}.resnets.{j}"), r)?;
            }
            if let Some(u) = block.upsampler.as_mut() {
                resample(v, &format!("decoder.up_blocks.{i}.upsamplers.0"), u)?;
            }
        }
        norm(v, "decoder.norm_out", &mut d.norm_out, 3)?;
        causal(v, "decoder.conv_out", &mut d.conv_out)
    }
}

impl<B: Backend> WanVae<B> {
    /// Loads a diffusers `AutoencoderKLWan` folder (`config.json`, checked by
    /// [`WanVaeConfig::load_diffusers`], and `diffusion_pytorch_model.safetensors` or shards),
    /// streaming into a never-initialised model as [`crate::WanTransformer::load_folder`] does.
    ///
    /// # Errors
    /// As [`crate::WanTransformer::load_folder`].
    pub fn load_folder(dir: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let dir = dir.as_ref();
        recover_folder(dir)?;
        let cfg = WanVaeConfig::load_diffusers(dir.join("config.json"))?;
        load_diffusers_folder(WanVae::new(&cfg, device), dir, device)
    }

    /// Saves the VAE as a diffusers folder, replacing `dir` as a whole.
    pub fn save_folder(&self, dir: impl AsRef<Path>, layout: SaveLayout) -> Result<()> {
        save_diffusers_folder(
            self,
            dir.as_ref(),
            layout,
            &self.config().to_diffusers_json(),
        )
    }
}
