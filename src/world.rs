//! The synthetic shapes-world set up for a method: the shipped models, prompt sets, SFT data,
//! the shipped reward models, the held-out evaluation and the oracle's terms. The examples and
//! experiments build their runs from these.

use std::path::{Path, PathBuf};

use burn::{
    config::Config,
    module::{AutodiffModule, Module},
    tensor::{backend::AutodiffBackend, backend::Backend, Tensor},
};
use diffusion_core::{
    io::checkpoint::load_record, models::vae::CausalVae, CoreError, FlowMatchScheduleConfig,
    WanTransformer,
};
use ensemble::{Aggregation, Ensemble};
use latent_reward::{
    DenoisedReward, PixelReward, ProcessReward, ProcessRewardConfig, RewardError, VelrReward,
    VelrRewardConfig,
};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use refl_trainer::{
    HeldoutReward, LearnerConfig, LrSchedule, OptimConfig, PromptSet, SftData, TrainError,
};
use shapes_world::{
    captions, write_gif, Caption, OracleReward, RewardData, Split, Video, WorldError, WorldModels,
};

/// Where the pretrained world models are shipped.
pub const MODELS: &str = "assets/shapes-world";

/// Where the reward models are shipped (the `train_rewards` experiment writes them).
pub const REWARDS: &str = "assets/shapes-world/rewards";

