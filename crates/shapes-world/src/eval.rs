//! Evaluation of the world models: VAE reconstruction PSNR and the oracle reward of samples.

use burn::tensor::{backend::Backend, ElementConversion};
use rand::{rngs::StdRng, seq::IndexedRandom, SeedableRng};

use crate::{
    error::WorldError,
    models::WorldModels,
    pretrain::video_batch,
    splits::{captions, Split},
    vae_psnr_batch,
};

/// Mean PSNR (dB, pixel range `[-1, 1]` mapped to `[0, 1]`) of VAE reconstructions of `n`
/// videos rendered from `split`'s captions.
pub fn vae_psnr<B: Backend>(
    models: &WorldModels<B>,
    split: Split,
    n: usize,
    seed: u64,
    device: &B::Device,
) -> Result<f64, WorldError> {
    let pool = captions(split);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut total = 0.0;
    let batches = n.div_ceil(8);
    for _ in 0..batches {
        let (video, _) = video_batch(models, &pool, 8, &mut rng, device)?;
        total += vae_psnr_batch(models, video);
    }
    Ok(total / batches as f64)
}

/// Mean oracle reward of samples for `n` captions drawn from `split` (`steps` Euler steps).
pub fn sample_reward<B: Backend>(
    models: &WorldModels<B>,
    split: Split,
    n: usize,
    steps: usize,
    seed: u64,
    device: &B::Device,
) -> Result<f64, WorldError> {
    let pool = captions(split);
    let mut rng = StdRng::seed_from_u64(seed);
    let caps: Vec<_> = (0..n)
        .map(|_| *pool.choose(&mut rng).expect("non-empty split"))
        .collect();
    let mut total = 0.0;
    for (i, chunk) in caps.chunks(8).enumerate() {
        let (_, r) = models.sample_scored(chunk, steps, seed + i as u64, device)?;
        total += r.sum().into_scalar().elem::<f64>();
    }
    Ok(total / n as f64)
}
