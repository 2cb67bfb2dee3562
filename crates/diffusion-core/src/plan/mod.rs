//! Memory planning: the peak memory of one training step predicted term by term from the
//! model's shape, the video size and the run's choices, before anything is allocated.
//!
//! - [`MemoryPlan`]: named terms (weights, gradients, optimiser state, saved activations,
//!   recompute working set, ...) and their sum, printable as a table.
//! - [`DitStep`]: the terms of a Wan transformer's forward + backward with gradients (which
//!   weights train, how many rows, which blocks are checkpointed, which operation path the
//!   backend takes).
//! - [`VaeDecode`]: the Wan VAE decoder's weights and, with gradients, its kept activations or,
//!   without, its frame cache and working set.
//!
//! The per-token counts follow the tensors each operation keeps for its backward on each path;
//! `examples/plan_check.rs` measures them against the real peak over a grid of small models.

mod dit_step;
mod memory_plan;
mod vae_decode;

pub use dit_step::{ActivationPath, DitStep, Trainable};
pub use memory_plan::{gib, MemoryPlan, MemoryTerm, TermKind};
pub use vae_decode::VaeDecode;

/// `"FxHxW"` -> `[F, H, W]`: a video's or latent's frames, height and width as the planner's
/// command lines write them.
///
/// # Errors
/// A message naming `s` when it is not three `x`-separated counts.
pub fn parse_fhw(s: &str) -> Result<[usize; 3], String> {
    let bad = || format!("`{s}`: expected FxHxW");
    let v: Vec<usize> = s
        .split('x')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    v.try_into().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frames_height_width() {
        assert_eq!(parse_fhw("81x480x832"), Ok([81, 480, 832]));
        for bad in ["81x480", "81x480x832x1", "81xax832", ""] {
            assert!(parse_fhw(bad).unwrap_err().contains(bad), "{bad}");
        }
    }
}
