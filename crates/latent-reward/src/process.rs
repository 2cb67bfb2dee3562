//! The process-aware video reward model of PRFL (PAVRM).

use burn::{
    config::Config,
    module::Module,
    nn::{Linear, LinearConfig},
    tensor::{activation, backend::Backend, Tensor},
};
use diffusion_core::{VelocityModel, WanTransformer};

use crate::{
    base::{LatentReward, RewardRange},
    error::invalid,
    input_filter::InputFilter,
    query_pool::{QueryPool, QueryPoolConfig},
};

/// Configuration of a [`ProcessReward`].
#[derive(Config, Debug)]
pub struct ProcessRewardConfig {
    /// DiT blocks copied into the trunk (release: 8 of 40).
    pub depth: usize,
    /// Heads of the query-attention pool (must divide the DiT width).
    #[config(default = 4)]
    pub pool_heads: usize,
    /// Hidden widths of the MLP head (release: 1024, 512 for width 1536).
    #[config(default = "vec![256, 128]")]
    pub head: Vec<usize>,
    /// How the trunk's tokens reach the head; `None` is [`Pooling::Query`] (an `Option` so that
    /// configs saved before this field existed still load).
    #[config(default = "None")]
    pub pooling: Option<Pooling>,
    /// A fixed filter on the input latent; `None` is [`InputFilter::Identity`] (an `Option` for
    /// configs saved before this field existed).
    #[config(default = "None")]
    pub input_filter: Option<InputFilter>,
}

/// How [`ProcessReward`] turns the trunk's tokens into one score.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// PRFL's: a learnable query attends over the tokens, the MLP head reads the pooled vector.
    Query,
    /// The MLP head reads every token (one spatio-temporal patch each) and the logits are
    /// averaged: the score keeps spatial resolution up to the head, so its gradient in the latent
    /// is a sum of local terms. The query pool is unused (and frozen).
    TokenMean,
}

impl ProcessRewardConfig {
    /// Builds the reward model from a pretrained DiT: copies its patch, time and text embeddings
    /// (frozen) and its first `depth` blocks (trained), adds a fresh query pool and MLP head.
    ///
    /// # Errors
    /// `InvalidConfig` when `depth` is 0 or exceeds the DiT's blocks, or `pool_heads` does not
    /// divide the width.
    pub fn init<B: Backend>(
        &self,
        dit: &WanTransformer<B>,
        device: &B::Device,
    ) -> crate::Result<ProcessReward<B>> {
        let d = dit.dim();
        if self.depth == 0 || self.depth > dit.blocks.len() {
            return Err(invalid(
                "depth",
                format!("{} not in 1..={}", self.depth, dit.blocks.len()),
            ));
        }
        if self.pool_heads == 0 || !d.is_multiple_of(self.pool_heads) {
            return Err(invalid(
                "pool_heads",
                format!("{} must divide the DiT width {d}", self.pool_heads),
            ));
        }
        if self.head.contains(&0) {
            return Err(invalid("head", "widths must be positive"));
        }
        let mut trunk = dit.clone();
        trunk.blocks.truncate(self.depth);
        let mut widths = vec![d];
        widths.extend(&self.head);
        widths.push(1);
        let model = ProcessReward {
            trunk,
            pooling: self.pooling.unwrap_or(Pooling::Query),
            input_filter: self.input_filter.unwrap_or(InputFilter::Identity),
            pool: QueryPoolConfig::new(d, self.pool_heads).init(device),
            head: widths
                .windows(2)
                .map(|w| LinearConfig::new(w[0], w[1]).init(device))
                .collect(),
        };
        Ok(diffusion_core::io::checkpoint::materialize(
            model.freeze_embeddings(),
        ))
    }
}

/// PAVRM (PRFL "Video Generation Models Are Good Latent Reward Models", section 3.2): the first blocks of the video DiT read a noisy latent at
/// its timestep, a learnable query pools their tokens, an MLP maps the pooled vector to a logit,
/// and a sigmoid turns it into a reward in `(0, 1)`.
///
/// Because the trunk is the generator's own network at the same timestep convention, the model
/// scores `x_sigma` directly: no VAE decoding, and supervision at early, structural steps.
///
/// # Shapes
/// - `latents`: `[B, C, F, H, W]` (the DiT's latent layout), `sigma`: `[B]`,
///   `text`: `[B, S, D_text]` -> `[B]` in `(0, 1)`
#[derive(Module, Debug)]
pub struct ProcessReward<B: Backend> {
    /// The DiT copy: embeddings frozen, `depth` blocks trained. Its output head is unused and
    /// frozen.
    pub trunk: WanTransformer<B>,
    /// How the tokens are pooled (from the config; not part of the record).
    #[module(skip)]
    pub pooling: Pooling,
    /// The filter on the input latent (from the config; not part of the record).
    #[module(skip)]
    pub input_filter: InputFilter,
    /// Query-attention pooling.
    pub pool: QueryPool<B>,
    /// MLP head `D -> ... -> 1` with ReLU between layers.
    pub head: Vec<Linear<B>>,
}

