//! Pieces the examples share (each example uses some of them).
#![allow(dead_code)]

use std::path::Path;

use burn::{
    config::Config,
    tensor::{
        backend::{AutodiffBackend, Backend},
        Int, Tensor, TensorData,
    },
};
use diffusion_core::{checkpoint::load_record, vae::CausalVae, FlowGrpoSde, WanTransformer};
use ensemble::{Aggregation, Ensemble};
use grpo::{AdvantageConfig, GrpoConfig, GrpoTrainer, LatentScore, Sde, TimestepSelection};
use latent_reward::{PairSet, ProcessReward, ProcessRewardConfig, VelrReward, VelrRewardConfig};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use refl_trainer::{
    AlignmentConfig, LatentRewards, LrSchedule, Method, OnlineAlignment, OptimConfig, PrflConfig,
    PromptSet, RunConfig, SamplingConfig, SftData, Trainer, TrainerParts,
};
use shapes_world::{captions, Caption, OracleReward, RewardData, Split, WorldError, WorldModels};

/// The first `n` VELR ensemble members that the `train_rewards` example saved in `dir` under
/// `stem` (`velr`: `velr.json`, `velr_0.mpk`, ...; `process_velr`: the noise-aware ensemble).
pub fn load_velr_members<Bk: Backend>(
    dir: &Path,
    stem: &str,
    n: usize,
    device: &Bk::Device,
) -> Result<Vec<VelrReward<Bk>>, String> {
    let hint = |what: &dyn std::fmt::Display, e: &dyn std::fmt::Display| {
        format!("cannot load {what} (run the train_rewards example): {e}")
    };
    let json = dir.join(format!("{stem}.json"));
    let cfg = VelrRewardConfig::load(&json).map_err(|e| hint(&json.display(), &e))?;
    (0..n)
        .map(|i| {
            let path = dir.join(format!("{stem}_{i}.mpk"));
            let member = cfg.init::<Bk>(device).map_err(|e| e.to_string())?;
            load_record(member, &path, device).map_err(|e| hint(&path.display(), &e))
        })
        .collect()
}

/// The quickstart's process reward: `members` scored by mean - `k` std on the frozen `dit`'s
/// prediction of the clean sample (`DenoisedReward`).
pub fn denoised_velr<Bk: AutodiffBackend>(
    dit: &WanTransformer<Bk>,
    members: Vec<VelrReward<Bk>>,
    k: f64,
) -> latent_reward::Result<LatentRewards<Bk>> {
    let ens = ensemble::Ensemble::new(members)?
        .with_aggregation(ensemble::Aggregation::LowerConfidenceBound { k });
    let scale = diffusion_core::FlowMatchScheduleConfig::new(1).num_train_timesteps as f64;
    Ok(LatentRewards::Denoised(latent_reward::DenoisedReward::new(
        dit.clone(),
        ens,
        scale,
    )))
}

/// This run's flags as they follow `cargo run --release --example NAME` in a report (` -- --a 1`,
/// or empty without flags).
pub fn command_flags() -> String {
    let flags: String = std::env::args().skip(1).map(|a| format!(" {a}")).collect();
    if flags.is_empty() {
        flags
    } else {
        format!(" --{flags}")
    }
}

/// A preference set moved onto the autodiff backend (as constants) for training.
pub fn to_autodiff_pairs<Bk: AutodiffBackend>(
    s: &PairSet<Bk::InnerBackend>,
) -> latent_reward::Result<PairSet<Bk>> {
    PairSet::new(
        Tensor::from_inner(s.winners.clone()),
        Tensor::from_inner(s.losers.clone()),
        Tensor::from_inner(s.text.clone()),
    )
}

/// The first `n` captions of `split` after a shuffle with `seed` (the examples' prompt sets:
/// seed 1 for training prompts, 2 for held-out test prompts).
pub fn shuffled_captions(split: Split, seed: u64, n: usize) -> Vec<Caption> {
    let mut caps = captions(split);
    caps.shuffle(&mut StdRng::seed_from_u64(seed));
    caps.truncate(n);
    caps
}

/// Real latents of rendered videos of `caps` with their prompts' embeddings: PRFL's SFT data.
pub fn sft_data<Bk: Backend>(
    models: &WorldModels<Bk>,
    caps: &[Caption],
    device: &Bk::Device,
) -> Result<SftData<Bk>, WorldError> {
    let real = RewardData::real(models, caps, caps, 3, device)?.regression_set(models, device)?;
    Ok(SftData {
        latents: real.latents,
        text: real.text,
    })
}

