//! Post-trains a Wan2.1 transformer from diffusers folders with any method, from one TOML file
//! (`latent_refl::wan::TrainConfig`): the transformer and VAE folders, the cached prompt
//! embeddings (`scripts/encode_prompts.py`), LoRA or full weights, the rewards, the method and
//! its settings, the run (steps, optimiser, checkpoints). A run stopped and started again with
//! the same config resumes from its last checkpoint. LoRA runs write the adapter in the PEFT
//! layout diffusers loads (`pytorch_lora_weights.safetensors`), full runs the transformer folder.
//!
//! ```text
//! cargo run --release --example train -- --config examples/configs/tiny-wan-prfl.toml
//! cargo run --release --example train -- --print-config grpo > my-run.toml
//! ```
//!
//! The shipped configs run on `assets/tiny-wan` (a random Wan2.1-layout pipeline, shapes-world
//! captions as prompts, rewards initialised from the run's seed): they check the whole path on
//! the CPU in seconds; they are not meant to improve a video model. `docs/guide/wan.md` shows a
//! run on Wan2.1-T2V-1.3B.

use std::path::PathBuf;

use clap::Parser;
use latent_refl::{
    prelude::DefaultBackend,
    wan::{MethodName, TrainConfig},
};

/// Post-trains a Wan2.1 transformer from a TOML config.
#[derive(Parser)]
struct Args {
    /// The run's config.
    #[arg(long, required_unless_present = "print_config")]
    config: Option<PathBuf>,
    /// Print a complete config for this method (prfl, velr, grpo, rgb_refl, sft) and exit.
    #[arg(long)]
    print_config: Option<MethodName>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(method) = args.print_config {
        print!("{}", TrainConfig::template(method).to_toml());
        return Ok(());
    }
    let cfg = TrainConfig::load(args.config.as_deref().expect("clap requires --config"))?;
    let t = std::time::Instant::now();
    let report = cfg.run::<DefaultBackend>(&Default::default())?;
    if report.resumed_at > 0 {
        println!(
            "resumed at step {} of {}",
            report.resumed_at, cfg.learner.steps
        );
    }
    let last = report.metrics.last();
    println!(
        "{} steps in {:.1} s; last loss {:?}, held-out reward {:?}",
        report.metrics.len(),
        t.elapsed().as_secs_f64(),
        last.and_then(|m| m.loss),
        last.and_then(|m| m.heldout_reward)
    );
    for path in &report.saved {
        println!("wrote {}", path.display());
    }
    Ok(())
}
