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
