//! The [`LatentReward`] and [`PixelReward`] traits.

use burn::tensor::{backend::Backend, Tensor};

use crate::error::{Result, RewardError};

/// The range of a reward model's scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RewardRange {
    /// `(0, 1)`: a sigmoid output (preference-trained models).
    Unit,
    /// Any real number; regression models approximate their target's range (for the
    /// shapes-world oracle, `[0, 1]`).
    Real,
}

/// A reward model on video latents: higher is better.
///
/// # Shapes
/// - `latents`: `[B, C, F, H, W]`, the (possibly noisy) latent `x_sigma = (1 - sigma) x0 + sigma eps`
/// - `sigma`: `[B]` noise levels in `[0, 1]` (`0` = clean; models that only score clean
///   latents ignore it)
/// - `text`: `[B, S, D_text]` prompt embeddings
/// - output: `[B]`
pub trait LatentReward<B: Backend> {
    /// Scores a batch of latents.
    fn score(&self, latents: Tensor<B, 5>, sigma: Tensor<B, 1>, text: Tensor<B, 3>)
        -> Tensor<B, 1>;

    /// Range of [`score`](Self::score).
    fn range(&self) -> RewardRange;

    /// Checks input shapes before scoring, naming what is wrong.
    fn check_input(&self, latents: [usize; 5], text: [usize; 3]) -> Result<()>;
}

/// A reward on decoded RGB videos (the RGB ReFL baseline's reward, and the ground truth that
/// latent reward models learn to predict).
///
/// # Shapes
/// - `video`: `[B, 3, F, H, W]` in `[-1, 1]`, one prompt per video -> `[B]`
pub trait PixelReward<B: Backend> {
    /// The prompt type the reward reads (a caption, a string, token ids...).
    type Prompt;

    /// Scores videos against their prompts; differentiable in `video`.
    fn score_pixels(&self, video: Tensor<B, 5>, prompts: &[Self::Prompt]) -> Result<Tensor<B, 1>>;
}

pub(crate) fn shape_error(what: &str, expected: Vec<usize>, found: Vec<usize>) -> RewardError {
    RewardError::Shape {
        what: what.to_string(),
        expected,
        found,
    }
}

/// Checks a latent batch `[B, C, F, H, W]` against an expected `[C, F, H, W]` (`None` entries
/// are free) and a text batch against its width and batch size.
pub(crate) fn check_shapes(
    latents: [usize; 5],
    expected: [Option<usize>; 4],
    text: [usize; 3],
    text_dim: usize,
) -> Result<()> {
    let fits = latents[0] > 0
        && latents[1..]
            .iter()
            .zip(&expected)
            .all(|(d, e)| e.is_none_or(|e| e == *d));
    if !fits {
        let want = std::iter::once(latents[0].max(1))
            .chain(
                expected
                    .iter()
                    .zip(&latents[1..])
                    .map(|(e, d)| e.unwrap_or(*d)),
            )
            .collect();
        return Err(shape_error(
            "latents [B, C, F, H, W]",
            want,
            latents.to_vec(),
        ));
    }
    if text[0] != latents[0] || text[2] != text_dim {
        return Err(shape_error(
            "text [B, S, D_text]",
            vec![latents[0], text[1], text_dim],
            text.to_vec(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_checks_name_the_tensor() {
        let ok = check_shapes(
            [2, 4, 3, 8, 8],
            [Some(4), None, Some(8), Some(8)],
            [2, 5, 16],
            16,
        );
        assert!(ok.is_ok());
        let err = check_shapes(
            [2, 3, 3, 8, 8],
            [Some(4), None, Some(8), Some(8)],
            [2, 5, 16],
            16,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("latents") && err.contains("[2, 4, 3, 8, 8]"),
            "{err}"
        );
        let err = check_shapes([2, 4, 3, 8, 8], [Some(4), None, None, None], [1, 5, 16], 16)
            .unwrap_err()
            .to_string();
        assert!(err.contains("text"), "{err}");
    }
}
