//! Peak memory and time of decoding with the Wan2.1 VAE (real size, random weights) against the
//! number of latent frames, without gradients and with gradients to the latent (the graph
//! kept, or the decoder checkpointed). Decoding runs one latent frame at a time with a feature
//! cache, so without gradients the peak should grow with the output video only; with the
//! graph kept every frame's activations stay; checkpointed, the backward recomputes one latent
//! frame and one stage at a time.
//!
//! ```text
//! cargo run --release -p experiments --bin vae_memory -- --size 8 --frames 1,3,6,11,21
//! cargo run --release -p experiments --bin vae_memory -- --size 8 --frames 1,2,3 --decode graph,checkpointed
//! ```

use burn::{
    backend::Autodiff,
    module::{AutodiffModule, Module},
    tensor::{Distribution, Tensor},
};
use clap::{Parser, ValueEnum};
use diffusion_core::{
    backend::{DefaultBackend, DEFAULT_BACKEND_NAME},
    io::probe::{measure, PeakAlloc},
    models::{vae::CheckpointedDecoder, wan_vae::WanVaeConfig},
};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

type B = DefaultBackend;
type AD = Autodiff<B>;

/// How a row decodes.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Decode {
    /// Without gradients.
    None,
    /// `loss = mean(video^2)`'s gradient to the latent through the kept graph.
    Graph,
    /// The same gradient, the decoder checkpointed (`CheckpointedDecoder`).
    Checkpointed,
}

/// Decodes latents of growing length and prints peak memory.
#[derive(Parser)]
struct Args {
    /// Latent height and width (the video is 8x that).
    #[arg(long, default_value_t = 8)]
    size: usize,
    /// Latent frame counts (video frames 1 + 4 (n - 1)).
    #[arg(long, value_delimiter = ',', default_value = "1,3,6,11,21")]
    frames: Vec<usize>,
    /// How each frame count is decoded.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "none")]
    decode: Vec<Decode>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let dev = Default::default();
    let vae = WanVaeConfig::new().init::<AD>(&dev)?.no_grad();
    let inner = vae.valid();
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!("backend {DEFAULT_BACKEND_NAME}; Wan2.1 VAE (base_dim 96, random weights), latents 16 x n x {0} x {0}", args.size);
    println!(
        "| latent frames | video frames | decode | output | peak while decoding | peak - output | time |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &n in &args.frames {
        let shape = [1, 16, n, args.size, args.size];
        let z = Tensor::<B, 5>::random(shape, Distribution::Normal(0.0, 1.0), &dev);
        for &mode in &args.decode {
            let (frames, m) = measure::<B, _>(&dev, || {
                let lat = Tensor::<AD, 5>::from_inner(z.clone());
                match mode {
                    Decode::None => inner.decode_latent(z.clone()).dims()[2],
                    Decode::Graph => {
                        let lat = lat.require_grad();
                        let video = vae.decode_latent(lat.clone());
                        let f = video.dims()[2];
                        let grads = video.powi_scalar(2).mean().backward();
                        drop(lat.grad(&grads));
                        f
                    }
                    Decode::Checkpointed => {
                        let (video, tape) = vae.decode_taped(lat);
                        let [_, _, f, _, _] = video.dims();
                        let numel = video.dims().iter().product::<usize>() as f64;
                        drop(vae.decode_vjp(tape, video.mul_scalar(2.0 / numel)));
                        f
                    }
                }
            });
            let out = (3 * frames * 64 * args.size * args.size * 4) as u64;
            let peak = m.peak_bytes.unwrap_or(0);
            println!(
                "| {n} | {frames} | {mode:?} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.2} s |",
                mib(out),
                mib(peak),
                mib(peak.saturating_sub(out)),
                m.time.as_secs_f64()
            );
        }
    }
    Ok(())
}
