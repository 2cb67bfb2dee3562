//! VELR's online alignment of the latent reward ensemble ("VELR: Efficient Video Reward Feedback via
//! Ensemble Latent Reward Models", section 4.3): samples of the
//! current policy, labelled with the pixel reward, enter a replay buffer prioritised by the
//! ensemble's variance on them; every so often each member is fine-tuned on a
//! priority-weighted draw, so the latent reward keeps up with the policy's distribution.
//! [`crate::methods::Velr`] runs it; GRPO can run it on its rollouts.

use crate::OptimConfig;
use burn::{
    module::AutodiffModule,
    tensor::{backend::AutodiffBackend, backend::Backend, Tensor, TensorData},
};
use latent_reward::{
    error::host_f32, fit_regression, FitConfig, LatentReward, RegressionLoss, RegressionSet,
};
use rand::Rng;
use replay_buffer::{PrioritisedBuffer, ReplayBuffer};
use serde::{Deserialize, Serialize};

use crate::error::{config_error, Result};

/// One replay-buffer entry of VELR's online alignment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BufferItem {
    /// Generated latent `x0_hat`, `[C, F, H, W]` row-major.
    pub latent: Vec<f32>,
    /// Index of its prompt in the training prompts.
    pub prompt: usize,
    /// Pixel reward of its decoding.
    pub reward: f32,
}

/// Settings of one alignment round.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AlignmentConfig {
    /// Replay buffer capacity (paper: 256).
    pub capacity: usize,
    /// Gradient steps of each member per round.
    pub steps: usize,
    /// Samples per gradient step.
    pub batch: usize,
    /// Learning rate (paper: 1e-5).
    pub lr: f64,
}

/// The replay buffer and the fine-tuning of VELR's online alignment.
#[derive(Debug, Clone)]
pub struct OnlineAlignment {
    /// Labelled samples, prioritised by the ensemble's variance on them.
    pub buffer: PrioritisedBuffer<BufferItem>,
    config: AlignmentConfig,
    latent_shape: [usize; 4],
}

/// Largest replay buffer held in memory, in latent values (f32): 2^33, 32 GiB.
pub const MAX_BUFFER_VALUES: usize = 1 << 33;

impl OnlineAlignment {
    /// An empty buffer for latents of `latent_shape` (`[C, F, H, W]`).
    ///
    /// # Errors
    /// `Config` for a zero capacity, steps or batch, a full buffer above
    /// [`MAX_BUFFER_VALUES`], or a learning rate that is not positive.
    pub fn new(config: AlignmentConfig, latent_shape: [usize; 4]) -> Result<Self> {
        if config.steps == 0 || config.batch == 0 {
            return Err(config_error("alignment", "steps and batch must be >= 1"));
        }
        let values = latent_shape
            .iter()
            .fold(config.capacity, |n, d| n.saturating_mul(*d));
        if values > MAX_BUFFER_VALUES {
            return Err(config_error(
                "alignment.capacity",
                format!(
                    "{} latents of {latent_shape:?} are {values} values, above the limit of \
                     {MAX_BUFFER_VALUES} (32 GiB of f32)",
                    config.capacity
                ),
            ));
        }
        if !(config.lr > 0.0 && config.lr.is_finite()) {
            return Err(config_error("alignment.lr", "must be finite and > 0"));
        }
        Ok(Self {
            buffer: PrioritisedBuffer::new(config.capacity)?,
            config,
            latent_shape,
        })
    }

    /// Replaces the buffer with `buffer` (a resumed checkpoint's) after checking every item:
    /// a latent of this shape, a prompt index below `prompts`, finite reward and priority.
    ///
    /// # Errors
    /// `Config` naming the first bad item.
    pub fn set_buffer(
        &mut self,
        buffer: PrioritisedBuffer<BufferItem>,
        prompts: usize,
    ) -> Result<()> {
        let per: usize = self.latent_shape.iter().product();
        buffer
            .check()
            .map_err(|why| config_error("alignment.buffer", why))?;
        if buffer.capacity() != self.config.capacity {
            return Err(config_error(
                "alignment.buffer",
                format!(
                    "capacity {}, the run's is {}",
                    buffer.capacity(),
                    self.config.capacity
                ),
            ));
        }
        for (k, (item, priority)) in buffer.entries().iter().enumerate() {
            let why = if item.latent.len() != per {
                format!("a latent of {} values, expected {per}", item.latent.len())
            } else if item.prompt >= prompts {
                format!("prompt {} of {prompts} prompts", item.prompt)
            } else if !item.reward.is_finite() || !priority.is_finite() {
                format!("reward {} with priority {priority}", item.reward)
            } else if item.latent.iter().any(|v| !v.is_finite()) {
                "a non-finite latent value".to_string()
            } else {
                continue;
            };
            return Err(config_error(format!("alignment.buffer[{k}]"), why));
        }
        self.buffer = buffer;
        Ok(())
    }

    /// Offers each latent with its prompt index and pixel reward to the buffer, with the
    /// ensemble's variance on it as its priority.
    ///
    /// # Shapes
    /// - `latents`: `[N, C, F, H, W]`; `prompts`, `rewards`, `variance`: `N` each
    ///
    /// # Errors
    /// `Config` when the shapes or counts disagree.
    pub fn push<B: Backend>(
        &mut self,
        latents: Tensor<B, 5>,
        prompts: &[usize],
        rewards: &[f32],
        variance: &[f32],
    ) -> Result<()> {
        let [n, c, f, h, w] = latents.dims();
        if [c, f, h, w] != self.latent_shape {
            return Err(config_error(
                "alignment.latents",
                format!(
                    "latents of shape {:?}, the buffer holds {:?}",
                    [c, f, h, w],
                    self.latent_shape
                ),
            ));
        }
        if prompts.len() != n || rewards.len() != n || variance.len() != n {
            return Err(config_error(
                "alignment.push",
                format!(
                    "{n} latents with {} prompts, {} rewards, {} variances",
                    prompts.len(),
                    rewards.len(),
                    variance.len()
                ),
            ));
        }
        let flat = host_f32(latents)?;
        let per = c * f * h * w;
        for (k, chunk) in flat.chunks(per).enumerate() {
            let item = BufferItem {
                latent: chunk.to_vec(),
                prompt: prompts[k],
                reward: rewards[k],
            };
            self.buffer.push(item, variance[k] as f64)?;
        }
        Ok(())
    }

