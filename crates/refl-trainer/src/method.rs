//! The [`Method`] trait: what a post-training method does in one step; the [`crate::Learner`]
//! does everything around it.

use std::collections::BTreeMap;

use burn::tensor::backend::AutodiffBackend;
use rand::rngs::StdRng;

use crate::{
    checkpoint::{CheckpointReader, CheckpointWriter},
    error::Result,
    policy::{Policy, PolicyOptimizer, Update},
};

/// What one step of a method reports; the learner adds the step, learning rate, time, memory
/// and held-out reward and writes it to the metrics log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepReport {
    /// The step's main update (`None` when the method made none).
    pub update: Option<Update>,
    /// Mean reward of the step's samples, as the method's reward scores them.
    pub reward: Option<f64>,
    /// The KL term to the initial model.
    pub kl: Option<f64>,
    /// Mean ensemble variance of the step's samples.
    pub uncertainty: Option<f64>,
    /// Loss of an SFT update made in the same step (PRFL's alternating SFT).
    pub sft_loss: Option<f64>,
    /// Further values by name (GRPO's clip fraction, ...).
    pub extra: BTreeMap<String, f64>,
}

/// A post-training method: one training step on a batch it draws itself, plus the state it
/// must checkpoint. RGB ReFL, PRFL, VELR, GRPO and SFT implement it (see [`crate::methods`]);
/// a user's own method plugs into the [`crate::Learner`] the same way.
///
/// A step draws all its randomness from the `rng` it is given, which the learner seeds from
/// `(seed, step)`, and changes the policy only through [`PolicyOptimizer::apply`] (which clips,
/// guards and may reject the update); so a resumed run repeats an uninterrupted one exactly.
pub trait Method<B: AutodiffBackend, M: Policy<B>> {
    /// The method's name in logs and checkpoints (`prfl`).
    fn name(&self) -> &'static str;

    /// The method's settings; a checkpoint resumes only under equal settings.
    fn settings(&self) -> serde_json::Value;

    /// Called once with the initial policy, before a checkpoint is resumed: the place to keep a
    /// frozen copy as the KL reference.
    ///
    /// # Errors
    /// When the policy does not fit the method's data (shapes).
    fn init(&mut self, policy: &M) -> Result<()> {
        let _ = policy;
        Ok(())
    }

    /// One training step.
    ///
    /// # Errors
    /// Shape, model and reward errors; `Diverged` from the optimiser's guard.
    fn step(
        &mut self,
        step: usize,
        optim: &mut PolicyOptimizer<B, M>,
        rng: &mut StdRng,
    ) -> Result<StepReport>;

    /// Writes the state the method changes during training (fine-tuned reward models, replay
    /// buffers).
    ///
    /// # Errors
    /// IO errors.
    fn save(&self, checkpoint: &mut CheckpointWriter) -> Result<()> {
        let _ = checkpoint;
        Ok(())
    }

    /// Restores what [`Method::save`] wrote.
    ///
    /// # Errors
    /// `Checkpoint` naming a missing, changed or mismatched file.
    fn load(&mut self, checkpoint: &CheckpointReader, device: &B::Device) -> Result<()> {
        let _ = (checkpoint, device);
        Ok(())
    }
}

/// A boxed method is a method: runs of different methods side by side
/// (`Learner<B, M, Box<dyn Method<B, M>>>`).
impl<B: AutodiffBackend, M: Policy<B>, T: Method<B, M> + ?Sized> Method<B, M> for Box<T> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn settings(&self) -> serde_json::Value {
        (**self).settings()
    }

    fn init(&mut self, policy: &M) -> Result<()> {
        (**self).init(policy)
    }

    fn step(
        &mut self,
        step: usize,
        optim: &mut PolicyOptimizer<B, M>,
        rng: &mut StdRng,
    ) -> Result<StepReport> {
        (**self).step(step, optim, rng)
    }

    fn save(&self, checkpoint: &mut CheckpointWriter) -> Result<()> {
        (**self).save(checkpoint)
    }

    fn load(&mut self, checkpoint: &CheckpointReader, device: &B::Device) -> Result<()> {
        (**self).load(checkpoint, device)
    }
}
