//! Scored samples of the base model and preference pairs built from them: the training data of
//! the latent reward models. Includes a shuffling batch loader.

use std::path::Path;

use burn::tensor::{
    backend::{AutodiffBackend, Backend},
    Tensor, TensorData,
};
use diffusion_core::io::checkpoint::write_atomic;
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{caption::Caption, error::WorldError, models::WorldModels};

/// One generated video latent with the oracle reward of its decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredSample {
    /// The prompt.
    pub caption: Caption,
    /// Normalised latent, `[C, F, H, W]` row-major.
    pub latent: Vec<f32>,
    /// Oracle reward of the decoded video, in `[0, 1]`.
    pub reward: f32,
}

/// A (winner, loser) pair of samples of one prompt, indices into [`RewardData::samples`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferencePair {
    /// Index of the higher-reward sample.
    pub winner: usize,
    /// Index of the lower-reward sample.
    pub loser: usize,
}

impl PreferencePair {
    /// Samples `a` and `b` as a pair, the higher reward first (`b` on a tie), when their rewards
    /// differ by at least `margin`.
    fn of(samples: &[ScoredSample], a: usize, b: usize, margin: f32) -> Option<Self> {
        let (ra, rb) = (samples[a].reward, samples[b].reward);
        let (winner, loser) = if ra > rb { (a, b) } else { (b, a) };
        ((ra - rb).abs() >= margin).then_some(Self { winner, loser })
    }
}

/// One sample per caption from latents `[N, C, F, H, W]` flattened row-major and their rewards.
fn scored_samples<'a>(
    captions: &'a [Caption],
    latents: &'a [f32],
    rewards: Vec<f32>,
) -> impl Iterator<Item = ScoredSample> + 'a {
    let per = latents.len() / captions.len().max(1);
    captions
        .iter()
        .zip(rewards)
        .enumerate()
        .map(move |(i, (caption, reward))| ScoredSample {
            caption: *caption,
            latent: latents[i * per..(i + 1) * per].to_vec(),
            reward,
        })
}

/// Settings of [`RewardData::policy_neighbours`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyNeighboursConfig {
    /// Perturbed copies of the DiT besides the base one.
    pub perturbations: usize,
    /// Weight noise, relative to each parameter tensor's RMS.
    pub rel_sigma: f64,
    /// Euler sampling steps.
    pub steps: usize,
    /// Least oracle-reward gap of a pair.
    pub margin: f32,
    /// Seed of the sampling noise and of the weight noise.
    pub seed: u64,
}

/// Regression data `(latent, reward)` and preference pairs for latent reward models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardData {
    /// Latent shape `[C, F, H, W]`.
    pub latent_shape: [usize; 4],
    /// All scored samples.
    pub samples: Vec<ScoredSample>,
    /// Pairs of samples of the same prompt whose rewards differ by at least `margin`.
    pub pairs: Vec<PreferencePair>,
}

impl RewardData {
    /// Samples `per_prompt` videos for each caption from the base model (Euler, `steps`),
    /// scores their decodings with the oracle, and pairs every two samples of a prompt whose
    /// rewards differ by at least `margin`.
    pub fn generate<B: Backend>(
        models: &WorldModels<B>,
        captions: &[Caption],
        per_prompt: usize,
        steps: usize,
        margin: f32,
        seed: u64,
        device: &B::Device,
    ) -> Result<Self, WorldError> {
        let shape = models.config.latent_shape();
        let mut samples = Vec::with_capacity(captions.len() * per_prompt);
        let mut pairs = Vec::new();
        let mut pb = diffusion_core::io::progress::Progress::new(captions.len(), "generate");
        for (ci, caption) in captions.iter().enumerate() {
            let batch = vec![*caption; per_prompt];
            let (z, rewards) =
                models.sample_scored(&batch, steps, seed.wrapping_add(ci as u64), device)?;
            let flat = crate::error::host_f32(z)?;
            let base = samples.len();
            samples.extend(scored_samples(
                &batch,
                &flat,
                crate::error::host_f32(rewards)?,
            ));
            for a in base..samples.len() {
                for b in a + 1..samples.len() {
                    pairs.extend(PreferencePair::of(&samples, a, b, margin));
                }
            }
            pb.tick(format!("{} pairs", pairs.len()));
        }
        Ok(Self {
            latent_shape: shape,
            samples,
            pairs,
        })
    }

