//! The VELR latent reward model.

use burn::{
    config::Config,
    module::{Module, Param},
    nn::{
        attention::{MhaInput, MultiHeadAttention, MultiHeadAttentionConfig},
        transformer::{TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput},
        LayerNorm, LayerNormConfig, Linear, LinearConfig,
    },
    tensor::{backend::Backend, Distribution, Tensor},
};

use crate::{
    base::{check_shapes, LatentReward, RewardRange},
    error::invalid,
    mlp::mlp_forward,
    res_block::{ResBlock, ResBlockConfig},
};

/// Which text tokens the video tokens cross-attend to.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum TextKeys {
    /// Only the last token (VELR: the last hidden state of a causal LLM summarises the prompt).
    Last,
    /// Every token (suits bidirectional text encoders, whose padding positions carry no
    /// summary).
    All,
}

/// How the prompt reaches the score.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum TextFusion {
    /// VELR as published: only through the cross-attention of the video tokens to the text;
    /// a linear head on the mean video token.
    CrossAttention,
    /// The cross-attention plus a pooled prompt vector `u` (mean of the projected text tokens):
    /// FiLM of the video tokens by `u` before the encoder, and a two-layer head on
    /// `[v, u, v * u]` for the mean video token `v`. On shapes-world the published model
    /// memorises the training prompts (train Pearson 0.98, test 0.1-0.25) while an MLP on
    /// pooled latents and pooled text generalises (test 0.56-0.66): whether a video matches its
    /// prompt is a comparison of the two, which the product term gives the head directly.
    Pooled,
    /// [`TextFusion::Pooled`] plus FiLM of every residual block's output by the mean text token
    /// (a linear map to the block's per-channel scale and shift): the prompt conditions the
    /// convolutions from the first block on, so the features themselves are computed for the
    /// prompt's colour, shape and motion. On shapes-world a conditioned conv net of this kind
    /// (scripts/lrm_probe.py) regresses the oracle far better than a prompt that arrives only
    /// after the convolutions (docs/results/reward_models.md).
    BlockFilm,
}

/// How the noise level `sigma` reaches a [`VelrReward`].
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum NoiseInput {
    /// Ignored: the model scores clean latents (VELR as published).
    Ignored,
    /// FiLM of every residual block's output by sinusoidal features of `1000 sigma`: a
    /// process-aware model that scores noisy latents at their noise level, as PRFL's reward
    /// model does ("Video Generation Models Are Good Latent Reward Models", section 3.2), trained by regressing the clean sample's reward
    /// ([`fit_noisy_regression`](crate::fit_noisy_regression)).
    BlockFilm,
}

/// Width of the sinusoidal features of `1000 sigma` ([`NoiseInput::BlockFilm`]).
const NOISE_FEATURES: usize = 32;

/// Configuration of a [`VelrReward`].
#[derive(Config, Debug)]
pub struct VelrRewardConfig {
    /// Latent shape `[C, F, H, W]` the model reads (fixes the position-embedding table).
    pub latent_shape: [usize; 4],
    /// Width of the text embeddings.
    pub text_dim: usize,
    /// Output channels of the residual blocks (VELR: 3 blocks).
    #[config(default = "vec![32, 64, 64]")]
    pub channels: Vec<usize>,
    /// Stride `(F, H, W)` of each residual block. The default downsamples in the first block,
    /// which suits large latents (VELR reads 60 x 104 Wan latents); on small latents keep the
    /// first block at full resolution: on shapes-world's 8 x 8 latents `[1, 1, 1]` first lifts
    /// the test / OOD Pearson from 0.66 / 0.69 to 0.79 / 0.79 (docs/results/reward_models.md).
    #[config(default = "vec![[1, 2, 2], [1, 2, 2], [1, 1, 1]]")]
    pub strides: Vec<[usize; 3]>,
    /// GroupNorm groups.
    #[config(default = 8)]
    pub groups: usize,
    /// Attention heads (cross-attention and encoder).
    #[config(default = 4)]
    pub heads: usize,
    /// Transformer encoder layers.
    #[config(default = 2)]
    pub layers: usize,
    /// Text tokens used as keys.
    #[config(default = "TextKeys::All")]
    pub text_keys: TextKeys,
    /// How the prompt reaches the score.
    #[config(default = "TextFusion::Pooled")]
    pub fusion: TextFusion,
    /// How the noise level reaches the model.
    #[config(default = "NoiseInput::Ignored")]
    pub noise: NoiseInput,
}

impl VelrRewardConfig {
    /// Token grid `[F', H', W']` after the residual blocks.
    pub fn grid(&self) -> [usize; 3] {
        let [_, mut f, mut h, mut w] = self.latent_shape;
        for s in &self.strides {
            f = f.div_ceil(s[0]);
            h = h.div_ceil(s[1]);
            w = w.div_ceil(s[2]);
        }
        [f, h, w]
    }