    /// Fine-tunes every member on one priority-weighted draw of `steps * batch` buffer items
    /// (Huber on the pixel reward, gradient clipping at 1). `text` gives the embeddings of
    /// prompt indices. Does nothing while the buffer is empty.
    ///
    /// # Shapes
    /// - `text(idx)`: `[len(idx), S, D]`
    ///
    /// # Errors
    /// Shape errors of the members, a non-finite loss.
    pub fn align<B, M>(
        &self,
        members: &mut [M],
        text: impl Fn(&[usize]) -> Tensor<B::InnerBackend, 3>,
        rng: &mut impl Rng,
    ) -> Result<()>
    where
        B: AutodiffBackend,
        M: AutodiffModule<B> + LatentReward<B>,
    {
        if self.buffer.is_empty() || members.is_empty() {
            return Ok(());
        }
        let AlignmentConfig {
            steps, batch, lr, ..
        } = self.config;
        let n = steps * batch;
        let items: Vec<BufferItem> = self.buffer.sample(n, rng)?.into_iter().cloned().collect();
        let [c, f, h, w] = self.latent_shape;
        let device = members[0].devices()[0].clone();
        let flat: Vec<f32> = items
            .iter()
            .flat_map(|i| i.latent.iter().copied())
            .collect();
        let latents = Tensor::<B, 5>::from_data(TensorData::new(flat, [n, c, f, h, w]), &device);
        let idx: Vec<usize> = items.iter().map(|i| i.prompt).collect();
        let set = RegressionSet::new(
            latents,
            Tensor::from_inner(text(&idx)),
            items.iter().map(|i| i.reward).collect(),
        )?;
        let cfg = FitConfig {
            optim: OptimConfig::constant(lr, 0.0, Some(1.0)),
            steps,
            batch,
            seed: rng.random(),
        };
        for member in members.iter_mut() {
            let (trained, _) = fit_regression(
                member.clone(),
                &set,
                RegressionLoss::Huber { delta: 0.1 },
                &cfg,
                "align",
            )?;
            *member = trained;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;
    use diffusion_core::backend::DefaultBackend as B;
    use latent_reward::{MlpReward, MlpRewardConfig};
    use rand::SeedableRng;

    type AD = Autodiff<B>;

    fn alignment() -> OnlineAlignment {
        let cfg = AlignmentConfig {
            capacity: 3,
            steps: 4,
            batch: 2,
            lr: 1e-2,
        };
        OnlineAlignment::new(cfg, [2, 1, 2, 2]).unwrap()
    }

    #[test]
    fn push_keeps_the_highest_variances_and_checks_shapes() {
        let mut a = alignment();
        let dev = Default::default();
        let z = Tensor::<B, 5>::ones([4, 2, 1, 2, 2], &dev);
        a.push(
            z.clone(),
            &[0, 1, 2, 3],
            &[0.1, 0.2, 0.3, 0.4],
            &[1.0, 4.0, 2.0, 3.0],
        )
        .unwrap();
        let mut kept: Vec<usize> = a.buffer.entries().iter().map(|(i, _)| i.prompt).collect();
        kept.sort();
        assert_eq!(kept, vec![1, 2, 3]);
        let wrong = Tensor::<B, 5>::ones([1, 3, 1, 2, 2], &dev);
        assert!(a.push(wrong, &[0], &[0.0], &[1.0]).is_err());
        assert!(a.push(z, &[0], &[0.0], &[1.0]).is_err());
    }

    #[test]
    fn align_moves_every_member_towards_the_labels() {
        let dev = Default::default();
        let mut a = alignment();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let cfg = MlpRewardConfig::new(2, 3);
        let mut members: Vec<MlpReward<AD>> =
            vec![cfg.init(&dev).unwrap(), cfg.init(&dev).unwrap()];
        let before = members.clone();
        let text = |idx: &[usize]| Tensor::<B, 3>::ones([idx.len(), 1, 3], &dev);
        // nothing to learn from yet
        a.align(&mut members, text, &mut rng).unwrap();
        let z = Tensor::<B, 5>::random(
            [3, 2, 1, 2, 2],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &dev,
        );
        a.push(z.clone(), &[0, 1, 2], &[0.9, 0.9, 0.9], &[1.0, 1.0, 1.0])
            .unwrap();
        let score = |m: &MlpReward<AD>| {
            let s = m
                .valid()
                .score(z.clone(), Tensor::zeros([3], &dev), text(&[0, 1, 2]));
            host_f32(s).unwrap()
        };
        for (m, b) in members.iter().zip(&before) {
            assert_eq!(score(m), score(b), "an empty buffer changes nothing");
        }
        a.align(&mut members, text, &mut rng).unwrap();
        for (m, b) in members.iter().zip(&before) {
            let err = |s: Vec<f32>| s.iter().map(|x| (x - 0.9).abs()).sum::<f32>();
            assert!(
                err(score(m)) < err(score(b)),
                "{:?} -> {:?}",
                score(b),
                score(m)
            );
        }
    }
}