/// The process reward model that `train_rewards` saved in `dir` (`prm.json`, `prm.mpk`), built
/// on `dit` with its embeddings frozen.
pub fn load_prm<Bk: AutodiffBackend>(
    dit: &WanTransformer<Bk>,
    dir: &Path,
    device: &Bk::Device,
) -> Result<ProcessReward<Bk>, String> {
    let hint = |what: &dyn std::fmt::Display, e: &dyn std::fmt::Display| {
        format!("cannot load {what} (run the train_rewards example): {e}")
    };
    let cfg = ProcessRewardConfig::load(dir.join("prm.json"))
        .map_err(|e| hint(&dir.join("prm.json").display(), &e))?;
    let prm = cfg.init(dit, device).map_err(|e| e.to_string())?;
    let path = dir.join("prm.mpk");
    Ok(load_record(prm, &path, device)
        .map_err(|e| hint(&path.display(), &e))?
        .freeze_embeddings())
}

/// The GRPO settings of the examples (session 14): 8 rollouts per prompt of 10 Flow-GRPO steps
/// (shift 3) from one shared noise per group, Flash-GRPO's iso-temporal selection (one SDE step
/// per update, the others ODE, so a group's rewards differ only by that step's noise) with
/// temporal gradient rectification, per-group advantages, clip 0.2, KL weight 0.01, AdamW at
/// `lr`. On shapes-world with the pixel oracle this raised the held-out reward by +0.050 in 300 s
/// where 4 independent rollouts of 20 steps with 30% of the steps trained did not move it
/// (docs/comparison.md).
pub fn grpo_config(lr: f64) -> GrpoConfig {
    GrpoConfig {
        group: 8,
        steps: 10,
        shift: 3.0,
        sde: Sde::FlowGrpo(FlowGrpoSde::default()),
        shared_noise: true,
        advantage: AdvantageConfig::default(),
        clip: 0.2,
        kl_beta: 0.01,
        timesteps: TimestepSelection::IsoTemporal { skip_last: 1 },
        rectify: true,
        lr,
        weight_decay: 0.01,
        grad_clip: Some(1.0),
        seed: 0,
        shards: diffusion_core::parallel::cores(),
    }
}

/// Prompts per GRPO step in the examples.
pub const GRPO_PROMPTS: usize = 4;

/// Each online-alignment round of GRPO's latent ensemble in the examples: a buffer of 256, 4
/// Huber steps of 16 per member at lr 1e-4.
pub const GRPO_ALIGNMENT: AlignmentConfig = AlignmentConfig {
    capacity: 256,
    steps: 4,
    batch: 16,
    lr: 1e-4,
};

/// GRPO updates between online-alignment rounds in the examples.
pub const GRPO_ALIGN_EVERY: usize = 5;

/// A GRPO run's settings in words, for the examples' reports.
pub fn grpo_settings(config: &GrpoConfig, prompts: usize) -> String {
    let sde = match config.sde {
        Sde::FlowGrpo(s) => format!("Flow-GRPO (noise level {})", s.noise_level),
        Sde::DanceGrpo(_) => "DanceGRPO".to_string(),
    };
    let noise = if config.shared_noise {
        " (a group shares its initial noise)"
    } else {
        ""
    };
    let steps = match &config.timesteps {
        TimestepSelection::All => "every step an SDE step and trained".to_string(),
        TimestepSelection::RandomFraction { fraction, .. } => format!(
            "every step an SDE step, {:.0}% of them trained (one at a time)",
            fraction * 100.0
        ),
        TimestepSelection::IsoTemporal { .. } => {
            "one random step per update the SDE step and trained, the others ODE (iso-temporal)"
                .to_string()
        }
    };
    let rectified = if config.rectify { ", rectified" } else { "" };
    format!(
        "{prompts} prompts x {} {sde} rollouts of {} steps per update{noise}, {steps}{rectified}, {:?} advantage std, clip {}, KL weight {}, lr {:e}",
        config.group, config.steps, config.advantage.std, config.clip, config.kl_beta, config.lr
    )
}