    /// A randomly initialised model.
    ///
    /// # Errors
    /// `InvalidConfig` when `channels` and `strides` differ in length or are empty, a width is
    /// not divisible by `groups`/`heads`, or a dimension is 0.
    pub fn init<B: Backend>(&self, device: &B::Device) -> crate::Result<VelrReward<B>> {
        if self.channels.is_empty() || self.channels.len() != self.strides.len() {
            return Err(invalid(
                "channels/strides",
                format!(
                    "need one stride per block, got {} and {}",
                    self.channels.len(),
                    self.strides.len()
                ),
            ));
        }
        if self
            .channels
            .iter()
            .any(|c| *c == 0 || c % self.groups.max(1) != 0)
            || self.groups == 0
        {
            return Err(invalid(
                "groups",
                format!(
                    "{} must divide every channel count {:?}",
                    self.groups, self.channels
                ),
            ));
        }
        if self.strides.iter().flatten().any(|s| *s == 0)
            || self.latent_shape.contains(&0)
            || self.text_dim == 0
        {
            return Err(invalid("strides/latent_shape/text_dim", "must be positive"));
        }
        let width = *self.channels.last().expect("non-empty");
        if self.heads == 0 || width % self.heads != 0 {
            return Err(invalid(
                "heads",
                format!("{} must divide the width {width}", self.heads),
            ));
        }
        let mut cin = self.latent_shape[0];
        let blocks = self
            .channels
            .iter()
            .zip(&self.strides)
            .map(|(&cout, &stride)| {
                let block = ResBlockConfig::new(cin, cout, stride, self.groups).init(device);
                cin = cout;
                block
            })
            .collect();
        let [f, h, w] = self.grid();
        let model = VelrReward {
            blocks,
            positions: Param::from_tensor(Tensor::random(
                [1, f * h * w, width],
                Distribution::Normal(0.0, 0.02),
                device,
            )),
            text_proj: LinearConfig::new(self.text_dim, width).init(device),
            cross: MultiHeadAttentionConfig::new(width, self.heads)
                .with_dropout(0.0)
                .init(device),
            cross_norm: LayerNormConfig::new(width).init(device),
            encoder: TransformerEncoderConfig::new(width, 4 * width, self.heads, self.layers)
                .with_norm_first(true)
                .with_dropout(0.0)
                .init(device),
            out_norm: LayerNormConfig::new(width).init(device),
            film: (self.fusion != TextFusion::CrossAttention)
                .then(|| LinearConfig::new(width, 2 * width).init(device)),
            block_film: match self.fusion {
                TextFusion::BlockFilm => self
                    .channels
                    .iter()
                    .map(|&c| LinearConfig::new(self.text_dim, 2 * c).init(device))
                    .collect(),
                _ => Vec::new(),
            },
            noise_film: match self.noise {
                NoiseInput::BlockFilm => Some(
                    self.channels
                        .iter()
                        .map(|&c| LinearConfig::new(NOISE_FEATURES, 2 * c).init(device))
                        .collect(),
                ),
                NoiseInput::Ignored => None,
            },
            head: match self.fusion {
                TextFusion::CrossAttention => vec![LinearConfig::new(width, 1).init(device)],
                TextFusion::Pooled | TextFusion::BlockFilm => vec![
                    LinearConfig::new(3 * width, width).init(device),
                    LinearConfig::new(width, 1).init(device),
                ],
            },
            latent_shape: self.latent_shape,
            text_dim: self.text_dim,
            last_token_only: self.text_keys == TextKeys::Last,
        };
        Ok(diffusion_core::io::checkpoint::materialize(model))
    }
}

