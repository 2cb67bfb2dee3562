//! Benchmark: one training step of RGB ReFL (all frames), RGB ReFL (first frame), PRFL (with the
//! process reward model, and with the quickstart's reward: the VELR ensemble's mean - 1 std on
//! the frozen DiT's prediction of the clean sample, start step 6..10, KL 0.1) and VELR on the
//! same model and prompts, as peak memory and step time, with ratios to all-frames RGB
//! ReFL measured in the same run (`../shared/ALGORITHMS.md` sections 2-4).
//!
//! ```text
//! cargo run --release -p experiments --bin refl_step                       # both configs
//! cargo run --release -p experiments --bin refl_step -- --config shapes    # or wan
//! cargo run --release -p experiments --features wgpu --bin refl_step -- --config shapes
//! ```
//!
//! Configs:
//! - `shapes`: the shipped shapes-world models (17 x 64 x 64 RGB, latents 16 x 5 x 8 x 8).
//! - `wan`: Wan-proportional, randomly initialised (timing and memory do not depend on the
//!   weights): 16 latent channels, a causal VAE with Wan 2.1's compression (4 x 8 x 8) and decoder
//!   widths (96, 192, 384, 384), DiT patch 1 x 2 x 2 of width 512 (8 heads, 4 blocks); video
//!   `--frames` x `--size` x `--size` (default 17 x 64 x 64 -> latents 16 x 5 x 8 x 8; the
//!   decoder at full resolution dominates the RGB step: about 20 s at this size on 2 CPU cores).
//!
//! Every method runs `--reps` steps after one warm-up step with batch `--batch` (default 1),
//! 20 sampling steps, gradient window 1 (VELR: start in steps 6..10, window 1, then the jump to
//! `x0_hat`; shown without and with labelling the graded latent with the pixel reward for the
//! replay buffer, a no-grad decode that `label_every` amortises). PRFL runs without its SFT steps. The report goes to stdout and,
//! with `--report FILE`, appended to FILE as markdown.

use std::{io::Write, path::PathBuf};

use burn::{
    backend::Autodiff,
    module::{AutodiffModule, Module},
    tensor::backend::Backend,
};
use clap::Parser;
use diffusion_core::{
    backend::{DefaultBackend, DEFAULT_BACKEND_NAME},
    io::probe::PeakAlloc,
    models::vae::{CausalVae, CausalVaeConfig},
    WanConfig, WanTransformer,
};
use ensemble::{Aggregation, Ensemble};
use latent_refl::{prfl, world};
use latent_reward::{ProcessReward, ProcessRewardConfig, VelrRewardConfig};
use refl_trainer::{
    DecoderGradient, FrameSelection, LatentNorm, Learner, LearnerConfig, Method, OptimConfig, Prfl,
    PrflConfig, PromptSet, RgbRefl, RgbReflConfig, SamplingConfig, Velr, VelrConfig,
};
use shapes_world::{captions, Caption, OracleReward, Split, WorldModels};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

type B = DefaultBackend;
type AD = Autodiff<B>;
type Dit = WanTransformer<AD>;