impl<B: Backend> ProcessReward<B> {
    /// Marks the copied embeddings and the unused DiT head as not trainable. Call again after
    /// loading a record, which restores parameters as trainable.
    pub fn freeze_embeddings(mut self) -> Self {
        self.trunk.patch_embedding = self.trunk.patch_embedding.no_grad();
        self.trunk.condition = self.trunk.condition.no_grad();
        self.trunk.proj_out = self.trunk.proj_out.no_grad();
        self.trunk.scale_shift_table = self.trunk.scale_shift_table.no_grad();
        if self.pooling == Pooling::TokenMean {
            self.pool = self.pool.no_grad();
        }
        self
    }

    /// Marks the trunk's blocks as not trainable as well: only the query pool and the head
    /// train, on the pretrained DiT's features. The limit of the release's learning rates
    /// (blocks 1e-6 against the head's 1e-5; "Video Generation Models Are Good Latent Reward Models", section 4.1), which keep the trunk near the
    /// generator. Call again after loading a record.
    pub fn freeze_trunk(mut self) -> Self {
        self = self.freeze_embeddings();
        self.trunk.blocks = self.trunk.blocks.into_iter().map(|b| b.no_grad()).collect();
        self
    }

    /// Number of DiT blocks in the trunk.
    pub fn depth(&self) -> usize {
        self.trunk.blocks.len()
    }

    /// The pre-sigmoid logit.
    ///
    /// # Shapes
    /// - as [`LatentReward::score`], output `[B]`
    pub fn logit(
        &self,
        latents: Tensor<B, 5>,
        sigma: Tensor<B, 1>,
        text: Tensor<B, 3>,
    ) -> Tensor<B, 1> {
        let b = latents.dims()[0];
        let timestep = sigma.mul_scalar(1000.0);
        let latents = self.input_filter.apply(latents);
        let (tokens, _) = self
            .trunk
            .forward_trunk(latents, timestep, text, self.depth());
        match self.pooling {
            Pooling::Query => {
                let pooled = self.pool.forward(tokens); // [B, D]
                crate::mlp::mlp_forward(&self.head, pooled).reshape([b])
            }
            Pooling::TokenMean => {
                let [_, l, d] = tokens.dims();
                let per_token = crate::mlp::mlp_forward(&self.head, tokens.reshape([b * l, d]));
                per_token.reshape([b, l]).mean_dim(1).reshape([b])
            }
        }
    }
}

impl<B: Backend> LatentReward<B> for ProcessReward<B> {
    fn score(
        &self,
        latents: Tensor<B, 5>,
        sigma: Tensor<B, 1>,
        text: Tensor<B, 3>,
    ) -> Tensor<B, 1> {
        activation::sigmoid(self.logit(latents, sigma, text))
    }

    fn range(&self) -> RewardRange {
        RewardRange::Unit
    }

    fn check_input(&self, latents: [usize; 5], text: [usize; 3]) -> crate::Result<()> {
        Ok(self.trunk.check_input(latents, text)?)
    }
}

#[cfg(test)]
mod tests {
    use burn::{
        backend::Autodiff,
        tensor::{Distribution, Tensor},
    };
    use diffusion_core::{backend::DefaultBackend as B, WanConfig};

    use super::*;

    /// With a linear head, token-mean pooling is the head applied to the mean token (a mean of
    /// affine maps is the affine map of the mean); the unused query pool is frozen.
    #[test]
    fn token_mean_is_the_head_of_the_mean_token() {
        let dev = Default::default();
        let dit = WanConfig::tiny().init::<Autodiff<B>>(&dev).unwrap();
        let prm = ProcessRewardConfig::new(1)
            .with_pool_heads(2)
            .with_head(vec![])
            .with_pooling(Some(Pooling::TokenMean))
            .init(&dit, &dev)
            .unwrap();
        assert!(!prm.pool.query.is_require_grad());
        assert!(prm.head[0].weight.is_require_grad());
        let x = Tensor::<Autodiff<B>, 5>::random([2, 4, 1, 4, 4], Distribution::Default, &dev);
        let text = Tensor::random([2, 3, 16], Distribution::Default, &dev);
        let sigma = Tensor::from_floats([0.3, 0.7], &dev);
        let logit = prm.logit(x.clone(), sigma.clone(), text.clone());
        let (tokens, _) = prm
            .trunk
            .forward_trunk(x, sigma.mul_scalar(1000.0), text, 1);
        let want = prm.head[0].forward(tokens.mean_dim(1).squeeze_dim::<2>(1));
        let (got, want): (Vec<f32>, Vec<f32>) = (
            logit.into_data().to_vec().unwrap(),
            want.into_data().to_vec().unwrap(),
        );
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        // the default pooling is the query pool, trained
        let query = ProcessRewardConfig::new(1)
            .with_pool_heads(2)
            .init(&dit, &dev)
            .unwrap();
        assert_eq!(query.pooling, Pooling::Query);
        assert!(query.pool.query.is_require_grad());
    }
}
