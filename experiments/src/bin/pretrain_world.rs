//! Pretrains the shapes-world VAE, text encoder and DiT on the CPU and writes the shipped
//! weights plus a report.
//!
//! ```text
//! cargo run --release -p experiments --bin pretrain_world              # into out/shapes-world
//! cargo run --release -p experiments --bin pretrain_world -- --out assets/shapes-world
//! ```
//!
//! Flags: `--vae-steps N`, `--dit-steps N`, `--batch N`, `--eval N` (captions per split),
//! `--cache N` (videos encoded once for DiT training), `--report PATH` (markdown, default
//! out/shapes-world/pretrain.md).

use std::{path::PathBuf, time::Instant};

use burn::backend::Autodiff;
use diffusion_core::backend::{DefaultBackend, DEFAULT_BACKEND_NAME};
use shapes_world::{
    eval::{sample_reward, vae_psnr},
    pretrain::{fit_latent_stats, train_dit, train_vae, LatentCache, StageConfig},
    Split, WorldModels, WorldModelsConfig,
};

type B = DefaultBackend;
type AD = Autodiff<B>;

struct Args {
    out: PathBuf,
    report: PathBuf,
    vae_steps: usize,
    dit_steps: usize,
    batch: usize,
    eval: usize,
    cache: usize,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        out: "out/shapes-world".into(),
        report: "out/shapes-world/pretrain.md".into(),
        vae_steps: 1200,
        dit_steps: 4000,
        batch: 8,
        eval: 32,
        cache: 3072,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--out" => a.out = val()?.into(),
            "--report" => a.report = val()?.into(),
            "--vae-steps" => a.vae_steps = num(val()?)?,
            "--dit-steps" => a.dit_steps = num(val()?)?,
            "--batch" => a.batch = num(val()?)?,
            "--eval" => a.eval = num(val()?)?,
            "--cache" => a.cache = num(val()?)?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    let dev = Default::default();
    let mut models = WorldModelsConfig::small().init::<AD>(&dev)?;
    let t0 = Instant::now();
    train_vae(
        &mut models,
        StageConfig {
            steps: args.vae_steps,
            batch: args.batch,
            lr: 2e-3,
            seed: 1,
        },
        1e-4,
        &dev,
    )?;
    let vae_time = t0.elapsed();
    let psnr = vae_psnr(&models.valid(), Split::Test, 64, 9, &dev)?;
    println!(
        "VAE test PSNR {psnr:.2} dB after {:.1} min",
        vae_time.as_secs_f64() / 60.0
    );
    fit_latent_stats(&mut models, 256, 2, &dev)?;
    let t1 = Instant::now();
    let cache = LatentCache::build(&models.valid(), args.cache, 4, &dev)?;
    train_dit(
        &mut models,
        &cache,
        StageConfig {
            steps: args.dit_steps,
            batch: 2 * args.batch,
            lr: 1e-3,
            seed: 3,
        },
        &dev,
    )?;
    let dit_time = t1.elapsed();
    models.save(&args.out)?;
    println!("saved to {}", args.out.display());

    // evaluation on the inference backend, from the saved files
    let trained = WorldModels::<B>::load(&args.out, &dev)?;
    let mut untrained = trained.clone();
    untrained.dit = trained.config.dit.init(&dev)?;
    let mut rows = Vec::new();
    for (name, split) in [
        ("train", Split::Train),
        ("test", Split::Test),
        ("ood", Split::Ood),
    ] {
        let r = sample_reward(&trained, split, args.eval, 20, 11, &dev)?;
        let u = sample_reward(&untrained, split, args.eval, 20, 11, &dev)?;
        println!("{name}: base {r:.3}, untrained {u:.3}");
        rows.push(format!("| {name} | {r:.3} | {u:.3} |"));
    }
    let report = format!(
        "# shapes-world pretraining\n\nProduced by `cargo run --release -p experiments --bin pretrain_world -- --out {}` on the {} backend, 2 CPU cores.\n\n\
         | stage | steps | batch | wall time |\n|---|---|---|---|\n| VAE | {} | {} | {:.1} min |\n| latent cache + DiT + text encoder | {} | {} | {:.1} min |\n\n\
         VAE reconstruction PSNR on 64 test videos: **{psnr:.2} dB**.\n\n\
         Mean oracle reward of 20-step Euler samples ({} captions per split):\n\n| split | base model | untrained DiT |\n|---|---|---|\n{}\n",
        args.out.display(),
        DEFAULT_BACKEND_NAME,
        args.vae_steps,
        args.batch,
        vae_time.as_secs_f64() / 60.0,
        args.dit_steps,
        2 * args.batch,
        dit_time.as_secs_f64() / 60.0,
        args.eval,
        rows.join("\n")
    );
    if let Some(dir) = args.report.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.report, report)?;
    println!("report written to {}", args.report.display());
    Ok(())
}