    /// Samples of nearby policies from the same noise, paired with each other: for each caption,
    /// one video (Euler, `cfg.steps`, noise drawn from `cfg.seed`) by the base DiT and one by each
    /// of `cfg.perturbations` copies whose weights carry Gaussian noise of `cfg.rel_sigma` times
    /// each tensor's RMS ([`diffusion_core::train::param_noise::perturb_params`]); every two samples of
    /// one caption whose oracle rewards differ by at least `cfg.margin` form a pair. Samples are
    /// stored policy by policy: `samples[k * captions.len() + i]` is policy `k`'s (0: the base)
    /// sample of caption `i`.
    ///
    /// Pairs from different noise (what [`RewardData::generate`] gives) differ in everything; these
    /// differ only along directions a fine-tuning step of the DiT can move its samples in (about
    /// `J delta` for the weight noise `delta`), so a reward model trained on them learns the
    /// oracle's slope where PRFL's gradient will push the policy.
    pub fn policy_neighbours<B: Backend>(
        models: &WorldModels<B>,
        captions: &[Caption],
        cfg: &PolicyNeighboursConfig,
        device: &B::Device,
    ) -> Result<Self, WorldError> {
        let PolicyNeighboursConfig {
            perturbations,
            rel_sigma,
            steps,
            margin,
            seed,
        } = *cfg;
        let n = captions.len();
        let mut samples = Vec::with_capacity(n * (perturbations + 1));
        let mut pb = diffusion_core::io::progress::Progress::new(perturbations + 1, "policies");
        for k in 0..=perturbations {
            let mut policy = models.clone();
            if k > 0 {
                let mut rng = StdRng::seed_from_u64(seed ^ (k as u64).wrapping_mul(0x9E37_79B9));
                policy.dit = diffusion_core::train::param_noise::perturb_params(
                    models.dit.clone(),
                    rel_sigma,
                    &mut rng,
                );
            }
            for (ci, chunk) in captions.chunks(8).enumerate() {
                let (z, rewards) =
                    policy.sample_scored(chunk, steps, seed.wrapping_add(ci as u64), device)?;
                let flat = crate::error::host_f32(z)?;
                samples.extend(scored_samples(
                    chunk,
                    &flat,
                    crate::error::host_f32(rewards)?,
                ));
            }
            pb.tick(format!("policy {k}"));
        }
        let mut pairs = Vec::new();
        for i in 0..n {
            for a in 0..=perturbations {
                for b in a + 1..=perturbations {
                    pairs.extend(PreferencePair::of(&samples, a * n + i, b * n + i, margin));
                }
            }
        }
        Ok(Self {
            latent_shape: models.config.latent_shape(),
            samples,
            pairs,
        })
    }

