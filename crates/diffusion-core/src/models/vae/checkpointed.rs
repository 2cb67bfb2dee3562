//! Decoders whose gradient is taken by recomputation instead of a kept graph: the forward runs
//! without gradients and keeps a small tape; the backward recomputes what it needs, a piece at
//! a time, so a video's decoder activations are never all alive at once.

use std::{fmt, str::FromStr};

use burn::{
    module::Module,
    tensor::{backend::AutodiffBackend, Tensor},
};
use serde::{Deserialize, Serialize};

use super::{CausalVae, VideoAutoencoder};
use crate::error::{invalid, CoreError};

/// How the reward's gradient goes back through the VAE decoder to the latent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecoderGradient {
    /// The decode keeps its whole graph (every decoder activation of the video) beside the
    /// reward's.
    #[default]
    Graph,
    /// The decode runs without a graph; the reward's gradient on the video is then carried back
    /// by recomputing the decoder a piece at a time ([`CheckpointedDecoder`]: for the Wan VAE
    /// one latent frame and one stage at a time). It holds one feature cache per latent frame
    /// and one latent frame's recomputation instead of every activation of the video (30% of
    /// the kept graph's peak at 6 latent frames), for 1.5-1.9x the kept graph's time.
    Checkpointed,
}

/// `graph`, `checkpointed` (as in configs).
impl fmt::Display for DecoderGradient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Graph => "graph",
            Self::Checkpointed => "checkpointed",
        })
    }
}

impl FromStr for DecoderGradient {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, CoreError> {
        match s {
            "graph" => Ok(Self::Graph),
            "checkpointed" => Ok(Self::Checkpointed),
            _ => Err(invalid(
                "decoder_gradient",
                format!("`{s}`: expected graph or checkpointed"),
            )),
        }
    }
}

/// A decoder with a memory-bounded gradient (activation checkpointing of the decoder, for
/// pixel-reward ReFL at video sizes).
///
/// `decode_taped` decodes without building a graph and returns a [`CheckpointedDecoder::Tape`];
/// `decode_vjp` turns the gradient of a loss with respect to the decoded video into its
/// gradient with respect to the latent (a vector-Jacobian product), recomputing the decoder
/// with a graph one piece at a time. The decoder's own weights receive no gradient: it is
/// frozen.
///
/// # Shapes
/// - latent `[B, C_z, F_z, H_z, W_z]` -> video `[B, 3, F, H, W]`; `grad` is the video's shape,
///   the result the latent's.
pub trait CheckpointedDecoder<B: AutodiffBackend>: VideoAutoencoder<B> {
    /// What the forward keeps for the backward.
    type Tape;

    /// Decodes `latent` without a graph (the same video as [`VideoAutoencoder::decode`]).
    fn decode_taped(&self, latent: Tensor<B, 5>) -> (Tensor<B, 5>, Self::Tape);

    /// The gradient on the latent of a loss whose gradient on the decoded video is `grad`.
    fn decode_vjp(&self, tape: Self::Tape, grad: Tensor<B, 5>) -> Tensor<B, 5>;
}

/// `x` as a leaf of a fresh graph: detached from any graph it was part of, requiring a gradient.
pub(crate) fn leaf<B: AutodiffBackend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.detach().require_grad()
}

/// The gradient held for `x` in `grads`, zeros when `x` did not reach the loss.
pub(crate) fn grad_or_zeros<B: AutodiffBackend, const D: usize>(
    x: &Tensor<B, D>,
    grads: &B::Gradients,
) -> Tensor<B, D> {
    x.grad(grads)
        .map(Tensor::from_inner)
        .unwrap_or_else(|| x.zeros_like().detach())
}

/// `sum(y * grad)`: the scalar whose backward sends `grad` into `y`'s graph.
pub(crate) fn dot<B: AutodiffBackend, const D: usize>(
    y: Tensor<B, D>,
    grad: Tensor<B, D>,
) -> Tensor<B, 1> {
    (y * grad.detach()).sum()
}

/// The small causal VAE recomputes its whole decoder with a graph in the backward: its tape is
/// the latent. The graph is then alive only while the decoder's backward runs, never beside
/// the reward's.
impl<B: AutodiffBackend> CheckpointedDecoder<B> for CausalVae<B> {
    type Tape = Tensor<B, 5>;

    fn decode_taped(&self, latent: Tensor<B, 5>) -> (Tensor<B, 5>, Self::Tape) {
        let latent = latent.detach();
        let frozen = self.clone().no_grad();
        (frozen.decode(latent.clone()), latent)
    }

    fn decode_vjp(&self, tape: Self::Tape, grad: Tensor<B, 5>) -> Tensor<B, 5> {
        let x = leaf(tape);
        let grads = dot(self.clone().no_grad().decode(x.clone()), grad).backward();
        grad_or_zeros(&x, &grads)
    }
}