/// GRPO's latent ensemble reward kept aligned with the policy by VELR's online alignment (seed
/// 002, section 4.3): every `every` updates the rollouts of the update are decoded and scored by
/// the pixel oracle, enter a replay buffer prioritised by the ensemble's variance, and every
/// member is fine-tuned on a priority-weighted draw.
pub struct AlignedEnsemble<Bk: AutodiffBackend> {
    /// The members (trainable) and the aggregation GRPO's reward uses.
    ensemble: Ensemble<VelrReward<Bk>>,
    /// `ensemble` on the inner backend, refreshed after each alignment round.
    scorer: LatentScore<Ensemble<VelrReward<Bk::InnerBackend>>>,
    alignment: OnlineAlignment,
    every: usize,
    /// Also rank within groups after each regression round.
    pub ranking: Option<RankingAlignment>,
}

/// Bradley-Terry fine-tuning of the members on the pairs of rollouts within each group of an
/// update (GRPO's advantages are within-group rankings; VELR's regression alignment does not
/// target them).
#[derive(Debug, Clone, Copy)]
pub struct RankingAlignment {
    /// Gradient steps of each member per round (batches of 16 pairs).
    pub steps: usize,
    /// Least oracle gap of a pair.
    pub margin: f32,
    /// Learning rate.
    pub lr: f64,
}

/// What one labelling round measured on the update's rollouts, before the members were tuned.
#[derive(Debug, Clone, Copy)]
pub struct AlignmentRound {
    /// Mean oracle reward.
    pub oracle: f64,
    /// Mean of the ensemble's aggregated reward (what GRPO climbs).
    pub latent: f64,
    /// Pearson correlation of the members' mean with the oracle over the update's rollouts.
    pub pearson: f64,
    /// The same within each group, averaged over the groups: whether the latent reward ranks
    /// a group's rollouts as the oracle does (what GRPO's advantages need).
    pub group_pearson: f64,
}

impl<Bk: AutodiffBackend> AlignedEnsemble<Bk> {
    /// Bradley-Terry fine-tuning of every member on the pairs within each group of `z` whose
    /// oracle rewards differ by at least the margin (the better one the winner).
    fn rank(
        &mut self,
        rank: RankingAlignment,
        z: Tensor<Bk::InnerBackend, 5>,
        text: Tensor<Bk::InnerBackend, 3>,
        oracle: &[f32],
        group: usize,
        rng: &mut StdRng,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let (mut win, mut lose) = (Vec::new(), Vec::new());
        for g0 in (0..oracle.len()).step_by(group) {
            for i in g0..g0 + group {
                for j in i + 1..g0 + group {
                    if (oracle[i] - oracle[j]).abs() >= rank.margin {
                        let (w, l) = if oracle[i] > oracle[j] {
                            (i, j)
                        } else {
                            (j, i)
                        };
                        win.push(w as i64);
                        lose.push(l as i64);
                    }
                }
            }
        }
        if win.is_empty() {
            return Ok(());
        }
        let device = z.device();
        let ids = |v: Vec<i64>| {
            let n = v.len();
            Tensor::<Bk::InnerBackend, 1, Int>::from_data(TensorData::new(v, [n]), &device)
        };
        let (win, lose) = (ids(win), ids(lose));
        let pairs = PairSet::new(
            Tensor::from_inner(z.clone().select(0, win.clone())),
            Tensor::from_inner(z.select(0, lose)),
            Tensor::from_inner(text.select(0, win)),
        )?;
        let cfg = latent_reward::FitConfig {
            steps: rank.steps,
            batch: 16,
            lr: rank.lr,
            weight_decay: 0.0,
            grad_clip: Some(1.0),
            seed: rand::Rng::random(rng),
        };
        for member in self.ensemble.members.iter_mut() {
            let (trained, _) = latent_reward::fit_preference(
                member.clone(),
                &pairs,
                latent_reward::PreferenceLoss::BradleyTerry,
                None,
                latent_reward::InputPerturbation::None,
                &cfg,
                "rank",
            )?;
            *member = trained;
        }
        Ok(())
    }

    /// `ensemble` aligned every `every` updates (0: never) with `config`.
    pub fn new(
        ensemble: Ensemble<VelrReward<Bk>>,
        config: AlignmentConfig,
        every: usize,
        latent_shape: [usize; 4],
    ) -> refl_trainer::Result<Self> {
        Ok(Self {
            scorer: LatentScore(ensemble.valid()),
            ensemble,
            alignment: OnlineAlignment::new(config, latent_shape)?,
            every,
            ranking: None,
        })
    }

