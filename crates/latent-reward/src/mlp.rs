//! The MLP baseline on pooled latents.

use burn::{
    config::Config,
    module::Module,
    nn::{Linear, LinearConfig},
    tensor::{activation, backend::Backend, Tensor},
};

use crate::{
    base::{check_shapes, LatentReward, RewardRange},
    error::invalid,
};

/// Configuration of an [`MlpReward`].
#[derive(Config, Debug)]
pub struct MlpRewardConfig {
    /// Latent channels.
    pub latent_channels: usize,
    /// Width of the text embeddings.
    pub text_dim: usize,
    /// Hidden widths.
    #[config(default = "vec![256, 128]")]
    pub hidden: Vec<usize>,
}

impl MlpRewardConfig {
    /// A randomly initialised model.
    ///
    /// # Errors
    /// `InvalidConfig` for a zero width.
    pub fn init<B: Backend>(&self, device: &B::Device) -> crate::Result<MlpReward<B>> {
        if self.latent_channels == 0 || self.text_dim == 0 || self.hidden.contains(&0) {
            return Err(invalid(
                "latent_channels/text_dim/hidden",
                "must be positive",
            ));
        }
        let mut widths = vec![2 * self.latent_channels + self.text_dim];
        widths.extend(&self.hidden);
        widths.push(1);
        Ok(diffusion_core::io::checkpoint::materialize(MlpReward {
            layers: widths
                .windows(2)
                .map(|w| LinearConfig::new(w[0], w[1]).init(device))
                .collect(),
            latent_channels: self.latent_channels,
            text_dim: self.text_dim,
        }))
    }
}

/// A latent reward model in the style of DOLLAR's: per-channel mean and standard deviation of
/// the latent over `(F, H, W)`, concatenated with the mean text embedding, through an MLP with
/// ReLU to a scalar. The baseline that VELR's architecture is compared against; it sees no
/// spatial or temporal structure. Scores clean latents (`sigma` is ignored).
///
/// # Shapes
/// - `latents`: `[B, C, F, H, W]` (any `F, H, W`), `text`: `[B, S, D_text]` -> `[B]`
#[derive(Module, Debug)]
pub struct MlpReward<B: Backend> {
    /// Linear layers.
    pub layers: Vec<Linear<B>>,
    latent_channels: usize,
    text_dim: usize,
}

/// Linear layers with ReLU between them (none after the last).
///
/// # Shapes
/// - `[B, D_in]` -> `[B, D_out]`
pub(crate) fn mlp_forward<B: Backend>(layers: &[Linear<B>], mut x: Tensor<B, 2>) -> Tensor<B, 2> {
    let last = layers.len().saturating_sub(1);
    for (i, layer) in layers.iter().enumerate() {
        x = layer.forward(x);
        if i < last {
            x = activation::relu(x);
        }
    }
    x
}

impl<B: Backend> LatentReward<B> for MlpReward<B> {
    fn score(
        &self,
        latents: Tensor<B, 5>,
        _sigma: Tensor<B, 1>,
        text: Tensor<B, 3>,
    ) -> Tensor<B, 1> {
        let [b, c, f, h, w] = latents.dims();
        let flat = latents.reshape([b, c, f * h * w]);
        let mean = flat.clone().mean_dim(2); // [B, C, 1]
        let std = (flat - mean.clone())
            .powi_scalar(2)
            .mean_dim(2)
            .add_scalar(1e-6)
            .sqrt();
        let text = text.mean_dim(1).reshape([b, self.text_dim]);
        let x = Tensor::cat(vec![mean.reshape([b, c]), std.reshape([b, c]), text], 1);
        mlp_forward(&self.layers, x).reshape([b])
    }

    fn range(&self) -> RewardRange {
        RewardRange::Real
    }

    fn check_input(&self, latents: [usize; 5], text: [usize; 3]) -> crate::Result<()> {
        check_shapes(
            latents,
            [Some(self.latent_channels), None, None, None],
            text,
            self.text_dim,
        )
    }
}
