use super::{MemoryPlan, TermKind};
use crate::models::{vae::DecoderGradient, wan_vae::WanVaeConfig};

/// Decoding latents with the Wan VAE's causal decoder, one latent frame at a time with its
/// feature cache (`WanVae::decode_latent`), with gradients to the latent (RGB ReFL: the graph
/// kept, or checkpointed) or without (VELR's pixel labels, the evaluation). The terms are those measured on the CPU backend
/// (`examples/plan_check.rs`); the GPU backends' convolutions were not measured.
///
/// # Shapes
/// `rows` latents `[z, frames, height, width]`; the first latent frame decodes to one video
/// frame, every later one to `temporal_factor` frames.
#[derive(Debug, Clone)]
pub struct VaeDecode {
    /// The VAE's shape.
    pub vae: WanVaeConfig,
    /// Latent `[z, frames, height, width]` of one row.
    pub latent: [usize; 4],
    /// Rows decoded together.
    pub rows: usize,
    /// How the gradient flows back to the latent; `None` without gradients.
    pub gradient: Option<DecoderGradient>,
    /// Bytes per decoder weight.
    pub weight_bytes: usize,
    /// Bytes per activation.
    pub activation_bytes: usize,
}

/// One resolution of the decoder: its width, how many residual blocks run there, and its
/// size relative to the latent (`time`, `space` per axis).
#[derive(Debug, Clone, Copy)]
struct Stage {
    channels: usize,
    resnets: usize,
    time: usize,
    space: usize,
    upsampler: bool,
}

impl VaeDecode {
    /// The decoder's stages: the middle block at the latent's resolution, then the up blocks
    /// (each upsampler doubles the space and, where the encoder halved time, the time).
    fn stages(&self) -> Vec<Stage> {
        let base = self.vae.decoder_base_dim.unwrap_or(self.vae.base_dim);
        let mult = &self.vae.dim_mult;
        let n = mult.len();
        let mut stages = vec![Stage {
            channels: base * mult[n - 1],
            resnets: 2,
            time: 1,
            space: 1,
            upsampler: false,
        }];
        let (mut time, mut space) = (1, 1);
        for i in 0..n {
            stages.push(Stage {
                channels: base * mult[n - 1 - i],
                resnets: self.vae.num_res_blocks + 1,
                time,
                space,
                upsampler: i + 1 < n,
            });
            if i + 1 < n {
                space *= 2;
                if self.vae.temperal_downsample[n - 2 - i] {
                    time *= 2;
                }
            }
        }
        stages
    }

    /// Decoder weights: per residual block two 3x3x3 convolutions, two RMS gains (and a 1x1x1
    /// shortcut where the width changes), the middle attention (gain, q/k/v and output 1x1
    /// convolutions), the upsamplers' 3x3 convolutions to half the width and temporal
    /// convolutions to twice it, the input and output convolutions and the output gain.
    pub fn decoder_params(&self) -> f64 {
        let stages = self.stages();
        let conv3 = |i: usize, o: usize| 27 * i * o + o;
        let resnet = |i: usize, o: usize| {
            conv3(i, o) + conv3(o, o) + i + o + if i != o { i * o + o } else { 0 }
        };
        let c0 = stages[0].channels;
        let mut p = conv3(self.vae.z_dim, c0);
        p += 2 * resnet(c0, c0) + c0 + (3 * c0 * c0 + 3 * c0) + (c0 * c0 + c0);
        let mut c_in = c0;
        for (i, s) in stages.iter().enumerate().skip(1) {
            let c = s.channels;
            p += resnet(c_in, c) + (s.resnets - 1) * resnet(c, c);
            c_in = c;
            if let Some(next) = stages.get(i + 1).filter(|_| s.upsampler) {
                p += 9 * c * (c / 2) + c / 2;
                if next.time > s.time {
                    p += 3 * c * 2 * c + 2 * c;
                }
                c_in = c / 2;
            }
        }
        let last = stages.last().map_or(0, |s| s.channels);
        (p + last + conv3(last, self.vae.out_channels)) as f64
    }

