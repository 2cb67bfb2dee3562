//! Samples a video latent with the tiny Wan2.1-architecture DiT and reports the chain.
//!
//! ```text
//! cargo run --release --example sample_latent -- --steps 20 --shift 3 --sampler flow-grpo
//! cargo run --release --example sample_latent --features wgpu
//! ```
//!
//! With `--weights DIR` it loads a diffusers `WanTransformer3DModel` folder (`config.json` +
//! `diffusion_pytorch_model.safetensors` or `weights.safetensors`) instead of random weights.

use std::{path::PathBuf, time::Instant};

use burn::tensor::{Distribution, Tensor};
use clap::{Parser, ValueEnum};
use diffusion_core::{
    backend::{DefaultBackend, DEFAULT_BACKEND_NAME},
    io::checkpoint::load_safetensors,
    sampling::rollout::randn,
    Conditioning, DanceGrpoSde, EulerOde, FlowGrpoSde, FlowMatchScheduleConfig, Rollout, Stepper,
    Trajectory, WanConfig, WanTransformer,
};
use rand::SeedableRng;

type B = DefaultBackend;

/// The stepper of the chain.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Sampler {
    /// The Euler ODE.
    Euler,
    /// Flow-GRPO's SDE (with log-probs).
    FlowGrpo,
    /// DanceGRPO's SDE (with log-probs).
    DanceGrpo,
}

/// Samples a video latent with a Wan2.1-architecture DiT and prints the chain.
#[derive(Parser)]
struct Args {
    /// Sampling steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Timestep shift.
    #[arg(long, default_value_t = 3.0)]
    shift: f64,
    /// The stepper.
    #[arg(long, value_enum, default_value_t = Sampler::Euler)]
    sampler: Sampler,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Latent frames.
    #[arg(long, default_value_t = 5)]
    frames: usize,
    /// Latent height and width.
    #[arg(long, default_value_t = 16)]
    size: usize,
    /// A diffusers `WanTransformer3DModel` folder (random tiny weights without it).
    #[arg(long)]
    weights: Option<PathBuf>,
}

fn load_model(
    args: &Args,
    dev: &burn::tensor::Device<B>,
) -> diffusion_core::Result<WanTransformer<B>> {
    match &args.weights {
        None => WanConfig::tiny().init(dev),
        Some(dir) => {
            let cfg = WanConfig::load_diffusers(dir.join("config.json"))?;
            let file = ["diffusion_pytorch_model.safetensors", "weights.safetensors"]
                .iter()
                .map(|f| dir.join(f))
                .find(|p| p.exists())
                .unwrap_or_else(|| dir.join("diffusion_pytorch_model.safetensors"));
            load_safetensors(cfg.init(dev)?, file, dev)
        }
    }
}

fn run<S: Stepper>(
    stepper: &S,
    args: &Args,
    model: &WanTransformer<B>,
) -> diffusion_core::Result<Trajectory<B>> {
    let dev = Default::default();
    let schedule = FlowMatchScheduleConfig::new(args.steps)
        .with_shift(args.shift)
        .init()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let c = model.patch_embedding.weight.dims()[0] / model.patch_size().iter().product::<usize>();
    let noise = randn::<B, 5>([1, c, args.frames, args.size, args.size], &mut rng, &dev);
    let text_dim = model.condition.text_linear_1.weight.dims()[0];
    let text = Tensor::<B, 3>::random([1, 8, text_dim], Distribution::Normal(0.0, 1.0), &dev);
    Rollout::new(&schedule, stepper).sample(model, noise, &Conditioning::new(text), args.seed)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let dev = Default::default();
    let model = load_model(&args, &dev)?;
    let start = Instant::now();
    let traj = match args.sampler {
        Sampler::Euler => run(&EulerOde, &args, &model),
        Sampler::FlowGrpo => run(&FlowGrpoSde::default(), &args, &model),
        Sampler::DanceGrpo => run(&DanceGrpoSde::default(), &args, &model),
    }?;
    let latent = traj.last().clone();
    let _ = <B as burn::tensor::backend::Backend>::sync(&dev);
    let elapsed = start.elapsed();
    println!(
        "backend: {DEFAULT_BACKEND_NAME}; sampler {:?}, {} steps, shift {}",
        args.sampler, args.steps, args.shift
    );
    println!("latent shape {:?}", latent.dims());
    println!("step  sigma   timestep  latent std  log-prob");
    for (i, x) in traj.latents.iter().enumerate().skip(1) {
        let std = x.clone().flatten::<1>(0, 4).var(0).sqrt().into_scalar();
        let lp = traj.log_probs[i - 1]
            .as_ref()
            .map(|l| format!("{:.3}", l.clone().into_scalar()))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:>4}  {:.4}  {:>8.2}  {:>10.4}  {lp}",
            i - 1,
            traj.sigmas[i],
            traj.timesteps[i - 1],
            std
        );
    }
    println!(
        "sampled in {:.2?} ({:.1} ms/step)",
        elapsed,
        elapsed.as_secs_f64() * 1e3 / args.steps as f64
    );
    Ok(())
}