/// What setting up a world run can fail with.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A model file that is missing or does not load.
    #[error("cannot load {path}: {reason}")]
    Load {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// From the world.
    #[error(transparent)]
    World(#[from] WorldError),
    /// From the learner's pieces.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// From a reward model.
    #[error(transparent)]
    Reward(#[from] RewardError),
    /// From the diffusion core.
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// A `Config` error naming `field`.
pub(crate) fn config_error(field: &str, reason: String) -> SetupError {
    SetupError::Train(TrainError::Config {
        field: field.into(),
        reason,
    })
}

fn load_error(path: &Path, e: impl std::fmt::Display) -> SetupError {
    SetupError::Load {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// The world's held-out metric: the oracle on decoded samples of held-out captions.
pub type WorldHeldout<B> = HeldoutReward<B, CausalVae<B>, OracleReward, Caption>;

/// The quickstart's process reward: a VELR ensemble on a frozen DiT's clean-sample prediction.
pub type DenoisedVelr<B> = DenoisedReward<B, WanTransformer<B>, Ensemble<VelrReward<B>>>;

/// The pretrained world models, once for inference (`models`) and once for training
/// (`models_ad`).
pub struct World<B: AutodiffBackend> {
    /// VAE, text encoder and DiT on the inner backend.
    pub models: WorldModels<B::InnerBackend>,
    /// The same on the autodiff backend (the DiT to fine-tune).
    pub models_ad: WorldModels<B>,
    device: B::Device,
}

impl<B: AutodiffBackend> World<B> {
    /// Loads the models saved in `dir` ([`MODELS`] ships them).
    ///
    /// # Errors
    /// `Load` naming the folder when the models do not load.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, SetupError> {
        let models_ad = WorldModels::load(dir, device).map_err(|e| load_error(dir, e))?;
        Ok(Self {
            models: models_ad.valid(),
            models_ad,
            device: device.clone(),
        })
    }

    /// Latent shape `[C, F, H, W]` of one video.
    pub fn latent_shape(&self) -> [usize; 4] {
        self.models.config.latent_shape()
    }

    /// `captions` with their embeddings.
    ///
    /// # Errors
    /// Unknown words; an empty list.
    pub fn prompts(
        &self,
        captions: Vec<Caption>,
    ) -> Result<PromptSet<B::InnerBackend, Caption>, SetupError> {
        let text = self.models.embed(&captions, &self.device)?;
        Ok(PromptSet::new(captions, text)?)
    }

    /// The first `n` training captions after a shuffle with seed 1, embedded.
    ///
    /// # Errors
    /// As [`World::prompts`].
    pub fn train_prompts(
        &self,
        n: usize,
    ) -> Result<PromptSet<B::InnerBackend, Caption>, SetupError> {
        self.prompts(shuffled_captions(Split::Train, 1, n))
    }

    /// The first `n` test captions after a shuffle with seed 2, embedded: the held-out prompts.
    ///
    /// # Errors
    /// `Config` on `heldout` when `n` is 0 or more than the world's test captions; as
    /// [`World::prompts`].
    pub fn heldout_prompts(
        &self,
        n: usize,
    ) -> Result<PromptSet<B::InnerBackend, Caption>, SetupError> {
        let available = captions(Split::Test).len();
        if !(1..=available).contains(&n) {
            return Err(config_error(
                "heldout",
                format!("{n} not in 1..={available} (the world's test captions)"),
            ));
        }
        self.prompts(shuffled_captions(Split::Test, 2, n))
    }

    /// The held-out metric: the pixel oracle on 20-step Euler samples (shift 3) of the first
    /// `n` held-out prompts, from fixed noise.
    ///
    /// # Errors
    /// As [`World::prompts`].
    pub fn heldout_reward(&self, n: usize) -> Result<WorldHeldout<B::InnerBackend>, SetupError> {
        Ok(HeldoutReward {
            vae: self.models.vae.clone(),
            norm: self.models.latent_norm(),
            pixel: OracleReward,
            prompts: self.heldout_prompts(n)?,
            schedule: FlowMatchScheduleConfig::new(20).with_shift(3.0).init()?,
            latent_shape: self.latent_shape(),
        })
    }

    /// Real latents of rendered videos of `captions` (3 per caption) with their prompts'
    /// embeddings: SFT's data.
    ///
    /// # Errors
    /// Rendering or encoding errors.
    pub fn sft_data(&self, captions: &[Caption]) -> Result<SftData<B::InnerBackend>, SetupError> {
        let real = RewardData::real(&self.models, captions, captions, 3, &self.device)?
            .regression_set(&self.models, &self.device)?;
        Ok(SftData::new(real.latents, real.text)?)
    }
}

/// The learner settings of the world's runs: `steps` steps of AdamW at `lr` (10 warm-up steps,
/// weight decay 0.01, global clip 1), seed 0, six evaluations, a checkpoint every 10% of the
/// steps, writing to `out`.
pub fn learner_config(steps: usize, lr: f64, out: impl Into<PathBuf>) -> LearnerConfig {
    LearnerConfig {
        optim: OptimConfig {
            lr,
            weight_decay: 0.01,
            grad_clip: Some(1.0),
            schedule: LrSchedule::Warmup { warmup: 10 },
        },
        eval_every: (steps / 6).max(1),
        ..LearnerConfig::new(steps, out)
    }
}

/// The first `n` captions of `split` after a shuffle with `seed` (seed 1 for the training
/// prompts, 2 for the held-out test prompts).
pub fn shuffled_captions(split: Split, seed: u64, n: usize) -> Vec<Caption> {
    let mut caps = captions(split);
    caps.shuffle(&mut StdRng::seed_from_u64(seed));
    caps.truncate(n);
    caps
}

/// The first `n` VELR ensemble members saved in `dir` under `stem` (`velr`: `velr.json`,
/// `velr_0.mpk`, ...; `process_velr`: the noise-aware ensemble). [`REWARDS`] ships 5 of `velr`.
///
/// # Errors
/// `Load` naming the file that is missing or does not load.
pub fn load_velr_members<B: Backend>(
    dir: &Path,
    stem: &str,
    n: usize,
    device: &B::Device,
) -> Result<Vec<VelrReward<B>>, SetupError> {
    let json = dir.join(format!("{stem}.json"));
    let cfg = VelrRewardConfig::load(&json).map_err(|e| load_error(&json, e))?;
    (0..n)
        .map(|i| {
            let path = dir.join(format!("{stem}_{i}.mpk"));
            let member = cfg.init::<B>(device)?;
            load_record(member, &path, device).map_err(|e| load_error(&path, e))
        })
        .collect()
}

/// PRFL's process reward model saved in `dir` (`prm.json`, `prm.mpk`), built on `dit` and
/// frozen.
///
/// # Errors
/// `Load` naming the file that is missing or does not load.
pub fn load_prm<B: AutodiffBackend>(
    dit: &WanTransformer<B>,
    dir: &Path,
    device: &B::Device,
) -> Result<ProcessReward<B>, SetupError> {
    let json = dir.join("prm.json");
    let cfg = ProcessRewardConfig::load(&json).map_err(|e| load_error(&json, e))?;
    let prm = cfg.init(dit, device)?;
    let path = dir.join("prm.mpk");
    Ok(load_record(prm, &path, device)
        .map_err(|e| load_error(&path, e))?
        .no_grad())
}

/// The quickstart's process reward: `members` scored by mean - `k` std on the frozen `dit`'s
/// prediction of the clean sample ([`DenoisedReward`]), everything frozen.
///
/// # Errors
/// `Reward` for an empty member list; `Config` on `lcb` for a `k` that is not finite.
pub fn denoised_velr<B: AutodiffBackend>(
    dit: &WanTransformer<B>,
    members: Vec<VelrReward<B>>,
    k: f64,
) -> Result<DenoisedVelr<B>, SetupError> {
    if !k.is_finite() {
        return Err(config_error("lcb", format!("{k} must be finite")));
    }
    let ens = Ensemble::new(members)?
        .with_aggregation(Aggregation::LowerConfidenceBound { k })
        .frozen();
    let scale = FlowMatchScheduleConfig::new(1).num_train_timesteps as f64;
    Ok(DenoisedReward::new(dit.clone().no_grad(), ens, scale))
}

/// The oracle's terms, in the order of [`OracleTerms::means`].
pub const ORACLE_TERMS: [&str; 9] = [
    "size",
    "shape",
    "motion",
    "smooth",
    "stability",
    "clean",
    "flicker",
    "alignment",
    "quality",
];

/// The oracle on 20-step Euler samples of a list of prompts, term by term.
#[derive(Debug, Clone, PartialEq)]
pub struct OracleTerms {
    /// The mean of each term of [`ORACLE_TERMS`].
    pub means: [f64; 9],
    /// The reward of each prompt's sample.
    pub rewards: Vec<f64>,
}

impl OracleTerms {
    /// Scores samples of `caps` (shift 3, noise seed 7): what a reward fine-tuning run changed,
    /// term by term and prompt by prompt.
    ///
    /// # Errors
    /// Sampling or scoring errors.
    pub fn of<Bk: Backend>(
        models: &WorldModels<Bk>,
        caps: &[Caption],
        device: &Bk::Device,
    ) -> Result<Self, SetupError> {
        let z = models.sample_latents(caps, 20, 3.0, 7, device)?;
        let s = OracleReward.scores(models.decode(z), caps)?;
        let host = |t: Tensor<Bk, 1>| -> Result<Vec<f64>, SetupError> {
            let v = latent_reward::error::host_f32(t)?;
            Ok(v.into_iter().map(f64::from).collect())
        };
        let mut means = [0.0; 9];
        let terms = [
            s.size,
            s.shape,
            s.motion,
            s.smooth,
            s.stability,
            s.clean,
            s.flicker,
            s.alignment,
            s.quality,
        ];
        for (m, t) in means.iter_mut().zip(terms) {
            let v = host(t)?;
            *m = v.iter().sum::<f64>() / v.len() as f64;
        }
        Ok(Self {
            means,
            rewards: host(s.reward)?,
        })
    }

    /// The mean of `after - self` over the prompts and its standard error (the two scored on the
    /// same prompts and noise).
    pub fn paired_change(&self, after: &Self) -> (f64, f64) {
        paired_change(&self.rewards, &after.rewards)
    }
}

/// The mean of `after - before` and its standard error, for rewards paired element by element
/// (the same prompts and noise).
pub fn paired_change(before: &[f64], after: &[f64]) -> (f64, f64) {
    let d: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, (var / n).sqrt())
}

/// Samples `prompts` (20 Euler steps, shift 3, noise seed 7), writes one GIF per prompt to
/// `dir/TAG_I.gif`, and returns each sample's oracle reward with its file.
///
/// # Errors
/// Sampling, scoring or IO errors.
pub fn write_gifs<Bk: Backend>(
    models: &WorldModels<Bk>,
    prompts: &[Caption],
    dir: &Path,
    tag: &str,
) -> Result<Vec<(f32, PathBuf)>, SetupError> {
    let device = models.dit.devices()[0].clone();
    let video = models.decode(models.sample_latents(prompts, 20, 3.0, 7, &device)?);
    let rewards = latent_reward::error::host_f32(OracleReward.score(video.clone(), prompts)?)?;
    let mut out = Vec::new();
    for (i, r) in rewards.into_iter().enumerate() {
        let v = Video::from_tensor(video.clone().narrow(0, i, 1).squeeze_dim::<4>(0))?;
        let path = dir.join(format!("{tag}_{i}.gif"));
        write_gif(&path, &v, 3, 100)?;
        out.push((r, path));
    }
    Ok(out)
}

/// The inner-backend copy of a trained DiT in the world's models, for sampling and scoring.
pub fn with_dit<B: AutodiffBackend>(
    models: &WorldModels<B::InnerBackend>,
    dit: &WanTransformer<B>,
) -> WorldModels<B::InnerBackend> {
    let mut tuned = models.clone();
    tuned.dit = dit.valid();
    tuned
}

/// The shapes-world oracle on prompt text: each prompt is parsed as a caption
/// (`"a small red circle moving right slowly on a black background"`). For prompt files of
/// captions, such as `assets/tiny-wan`'s.
#[derive(Debug, Clone, Copy, Default)]
pub struct OracleText;

impl<B: Backend> PixelReward<B> for OracleText {
    type Prompt = String;

    fn score_pixels(
        &self,
        video: Tensor<B, 5>,
        prompts: &[String],
    ) -> latent_reward::Result<Tensor<B, 1>> {
        let captions = prompts
            .iter()
            .map(|p| p.parse::<Caption>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| latent_reward::RewardError::Pixel(Box::new(e)))?;
        OracleReward.score_pixels(video, &captions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type AD = burn::backend::Autodiff<diffusion_core::backend::DefaultBackend>;

    /// The shipped models and rewards load into the current module structures.
    #[test]
    fn shipped_models_and_rewards_load() {
        let dev = Default::default();
        let world = World::<AD>::load(MODELS.as_ref(), &dev).expect("shapes-world models");
        load_prm(&world.models_ad.dit, REWARDS.as_ref(), &dev).expect("process reward");
        let members = load_velr_members::<AD>(REWARDS.as_ref(), "velr", 5, &dev).expect("VELR");
        assert_eq!(members.len(), 5);
    }
}