    /// The decode's terms.
    pub fn plan(&self) -> MemoryPlan {
        let mut plan = MemoryPlan::default();
        let [_, f, h, w] = self.latent;
        let rows = self.rows as f64;
        let stages = self.stages();
        plan.push(
            "decoder weights",
            self.decoder_params() * self.weight_bytes as f64,
            TermKind::Resident,
            format!("{:.1}M weights", self.decoder_params() / 1e6),
        );
        // pixel-frames at a stage over the whole video: the first latent frame stays one frame
        let pixels =
            |s: &Stage| ((1 + (f.saturating_sub(1)) * s.time) * h * s.space * w * s.space) as f64;
        // one latent frame's chunk at a stage: the first latent frame stays one frame
        let chunk = |s: &Stage| {
            let frames = if f > 1 { s.time } else { 1 };
            (frames * h * s.space * w * s.space) as f64
        };
        // the cache: two frames of every causal convolution's input
        let cache: f64 = stages
            .iter()
            .map(|s| {
                (2 * s.resnets + 1) as f64
                    * 2.0
                    * s.channels as f64
                    * (h * s.space * w * s.space) as f64
            })
            .sum();
        // the backward's widest transient: a 3x3x3 convolution's input gradient goes
        // through a column buffer of 27 values per input channel and position of one chunk
        let columns = stages
            .iter()
            .map(|s| 27.0 * s.channels as f64 * chunk(s))
            .fold(0.0, f64::max);
        let last = stages.last().expect("stages");
        let bytes = self.activation_bytes as f64;
        match self.gradient {
            Some(DecoderGradient::Graph) => {
                // Per norm + SiLU + causal convolution: the norm's input, the SiLU's input and
                // sigmoid, the convolution's input with two frames of cache (or zero padding)
                // per chunk; a residual block has two. An upsampler keeps its temporal
                // convolution's input (time-doubling ones) and its upsampled output, at the next
                // stage's size.
                let padding = |s: &Stage| (2 * f * h * s.space * w * s.space) as f64;
                let mut kept = 0.0;
                for (i, s) in stages.iter().enumerate() {
                    let c = s.channels as f64;
                    kept += s.resnets as f64 * c * (8.0 * pixels(s) + 2.0 * padding(s));
                    if let Some(next) = stages.get(i + 1).filter(|_| s.upsampler) {
                        let time_conv = if next.time > s.time {
                            pixels(s) + padding(s)
                        } else {
                            0.0
                        };
                        kept += c * (time_conv + pixels(next));
                    }
                }
                // output head: norm, SiLU (input, sigmoid), the convolution's padded input
                kept += last.channels as f64 * (4.0 * pixels(last) + padding(last));
                plan.push(
                    "decoder activations",
                    rows * kept * bytes,
                    TermKind::Step,
                    format!(
                        "{} latent frames -> {} video frames of {}x{}, every activation kept",
                        f,
                        1 + (f.saturating_sub(1)) * last.time,
                        h * last.space,
                        w * last.space
                    ),
                );
            }
            Some(DecoderGradient::Checkpointed) => {
                // the feature cache at the start of every latent frame after the first, the
                // recomputed frame's cache and the gradients on its slots; the decoded video and
                // its gradient
                let caches = f + usize::from(f > 1);
                plan.push(
                    "decoder tape",
                    rows * (caches as f64 * cache + 2.0 * 3.0 * pixels(last)) * bytes,
                    TermKind::Step,
                    format!("{caches} feature caches, the video and its gradient"),
                );
                // one latent frame's stage inputs (residual blocks and upsamplers), and the
                // widest stage's graph: a residual block's two norm + SiLU + convolution with
                // their padded inputs, or the output head
                let inputs: f64 = stages
                    .iter()
                    .map(|s| {
                        let n = s.resnets + usize::from(s.upsampler);
                        n as f64 * s.channels as f64 * chunk(s)
                    })
                    .sum();
                let padding = |s: &Stage| (2 * h * s.space * w * s.space) as f64;
                let head = last.channels as f64 * (4.0 * chunk(last) + padding(last));
                let graph = stages
                    .iter()
                    .map(|s| s.channels as f64 * (8.0 * chunk(s) + 2.0 * padding(s)))
                    .fold(head, f64::max);
                plan.push(
                    "decoder recompute",
                    rows * (inputs + graph) * bytes,
                    TermKind::Step,
                    "one latent frame's stage inputs and one stage's graph".into(),
                );
            }
            None => {
                // the cache and the working set: the widest stage of one latent frame's chunk:
                // a residual block's input, the norm + SiLU output, the convolution's input with
                // two cache frames and its channels-last copy, the convolution's output
                let working = stages
                    .iter()
                    .map(|s| {
                        let frame = (h * s.space * w * s.space) as f64;
                        s.channels as f64 * (5.0 * chunk(s) + 4.0 * frame)
                    })
                    .fold(0.0, f64::max);
                plan.push(
                    "decoder cache and working set",
                    rows * (cache + working + 3.0 * pixels(last)) * bytes,
                    TermKind::Step,
                    "one latent frame at a time, without gradients, and the video".into(),
                );
            }
        }
        if self.gradient.is_some() {
            plan.push(
                "decoder backward working set",
                rows * columns * bytes,
                TermKind::Step,
                "the widest convolution's column buffer for one latent frame".into(),
            );
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::DefaultBackend;
    use burn::module::Module;

    #[test]
    fn decoder_weights_are_counted_exactly() {
        let cfg = WanVaeConfig::new().with_base_dim(8);
        let vae = cfg.init::<DefaultBackend>(&Default::default()).unwrap();
        let plan = VaeDecode {
            vae: cfg,
            latent: [16, 2, 4, 4],
            rows: 1,
            gradient: Some(DecoderGradient::Graph),
            weight_bytes: 4,
            activation_bytes: 4,
        };
        assert_eq!(plan.decoder_params(), vae.decoder.num_params() as f64);
    }

    #[test]
    fn stages_of_the_wan_decoder() {
        let plan = VaeDecode {
            vae: WanVaeConfig::new(),
            latent: [16, 21, 60, 104],
            rows: 1,
            gradient: None,
            weight_bytes: 4,
            activation_bytes: 4,
        };
        let s: Vec<_> = plan
            .stages()
            .iter()
            .map(|s| (s.channels, s.resnets, s.time, s.space))
            .collect();
        // middle block; up blocks at 1/8, 1/4, 1/2 and full size, time doubled twice
        assert_eq!(
            s,
            [
                (384, 2, 1, 1),
                (384, 3, 1, 1),
                (384, 3, 2, 2),
                (192, 3, 4, 4),
                (96, 3, 4, 8)
            ]
        );
    }
}