/// VELR's latent reward model ("VELR: Efficient Video Reward Feedback via Ensemble Latent Reward Models", section 4.1, appendix C): three residual 3D-conv blocks
/// with GroupNorm, SiLU and downsampling; the feature map becomes tokens with learnable
/// spatio-temporal position embeddings; the tokens cross-attend to the projected prompt; a
/// transformer encoder mixes them; the mean token goes through a linear head to a scalar that
/// regresses the pixel-space reward of the decoded video. [`TextFusion::Pooled`] adds a pooled
/// prompt path (FiLM and a head on video and prompt vectors). Scores clean latents (`sigma` is
/// ignored) unless built with [`NoiseInput::BlockFilm`].
///
/// # Shapes
/// - `latents`: `[B, C, F, H, W]` = the configured `latent_shape`; `text`: `[B, S, D_text]`
/// - output `[B]`
#[derive(Module, Debug)]
pub struct VelrReward<B: Backend> {
    /// Residual 3D-conv blocks.
    pub blocks: Vec<ResBlock<B>>,
    /// Learnable position embeddings, `[1, L, D]`.
    pub positions: Param<Tensor<B, 3>>,
    /// Text projection to the video width.
    pub text_proj: Linear<B>,
    /// Cross-attention from video tokens to text.
    pub cross: MultiHeadAttention<B>,
    /// Norm after the cross-attention residual.
    pub cross_norm: LayerNorm<B>,
    /// Transformer encoder (pre-norm).
    pub encoder: TransformerEncoder<B>,
    /// Norm before the head.
    pub out_norm: LayerNorm<B>,
    /// FiLM `u -> [scale, shift]` of the video tokens (not with [`TextFusion::CrossAttention`]).
    pub film: Option<Linear<B>>,
    /// FiLM of each residual block's output by the mean text token, `D_text -> 2 C_i`
    /// ([`TextFusion::BlockFilm`] only; empty otherwise).
    pub block_film: Vec<Linear<B>>,
    /// FiLM of each residual block's output by the noise features, `32 -> 2 C_i`
    /// ([`NoiseInput::BlockFilm`] only; `None` otherwise, so records saved before the noise
    /// input existed load unchanged).
    pub noise_film: Option<Vec<Linear<B>>>,
    /// Head: `[D] -> 1`, or `[3D] -> D -> 1` with ReLU for [`TextFusion::Pooled`].
    pub head: Vec<Linear<B>>,
    latent_shape: [usize; 4],
    text_dim: usize,
    last_token_only: bool,
}

/// `x * (1 + scale) + shift` per sample and channel, with `[scale, shift] = film`.
///
/// # Shapes
/// - `x`: `[B, C, F, H, W]`, `film`: `[B, 2C]` -> `[B, C, F, H, W]`
fn channel_film<B: Backend>(x: Tensor<B, 5>, film: Tensor<B, 2>) -> Tensor<B, 5> {
    let [b, c, _, _, _] = x.dims();
    let [scale, shift] = film
        .reshape([b, 2 * c, 1, 1, 1])
        .chunk(2, 1)
        .try_into()
        .expect("2 chunks");
    x * (scale + 1.0) + shift
}

impl<B: Backend> LatentReward<B> for VelrReward<B> {
    fn score(
        &self,
        latents: Tensor<B, 5>,
        sigma: Tensor<B, 1>,
        text: Tensor<B, 3>,
    ) -> Tensor<B, 1> {
        let b = latents.dims()[0];
        // sinusoidal features of 1000 sigma, [B, 32] (NoiseInput::BlockFilm only)
        let noise = self.noise_film.as_ref().map(|films| {
            let features =
                diffusion_core::models::wan::timestep_sinusoid(sigma * 1000.0, NOISE_FEATURES);
            (films, features)
        });
        // the mean text token, [B, D_text] (TextFusion::BlockFilm only)
        let text_mean = (!self.block_film.is_empty()).then(|| {
            let d = text.dims()[2];
            text.clone().mean_dim(1).reshape([b, d])
        });
        let mut x = latents;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x);
            if let (Some(film), Some(t)) = (self.block_film.get(i), &text_mean) {
                x = channel_film(x, film.forward(t.clone()));
            }
            if let Some((films, features)) = &noise {
                x = channel_film(x, films[i].forward(features.clone()));
            }
        }
        let [_, d, f, h, w] = x.dims();
        // [B, D, F', H', W'] -> [B, L, D]
        let tokens = x.reshape([b, d, f * h * w]).swap_dims(1, 2) + self.positions.val();
        let text = if self.last_token_only {
            let [_, s, _] = text.dims();
            text.narrow(1, s - 1, 1)
        } else {
            text
        };
        let text = self.text_proj.forward(text);
        // the pooled prompt u, [B, 1, D] (not with TextFusion::CrossAttention)
        let prompt = self.film.as_ref().map(|_| text.clone().mean_dim(1));
        let attended = self
            .cross
            .forward(MhaInput::new(tokens.clone(), text.clone(), text))
            .context;
        let mut tokens = self.cross_norm.forward(tokens + attended);
        if let (Some(film), Some(u)) = (&self.film, &prompt) {
            let [scale, shift] = film
                .forward(u.clone())
                .chunk(2, 2)
                .try_into()
                .expect("2 chunks");
            tokens = tokens * (scale + 1.0) + shift;
        }
        let tokens = self.encoder.forward(TransformerEncoderInput::new(tokens));
        let video = self.out_norm.forward(tokens.mean_dim(1)).reshape([b, d]);
        let features = match prompt {
            None => video,
            Some(u) => {
                let u = u.reshape([b, d]);
                Tensor::cat(vec![video.clone(), u.clone(), video * u], 1)
            }
        };
        mlp_forward(&self.head, features).reshape([b])
    }

    fn range(&self) -> RewardRange {
        RewardRange::Real
    }

    fn check_input(&self, latents: [usize; 5], text: [usize; 3]) -> crate::Result<()> {
        check_shapes(latents, self.latent_shape.map(Some), text, self.text_dim)
    }
}
