use burn::{config::Config, tensor::backend::Backend};

use super::WanTransformer;
use crate::{error::invalid, models::diffusers_config::DiffusersConfig};

/// Configuration of a [`WanTransformer`], field names as in diffusers' `config.json` of
/// `WanTransformer3DModel` so that file can be read with [`WanConfig::load_diffusers`].
#[derive(Config, Debug, PartialEq)]
pub struct WanConfig {
    /// Patch size `(p_t, p_h, p_w)` of the 3D patch embedding.
    #[config(default = "[1, 2, 2]")]
    pub patch_size: [usize; 3],
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Width of one head; the model width is `heads * head_dim`.
    pub attention_head_dim: usize,
    /// Latent channels in.
    #[config(default = 16)]
    pub in_channels: usize,
    /// Latent channels out.
    #[config(default = 16)]
    pub out_channels: usize,
    /// Width of the text embeddings (umT5-XXL: 4096).
    #[config(default = 4096)]
    pub text_dim: usize,
    /// Width of the sinusoidal timestep features.
    #[config(default = 256)]
    pub freq_dim: usize,
    /// Hidden width of the feed-forward network.
    pub ffn_dim: usize,
    /// Number of transformer blocks.
    pub num_layers: usize,
    /// Whether cross-attention input is layer-normed (with affine parameters); true in Wan2.1.
    #[config(default = true)]
    pub cross_attn_norm: bool,
    /// Epsilon of the layer and RMS norms.
    #[config(default = 1e-6)]
    pub eps: f64,
    /// Longest axis (in patches) the rotary tables cover.
    #[config(default = 1024)]
    pub rope_max_seq_len: usize,
}

impl WanConfig {
    /// Published shape of Wan2.1-T2V-1.3B.
    pub fn wan21_1_3b() -> Self {
        Self::new(12, 128, 8960, 30)
    }

    /// Published shape of Wan2.1-T2V-14B.
    pub fn wan21_14b() -> Self {
        Self::new(40, 128, 13824, 40)
    }

    /// A tiny model for tests: width 24 (2 heads of 12), 2 blocks, 4 latent channels.
    pub fn tiny() -> Self {
        Self::new(2, 12, 48, 2)
            .with_in_channels(4)
            .with_out_channels(4)
            .with_text_dim(16)
            .with_freq_dim(16)
            .with_rope_max_seq_len(64)
    }

