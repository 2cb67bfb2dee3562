//! The [`Ensemble`] of reward models.

use burn::{
    module::{AutodiffModule, Module},
    tensor::{
        backend::{AutodiffBackend, Backend},
        Tensor,
    },
};
use latent_reward::{LatentReward, RewardError, RewardRange};

use crate::aggregation::{variance, Aggregation};

/// How members are evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Evaluation {
    /// One member after another on the calling thread.
    Sequential,
    /// One scoped thread per member (CPU backends whose kernels use one core).
    Threaded,
}

/// Scores of every member on one batch.
///
/// # Shapes
/// - `scores`: `[N, B]`
#[derive(Debug, Clone)]
pub struct MemberScores<B: Backend> {
    /// Member-by-sample scores.
    pub scores: Tensor<B, 2>,
}

impl<B: Backend> MemberScores<B> {
    /// The aggregate reward, `[B]`.
    pub fn aggregate(&self, aggregation: Aggregation) -> Tensor<B, 1> {
        aggregation.apply(self.scores.clone())
    }

    /// Variance across members, the uncertainty, `[B]`.
    pub fn variance(&self) -> Tensor<B, 1> {
        variance(self.scores.clone())
    }
}

/// `N` reward models combined by an [`Aggregation`] (VELR "VELR: Efficient Video Reward Feedback via Ensemble Latent Reward Models", section 4.2). Implements
/// [`LatentReward`] with the aggregate as its score.
#[derive(Debug, Clone)]
pub struct Ensemble<M> {
    /// The members.
    pub members: Vec<M>,
    /// How [`LatentReward::score`] combines them.
    pub aggregation: Aggregation,
    /// How members are evaluated.
    pub evaluation: Evaluation,
}

impl<M> Ensemble<M> {
    /// An ensemble of at least one member, aggregated by the mean, evaluated sequentially.
    ///
    /// # Errors
    /// `InvalidConfig` for no members.
    pub fn new(members: Vec<M>) -> latent_reward::Result<Self> {
        if members.is_empty() {
            return Err(RewardError::InvalidConfig {
                field: "members",
                reason: "an ensemble needs at least one member".into(),
            });
        }
        Ok(Self {
            members,
            aggregation: Aggregation::Mean,
            evaluation: Evaluation::Sequential,
        })
    }

    /// Sets the aggregation.
    pub fn with_aggregation(mut self, aggregation: Aggregation) -> Self {
        self.aggregation = aggregation;
        self
    }

    /// Sets the evaluation strategy.
    pub fn with_evaluation(mut self, evaluation: Evaluation) -> Self {
        self.evaluation = evaluation;
        self
    }

    /// The first `n` members (a smaller ensemble of the same training run).
    pub fn truncated(&self, n: usize) -> latent_reward::Result<Self>
    where
        M: Clone,
    {
        Ok(Self::new(self.members.iter().take(n).cloned().collect())?
            .with_aggregation(self.aggregation)
            .with_evaluation(self.evaluation))
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false (an ensemble has at least one member).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member's scores.
    ///
    /// # Shapes
    /// - as [`LatentReward::score`]; output scores `[N, B]`
    pub fn score_members<B>(
        &self,
        latents: Tensor<B, 5>,
        sigma: Tensor<B, 1>,
        text: Tensor<B, 3>,
    ) -> MemberScores<B>
    where
        B: Backend,
        M: LatentReward<B> + Sync,
    {
        let run = |m: &M| m.score(latents.clone(), sigma.clone(), text.clone());
        let per: Vec<Tensor<B, 1>> = match self.evaluation {
            Evaluation::Sequential => self.members.iter().map(run).collect(),
            Evaluation::Threaded => std::thread::scope(|s| {
                let handles: Vec<_> = self
                    .members
                    .iter()
                    .map(|m| s.spawn(move || run(m)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("member scoring thread panicked"))
                    .collect()
            }),
        };
        MemberScores {
            scores: Tensor::stack(per, 0),
        }
    }

    /// The same ensemble with every member's parameters frozen (`Module::no_grad`): no gradient
    /// is kept for them, while gradients still reach the input.
    pub fn frozen<B: Backend>(&self) -> Self
    where
        M: Module<B>,
    {
        Ensemble {
            members: self.members.iter().cloned().map(Module::no_grad).collect(),
            aggregation: self.aggregation,
            evaluation: self.evaluation,
        }
    }

    /// The ensemble on the inner (inference) backend.
    pub fn valid<B: AutodiffBackend>(&self) -> Ensemble<M::InnerModule>
    where
        M: AutodiffModule<B>,
    {
        Ensemble {
            members: self.members.iter().map(AutodiffModule::valid).collect(),
            aggregation: self.aggregation,
            evaluation: self.evaluation,
        }
    }
}

impl<B: Backend, M: LatentReward<B> + Sync> LatentReward<B> for Ensemble<M> {
    fn score(
        &self,
        latents: Tensor<B, 5>,
        sigma: Tensor<B, 1>,
        text: Tensor<B, 3>,
    ) -> Tensor<B, 1> {
        self.score_members(latents, sigma, text)
            .aggregate(self.aggregation)
    }

    fn range(&self) -> RewardRange {
        self.members[0].range()
    }

    fn check_input(&self, latents: [usize; 5], text: [usize; 3]) -> latent_reward::Result<()> {
        self.members[0].check_input(latents, text)
    }
}
