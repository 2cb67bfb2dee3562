//! The quickstart: PRFL on the shipped shapes-world models, on the CPU, in minutes.
//!
//! Fine-tunes the shipped DiT with process reward feedback learning ("Video Generation Models
//! Are Good Latent Reward Models"): a no-grad rollout to a mid-noise step, one step with
//! gradients, and a process reward there (the shipped VELR ensemble's mean - 1 std on the
//! frozen DiT's prediction of the clean sample), with no VAE decoding in the loop. Prints the
//! held-out pixel-oracle reward, which training never sees, before and after, and the oracle's
//! terms; writes GIFs, the reward curves and the metrics log to `--out`. A run stopped and
//! started again with the same command resumes from its last checkpoint.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use std::path::PathBuf;

use burn::backend::Autodiff;
use clap::Parser;
use latent_refl::{
    prelude::*,
    refl_trainer::{write_metrics_png, MetricsLog},
    shapes_world::Caption,
    world::{OracleTerms, ORACLE_TERMS},
};

type AD = Autodiff<DefaultBackend>;

/// PRFL on the shipped shapes-world models.
#[derive(Parser)]
struct Args {
    /// Training steps.
    #[arg(long, default_value_t = 240)]
    steps: usize,
    /// Peak learning rate (10 warm-up steps).
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Weight of the KL term to the initial model.
    #[arg(long, default_value_t = 0.1)]
    kl: f64,
    /// Held-out test prompts scored by the oracle.
    #[arg(long, default_value_t = 32)]
    heldout: usize,
    /// VELR ensemble members (of those in --rewards).
    #[arg(long, default_value_t = 5)]
    members: usize,
    /// The ensemble scores by mean - K std.
    #[arg(long, default_value_t = 1.0)]
    lcb: f64,
    /// The pretrained world models.
    #[arg(long, default_value = world::MODELS)]
    models: PathBuf,
    /// The VELR ensemble members (velr.json, velr_0.mpk, ...).
    #[arg(long, default_value = world::REWARDS)]
    rewards: PathBuf,
    /// Output folder.
    #[arg(long, default_value = "out/quickstart")]
    out: PathBuf,
    /// Start over: delete the output folder first.
    #[arg(long)]
    fresh: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let dev = Default::default();
    if args.fresh {
        let _ = std::fs::remove_dir_all(&args.out);
    }
    std::fs::create_dir_all(&args.out)?;
    let world = World::<AD>::load(&args.models, &dev)?;
    let members = world::load_velr_members(&args.rewards, "velr", args.members, &dev)?;
    let reward = world::denoised_velr(&world.models_ad.dit, members, args.lcb)?;
    let config = PrflConfig {
        kl_beta: args.kl,
        ..prfl::shapes_world()
    };
    let prfl = Prfl::new(
        config,
        reward,
        world.train_prompts(512)?,
        world.latent_shape(),
        None,
    )?;
    let evaluator = world.heldout_reward(args.heldout)?;
    let heldout: Vec<Caption> = evaluator.prompts.prompts.clone();
    let before = evaluator.evaluate(&world.models.dit)?;
    let learner_config = world::learner_config(args.steps, args.lr, args.out.join("run"));
    let mut learner =
        Learner::new(learner_config, world.models_ad.dit.clone(), prfl)?.with_evaluator(evaluator);
    if learner.step() > 0 {
        println!(
            "resuming at step {} of {} (--fresh starts over)",
            learner.step(),
            args.steps
        );
    }
    let show = &heldout[..4.min(heldout.len())];
    let gifs = |models: &_, tag| -> Result<(), Box<dyn std::error::Error>> {
        for ((r, path), p) in world::write_gifs(models, show, &args.out, tag)?
            .iter()
            .zip(show)
        {
            println!("  {tag} {r:.3}  {p}  -> {}", path.display());
        }
        Ok(())
    };
    println!(
        "held-out oracle reward before: {before:.4} ({} test prompts)",
        heldout.len()
    );
    gifs(&world.models, "before")?;
    let t = std::time::Instant::now();
    learner.run()?;
    let seconds = t.elapsed().as_secs_f64();
    let after = learner.evaluate()?.unwrap_or(f64::NAN);
    let tuned = world::with_dit(&world.models, learner.policy());
    gifs(&tuned, "after")?;

    let t0 = OracleTerms::of(&world.models, &heldout, &dev)?;
    let t1 = OracleTerms::of(&tuned, &heldout, &dev)?;
    let (change, se) = t0.paired_change(&t1);
    println!("\noracle from a second noise seed: change {change:+.4} +- {se:.4} (standard error of the paired mean); terms:");
    for ((name, b), a) in ORACLE_TERMS.iter().zip(t0.means).zip(t1.means) {
        println!("  {name:<10} {b:.4} -> {a:.4} ({:+.4})", a - b);
    }
    // the curves of the whole run, resumed parts included
    let log = MetricsLog::read(&learner.config().out.join("metrics.jsonl"))?;
    write_metrics_png(
        &args.out.join("rewards.png"),
        "prfl on shapes-world",
        &log,
        Some(before),
    )?;
    println!(
        "\nheld-out oracle reward: {before:.4} -> {after:.4} ({:+.4}) after {} PRFL steps ({seconds:.1} s this run); curves, GIFs and run/metrics.jsonl in {}",
        after - before,
        args.steps,
        args.out.display()
    );
    Ok(())
}