/// One training step of each method: peak memory and step time, with ratios to RGB ReFL.
#[derive(Parser)]
struct Args {
    /// Configs to run (`shapes`, `wan`).
    #[arg(long = "config", default_values_t = ["shapes".to_string(), "wan".to_string()])]
    configs: Vec<String>,
    /// Timed steps after one warm-up step.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    reps: u64,
    /// Videos per step.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    batch: u64,
    /// Video frames of the `wan` config (1 + 4k).
    #[arg(long, default_value_t = 17)]
    frames: usize,
    /// Video height and width of the `wan` config (a multiple of 16).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// VELR ensemble members.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=64))]
    members: u64,
    /// Append the markdown tables to this file.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// The models of one benchmark config.
struct Setup {
    title: String,
    dit: WanTransformer<AD>,
    vae: CausalVae<AD>,
    prm: ProcessReward<AD>,
    ensemble: Ensemble<latent_reward::VelrReward<AD>>,
    prompts: PromptSet<B, Caption>,
    norm: LatentNorm,
    latent_shape: [usize; 4],
}

fn setup(name: &str, args: &Args) -> Result<Setup, Box<dyn std::error::Error>> {
    let members = args.members as usize;
    let dev = Default::default();
    let dir = std::path::Path::new("assets/shapes-world");
    let world = WorldModels::<AD>::load(dir, &dev)?;
    let mut caps = captions(Split::Test);
    caps.truncate(16);
    let prompts = PromptSet::new(caps.clone(), world.valid().embed(&caps, &dev)?)?;
    let text_dim = world.config.text.dim;
    AD::seed(&dev, 0);
    let (title, dit, vae, norm, latent_shape, prm) = match name {
        "shapes" => {
            let prm = world::load_prm(&world.dit, &dir.join("rewards"), &dev)?;
            let v = world.config.video;
            (
                format!(
                    "shapes-world ({} x {} x {} RGB, latents {:?}, DiT width {}, {} blocks)",
                    v.frames,
                    v.height,
                    v.width,
                    world.config.latent_shape(),
                    world.config.dit.dim(),
                    world.config.dit.num_layers
                ),
                world.dit.clone(),
                world.vae.clone(),
                world.latent_norm(),
                world.config.latent_shape(),
                prm,
            )
        }
        "wan" => {
            if (args.frames - 1) % 4 != 0 || args.size % 16 != 0 {
                return Err("--frames must be 1 + 4k and --size a multiple of 16".into());
            }
            let vae_cfg = CausalVaeConfig::new(16, vec![96, 192, 384, 384])
                .with_spatial_stages(Some(3))
                .with_temporal_stages(2)
                .with_groups(32);
            let dit_cfg = WanConfig::new(8, 64, 2048, 4)
                .with_text_dim(text_dim)
                .with_freq_dim(256);
            let dit = dit_cfg.init::<AD>(&dev)?;
            let prm = ProcessRewardConfig::new(2)
                .with_pool_heads(8)
                .with_head(vec![512, 256])
                .init(&dit, &dev)?
                .no_grad();
            let shape = [16, 1 + (args.frames - 1) / 4, args.size / 8, args.size / 8];
            (
                format!(
                    "Wan-proportional ({} x {s} x {s} RGB, latents {shape:?}, VAE widths 96-384, DiT width {}, {} blocks, random weights)",
                    args.frames,
                    dit_cfg.dim(),
                    dit_cfg.num_layers,
                    s = args.size
                ),
                dit,
                vae_cfg.init::<AD>(&dev)?,
                LatentNorm {
                    mean: vec![0.0; 16],
                    std: vec![1.0; 16],
                },
                shape,
                prm,
            )
        }
        other => return Err(format!("unknown config {other} (shapes, wan)").into()),
    };
    let velr = VelrRewardConfig::new(latent_shape, text_dim);
    let ensemble = Ensemble::new(
        (0..members)
            .map(|_| velr.init::<AD>(&dev))
            .collect::<latent_reward::Result<Vec<_>>>()?,
    )?
    .with_aggregation(Aggregation::Mean);
    Ok(Setup {
        title,
        dit,
        vae,
        prm,
        ensemble,
        prompts,
        norm,
        latent_shape,
    })
}

/// VELR with the replay buffer labelled every `label_every` steps (0: never).
fn velr(
    label_every: usize,
    s: &Setup,
    batch: usize,
) -> refl_trainer::Result<Box<dyn Method<AD, Dit>>> {
    let config = VelrConfig {
        batch,
        sampling: sampling(),
        start: [6, 10],
        window: 1,
        kl_beta: 10.0,
        aggregation: Aggregation::Mean,
        buffer: 64,
        label_every,
        align_every: 0,
        align_steps: 1,
        align_lr: 1e-5,
        shards: 1,
    };
    Ok(Box::new(Velr::<AD, Dit, _, _, _, _>::new(
        config,
        s.ensemble.clone(),
        s.vae.valid(),
        s.norm.clone(),
        OracleReward,
        s.prompts.clone(),
        s.latent_shape,
    )?))
}

/// 20 sampling steps at shift 3.
fn sampling() -> SamplingConfig {
    SamplingConfig {
        steps: 20,
        shift: 3.0,
    }
}

/// Median step time (s) and largest peak memory (bytes) over `reps` steps after a warm-up.
fn bench(
    s: &Setup,
    method: Box<dyn Method<AD, Dit>>,
    reps: usize,
) -> Result<(f64, u64), Box<dyn std::error::Error>> {
    let out = std::env::temp_dir().join(format!("refl_step_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let config = LearnerConfig {
        optim: OptimConfig {
            lr: 1e-5,
            ..OptimConfig::default()
        },
        eval_every: 0,
        checkpoint_every: 0,
        ..LearnerConfig::new(reps + 2, out.clone())
    };
    let mut learner = Learner::new(config, s.dit.clone(), method)?;
    learner.train_step()?; // warm-up
    let mut times = Vec::new();
    let mut peak = 0u64;
    for _ in 0..reps {
        let m = learner.train_step()?;
        times.push(m.step_seconds);
        peak = peak.max(m.peak_bytes.unwrap_or(0));
    }
    let _ = std::fs::remove_dir_all(&out);
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], peak))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let (batch, reps) = (args.batch as usize, args.reps as usize);
    let mut md = String::new();
    for name in &args.configs {
        let s = setup(name, &args)?;
        println!("\n{}: batch {batch}, {reps} reps", s.title);
        let rgb = |frames, decoder_gradient| -> refl_trainer::Result<Box<dyn Method<AD, Dit>>> {
            let config = RgbReflConfig {
                batch,
                sampling: sampling(),
                window: 1,
                frames,
                decoder_gradient,
                lambda: 1.0,
                shards: 1,
            };
            let vae = s.vae.clone().no_grad();
            Ok(Box::new(RgbRefl::new(
                config,
                vae,
                s.norm.clone(),
                OracleReward,
                s.prompts.clone(),
                s.latent_shape,
            )?))
        };
        let prm_config = PrflConfig {
            batch,
            sampling: sampling(),
            sft_every: 0,
            ..PrflConfig::default()
        };
        // the quickstart's recipe, in one graph: the table compares the methods' own peak memory
        let denoised_config = PrflConfig {
            batch,
            shards: 1,
            ..prfl::shapes_world()
        };
        let denoised = world::denoised_velr(&s.dit, s.ensemble.members.clone(), 1.0)?;
        let runs: Vec<(&str, Box<dyn Method<AD, Dit>>)> = vec![
            (
                "RGB ReFL, all frames",
                rgb(FrameSelection::All, DecoderGradient::Graph)?,
            ),
            (
                "RGB ReFL, all frames, decoder recomputed",
                rgb(FrameSelection::All, DecoderGradient::Checkpointed)?,
            ),
            (
                "RGB ReFL, first frame",
                rgb(FrameSelection::First, DecoderGradient::Graph)?,
            ),
            (
                "PRFL (process reward, no decode)",
                Box::new(Prfl::<AD, Dit, _, _>::new(
                    prm_config,
                    s.prm.clone(),
                    s.prompts.clone(),
                    s.latent_shape,
                    None,
                )?),
            ),
            (
                "PRFL, ensemble on the DiT's x0 (KL 0.1)",
                Box::new(Prfl::<AD, Dit, _, _>::new(
                    denoised_config,
                    denoised,
                    s.prompts.clone(),
                    s.latent_shape,
                    None,
                )?),
            ),
            (
                "VELR, policy step (ensemble reward, KL)",
                velr(0, &s, batch)?,
            ),
            ("VELR, + pixel labels for the buffer", velr(1, &s, batch)?),
        ];
        let mut rows = Vec::new();
        for (label, method) in runs {
            let (secs, peak) = bench(&s, method, reps)?;
            println!(
                "  {label:<40} {:>9.1} ms {:>9.1} MB",
                secs * 1e3,
                peak as f64 / 1e6
            );
            rows.push((label, secs, peak));
            let _ = B::sync(&Default::default());
        }
        let (t0, m0) = (rows[0].1, rows[0].2.max(1) as f64);
        md += &format!(
            "\n### {}\n\n`{}` backend, batch {batch}, median of {reps} steps after a warm-up.\n\n| method | step time (ms) | time ratio | peak memory (MB) | memory ratio |\n|---|---|---|---|---|\n",
            s.title, DEFAULT_BACKEND_NAME
        );
        for (label, secs, peak) in &rows {
            let line = format!(
                "| {label} | {:.1} | {:.3} | {:.1} | {:.3} |\n",
                secs * 1e3,
                secs / t0,
                *peak as f64 / 1e6,
                *peak as f64 / m0
            );
            md += &line;
        }
    }
    println!("{md}");
    if let Some(path) = &args.report {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        f.write_all(md.as_bytes())?;
        println!("appended to {}", path.display());
    }
    Ok(())
}