    /// Renders a video for each of `videos`, encodes it with the VAE (posterior mean, normalised)
    /// and scores it with the oracle against `prompts[i]` (pass `videos` again for ground
    /// truth, other captions for mismatched, low-reward samples). VELR trains its reward models on
    /// real videos as well as generated ones. No pairs are formed.
    ///
    /// # Errors
    /// `Shape` when the two lists differ in length.
    pub fn real<B: Backend>(
        models: &WorldModels<B>,
        videos: &[Caption],
        prompts: &[Caption],
        seed: u64,
        device: &B::Device,
    ) -> Result<Self, WorldError> {
        if videos.len() != prompts.len() {
            return Err(WorldError::Shape {
                what: "prompts for real videos".into(),
                expected: vec![videos.len()],
                found: vec![prompts.len()],
            });
        }
        let shape = models.config.latent_shape();
        let mut samples = Vec::with_capacity(videos.len());
        for (k, (v, p)) in videos.chunks(8).zip(prompts.chunks(8)).enumerate() {
            let clips = v
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let s = seed.wrapping_add((8 * k + i) as u64);
                    Ok(crate::render::render(c, models.config.video, s)?.to_tensor::<B>(device))
                })
                .collect::<Result<Vec<_>, WorldError>>()?;
            let video = Tensor::stack(clips, 0);
            let rewards =
                crate::error::host_f32(crate::oracle::OracleReward.score(video.clone(), p)?)?;
            let z = crate::error::host_f32(models.encode(video))?;
            samples.extend(scored_samples(p, &z, rewards));
        }
        Ok(Self {
            latent_shape: shape,
            samples,
            pairs: Vec::new(),
        })
    }

    /// The same latents scored against other captions: decodes each sample's latent and scores
    /// it with the oracle against `prompts[i]` (e.g. a [`Caption::near_misses`] of its own
    /// caption). No pairs are formed.
    ///
    /// # Errors
    /// `Shape` when `prompts` and the samples differ in number.
    pub fn rescore<B: Backend>(
        &self,
        models: &WorldModels<B>,
        prompts: &[Caption],
        device: &B::Device,
    ) -> Result<Self, WorldError> {
        let each: Vec<Vec<Caption>> = prompts.iter().map(|p| vec![*p]).collect();
        self.rescore_each(models, &each, device)
    }

    /// [`RewardData::rescore`] against several captions per sample, decoding each latent once:
    /// sample `i` scored against every caption of `prompts[i]`, in that order (sample-major).
    /// Scoring one video against many captions is dense supervision for a regression model:
    /// captions that differ in direction, speed or size ask it to read the video's motion and
    /// size, not only whether it matches its own prompt. No pairs are formed.
    ///
    /// # Errors
    /// `Shape` when `prompts` and the samples differ in number.
    pub fn rescore_each<B: Backend>(
        &self,
        models: &WorldModels<B>,
        prompts: &[Vec<Caption>],
        device: &B::Device,
    ) -> Result<Self, WorldError> {
        if prompts.len() != self.samples.len() {
            return Err(WorldError::Shape {
                what: "prompts to rescore".into(),
                expected: vec![self.samples.len()],
                found: vec![prompts.len()],
            });
        }
        let [c, f, h, w] = self.latent_shape;
        let mut samples = Vec::new();
        for (chunk, p) in self.samples.chunks(8).zip(prompts.chunks(8)) {
            let flat: Vec<f32> = chunk
                .iter()
                .flat_map(|s| s.latent.iter().copied())
                .collect();
            let z =
                Tensor::<B, 5>::from_data(TensorData::new(flat, [chunk.len(), c, f, h, w]), device);
            let video = models.decode(z);
            // every video repeated once per caption of its list, scored in one batch
            let reps: Vec<i64> = p
                .iter()
                .enumerate()
                .flat_map(|(i, caps)| std::iter::repeat_n(i as i64, caps.len()))
                .collect();
            let n = reps.len();
            let idx =
                Tensor::<B, 1, burn::tensor::Int>::from_data(TensorData::new(reps, [n]), device);
            let caps: Vec<Caption> = p.iter().flatten().copied().collect();
            let rewards = crate::error::host_f32(
                crate::oracle::OracleReward.score(video.select(0, idx), &caps)?,
            )?;
            let latents = chunk
                .iter()
                .zip(p)
                .flat_map(|(s, caps)| std::iter::repeat_n(&s.latent, caps.len()));
            for ((latent, caption), reward) in latents.zip(caps).zip(rewards) {
                samples.push(ScoredSample {
                    caption,
                    latent: latent.clone(),
                    reward,
                });
            }
        }
        Ok(Self {
            latent_shape: self.latent_shape,
            samples,
            pairs: Vec::new(),
        })
    }

    /// Each sample's two neighbours along the oracle's gradient: `z ± step d / rms(d)` with
    /// `d = d reward(decode(z), caption) / d z`, each scored by the oracle (2 samples per sample,
    /// the `+` one first; no pairs are formed). Preference pairs among them (after
    /// [`RewardData::pair_by_caption`]) tell a latent reward model which way the oracle rises
    /// around the data, the local information PRFL's gradient follows (Sobolev-style training,
    /// Czarnecki et al. 2017, with differences in place of gradients).
    ///
    /// # Errors
    /// `InvalidConfig` for a step that is not a positive number.
    pub fn oracle_neighbours<B: AutodiffBackend>(
        &self,
        models: &WorldModels<B>,
        step: f32,
        device: &B::Device,
    ) -> Result<Self, WorldError> {
        if !(step > 0.0 && step.is_finite()) {
            return Err(WorldError::InvalidConfig(format!(
                "oracle step {step} is not a positive number"
            )));
        }
        let [c, f, h, w] = self.latent_shape;
        let inner = models.valid();
        let mut samples = Vec::with_capacity(2 * self.samples.len());
        for chunk in self.samples.chunks(8) {
            let n = chunk.len();
            let caps: Vec<Caption> = chunk.iter().map(|s| s.caption).collect();
            let flat: Vec<f32> = chunk.iter().flat_map(|s| s.latent.clone()).collect();
            let z = Tensor::<B::InnerBackend, 5>::from_data(
                TensorData::new(flat, [n, c, f, h, w]),
                device,
            );
            let d = models.reward_gradient(z.clone(), &caps)?;
            let rms = d
                .clone()
                .powi_scalar(2)
                .mean_dim(4)
                .mean_dim(3)
                .mean_dim(2)
                .mean_dim(1)
                .sqrt()
                .add_scalar(1e-12);
            let d = d / rms * step;
            let moved = Tensor::cat(vec![z.clone() + d.clone(), z - d], 0);
            let both: Vec<Caption> = caps.iter().chain(&caps).copied().collect();
            let rewards = crate::error::host_f32(
                crate::oracle::OracleReward.score(inner.decode(moved.clone()), &both)?,
            )?;
            let latents = crate::error::host_f32(moved)?;
            let per = c * f * h * w;
            for i in 0..n {
                for k in [i, n + i] {
                    samples.push(ScoredSample {
                        caption: both[k],
                        latent: latents[k * per..(k + 1) * per].to_vec(),
                        reward: rewards[k],
                    });
                }
            }
        }
        Ok(Self {
            latent_shape: self.latent_shape,
            samples,
            pairs: Vec::new(),
        })
    }

    /// Rebuilds the pairs from every two samples of the same caption whose rewards differ by at
    /// least `margin` (after [`RewardData::extend`] with real videos, this pairs ground truth
    /// against generated samples too), winner first.
    pub fn pair_by_caption(&mut self, margin: f32) {
        let mut by_caption: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
        for (i, s) in self.samples.iter().enumerate() {
            by_caption.entry(s.caption.text()).or_default().push(i);
        }
        self.pairs.clear();
        for idx in by_caption.values() {
            for (k, &a) in idx.iter().enumerate() {
                for &b in &idx[k + 1..] {
                    self.pairs
                        .extend(PreferencePair::of(&self.samples, a, b, margin));
                }
            }
        }
    }

    /// Appends another data set of the same latent shape (its pair indices are shifted).
    ///
    /// # Errors
    /// `Shape` when the latent shapes differ.
    pub fn extend(&mut self, other: Self) -> Result<(), WorldError> {
        if other.latent_shape != self.latent_shape {
            return Err(WorldError::Shape {
                what: "latents of merged reward data".into(),
                expected: self.latent_shape.to_vec(),
                found: other.latent_shape.to_vec(),
            });
        }
        let base = self.samples.len();
        self.samples.extend(other.samples);
        self.pairs
            .extend(other.pairs.into_iter().map(|p| PreferencePair {
                winner: p.winner + base,
                loser: p.loser + base,
            }));
        Ok(())
    }

    /// All samples as a `latent_reward` regression set, prompts embedded by the world's text
    /// encoder.
    pub fn regression_set<B: Backend>(
        &self,
        models: &WorldModels<B>,
        device: &B::Device,
    ) -> Result<latent_reward::RegressionSet<B>, WorldError> {
        let idx: Vec<usize> = (0..self.samples.len()).collect();
        let caps: Vec<Caption> = self.samples.iter().map(|s| s.caption).collect();
        latent_reward::RegressionSet::new(
            self.stack(&idx, device),
            models.embed(&caps, device)?,
            self.samples.iter().map(|s| s.reward).collect(),
        )
        .map_err(|e| WorldError::InvalidConfig(e.to_string()))
    }

    /// All samples with the oracle's value and its gradient in the latent (through the VAE
    /// decoder, [`WorldModels::reward_gradient`]), on the autodiff backend that
    /// `latent_reward::fit_gradient_match` trains on.
    pub fn gradient_set<B: AutodiffBackend>(
        &self,
        models: &WorldModels<B>,
        device: &B::Device,
    ) -> Result<latent_reward::GradientSet<B>, WorldError> {
        // on the inner backend, then lifted: the prompt embeddings carry no autodiff graph
        let v = self.regression_set(&models.valid(), device)?;
        let values = latent_reward::RegressionSet::new(
            Tensor::from_inner(v.latents),
            Tensor::from_inner(v.text),
            v.targets,
        )
        .map_err(|e| WorldError::InvalidConfig(e.to_string()))?;
        let mut grads = Vec::new();
        for (k, chunk) in self.samples.chunks(8).enumerate() {
            let idx: Vec<usize> = (k * 8..k * 8 + chunk.len()).collect();
            let caps: Vec<Caption> = chunk.iter().map(|s| s.caption).collect();
            grads.push(models.reward_gradient(self.stack(&idx, device), &caps)?);
        }
        latent_reward::GradientSet::new(values, Tensor::from_inner(Tensor::cat(grads, 0)))
            .map_err(|e| WorldError::InvalidConfig(e.to_string()))
    }

    /// All pairs as a `latent_reward` pair set, prompts embedded by the world's text encoder.
    pub fn pair_set<B: Backend>(
        &self,
        models: &WorldModels<B>,
        device: &B::Device,
    ) -> Result<latent_reward::PairSet<B>, WorldError> {
        if self.pairs.is_empty() {
            return Err(WorldError::InvalidConfig(
                "no preference pairs (more samples per prompt, or a smaller margin)".into(),
            ));
        }
        let w: Vec<usize> = self.pairs.iter().map(|p| p.winner).collect();
        let l: Vec<usize> = self.pairs.iter().map(|p| p.loser).collect();
        let caps: Vec<Caption> = w.iter().map(|&i| self.samples[i].caption).collect();
        latent_reward::PairSet::new(
            self.stack(&w, device),
            self.stack(&l, device),
            models.embed(&caps, device)?,
        )
        .map_err(|e| WorldError::InvalidConfig(e.to_string()))
    }

    /// Writes the data as JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<(), WorldError> {
        let bytes =
            serde_json::to_vec(self).map_err(|e| WorldError::InvalidConfig(e.to_string()))?;
        write_atomic(path, &bytes).map_err(|e| WorldError::InvalidConfig(e.to_string()))
    }

    /// Reads data written by [`RewardData::save`], checking every latent's length.
    pub fn load(path: &Path) -> Result<Self, WorldError> {
        let bytes = std::fs::read(path)
            .map_err(|e| WorldError::InvalidConfig(format!("{}: {e}", path.display())))?;
        let data: Self = serde_json::from_slice(&bytes)
            .map_err(|e| WorldError::InvalidConfig(format!("{}: {e}", path.display())))?;
        let per: usize = data.latent_shape.iter().product();
        if let Some(bad) = data.samples.iter().find(|s| s.latent.len() != per) {
            return Err(WorldError::Shape {
                what: format!("latent of `{}`", bad.caption),
                expected: data.latent_shape.to_vec(),
                found: vec![bad.latent.len()],
            });
        }
        if data
            .pairs
            .iter()
            .any(|p| p.winner >= data.samples.len() || p.loser >= data.samples.len())
        {
            return Err(WorldError::InvalidConfig("pair index out of range".into()));
        }
        Ok(data)
    }

    fn stack<B: Backend>(&self, idx: &[usize], device: &B::Device) -> Tensor<B, 5> {
        let [c, f, h, w] = self.latent_shape;
        let flat: Vec<f32> = idx
            .iter()
            .flat_map(|&i| self.samples[i].latent.iter().copied())
            .collect();
        Tensor::from_data(TensorData::new(flat, [idx.len(), c, f, h, w]), device)
    }

    /// Shuffled regression batches for one epoch (the last may be smaller).
    pub fn regression_batches<B: Backend>(
        &self,
        batch: usize,
        seed: u64,
        device: &B::Device,
    ) -> Vec<RegressionBatch<B>> {
        let mut order: Vec<usize> = (0..self.samples.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        order
            .chunks(batch.max(1))
            .map(|idx| RegressionBatch {
                latents: self.stack(idx, device),
                captions: idx.iter().map(|&i| self.samples[i].caption).collect(),
                rewards: Tensor::from_data(
                    TensorData::new(
                        idx.iter()
                            .map(|&i| self.samples[i].reward)
                            .collect::<Vec<_>>(),
                        [idx.len()],
                    ),
                    device,
                ),
            })
            .collect()
    }

    /// Shuffled preference batches for one epoch.
    pub fn pair_batches<B: Backend>(
        &self,
        batch: usize,
        seed: u64,
        device: &B::Device,
    ) -> Vec<PairBatch<B>> {
        let mut order: Vec<usize> = (0..self.pairs.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        order
            .chunks(batch.max(1))
            .map(|idx| {
                let w: Vec<usize> = idx.iter().map(|&i| self.pairs[i].winner).collect();
                let l: Vec<usize> = idx.iter().map(|&i| self.pairs[i].loser).collect();
                PairBatch {
                    winners: self.stack(&w, device),
                    losers: self.stack(&l, device),
                    captions: w.iter().map(|&i| self.samples[i].caption).collect(),
                }
            })
            .collect()
    }

    /// Mean reward of the samples.
    pub fn mean_reward(&self) -> f32 {
        self.samples.iter().map(|s| s.reward).sum::<f32>() / self.samples.len().max(1) as f32
    }
}

/// A batch for reward regression.
///
/// # Shapes
/// - `latents`: `[B, C, F, H, W]`, `rewards`: `[B]`
#[derive(Debug, Clone)]
pub struct RegressionBatch<B: Backend> {
    /// Normalised latents.
    pub latents: Tensor<B, 5>,
    /// Their prompts.
    pub captions: Vec<Caption>,
    /// Oracle rewards.
    pub rewards: Tensor<B, 1>,
}

/// A batch of preference pairs.
///
/// # Shapes
/// - `winners`, `losers`: `[B, C, F, H, W]`
#[derive(Debug, Clone)]
pub struct PairBatch<B: Backend> {
    /// Preferred latents.
    pub winners: Tensor<B, 5>,
    /// Rejected latents.
    pub losers: Tensor<B, 5>,
    /// The shared prompts.
    pub captions: Vec<Caption>,
}