    /// GRPO's reward: the current members with the ensemble's aggregation, at noise level 0.
    pub fn reward(&self) -> &LatentScore<Ensemble<VelrReward<Bk::InnerBackend>>> {
        &self.scorer
    }

    /// After a GRPO update on the training prompts `idx` (each repeated over its group in the
    /// rollouts): when due, labels the update's rollouts with the oracle and fine-tunes the
    /// members; returns what the round measured before the fine-tuning.
    pub fn after_update(
        &mut self,
        grpo: &GrpoTrainer<Bk>,
        idx: &[usize],
        train: &PromptSet<Bk::InnerBackend, Caption>,
        world: &WorldModels<Bk::InnerBackend>,
        rng: &mut StdRng,
    ) -> Result<Option<AlignmentRound>, Box<dyn std::error::Error>> {
        if self.every == 0 || !(grpo.step() - 1).is_multiple_of(self.every) {
            return Ok(None);
        }
        let z = grpo.last_samples().ok_or("no GRPO update yet")?.clone();
        let group = z.dims()[0] / idx.len();
        let rows: Vec<usize> = idx
            .iter()
            .flat_map(|&i| std::iter::repeat_n(i, group))
            .collect();
        let (captions, text) = train.batch(&rows);
        let host = latent_reward::error::host_f32;
        let oracle = host(OracleReward.score(world.decode(z.clone()), &captions)?)?;
        let valid = &self.scorer.0;
        let sigma = Tensor::zeros([rows.len()], &z.device());
        let scores = valid.score_members(z.clone(), sigma, text.clone());
        let latent = host(scores.aggregate(valid.aggregation))?;
        let members_mean = host(scores.aggregate(Aggregation::Mean))?;
        let variance = host(scores.variance())?;
        self.alignment.push(z.clone(), &rows, &oracle, &variance)?;
        self.alignment
            .align(&mut self.ensemble.members, |i| train.batch(i).1, rng)?;
        if let Some(rank) = self.ranking {
            self.rank(rank, z, text, &oracle, group, rng)?;
        }
        self.scorer = LatentScore(self.ensemble.valid());
        let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
        let widen = |x: &[f32]| x.iter().map(|v| *v as f64).collect::<Vec<_>>();
        let pearson = latent_reward::metrics::pearson;
        let per_group: Vec<f64> = members_mean
            .chunks(group)
            .zip(oracle.chunks(group))
            .map(|(m, o)| pearson(m, o))
            .filter(|p| p.is_finite())
            .collect();
        Ok(Some(AlignmentRound {
            oracle: mean(&widen(&oracle)),
            latent: mean(&widen(&latent)),
            pearson: pearson(&members_mean, &oracle),
            group_pearson: mean(&per_group),
        }))
    }
}

/// PRFL as the quickstart runs it (and `refine_prm` between reward-model rounds).
#[derive(Debug, Clone)]
pub struct PrflRun {
    /// Reward steps.
    pub steps: usize,
    /// Videos per step.
    pub batch: usize,
    /// Peak learning rate (10 warm-up steps).
    pub lr: f64,
    /// Reward loss weight.
    pub lambda: f64,
    /// The loss's margin, `relu(margin - r)` (2: every sample pushed, as PRFL's release).
    pub margin: f64,
    /// An SFT step every this many reward steps (0: none).
    pub sft_every: usize,
    /// Weight of the KL term to the initial model (0: none).
    pub kl_beta: f64,
    /// Range of the gradient window's start step (`None`: the whole chain but the last step).
    pub start: Option<[usize; 2]>,
    /// Held-out test prompts scored by the oracle.
    pub heldout: usize,
    /// Evaluations of the held-out reward during the run.
    pub evals: usize,
}

impl PrflRun {
    /// The quickstart's recipe, which raises the held-out reward against the VELR ensemble on the
    /// frozen DiT's clean-sample prediction (docs/refine_prm.md, session 13): the window's start
    /// in the mid-noise steps, a KL term to the initial model, no SFT steps, 240 steps.
    pub fn denoised_recipe() -> Self {
        Self {
            steps: 240,
            lr: 1e-4,
            lambda: 1.0,
            sft_every: 0,
            kl_beta: 0.1,
            start: Some([6, 10]),
            ..Self::default()
        }
    }

    /// PRFL's method settings of this run (a window of one step).
    pub fn method(&self) -> Method {
        Method::Prfl(PrflConfig {
            start: self.start,
            window: 1,
            lambda: self.lambda,
            margin: self.margin,
            sft_every: self.sft_every,
            kl_beta: self.kl_beta,
        })
    }
}

