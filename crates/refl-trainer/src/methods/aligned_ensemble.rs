//! GRPO's latent ensemble reward kept aligned with the policy: VELR's online alignment ("VELR:
//! Efficient Video Reward Feedback via Ensemble Latent Reward Models", section 4.3) run on
//! GRPO's rollouts.

use crate::OptimConfig;
use std::collections::BTreeMap;

use burn::{
    module::AutodiffModule,
    tensor::{backend::AutodiffBackend, backend::Backend, Int, Tensor, TensorData},
};
use ensemble::{Aggregation, Ensemble};
use grpo::{GroupReward, LatentScore, PixelScore};
use latent_reward::{
    error::host_f32, fit_preference, metrics::pearson, FitConfig, InputPerturbation, LatentReward,
    PairSet, PixelReward, PreferenceLoss,
};
use rand::{rngs::StdRng, Rng};

use crate::{
    alignment::{AlignmentConfig, OnlineAlignment},
    checkpoint::{CheckpointReader, CheckpointWriter},
    error::Result,
    prompts::PromptSet,
};

/// The rollouts of one GRPO update, as its reward saw them.
pub struct GrpoRollouts<'a, B: Backend, P> {
    /// Final latents, `[N * G, C, F, H, W]`: prompt after prompt, a group's rollouts together.
    pub samples: Tensor<B, 5>,
    /// The training-prompt index of each rollout.
    pub idx: &'a [usize],
    /// The prompt of each rollout.
    pub prompts: &'a [P],
    /// The training prompts the indices point into.
    pub train: &'a PromptSet<B, P>,
    /// Rollouts per prompt.
    pub group: usize,
}

/// GRPO's reward, with what it may do between updates (learn from the rollouts) and the state
/// it must checkpoint. [`LatentScore`] (any latent reward) and [`PixelScore`] (a decoded pixel
/// reward) implement it with nothing to do; [`AlignedEnsemble`] aligns its members.
pub trait GrpoReward<B: Backend, P>: GroupReward<B, P> {
    /// Called after each update with its rollouts; returns values for the metrics log.
    ///
    /// # Errors
    /// Whatever learning from the rollouts fails with.
    fn after_update(
        &mut self,
        step: usize,
        rollouts: &GrpoRollouts<'_, B, P>,
        rng: &mut StdRng,
    ) -> Result<BTreeMap<String, f64>> {
        let _ = (step, rollouts, rng);
        Ok(BTreeMap::new())
    }

    /// Writes the state [`GrpoReward::after_update`] changes.
    ///
    /// # Errors
    /// IO errors.
    fn save(&self, checkpoint: &mut CheckpointWriter) -> Result<()> {
        let _ = checkpoint;
        Ok(())
    }

    /// Restores what [`GrpoReward::save`] wrote; `prompts` is the number of training prompts.
    ///
    /// # Errors
    /// `Checkpoint` naming a bad file.
    fn load(
        &mut self,
        checkpoint: &CheckpointReader,
        device: &B::Device,
        prompts: usize,
    ) -> Result<()> {
        let _ = (checkpoint, device, prompts);
        Ok(())
    }
}

impl<B: Backend, P, M: LatentReward<B>> GrpoReward<B, P> for LatentScore<M> {}

impl<B, P, V, R> GrpoReward<B, P> for PixelScore<V, R>
where
    B: Backend,
    V: diffusion_core::models::vae::VideoAutoencoder<B>,
    R: PixelReward<B, Prompt = P>,
{
}

/// Bradley-Terry fine-tuning of the members on the pairs of rollouts within each group of an
/// update (GRPO's advantages are within-group rankings, which regression alignment does not
/// target).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankingAlignment {
    /// Gradient steps of each member per round (batches of 16 pairs).
    pub steps: usize,
    /// Least label gap of a pair.
    pub margin: f32,
    /// Learning rate.
    pub lr: f64,
}

