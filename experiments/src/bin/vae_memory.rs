//! Peak memory of decoding with the Wan2.1 VAE (real size, random weights) against the number
//! of latent frames: decoding runs one latent frame at a time with a feature cache, so the peak
//! should grow with the output video only, not with every frame's activations.
//!
//! ```text
//! cargo run --release -p experiments --bin vae_memory -- --size 8 --frames 1,3,6,11,21
//! ```

use burn::tensor::{Distribution, Tensor};
use clap::Parser;
use diffusion_core::{
    backend::{DefaultBackend, DEFAULT_BACKEND_NAME},
    io::probe::{measure, PeakAlloc},
    models::wan_vae::WanVaeConfig,
};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

type B = DefaultBackend;

/// Decodes latents of growing length and prints peak memory.
#[derive(Parser)]
struct Args {
    /// Latent height and width (the video is 8x that).
    #[arg(long, default_value_t = 8)]
    size: usize,
    /// Latent frame counts (video frames 1 + 4 (n - 1)).
    #[arg(long, value_delimiter = ',', default_value = "1,3,6,11,21")]
    frames: Vec<usize>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let dev = Default::default();
    let vae = WanVaeConfig::new().init::<B>(&dev)?;
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!("backend {DEFAULT_BACKEND_NAME}; Wan2.1 VAE (base_dim 96, random weights), latents 16 x n x {0} x {0}", args.size);
    println!(
        "| latent frames | video frames | output | peak while decoding | peak - output | time |"
    );
    println!("|---|---|---|---|---|---|");
    for &n in &args.frames {
        let z = Tensor::<B, 5>::random(
            [1, 16, n, args.size, args.size],
            Distribution::Normal(0.0, 1.0),
            &dev,
        );
        let (video, m) = measure::<B, _>(&dev, || vae.decode_latent(z.clone()));
        let out = (video.dims().iter().product::<usize>() * 4) as u64;
        let peak = m.peak_bytes.unwrap_or(0);
        println!(
            "| {n} | {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.2} s |",
            video.dims()[2],
            mib(out),
            mib(peak),
            mib(peak.saturating_sub(out)),
            m.time.as_secs_f64()
        );
    }
    Ok(())
}
