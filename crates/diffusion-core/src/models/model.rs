//! The `VelocityModel` trait: anything that predicts a flow-matching velocity.

use burn::tensor::{backend::Backend, Tensor};

use crate::error::Result;

/// A text-conditioned flow-matching velocity predictor `v_theta(x_t, t, text) ~ eps - x0`.
///
/// # Shapes
/// - `x`: `[B, C, F, H, W]` latent video
/// - `timestep`: `[B]` model timesteps (`t = num_train_timesteps * sigma`)
/// - `text`: `[B, L, D_text]` text embeddings
/// - output: `[B, C, F, H, W]`
pub trait VelocityModel<B: Backend> {
    /// Predicts the velocity.
    fn velocity(&self, x: Tensor<B, 5>, timestep: Tensor<B, 1>, text: Tensor<B, 3>)
        -> Tensor<B, 5>;

    /// Checks that inputs of these shapes can be fed to [`VelocityModel::velocity`]
    /// (`latent`: `[B, C, F, H, W]`, `text`: `[B, L, D_text]`), so callers get a typed error
    /// instead of a panic deep inside a kernel.
    fn check_input(&self, latent: [usize; 5], text: [usize; 3]) -> Result<()>;
}
