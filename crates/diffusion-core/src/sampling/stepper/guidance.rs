use burn::tensor::{backend::Backend, Tensor};

/// Classifier-free guidance (Ho & Salimans 2022): `v = v_uncond + w (v_cond - v_uncond)`.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub enum Guidance {
    /// Conditional velocity only (one model evaluation per step).
    #[default]
    None,
    /// Classifier-free guidance with scale `w` (two evaluations per step).
    ClassifierFree {
        /// Guidance scale `w`; `1` gives the conditional velocity.
        scale: f64,
    },
}

impl Guidance {
    /// Combines conditional and unconditional velocities.
    pub fn combine<B: Backend, const D: usize>(
        &self,
        v_cond: Tensor<B, D>,
        v_uncond: Tensor<B, D>,
    ) -> Tensor<B, D> {
        match *self {
            Guidance::None => v_cond,
            Guidance::ClassifierFree { scale } => {
                v_uncond.clone() + (v_cond - v_uncond).mul_scalar(scale)
            }
        }
    }

    /// Whether an unconditional evaluation is needed.
    pub fn needs_uncond(&self) -> bool {
        matches!(self, Guidance::ClassifierFree { .. })
    }
}
