//! Held-out evaluation: the pixel reward of samples from fixed noise, the metric a latent
//! method never optimises directly.

use burn::tensor::{backend::Backend, ElementConversion};
use diffusion_core::{
    models::vae::{LatentNorm, VideoAutoencoder},
    sampling::rollout::randn,
    train::parallel::{cores, parallel_map},
    Conditioning, EulerOde, Rollout, Schedule, VelocityModel,
};
use latent_reward::PixelReward;
use rand::SeedableRng;

use crate::{error::Result, prompts::PromptSet};

/// Something that scores a policy (its inner, no-autodiff copy): the learner calls it every
/// `eval_every` steps and logs the value as `heldout_reward`.
pub trait Evaluate<M> {
    /// The score of `policy`; higher is better.
    ///
    /// # Errors
    /// Whatever the evaluation can fail with.
    fn evaluate(&self, policy: &M) -> Result<f64>;
}

impl<M, F: Fn(&M) -> Result<f64>> Evaluate<M> for F {
    fn evaluate(&self, policy: &M) -> Result<f64> {
        self(policy)
    }
}

/// The mean pixel reward of Euler samples for held-out prompts, from fixed noise (the same
/// for every policy, so two policies compare on equal terms).
#[derive(Debug, Clone)]
pub struct HeldoutReward<B: Backend, V, R, P> {
    /// The VAE that decodes the samples.
    pub vae: V,
    /// The latent normalisation of the generator.
    pub norm: LatentNorm,
    /// The pixel reward.
    pub pixel: R,
    /// Held-out prompts.
    pub prompts: PromptSet<B, P>,
    /// The sampler's schedule.
    pub schedule: Schedule,
    /// Latent shape `[C, F, H, W]` of one video.
    pub latent_shape: [usize; 4],
}

impl<B, V, R, P, M> Evaluate<M> for HeldoutReward<B, V, R, P>
where
    B: Backend,
    V: VideoAutoencoder<B> + Sync,
    R: PixelReward<B, Prompt = P> + Sync,
    P: Clone + Sync,
    M: VelocityModel<B> + Sync,
{
    fn evaluate(&self, policy: &M) -> Result<f64> {
        heldout_reward(
            policy,
            &self.vae,
            &self.norm,
            &self.pixel,
            &self.prompts,
            &self.schedule,
            self.latent_shape,
        )
    }
}

/// Mean pixel reward of Euler samples of `policy` for the prompts of `heldout`, from fixed
/// noise: see [`HeldoutReward`].
///
/// # Errors
/// Shape errors from the chain or the pixel reward.
pub fn heldout_reward<B, M, V, R, P>(
    policy: &M,
    vae: &V,
    norm: &LatentNorm,
    pixel: &R,
    heldout: &PromptSet<B, P>,
    schedule: &Schedule,
    latent_shape: [usize; 4],
) -> Result<f64>
where
    B: Backend,
    M: VelocityModel<B> + Sync,
    V: VideoAutoencoder<B> + Sync,
    R: PixelReward<B, Prompt = P> + Sync,
    P: Clone + Sync,
{
    let device = heldout.text.device();
    let [c, f, h, w] = latent_shape;
    let all: Vec<usize> = (0..heldout.len()).collect();
    let chunks: Vec<&[usize]> = all.chunks(8).collect();
    // the chunks are independent (each has its own noise seed): one per thread, summed in order
    let sums = parallel_map(chunks.len(), cores(), |k| -> Result<f64> {
        let (prompts, text) = heldout.batch(chunks[k]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xE7A1 + k as u64);
        let noise = randn([chunks[k].len(), c, f, h, w], &mut rng, &device);
        let traj =
            Rollout::new(schedule, &EulerOde).sample(policy, noise, &Conditioning::new(text), 0)?;
        let video = norm.decode(vae, traj.last().clone());
        let r = pixel.score_pixels(video, &prompts)?;
        Ok(r.sum().into_scalar().elem::<f64>())
    });
    let mut total = 0.0;
    for s in sums {
        total += s?;
    }
    Ok(total / heldout.len() as f64)
}
