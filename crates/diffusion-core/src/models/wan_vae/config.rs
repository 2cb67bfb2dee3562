use std::path::Path;

use burn::{config::Config, tensor::backend::Backend};

use super::WanVae;
use crate::{
    error::invalid,
    models::{diffusers_config::DiffusersConfig, vae::LatentNorm},
};

/// Configuration of a [`WanVae`], keys as in diffusers' `config.json` of `AutoencoderKLWan`
/// (Wan2.1's VAE: causal 3D convolutions, 8x spatial and 4x temporal compression).
#[derive(Config, Debug, PartialEq)]
pub struct WanVaeConfig {
    /// Width of the first encoder stage.
    #[config(default = 96)]
    pub base_dim: usize,
    /// Width of the decoder's last stage (`base_dim` when `None`).
    #[config(default = "None")]
    pub decoder_base_dim: Option<usize>,
    /// Latent channels.
    #[config(default = 16)]
    pub z_dim: usize,
    /// Width multipliers of the stages.
    #[config(default = "vec![1, 2, 4, 4]")]
    pub dim_mult: Vec<usize>,
    /// Residual blocks per encoder stage (decoder stages have one more).
    #[config(default = 2)]
    pub num_res_blocks: usize,
    /// Which downsampling stages also halve time (spelling as diffusers).
    #[config(default = "vec![false, true, true]")]
    pub temperal_downsample: Vec<bool>,
    /// Per-channel mean of the latents (the DiT works on `(z - mean) / std`).
    #[config(default = "wan21_latents_mean()")]
    pub latents_mean: Vec<f32>,
    /// Per-channel standard deviation of the latents.
    #[config(default = "wan21_latents_std()")]
    pub latents_std: Vec<f32>,
    /// Video channels in.
    #[config(default = 3)]
    pub in_channels: usize,
    /// Video channels out.
    #[config(default = 3)]
    pub out_channels: usize,
}

/// Wan2.1's published latent means.
pub fn wan21_latents_mean() -> Vec<f32> {
    vec![
        -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715,
        0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
    ]
}

/// Wan2.1's published latent standard deviations.
pub fn wan21_latents_std() -> Vec<f32> {
    vec![
        2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652,
        1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
    ]
}

impl WanVaeConfig {
    /// Spatial compression `2^(stages - 1)`.
    pub fn spatial_factor(&self) -> usize {
        1 << (self.dim_mult.len() - 1)
    }

    /// Temporal compression: 2 per stage that halves time.
    pub fn temporal_factor(&self) -> usize {
        1 << self.temperal_downsample.iter().filter(|t| **t).count()
    }

    /// The latent normalisation of this VAE.
    pub fn latent_norm(&self) -> LatentNorm {
        LatentNorm {
            mean: self.latents_mean.clone(),
            std: self.latents_std.clone(),
        }
    }

    /// Reads a diffusers `config.json` of `AutoencoderKLWan`. Keys starting with `_` are
    /// metadata; every other key must be a field of this config or hold the only value that is
    /// implemented: `attn_scales = []`, `dropout = 0`, `is_residual = false` (Wan2.2's VAE),
    /// `patch_size = null`, `scale_factor_temporal` / `scale_factor_spatial` equal to what the
    /// stages give.
    ///
    /// # Errors
    /// `Io`; `ConfigKey` naming the file and key; `InvalidConfig` for broken constraints.
    pub fn load_diffusers(path: impl AsRef<Path>) -> crate::Result<Self> {
        use serde_json::Value;
        let file = DiffusersConfig::read(path.as_ref())?;
        let known = serde_json::to_value(Self::new()).expect("config serialises");
        let mut fields = serde_json::Map::new();
        let mut scale_keys = Vec::new();
        for (key, value) in &file.keys {
            let ok = match key.as_str() {
                "attn_scales" => value.as_array().is_some_and(Vec::is_empty),
                "dropout" => value.as_f64() == Some(0.0),
                "is_residual" => *value == Value::Bool(false),
                "patch_size" => value.is_null(),
                "scale_factor_temporal" | "scale_factor_spatial" => {
                    scale_keys.push((key, value));
                    true
                }
                k if known.get(k).is_some() => {
                    file.check_field::<Self>(&known, key, value)?;
                    fields.insert(key.clone(), value.clone());
                    true
                }
                _ => return Err(file.error(key, "unknown key for AutoencoderKLWan")),
            };
            if !ok {
                return Err(file.error(
                    key,
                    format!("only Wan2.1's value is implemented, found {value}"),
                ));
            }
        }
        let cfg: Self = file.build(fields)?;
        cfg.validate()?;
        for (key, value) in scale_keys {
            let want = if key == "scale_factor_temporal" {
                cfg.temporal_factor()
            } else {
                cfg.spatial_factor()
            };
            if !value.is_null() && value.as_u64() != Some(want as u64) {
                return Err(file.error(
                    key,
                    format!("the stages give {want}, the file says {value}"),
                ));
            }
        }
        Ok(cfg)
    }

    /// Checks the constraints the architecture relies on.
    pub fn validate(&self) -> crate::Result<()> {
        let n = self.dim_mult.len();
        if n < 2 || self.dim_mult.contains(&0) || self.base_dim == 0 || self.num_res_blocks == 0 {
            return Err(invalid(
                "dim_mult/base_dim/num_res_blocks",
                "at least two stages, every width > 0, at least one residual block",
            ));
        }
        if self.temperal_downsample.len() != n - 1 {
            return Err(invalid(
                "temperal_downsample",
                format!(
                    "one entry per downsampling stage ({}), found {}",
                    n - 1,
                    self.temperal_downsample.len()
                ),
            ));
        }
        let base = self.decoder_base_dim.unwrap_or(self.base_dim);
        if base == 0 || self.dim_mult.iter().any(|m| (m * base) % 2 != 0) {
            return Err(invalid(
                "decoder_base_dim",
                "every decoder stage width must be even (upsamplers halve it)",
            ));
        }
        if self.z_dim == 0 || self.in_channels == 0 || self.out_channels == 0 {
            return Err(invalid("z_dim/in_channels/out_channels", "must be > 0"));
        }
        if self.latents_mean.len() != self.z_dim || self.latents_std.len() != self.z_dim {
            return Err(invalid(
                "latents_mean/latents_std",
                format!(
                    "{} values each (z_dim), found {} and {}",
                    self.z_dim,
                    self.latents_mean.len(),
                    self.latents_std.len()
                ),
            ));
        }
        if self.latents_mean.iter().any(|m| !m.is_finite())
            || self.latents_std.iter().any(|s| !s.is_finite() || *s <= 0.0)
        {
            return Err(invalid("latents_mean/latents_std", "finite, and std > 0"));
        }
        Ok(())
    }

    /// The diffusers `config.json` of this config.
    pub fn to_diffusers_json(&self) -> String {
        let mut value = serde_json::to_value(self).expect("config serialises");
        let map = value.as_object_mut().expect("object");
        map.insert("_class_name".into(), "AutoencoderKLWan".into());
        map.insert("_diffusers_version".into(), "0.42.1".into());
        map.insert("attn_scales".into(), serde_json::json!([]));
        map.insert("dropout".into(), 0.0.into());
        map.insert("is_residual".into(), false.into());
        serde_json::to_string_pretty(&value).expect("config serialises")
    }

    /// Builds a randomly initialised VAE.
    pub fn init<B: Backend>(&self, device: &B::Device) -> crate::Result<WanVae<B>> {
        self.validate()?;
        Ok(crate::io::checkpoint::materialize(WanVae::new(
            self, device,
        )))
    }
}