/// GRPO's reward: a latent ensemble (its aggregation, at noise level 0) kept aligned with the
/// policy. Every `every` updates the update's rollouts are labelled by `labeller` (a pixel
/// reward of the decoded video), enter a replay buffer prioritised by the ensemble's variance,
/// and every member is fine-tuned on a priority-weighted draw (and, with
/// [`AlignedEnsemble::ranking`], on the within-group pairs). The members and the buffer are
/// part of the checkpoint.
pub struct AlignedEnsemble<B: AutodiffBackend, L: AutodiffModule<B>, Lb> {
    ensemble: Ensemble<L>,
    /// `ensemble` on the inner backend, refreshed after each alignment round.
    scorer: LatentScore<Ensemble<L::InnerModule>>,
    labeller: Lb,
    alignment: OnlineAlignment,
    every: usize,
    /// Also rank within groups after each regression round.
    pub ranking: Option<RankingAlignment>,
}

impl<B, L, Lb> AlignedEnsemble<B, L, Lb>
where
    B: AutodiffBackend,
    L: AutodiffModule<B> + LatentReward<B>,
    L::InnerModule: LatentReward<B::InnerBackend> + Sync,
{
    /// `ensemble` aligned every `every` updates (0: never) with `config`, on labels from
    /// `labeller`, for latents of shape `[C, F, H, W]`.
    ///
    /// # Errors
    /// `Config` for bad alignment settings.
    pub fn new(
        ensemble: Ensemble<L>,
        labeller: Lb,
        config: AlignmentConfig,
        every: usize,
        latent_shape: [usize; 4],
    ) -> Result<Self> {
        Ok(Self {
            scorer: LatentScore(ensemble.valid()),
            ensemble,
            labeller,
            alignment: OnlineAlignment::new(config, latent_shape)?,
            every,
            ranking: None,
        })
    }

    /// The ensemble, as alignment left it.
    pub fn ensemble(&self) -> &Ensemble<L> {
        &self.ensemble
    }

    /// Bradley-Terry fine-tuning of every member on the pairs within each group of `z` whose
    /// labels differ by at least the margin (the better one the winner).
    fn rank(
        &mut self,
        rank: RankingAlignment,
        z: Tensor<B::InnerBackend, 5>,
        text: Tensor<B::InnerBackend, 3>,
        labels: &[f32],
        group: usize,
        rng: &mut StdRng,
    ) -> Result<()> {
        let (mut win, mut lose) = (Vec::new(), Vec::new());
        for g0 in (0..labels.len()).step_by(group) {
            for i in g0..g0 + group {
                for j in i + 1..g0 + group {
                    if (labels[i] - labels[j]).abs() >= rank.margin {
                        let (w, l) = if labels[i] > labels[j] {
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
            Tensor::<B::InnerBackend, 1, Int>::from_data(TensorData::new(v, [n]), &device)
        };
        let (win, lose) = (ids(win), ids(lose));
        let pairs = PairSet::new(
            Tensor::from_inner(z.clone().select(0, win.clone())),
            Tensor::from_inner(z.select(0, lose)),
            Tensor::from_inner(text.select(0, win)),
        )?;
        let cfg = FitConfig {
            optim: OptimConfig::constant(rank.lr, 0.0, Some(1.0)),
            steps: rank.steps,
            batch: 16,
            seed: rng.random(),
        };
        for member in self.ensemble.members.iter_mut() {
            let (trained, _) = fit_preference(
                member.clone(),
                &pairs,
                PreferenceLoss::BradleyTerry,
                None,
                InputPerturbation::None,
                &cfg,
                "rank",
            )?;
            *member = trained;
        }
        Ok(())
    }
}

impl<B, L, Lb, P> GroupReward<B::InnerBackend, P> for AlignedEnsemble<B, L, Lb>
where
    B: AutodiffBackend,
    L: AutodiffModule<B>,
    L::InnerModule: LatentReward<B::InnerBackend> + Sync,
{
    fn rewards(
        &self,
        latents: Tensor<B::InnerBackend, 5>,
        prompts: &[P],
        text: Tensor<B::InnerBackend, 3>,
    ) -> grpo::Result<Tensor<B::InnerBackend, 1>> {
        self.scorer.rewards(latents, prompts, text)
    }
}

impl<B, L, Lb, P> GrpoReward<B::InnerBackend, P> for AlignedEnsemble<B, L, Lb>
where
    B: AutodiffBackend,
    L: AutodiffModule<B> + LatentReward<B>,
    L::InnerModule: LatentReward<B::InnerBackend> + Sync,
    Lb: GroupReward<B::InnerBackend, P>,
    P: Clone,
{
    /// When due, labels the rollouts, pushes them, fine-tunes the members; logs what the round
    /// measured before the fine-tuning: the mean label (`align_label`) and latent reward
    /// (`align_latent`), and the Pearson correlation of the members' mean with the labels over
    /// the rollouts (`align_pearson`) and within groups (`align_group_pearson`, what GRPO's
    /// advantages need).
    fn after_update(
        &mut self,
        step: usize,
        r: &GrpoRollouts<'_, B::InnerBackend, P>,
        rng: &mut StdRng,
    ) -> Result<BTreeMap<String, f64>> {
        if self.every == 0 || step % self.every != 0 {
            return Ok(BTreeMap::new());
        }
        let z = r.samples.clone();
        let (_, text) = r.train.batch(r.idx);
        let labels = host_f32(self.labeller.rewards(z.clone(), r.prompts, text.clone())?)?;
        let valid = &self.scorer.0;
        let sigma = Tensor::zeros([r.idx.len()], &z.device());
        let scores = valid.score_members(z.clone(), sigma, text.clone());
        let latent = host_f32(scores.aggregate(valid.aggregation))?;
        let members_mean = host_f32(scores.aggregate(Aggregation::Mean))?;
        let variance = host_f32(scores.variance())?;
        self.alignment.push(z.clone(), r.idx, &labels, &variance)?;
        let train = r.train;
        self.alignment
            .align(&mut self.ensemble.members, |i| train.batch(i).1, rng)?;
        if let Some(rank) = self.ranking {
            self.rank(rank, z, text, &labels, r.group, rng)?;
        }
        self.scorer = LatentScore(self.ensemble.valid());
        let mean = |x: &[f32]| x.iter().map(|v| *v as f64).sum::<f64>() / x.len() as f64;
        let per_group: Vec<f64> = members_mean
            .chunks(r.group)
            .zip(labels.chunks(r.group))
            .map(|(m, o)| pearson(m, o))
            .filter(|p| p.is_finite())
            .collect();
        Ok([
            ("align_label", mean(&labels)),
            ("align_latent", mean(&latent)),
            ("align_pearson", pearson(&members_mean, &labels)),
            (
                "align_group_pearson",
                per_group.iter().sum::<f64>() / per_group.len().max(1) as f64,
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect())
    }

    fn save(&self, checkpoint: &mut CheckpointWriter) -> Result<()> {
        for (i, m) in self.ensemble.members.iter().enumerate() {
            checkpoint.record(&format!("reward_member{i}.mpk"), m.clone())?;
        }
        checkpoint.json("reward_buffer.json", &self.alignment.buffer)
    }

    fn load(
        &mut self,
        checkpoint: &CheckpointReader,
        device: &B::Device,
        prompts: usize,
    ) -> Result<()> {
        for (i, m) in self.ensemble.members.iter_mut().enumerate() {
            *m = checkpoint.record(&format!("reward_member{i}.mpk"), m.clone(), device)?;
        }
        self.alignment
            .set_buffer(checkpoint.json("reward_buffer.json")?, prompts)?;
        self.scorer = LatentScore(self.ensemble.valid());
        Ok(())
    }
}
