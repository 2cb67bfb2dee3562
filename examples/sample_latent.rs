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
use diffusion_core::{
    backend::{DefaultBackend, DEFAULT_BACKEND_NAME},
    io::checkpoint::load_safetensors,
    sampling::rollout::randn,
    Conditioning, DanceGrpoSde, EulerOde, FlowGrpoSde, FlowMatchScheduleConfig, Rollout, Stepper,
    Trajectory, WanConfig, WanTransformer,
};
use rand::SeedableRng;

type B = DefaultBackend;

#[derive(Debug, Clone, Copy)]
enum Sampler {
    Euler,
    FlowGrpo,
    DanceGrpo,
}

struct Args {
    steps: usize,
    shift: f64,
    sampler: Sampler,
    seed: u64,
    frames: usize,
    size: usize,
    weights: Option<PathBuf>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        steps: 20,
        shift: 3.0,
        sampler: Sampler::Euler,
        seed: 0,
        frames: 5,
        size: 16,
        weights: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--steps" => a.steps = val()?.parse().map_err(|e| format!("--steps: {e}"))?,
            "--shift" => a.shift = val()?.parse().map_err(|e| format!("--shift: {e}"))?,
            "--seed" => a.seed = val()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--frames" => a.frames = val()?.parse().map_err(|e| format!("--frames: {e}"))?,
            "--size" => a.size = val()?.parse().map_err(|e| format!("--size: {e}"))?,
            "--weights" => a.weights = Some(PathBuf::from(val()?)),
            "--sampler" => {
                a.sampler = match val()?.as_str() {
                    "euler" => Sampler::Euler,
                    "flow-grpo" => Sampler::FlowGrpo,
                    "dance-grpo" => Sampler::DanceGrpo,
                    s => {
                        return Err(format!(
                            "unknown sampler {s}: euler | flow-grpo | dance-grpo"
                        ))
                    }
                }
            }
            "-h" | "--help" => {
                println!("sample_latent [--steps N] [--shift S] [--sampler euler|flow-grpo|dance-grpo] [--seed N] [--frames F] [--size HW] [--weights DIR]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other} (try --help)")),
        }
    }
    Ok(a)
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

fn main() {
    let args = parse().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    let dev = Default::default();
    let model = load_model(&args, &dev).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
    let start = Instant::now();
    let traj = match args.sampler {
        Sampler::Euler => run(&EulerOde, &args, &model),
        Sampler::FlowGrpo => run(&FlowGrpoSde::default(), &args, &model),
        Sampler::DanceGrpo => run(&DanceGrpoSde::default(), &args, &model),
    }
    .unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
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
}
