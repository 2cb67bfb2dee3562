//! The world's small video models: a causal VAE, a token text encoder and a Wan-architecture
//! DiT on the VAE's latents, saved together in one folder.

use std::path::Path;

use burn::{
    config::Config,
    tensor::{backend::Backend, Tensor},
};
use diffusion_core::{
    io::checkpoint::{load_record, load_safetensors, save_record, save_safetensors, write_atomic},
    models::text::{TextEncoder, TokenEncoder, TokenEncoderConfig},
    models::vae::{CausalVae, CausalVaeConfig, LatentNorm, VideoAutoencoder},
    sampling::rollout::randn,
    Conditioning, CoreError, EulerOde, FlowMatchScheduleConfig, Rollout, WanConfig, WanTransformer,
};
use rand::SeedableRng;

use crate::{caption::Caption, error::WorldError, render::VideoConfig, vocab::Vocabulary};

/// Shapes and normalisation of the world models.
#[derive(Config, Debug)]
pub struct WorldModelsConfig {
    /// Video size the VAE was trained on.
    pub video: VideoConfig,
    /// The VAE.
    pub vae: CausalVaeConfig,
    /// The text encoder.
    pub text: TokenEncoderConfig,
    /// The DiT.
    pub dit: WanConfig,
    /// Per-channel mean of VAE latents (DiT latents are `(z - mean) / std`).
    pub latent_mean: Vec<f32>,
    /// Per-channel standard deviation of VAE latents.
    pub latent_std: Vec<f32>,
}

impl WorldModelsConfig {
    /// The default small models for 17 x 64 x 64 videos: VAE with 8 x 8 pixel patches folded into
    /// channels (8x spatial) and 4x temporal compression to 16-channel `5 x 8 x 8` latents (Wan's
    /// 4x8x8 compression and channel count); DiT width 128 (4 heads), 4 blocks, patch 1x2x2
    /// (80 tokens); text encoder width 64.
    pub fn small() -> Self {
        let vocab = Vocabulary::default();
        Self::new(
            VideoConfig::default(),
            CausalVaeConfig::new(16, vec![48, 64])
                .with_patch(8)
                .with_spatial_stages(Some(0))
                .with_temporal_stages(2),
            TokenEncoderConfig::new(vocab.len(), 64)
                .with_max_len(16)
                .with_layers(1)
                .with_heads(2),
            WanConfig::new(4, 32, 384, 4)
                .with_in_channels(16)
                .with_out_channels(16)
                .with_text_dim(64)
                .with_freq_dim(64)
                .with_rope_max_seq_len(64),
            vec![0.0; 16],
            vec![1.0; 16],
        )
    }

    /// Latent shape `[C, F, H, W]` of one video.
    pub fn latent_shape(&self) -> [usize; 4] {
        let s = self.vae.spatial_factor();
        let t = self.vae.temporal_factor();
        let v = self.video;
        [
            self.vae.latent_channels,
            1 + (v.frames - 1) / t,
            v.height / s,
            v.width / s,
        ]
    }

    /// Reads a `config.json` written by [`WorldModels::save`] and checks it.
    ///
    /// # Errors
    /// `Io` when it cannot be read; `ConfigKey` naming the file and the key: not JSON of this
    /// shape, an unknown key (at any depth), or a value [`WorldModelsConfig::validate`] refuses.
    pub fn read(path: &Path) -> Result<Self, CoreError> {
        let key_error = |key: &str, reason: String| CoreError::ConfigKey {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| key_error("(file)", format!("not JSON: {e}")))?;
        let reference =
            serde_json::to_value(Self::small()).map_err(|e| key_error("(file)", e.to_string()))?;
        if let Some(key) = unknown_key(&value, &reference) {
            return Err(key_error(&key, "unknown key".into()));
        }
        let config: Self =
            serde_json::from_value(value).map_err(|e| key_error("(file)", e.to_string()))?;
        config.validate().map_err(|e| match e {
            CoreError::InvalidConfig { field, reason } => key_error(field, reason),
            other => key_error("(file)", other.to_string()),
        })?;
        Ok(config)
    }

