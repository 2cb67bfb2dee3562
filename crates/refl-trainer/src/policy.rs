//! The model being trained and the one place its weights change: [`PolicyOptimizer`] (AdamW,
//! the learning-rate schedule, global clipping and the [`Guard`]).

use burn::{
    module::AutodiffModule,
    optim::{adaptor::OptimizerAdaptor, GradientsParams, Optimizer},
    tensor::backend::AutodiffBackend,
};
use diffusion_core::{ops::fused_adamw::FusedAdamW, train::optim::clip_grad_norm, VelocityModel};

use crate::{
    error::Result,
    guard::{Guard, Rejection},
    OptimConfig,
};

/// A trainable video generator: any [`VelocityModel`] that is an autodiff module and whose
/// inner (no-autodiff) copy is a velocity model too: the Wan transformer, a user's own DiT, a
/// model wrapped with adapters.
pub trait Policy<B: AutodiffBackend>:
    VelocityModel<B>
    + AutodiffModule<B, InnerModule: VelocityModel<B::InnerBackend> + Sync + Send>
    + Send
    + Sync
{
}

impl<B, M> Policy<B> for M
where
    B: AutodiffBackend,
    M: VelocityModel<B> + AutodiffModule<B> + Send + Sync,
    M::InnerModule: VelocityModel<B::InnerBackend> + Sync + Send,
{
}

/// What one guarded update did.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// The loss value the gradients came from.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Why the update was rejected (`None`: applied).
    pub rejected: Option<Rejection>,
}

impl Update {
    /// Whether the weights changed.
    pub fn applied(&self) -> bool {
        self.rejected.is_none()
    }
}

/// The policy with its optimiser: the only way a [`crate::Method`] changes the weights.
///
/// [`PolicyOptimizer::apply`] clips the gradients to the global norm, checks the loss and the
/// norm, takes the AdamW step, then checks the new weights; a rejected step leaves the weights
/// as they were and is counted. (The optimiser's moments keep the rejected step's gradients,
/// which passed the check: a bad update comes from the step size, not from them. Holding the
/// old weights during the step costs no memory beyond what the step allocates anyway.)
pub struct PolicyOptimizer<B: AutodiffBackend, M: Policy<B>> {
    policy: M,
    optim: OptimizerAdaptor<FusedAdamW, M, B>,
    config: OptimConfig,
    pub(crate) guard: Guard,
    pub(crate) lr: f64,
    pub(crate) step: usize,
}

impl<B: AutodiffBackend, M: Policy<B>> PolicyOptimizer<B, M> {
    pub(crate) fn new(policy: M, config: OptimConfig, guard: Guard) -> Self {
        Self {
            policy,
            optim: FusedAdamW::new(config.weight_decay).init(),
            config,
            guard,
            lr: 0.0,
            step: 0,
        }
    }

    /// The current weights.
    pub fn policy(&self) -> &M {
        &self.policy
    }

    /// The learning rate of the step in progress.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// Applies gradients of a loss of value `loss` (the guard decides; see the type's docs).
    ///
    /// # Errors
    /// `Diverged` when the guard's limit of rejected steps is passed.
    pub fn apply(&mut self, grads: GradientsParams, loss: f64) -> Result<Update> {
        let clip = self.config.grad_clip.unwrap_or(f64::INFINITY);
        let (grads, grad_norm) = clip_grad_norm(&self.policy, grads, clip);
        let mut update = Update {
            loss,
            grad_norm,
            rejected: None,
        };
        if let Err(why) = Guard::values_ok(&[loss, grad_norm]) {
            self.guard.reject(self.step, &why)?;
            update.rejected = Some(why);
            return Ok(update);
        }
        // the weights before the step, to restore them; the optimiser's moments keep this step's
        // gradients, which are finite (checked above): a bad update comes from the step size
        let before = self.policy.clone();
        let after = self.optim.step(self.lr, self.policy.clone(), grads);
        match self.guard.weights_ok(&before, &after) {
            Ok(()) => self.policy = after,
            Err(why) => {
                self.guard.reject(self.step, &why)?;
                update.rejected = Some(why);
            }
        }
        Ok(update)
    }

    pub(crate) fn optimizer(&self) -> &OptimizerAdaptor<FusedAdamW, M, B> {
        &self.optim
    }

    pub(crate) fn restore(
        &mut self,
        policy: M,
        optim: <OptimizerAdaptor<FusedAdamW, M, B> as Optimizer<M, B>>::Record,
    ) {
        self.policy = policy;
        let o = std::mem::replace(&mut self.optim, FusedAdamW::new(0.0).init());
        self.optim = o.load_record(optim);
    }

    pub(crate) fn into_policy(self) -> M {
        self.policy
    }
}
