//! The Wan VAE's decoder as a sequence of stages, and its checkpointed gradient: the forward
//! keeps only the feature cache at the start of every latent frame; the backward walks the
//! latent frames in reverse, recomputes one frame's stage inputs without a graph, then each
//! stage with a graph on leaf copies of its input and its cache slots, in reverse.

use std::ops::Range;

use burn::{
    module::Module,
    tensor::{
        activation::silu,
        backend::{AutodiffBackend, Backend},
        Tensor,
    },
};

use super::{
    layers::{
        ChannelRmsNorm, FeatCache, Slot, WanAttentionBlock, WanCausalConv3d, WanResBlock,
        WanResample,
    },
    WanVae,
};
use crate::models::vae::{dot, grad_or_zeros, leaf, CheckpointedDecoder};

/// One unit the decoder is recomputed by.
pub(crate) enum Stage<'a, B: Backend> {
    /// `post_quant_conv` (1x1x1, no cache).
    PostQuant(&'a WanCausalConv3d<B>),
    /// `decoder.conv_in`.
    ConvIn(&'a WanCausalConv3d<B>),
    /// A residual block (middle block or up block).
    Res(&'a WanResBlock<B>),
    /// The middle block's attention.
    Attention(&'a WanAttentionBlock<B>),
    /// An up block's upsampler.
    Up(&'a WanResample<B>),
    /// `norm_out`, SiLU, `conv_out`, then the clamp to `[-1, 1]`.
    Head(&'a ChannelRmsNorm<B>, &'a WanCausalConv3d<B>),
}

impl<B: Backend> Stage<'_, B> {
    fn forward(&self, x: Tensor<B, 5>, cache: &mut FeatCache<B>) -> Tensor<B, 5> {
        match self {
            Self::PostQuant(conv) => conv.forward(x, None),
            Self::ConvIn(conv) => conv.cached(x, cache),
            Self::Res(block) => block.forward(x, cache),
            Self::Attention(block) => block.forward(x),
            Self::Up(up) => up.forward(x, cache),
            Self::Head(norm, conv) => conv.cached(silu(norm.forward(x)), cache).clamp(-1.0, 1.0),
        }
    }
}

impl<B: Backend> WanVae<B> {
    /// `post_quant_conv`, then the decoder's layers in order.
    pub(crate) fn decode_stages(&self) -> Vec<Stage<'_, B>> {
        let d = &self.decoder;
        let mut stages = vec![
            Stage::PostQuant(&self.post_quant_conv),
            Stage::ConvIn(&d.conv_in),
            Stage::Res(&d.mid.resnets[0]),
            Stage::Attention(&d.mid.attention),
            Stage::Res(&d.mid.resnets[1]),
        ];
        for block in &d.up {
            stages.extend(block.resnets.iter().map(Stage::Res));
            stages.extend(block.upsampler.iter().map(Stage::Up));
        }
        stages.push(Stage::Head(&d.norm_out, &d.conv_out));
        stages
    }
}

/// Decodes one latent frame `x` (`[B, z_dim, 1, h, w]`) with the cache of the frames before,
/// which it advances.
pub(crate) fn decode_frame<B: Backend>(
    stages: &[Stage<'_, B>],
    x: Tensor<B, 5>,
    cache: &mut FeatCache<B>,
) -> Tensor<B, 5> {
    cache.rewind();
    stages.iter().fold(x, |x, s| s.forward(x, cache))
}

/// What the checkpointed decode of a [`WanVae`] keeps: the latent and the feature cache at the
/// start of every latent frame (two frames of every cached convolution's input).
#[derive(Debug)]
pub struct WanDecodeTape<B: Backend> {
    latent: Tensor<B, 5>,
    caches: Vec<FeatCache<B>>,
}

/// Decodes one latent frame at a time, as [`WanVae::decode_latent`]; the backward recomputes
/// one latent frame's stage inputs at a time and holds one stage's graph (one residual block
/// at one resolution): its peak is the tape (one feature cache per latent frame) and one
/// latent frame's recomputation, not every activation of the video.
impl<B: AutodiffBackend> CheckpointedDecoder<B> for WanVae<B> {
    type Tape = WanDecodeTape<B>;

    fn decode_taped(&self, latent: Tensor<B, 5>) -> (Tensor<B, 5>, Self::Tape) {
        let vae = self.clone().no_grad();
        let stages = vae.decode_stages();
        let latent = latent.detach();
        let mut cache = FeatCache::new();
        let mut caches = Vec::new();
        let frames: Vec<_> = (0..latent.dims()[2])
            .map(|i| {
                caches.push(cache.clone());
                decode_frame(&stages, latent.clone().narrow(2, i, 1), &mut cache)
            })
            .collect();
        (Tensor::cat(frames, 2), WanDecodeTape { latent, caches })
    }

    fn decode_vjp(&self, tape: Self::Tape, grad: Tensor<B, 5>) -> Tensor<B, 5> {
        let vae = self.clone().no_grad();
        let stages = vae.decode_stages();
        // the gradient on every cache slot's state after the latent frame being processed
        let mut slot_grads: Vec<Option<Tensor<B, 5>>> = Vec::new();
        let mut frame_end = grad.dims()[2];
        let mut latent_grads = Vec::with_capacity(tape.caches.len());
        for (i, before) in tape.caches.iter().enumerate().rev() {
            // the stages' inputs and cache slots for this latent frame, without a graph
            let mut cache = before.clone();
            cache.rewind();
            let mut x = tape.latent.clone().narrow(2, i, 1);
            let mut inputs: Vec<(Tensor<B, 5>, Range<usize>)> = Vec::with_capacity(stages.len());
            for s in &stages {
                let start = cache.position();
                let y = s.forward(x.clone(), &mut cache);
                inputs.push((x, start..cache.position()));
                x = y;
            }
            let len = x.dims()[2];
            frame_end -= len;
            let mut g = grad.clone().narrow(2, frame_end, len).detach();
            drop(x);
            for (s, (input, slots)) in stages.iter().zip(inputs).rev() {
                if slot_grads.len() < slots.end {
                    slot_grads.resize(slots.end, None);
                }
                g = stage_vjp(s, input, g, before, slots, &mut slot_grads);
            }
            latent_grads.push(g);
        }
        latent_grads.reverse();
        Tensor::cat(latent_grads, 2)
    }
}

/// One stage's backward: the stage recomputed with a graph on leaf copies of its `input` and of
/// its cache `slots` as they were `before` the latent frame. Given the gradient `g` on its
/// output and `slot_grads` on those slots' state after the frame, returns the gradient on its
/// input and leaves in `slot_grads` the gradients on the slots' state before the frame.
fn stage_vjp<B: AutodiffBackend>(
    stage: &Stage<'_, B>,
    input: Tensor<B, 5>,
    g: Tensor<B, 5>,
    before: &FeatCache<B>,
    slots: Range<usize>,
    slot_grads: &mut [Option<Tensor<B, 5>>],
) -> Tensor<B, 5> {
    let x = leaf(input);
    let mut sub = FeatCache::from_slots(
        slots
            .clone()
            .map(|k| match before.slot(k) {
                Some(Slot::Frames(t)) => Slot::Frames(leaf(t.clone())),
                Some(other) => other.clone(),
                None => Slot::Empty,
            })
            .collect(),
    );
    let leaves: Vec<Option<Tensor<B, 5>>> = sub
        .slots()
        .iter()
        .map(|s| match s {
            Slot::Frames(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    let mut loss = dot(stage.forward(x.clone(), &mut sub), g);
    for (k, slot) in slots.clone().zip(sub.slots()) {
        if let (Slot::Frames(t), Some(gs)) = (slot, slot_grads[k].take()) {
            loss = loss + dot(t.clone(), gs);
        }
    }
    let grads = loss.backward();
    for (k, t) in slots.zip(leaves) {
        slot_grads[k] = t.map(|t| grad_or_zeros(&t, &grads));
    }
    grad_or_zeros(&x, &grads)
}