    /// Checks that the parts fit together: the video's frames are `1 + k * temporal factor`
    /// and its sides multiples of the spatial factor, the DiT reads the VAE's latent channels
    /// and the text encoder's width, and the latent statistics have one finite mean and one
    /// finite positive standard deviation per latent channel.
    ///
    /// # Errors
    /// `InvalidConfig` naming the field.
    pub fn validate(&self) -> Result<(), CoreError> {
        let invalid =
            |field: &'static str, reason: String| CoreError::InvalidConfig { field, reason };
        let (v, s, t) = (
            self.video,
            self.vae.spatial_factor(),
            self.vae.temporal_factor(),
        );
        self.video
            .validate()
            .map_err(|e| invalid("video", e.to_string()))?;
        if (v.frames - 1) % t != 0 || v.height % s != 0 || v.width % s != 0 {
            return Err(invalid(
                "video",
                format!("{v:?}: need frames = 1 + {t} k and sides that are multiples of {s}"),
            ));
        }
        self.dit.validate()?;
        let c = self.vae.latent_channels;
        if c == 0 || self.dit.in_channels != c || self.dit.out_channels != c {
            return Err(invalid(
                "dit.in_channels",
                format!(
                    "the DiT reads {} and writes {} channels, the VAE's latents have {c} (> 0)",
                    self.dit.in_channels, self.dit.out_channels
                ),
            ));
        }
        if self.dit.text_dim != self.text.dim {
            return Err(invalid(
                "dit.text_dim",
                format!(
                    "{}, the text encoder's width is {}",
                    self.dit.text_dim, self.text.dim
                ),
            ));
        }
        for (field, values, positive) in [
            ("latent_mean", &self.latent_mean, false),
            ("latent_std", &self.latent_std, true),
        ] {
            if values.len() != c {
                return Err(invalid(
                    field,
                    format!("{} values, the VAE has {c} latent channels", values.len()),
                ));
            }
            if let Some(x) = values
                .iter()
                .find(|x| !x.is_finite() || (positive && **x <= 0.0))
            {
                return Err(invalid(
                    field,
                    format!(
                        "{x}: every value must be finite{}",
                        if positive { " and > 0" } else { "" }
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Randomly initialised models.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<WorldModels<B>, CoreError> {
        Ok(WorldModels {
            vae: self.vae.init(device)?,
            text: self.text.init(device)?,
            dit: self.dit.init(device)?,
            config: self.clone(),
        })
    }
}

/// The VAE, text encoder and DiT of shapes-world.
#[derive(Debug, Clone)]
pub struct WorldModels<B: Backend> {
    /// Causal video VAE.
    pub vae: CausalVae<B>,
    /// Prompt encoder.
    pub text: TokenEncoder<B>,
    /// Text-to-video DiT on normalised latents.
    pub dit: WanTransformer<B>,
    /// Their configuration and the latent normalisation.
    pub config: WorldModelsConfig,
}

impl<B: burn::tensor::backend::AutodiffBackend> WorldModels<B> {
    /// The oracle reward's gradient in the latent, `d reward(decode(z), caption_i) / d z_i`
    /// (through the VAE decoder; each sample's reward depends on its own latent alone).
    ///
    /// # Shapes
    /// - `latents`: `[B, C, F', H', W']`, `captions.len() == B` -> `[B, C, F', H', W']`
    pub fn reward_gradient(
        &self,
        latents: Tensor<B::InnerBackend, 5>,
        captions: &[Caption],
    ) -> Result<Tensor<B::InnerBackend, 5>, WorldError> {
        let leaf = Tensor::<B, 5>::from_inner(latents).require_grad();
        let reward = crate::oracle::OracleReward.score(self.decode(leaf.clone()), captions)?;
        let grads = reward.sum().backward();
        leaf.grad(&grads).ok_or_else(|| {
            WorldError::InvalidConfig("the oracle has no gradient in the latent".into())
        })
    }

    /// The models on the inner (inference) backend.
    pub fn valid(&self) -> WorldModels<B::InnerBackend> {
        use burn::module::AutodiffModule;
        WorldModels {
            vae: self.vae.valid(),
            text: self.text.valid(),
            dit: self.dit.valid(),
            config: self.config.clone(),
        }
    }
}

/// The first key of `found` (dotted path, at any depth of nested objects) that `reference`
/// lacks.
fn unknown_key(found: &serde_json::Value, reference: &serde_json::Value) -> Option<String> {
    let (serde_json::Value::Object(found), serde_json::Value::Object(reference)) =
        (found, reference)
    else {
        return None;
    };
    found.iter().find_map(|(k, v)| match reference.get(k) {
        None => Some(k.clone()),
        Some(r) => unknown_key(v, r).map(|inner| format!("{k}.{inner}")),
    })
}

fn io(path: &Path, source: std::io::Error) -> CoreError {
    CoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl<B: Backend> WorldModels<B> {
    /// Saves `config.json`, `vae.mpk`, `text.mpk` and `dit.safetensors` (diffusers layout) into
    /// `dir`, each atomically.
    pub fn save(&self, dir: &Path) -> Result<(), CoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let json =
            serde_json::to_vec_pretty(&self.config).map_err(|e| CoreError::InvalidConfig {
                field: "config",
                reason: e.to_string(),
            })?;
        write_atomic(&dir.join("config.json"), &json)?;
        save_record(self.vae.clone(), &dir.join("vae.mpk"))?;
        save_record(self.text.clone(), &dir.join("text.mpk"))?;
        save_safetensors(&self.dit, dir.join("dit.safetensors"))
    }

    /// Loads what [`WorldModels::save`] wrote.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, CoreError> {
        let config = WorldModelsConfig::read(&dir.join("config.json"))?;
        let fresh = config.init::<B>(device)?;
        Ok(Self {
            vae: load_record(fresh.vae, &dir.join("vae.mpk"), device)?,
            text: load_record(fresh.text, &dir.join("text.mpk"), device)?,
            dit: load_safetensors(fresh.dit, dir.join("dit.safetensors"), device)?,
            config,
        })
    }

    /// Text embeddings of captions.
    ///
    /// # Shapes
    /// - output: `[B, S, D_text]`
    pub fn embed(
        &self,
        captions: &[Caption],
        device: &B::Device,
    ) -> Result<Tensor<B, 3>, WorldError> {
        let texts: Vec<String> = captions.iter().map(Caption::text).collect();
        self.embed_texts(&texts, device)
    }

    /// Text embeddings of free prompts in the world's vocabulary (terse user prompts too).
    ///
    /// # Shapes
    /// - output: `[B, S, D_text]`
    ///
    /// # Errors
    /// `Caption` for a word outside the vocabulary.
    pub fn embed_texts(
        &self,
        texts: &[String],
        device: &B::Device,
    ) -> Result<Tensor<B, 3>, WorldError> {
        let vocab = Vocabulary::default();
        let tokens = texts
            .iter()
            .map(|t| vocab.encode(t))
            .collect::<Result<Vec<_>, _>>()?;
        let ids = self
            .text
            .batch(&tokens, device)
            .map_err(|e| WorldError::InvalidConfig(e.to_string()))?;
        Ok(self.text.encode(ids))
    }

    /// The latent normalisation of the DiT.
    pub fn latent_norm(&self) -> LatentNorm {
        LatentNorm {
            mean: self.config.latent_mean.clone(),
            std: self.config.latent_std.clone(),
        }
    }

    /// VAE latents of videos, normalised for the DiT (posterior means).
    ///
    /// # Shapes
    /// - `video`: `[B, 3, F, H, W]` in `[-1, 1]` -> `[B, C, F', H', W']`
    pub fn encode(&self, video: Tensor<B, 5>) -> Tensor<B, 5> {
        self.latent_norm().encode(&self.vae, video)
    }

    /// Videos from normalised latents.
    ///
    /// # Shapes
    /// - `latent`: `[B, C, F', H', W']` -> `[B, 3, F, H, W]`
    pub fn decode(&self, latent: Tensor<B, 5>) -> Tensor<B, 5> {
        self.latent_norm().decode(&self.vae, latent)
    }

    /// Samples normalised latents for captions (Euler, shift 3) and scores their decodings with
    /// the oracle.
    ///
    /// # Shapes
    /// - output: (`latents`: `[B, C, F', H', W']`, `rewards`: `[B]`)
    pub fn sample_scored(
        &self,
        captions: &[Caption],
        steps: usize,
        seed: u64,
        device: &B::Device,
    ) -> Result<(Tensor<B, 5>, Tensor<B, 1>), WorldError> {
        let z = self.sample_latents(captions, steps, 3.0, seed, device)?;
        let rewards = crate::oracle::OracleReward.score(self.decode(z.clone()), captions)?;
        Ok((z, rewards))
    }

    /// Samples normalised latents for captions with the Euler ODE sampler.
    pub fn sample_latents(
        &self,
        captions: &[Caption],
        steps: usize,
        shift: f64,
        seed: u64,
        device: &B::Device,
    ) -> Result<Tensor<B, 5>, WorldError> {
        self.sample_from_text(self.embed(captions, device)?, steps, shift, seed)
    }

    /// Samples normalised latents for prompt embeddings with the Euler ODE sampler (`steps`
    /// steps, schedule `shift`), from noise drawn from `seed`.
    ///
    /// # Shapes
    /// - `text`: `[B, S, D_text]` -> `[B, C, F', H', W']`
    pub fn sample_from_text(
        &self,
        text: Tensor<B, 3>,
        steps: usize,
        shift: f64,
        seed: u64,
    ) -> Result<Tensor<B, 5>, WorldError> {
        let werr = |e: CoreError| WorldError::InvalidConfig(e.to_string());
        let schedule = FlowMatchScheduleConfig::new(steps)
            .with_shift(shift)
            .init()
            .map_err(werr)?;
        let [c, f, h, w] = self.config.latent_shape();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let noise = randn::<B, 5>([text.dims()[0], c, f, h, w], &mut rng, &text.device());
        let cond = Conditioning::new(text);
        let traj = Rollout::new(&schedule, &EulerOde)
            .sample(&self.dit, noise, &cond, seed)
            .map_err(werr)?;
        Ok(traj.last().clone())
    }
}

/// PSNR (dB) of the VAE's reconstruction of a batch of videos in `[-1, 1]`.
pub fn vae_psnr_batch<B: Backend>(models: &WorldModels<B>, video: Tensor<B, 5>) -> f64 {
    use burn::tensor::ElementConversion;
    let recon = models
        .vae
        .decode(models.vae.encode(video.clone()).mean)
        .clamp(-1.0, 1.0);
    // on [0, 1] pixels: mse01 = mse / 4
    let mse = (recon - video)
        .powi_scalar(2)
        .mean()
        .into_scalar()
        .elem::<f64>()
        / 4.0;
    -10.0 * mse.max(1e-12).log10()
}