impl Default for PrflRun {
    fn default() -> Self {
        Self {
            steps: 120,
            batch: 4,
            lr: 5e-5,
            lambda: 0.1,
            margin: 2.0,
            sft_every: 1,
            kl_beta: 0.0,
            start: None,
            heldout: 32,
            evals: 6,
        }
    }
}

/// A PRFL trainer on the world's models.
pub type WorldTrainer<Bk> = Trainer<Bk, CausalVae<Bk>, OracleReward, Caption>;

/// Builds the PRFL trainer of `run` on a fresh copy of the world's DiT with the process reward
/// model(s) `reward` (training prompts: 512 training captions; held-out: the first `run.heldout` test
/// captions; SFT on rendered videos of 128 training captions); its log goes to `out`.
/// Returns the trainer and the held-out captions.
pub fn prfl_trainer<Bk: AutodiffBackend>(
    models: &WorldModels<Bk::InnerBackend>,
    models_ad: &WorldModels<Bk>,
    reward: LatentRewards<Bk>,
    run: &PrflRun,
    out: &Path,
) -> Result<(WorldTrainer<Bk>, Vec<Caption>), Box<dyn std::error::Error>> {
    world_trainer(models, models_ad, run.method(), reward, run, out)
}

/// [`prfl_trainer`] with another `method` (its steps, batch, learning rate and held-out
/// prompts from `run`).
pub fn world_trainer<Bk: AutodiffBackend>(
    models: &WorldModels<Bk::InnerBackend>,
    models_ad: &WorldModels<Bk>,
    method: Method,
    reward: LatentRewards<Bk>,
    run: &PrflRun,
    out: &Path,
) -> Result<(WorldTrainer<Bk>, Vec<Caption>), Box<dyn std::error::Error>> {
    let inner_dev = burn::module::Module::devices(&models.dit)[0].clone();
    let train = shuffled_captions(Split::Train, 1, 512);
    let heldout = shuffled_captions(Split::Test, 2, run.heldout);
    let train_set = PromptSet::new(train.clone(), models.embed(&train, &inner_dev)?)?;
    let heldout_set = PromptSet::new(heldout.clone(), models.embed(&heldout, &inner_dev)?)?;
    let sft = sft_data(models, &train[..128], &inner_dev)?;
    let _ = std::fs::remove_dir_all(out);
    let config = RunConfig {
        method,
        steps: run.steps,
        batch: run.batch,
        sampling: SamplingConfig {
            steps: 20,
            shift: 3.0,
        },
        optim: OptimConfig {
            lr: run.lr,
            weight_decay: 0.01,
            grad_clip: Some(1.0),
            schedule: LrSchedule::Warmup { warmup: 10 },
        },
        max_skipped: 10,
        seed: 0,
        eval_every: (run.steps / run.evals.max(1)).max(1),
        checkpoint_every: 0,
        out: out.to_path_buf(),
        shards: diffusion_core::parallel::cores(),
    };
    let trainer = Trainer::new(TrainerParts {
        config,
        policy: models_ad.dit.clone(),
        vae: models_ad.vae.clone(),
        norm: models.latent_norm(),
        pixel: OracleReward,
        reward,
        train: train_set,
        heldout: heldout_set,
        sft: Some(sft),
        latent_shape: models.config.latent_shape(),
    })?;
    Ok((trainer, heldout))
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

/// The oracle on 20-step Euler samples of a list of prompts.
pub struct OracleTerms {
    /// The mean of each term of [`ORACLE_TERMS`].
    pub means: [f64; 9],
    /// The reward of each prompt's sample.
    pub rewards: Vec<f64>,
}

impl OracleTerms {
    /// Scores samples of `caps` (shift 3, noise seed 7): what a reward fine-tuning run changed,
    /// term by term and prompt by prompt.
    pub fn of<Bk: Backend>(
        models: &WorldModels<Bk>,
        caps: &[Caption],
        device: &Bk::Device,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let z = models.sample_latents(caps, 20, 3.0, 7, device)?;
        let s = OracleReward.scores(models.decode(z), caps)?;
        let host = |t: Tensor<Bk, 1>| -> Result<Vec<f64>, String> {
            let v: Vec<f32> = t.into_data().to_vec().map_err(|e| format!("{e:?}"))?;
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
