//! Peak memory and time of one DiT forward + backward with no block, every other block and
//! every block checkpointed, side by side on the selected backend (device pool on GPU backends,
//! heap on CPU backends, above what was allocated before the step).
//!
//! ```text
//! cargo run --release -p diffusion-core --example checkpointing -- --blocks 12 --dim 256 --tokens 8192
//! cargo run --release -p diffusion-core --features wgpu --example checkpointing -- --blocks 12 --dim 256 --tokens 8192
//! ```

use std::time::Duration;

use burn::{
    backend::Autodiff,
    tensor::{backend::Backend, Distribution, Tensor},
};
use clap::Parser;
use diffusion_core::{
    backend::{DefaultBackend, DEFAULT_BACKEND_NAME},
    io::probe::{measure, PeakAlloc},
    train::checkpointing::Checkpointing,
    WanConfig,
};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

type B = DefaultBackend;
type AD = Autodiff<B>;

/// One training forward + backward of a Wan-shaped DiT under each checkpointing choice.
#[derive(Parser)]
struct Args {
    /// Transformer blocks.
    #[arg(long, default_value_t = 12)]
    blocks: usize,
    /// Model width (heads of 64 channels; feed-forward 4x).
    #[arg(long, default_value_t = 256)]
    dim: usize,
    /// Video tokens (latent frames x 16 x tokens/16 / 4 patches of 1x2x2).
    #[arg(long, default_value_t = 8192)]
    tokens: usize,
    /// Text tokens.
    #[arg(long, default_value_t = 64)]
    text: usize,
    /// Timed repetitions per row (the median is reported; one warm-up before).
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.tokens % 64 != 0 || args.dim % 64 != 0 {
        return Err("--tokens must be a multiple of 64 and --dim of 64".into());
    }
    let heads = args.dim / 64;
    let cfg = WanConfig::new(heads, 64, 4 * args.dim, args.blocks)
        .with_text_dim(64)
        .with_freq_dim(64);
    // latent [16, F, 16, W]: F * 8 * W/2 tokens with 1x2x2 patches
    let frames = args.tokens / 64;
    let latent = [1, cfg.in_channels, frames, 16, 16];
    let dev = Default::default();
    let plain = cfg.init::<AD>(&dev)?;
    let x = Tensor::<AD, 5>::random(latent, Distribution::Normal(0.0, 1.0), &dev);
    let t = Tensor::<AD, 1>::from_floats([500.0], &dev);
    let text = Tensor::<AD, 3>::random([1, args.text, 64], Distribution::Normal(0.0, 1.0), &dev);
    println!(
        "backend {DEFAULT_BACKEND_NAME}; {} blocks, width {}, {} heads, {} video tokens, {} text tokens ({:.1}M params); median of {}",
        args.blocks,
        args.dim,
        heads,
        args.tokens,
        args.text,
        cfg.num_params() as f64 / 1e6,
        args.reps
    );
    println!("| checkpointing | forward + backward | vs none | peak memory | vs none |\n|---|---|---|---|---|");
    let mut baseline = None;
    for choice in [
        Checkpointing::None,
        Checkpointing::EveryNth(2),
        Checkpointing::EveryBlock,
    ] {
        let model = plain.clone().with_checkpointing(choice)?;
        let step = || {
            let loss = model
                .forward(x.clone(), t.clone(), text.clone())
                .powi_scalar(2)
                .mean();
            drop(loss.backward());
            let _ = <B as Backend>::sync(&dev);
        };
        step();
        let (mut times, mut peak) = (Vec::new(), 0u64);
        for _ in 0..args.reps {
            let ((), m) = measure::<B, _>(&dev, step);
            times.push(m.time);
            peak = peak.max(m.peak_bytes.unwrap_or(0));
        }
        times.sort();
        let time: Duration = times[times.len() / 2];
        let (t0, p0) = *baseline.get_or_insert((time, peak));
        println!(
            "| {} | {:.0} ms | {:.2}x | {:.0} MiB | {:.0}% |",
            choice,
            time.as_secs_f64() * 1e3,
            time.as_secs_f64() / t0.as_secs_f64(),
            peak as f64 / 1048576.0,
            100.0 * peak as f64 / p0 as f64
        );
    }
    Ok(())
}