    /// Model width `heads * head_dim`.
    pub fn dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Reads a diffusers `config.json` of `WanTransformer3DModel`.
    ///
    /// Keys starting with `_` (`_class_name`, `_diffusers_version`, ...) are metadata. Every
    /// other key must be a field of this config or one of the keys whose only implemented
    /// value is Wan2.1 text-to-video's: `qk_norm = "rms_norm_across_heads"`, and `image_dim`,
    /// `added_kv_proj_dim`, `pos_embed_seq_len` null (image conditioning).
    ///
    /// # Errors
    /// `Io` when the file cannot be read; `ConfigKey` naming the file and key for an unknown
    /// key, an unsupported value or a value of the wrong type; `InvalidConfig` when the values
    /// break a shape constraint.
    pub fn load_diffusers(path: impl AsRef<std::path::Path>) -> crate::Result<Self> {
        use serde_json::Value;
        let file = DiffusersConfig::read(path.as_ref())?;
        let known = serde_json::to_value(Self::wan21_1_3b()).expect("config serialises");
        let mut fields = serde_json::Map::new();
        for (key, value) in &file.keys {
            match (key.as_str(), value) {
                ("qk_norm", Value::String(s)) if s == "rms_norm_across_heads" => {}
                ("qk_norm", _) => {
                    return Err(file.error(
                        key,
                        format!("only \"rms_norm_across_heads\" is implemented, found {value}"),
                    ))
                }
                ("image_dim" | "added_kv_proj_dim" | "pos_embed_seq_len", v) if !v.is_null() => {
                    return Err(file.error(
                        key,
                        format!(
                            "image conditioning (Wan image-to-video) is not implemented: \
                             expected null, found {value}"
                        ),
                    ))
                }
                ("image_dim" | "added_kv_proj_dim" | "pos_embed_seq_len", _) => {}
                (k, _) if known.get(k).is_some() => {
                    file.check_field::<Self>(&known, key, value)?;
                    fields.insert(key.clone(), value.clone());
                }
                _ => return Err(file.error(key, "unknown key for WanTransformer3DModel")),
            }
        }
        for key in [
            "num_attention_heads",
            "attention_head_dim",
            "ffn_dim",
            "num_layers",
        ] {
            if !fields.contains_key(key) {
                return Err(file.error(key, "required, missing"));
            }
        }
        let cfg: Self = file.build(fields)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The diffusers `config.json` of this config (what `save_pretrained` writes).
    pub fn to_diffusers_json(&self) -> String {
        let mut value = serde_json::to_value(self).expect("config serialises");
        let map = value.as_object_mut().expect("config is an object");
        map.insert("_class_name".into(), "WanTransformer3DModel".into());
        map.insert("_diffusers_version".into(), "0.42.1".into());
        map.insert("qk_norm".into(), "rms_norm_across_heads".into());
        for key in ["image_dim", "added_kv_proj_dim", "pos_embed_seq_len"] {
            map.insert(key.into(), serde_json::Value::Null);
        }
        serde_json::to_string_pretty(&value).expect("config serialises")
    }

    /// Checks the shape constraints the architecture relies on.
    pub fn validate(&self) -> crate::Result<()> {
        if self.num_attention_heads == 0 || self.num_layers == 0 || self.ffn_dim == 0 {
            return Err(invalid(
                "num_attention_heads/num_layers/ffn_dim",
                "must be > 0",
            ));
        }
        if self.attention_head_dim % 2 != 0 || self.attention_head_dim < 6 {
            return Err(invalid(
                "attention_head_dim",
                format!(
                    "must be even and >= 6 for 3D RoPE, got {}",
                    self.attention_head_dim
                ),
            ));
        }
        if self.patch_size.contains(&0) {
            return Err(invalid("patch_size", "entries must be > 0"));
        }
        if self.freq_dim % 2 != 0 || self.freq_dim == 0 {
            return Err(invalid("freq_dim", "must be even and > 0"));
        }
        if self.in_channels == 0 || self.out_channels == 0 || self.text_dim == 0 {
            return Err(invalid("in_channels/out_channels/text_dim", "must be > 0"));
        }
        Ok(())
    }

    /// Number of parameters of the model this config describes.
    pub fn num_params(&self) -> usize {
        let d = self.dim();
        let [pt, ph, pw] = self.patch_size;
        let lin = |i: usize, o: usize| i * o + o;
        let patch = self.in_channels * pt * ph * pw * d + d;
        let cond =
            lin(self.freq_dim, d) + lin(d, d) + lin(d, 6 * d) + lin(self.text_dim, d) + lin(d, d);
        patch + cond + self.num_layers * self.block_params() + self.head_params()
    }

    /// Parameters of one transformer block: two attentions (four biased linears, two RMS
    /// gains each), the feed-forward's two linears, the modulation table and, with
    /// `cross_attn_norm`, the cross-attention's affine layer norm.
    pub fn block_params(&self) -> usize {
        let d = self.dim();
        let lin = |i: usize, o: usize| i * o + o;
        let attn = 4 * lin(d, d) + 2 * d;
        2 * attn
            + lin(d, self.ffn_dim)
            + lin(self.ffn_dim, d)
            + 6 * d
            + if self.cross_attn_norm { 2 * d } else { 0 }
    }

    /// Parameters of the output head: the projection to the patches and its modulation table.
    pub fn head_params(&self) -> usize {
        let d = self.dim();
        let [pt, ph, pw] = self.patch_size;
        let out = self.out_channels * pt * ph * pw;
        d * out + out + 2 * d
    }

    /// Builds a randomly initialised model.
    pub fn init<B: Backend>(&self, device: &B::Device) -> crate::Result<WanTransformer<B>> {
        self.validate()?;
        Ok(crate::io::checkpoint::materialize(WanTransformer::new(
            self, device,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_sizes() {
        // Wan2.1 reports 1.3B and 14B parameters.
        let small = WanConfig::wan21_1_3b().num_params() as f64 / 1e9;
        let big = WanConfig::wan21_14b().num_params() as f64 / 1e9;
        assert!((1.4..1.45).contains(&small), "{small}");
        assert!((14.0..14.4).contains(&big), "{big}");
    }

    #[test]
    fn reads_diffusers_json() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("config.json");
        std::fs::write(
            &dir,
            r#"{"_class_name":"WanTransformer3DModel","patch_size":[1,2,2],"num_attention_heads":12,
            "attention_head_dim":128,"in_channels":16,"out_channels":16,"text_dim":4096,"freq_dim":256,
            "ffn_dim":8960,"num_layers":30,"cross_attn_norm":true,"qk_norm":"rms_norm_across_heads",
            "eps":1e-06,"image_dim":null,"added_kv_proj_dim":null,"rope_max_seq_len":1024}"#,
        )
        .unwrap();
        assert_eq!(
            WanConfig::load_diffusers(&dir).unwrap(),
            WanConfig::wan21_1_3b()
        );
    }

    #[test]
    fn odd_head_dim_is_rejected() {
        assert!(WanConfig::new(2, 7, 8, 1).validate().is_err());
    }
}
