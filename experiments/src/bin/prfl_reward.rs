//! PRFL on shapes-world with a choice of process reward and settings: the runs behind
//! docs/results/prm_refinement.md. Prints the held-out oracle reward before and after and the
//! oracle's terms on a second noise seed.
//!
//! ```text
//! cargo run --release -p experiments --bin prfl_reward                                   # the quickstart's run
//! cargo run --release -p experiments --bin prfl_reward -- --reward prm --lambda 0.1 --sft-every 1 --lr 5e-5 --steps 120 --kl 0
//! ```
//!
//! The run resumes from its checkpoint in `--out` when the command is run again (`--fresh`
//! starts over).

use std::path::PathBuf;

use burn::backend::Autodiff;
use clap::{Parser, ValueEnum};
use diffusion_core::{backend::DefaultBackend, WanTransformer};
use ensemble::{Aggregation, Ensemble};
use latent_refl::{
    prfl,
    world::{self, OracleTerms, World, ORACLE_TERMS},
};
use refl_trainer::{Evaluate, Learner, Method, Prfl, PrflConfig};
use shapes_world::Split;

type B = DefaultBackend;
type AD = Autodiff<B>;
type Dit = WanTransformer<AD>;

/// Which model scores the noisy latents.
#[derive(Clone, Copy, ValueEnum)]
enum Reward {
    /// The clean VELR ensemble (`velr_*.mpk`) on the frozen DiT's clean-sample prediction.
    DenoisedVelr,
    /// The noise-aware VELR ensemble (`process_velr_*.mpk`) on the noisy latent.
    NoiseAwareVelr,
    /// PRFL's reward model on the DiT's first blocks (`prm.mpk`).
    Prm,
}

/// PRFL on shapes-world with a choice of process reward.
#[derive(Parser)]
struct Args {
    /// The process reward.
    #[arg(long, value_enum, default_value_t = Reward::DenoisedVelr)]
    reward: Reward,
    /// Where the reward models are.
    #[arg(long, default_value = world::REWARDS)]
    rewards: PathBuf,
    /// Ensemble members (VELR rewards).
    #[arg(long, default_value_t = 5)]
    members: usize,
    /// Ensembles score by mean - K std.
    #[arg(long, default_value_t = 1.0)]
    lcb: f64,
    /// Training steps.
    #[arg(long, default_value_t = 240)]
    steps: usize,
    /// Videos per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Peak learning rate (10 warm-up steps).
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Reward loss weight.
    #[arg(long, default_value_t = 1.0)]
    lambda: f64,
    /// The loss is `relu(margin - r)`.
    #[arg(long, default_value_t = 2.0)]
    margin: f64,
    /// Weight of the KL term to the initial model.
    #[arg(long, default_value_t = 0.1)]
    kl: f64,
    /// An SFT step every N reward steps (0: none).
    #[arg(long, default_value_t = 0)]
    sft_every: usize,
    /// Range A,B of the gradient window's start step (default 6,10; `0,19`: the whole chain).
    #[arg(long, value_delimiter = ',', num_args = 2, default_values_t = [6, 10])]
    start: Vec<usize>,
    /// Held-out test prompts.
    #[arg(long, default_value_t = 32)]
    heldout: usize,
    /// The pretrained world models.
    #[arg(long, default_value = world::MODELS)]
    models: PathBuf,
    /// Output folder.
    #[arg(long, default_value = "out/prfl_reward")]
    out: PathBuf,
    /// Start over: delete --out first.
    #[arg(long)]
    fresh: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let dev = Default::default();
    if args.fresh {
        let _ = std::fs::remove_dir_all(&args.out);
    }
    let w = World::<AD>::load(&args.models, &dev)?;
    let train = w.train_prompts(512)?;
    let sft = if args.sft_every > 0 {
        Some(w.sft_data(&world::shuffled_captions(Split::Train, 1, 128))?)
    } else {
        None
    };
    let config = PrflConfig {
        batch: args.batch,
        start: Some([args.start[0], args.start[1]]),
        lambda: args.lambda,
        margin: args.margin,
        kl_beta: args.kl,
        sft_every: args.sft_every,
        ..prfl::shapes_world()
    };
    let lcb = Aggregation::LowerConfidenceBound { k: args.lcb };
    let shape = w.latent_shape();
    let method: Box<dyn Method<AD, Dit>> = match args.reward {
        Reward::DenoisedVelr => {
            let members =
                world::load_velr_members::<AD>(&args.rewards, "velr", args.members, &dev)?;
            let reward = world::denoised_velr(&w.models_ad.dit, members, args.lcb)?;
            Box::new(Prfl::new(config, reward, train, shape, sft)?)
        }
        Reward::NoiseAwareVelr => {
            let members =
                world::load_velr_members::<AD>(&args.rewards, "process_velr", args.members, &dev)?;
            let reward = Ensemble::new(members)?.with_aggregation(lcb).frozen();
            Box::new(Prfl::new(config, reward, train, shape, sft)?)
        }
        Reward::Prm => {
            let prm = world::load_prm(&w.models_ad.dit, &args.rewards, &dev)?;
            Box::new(Prfl::new(config, prm, train, shape, sft)?)
        }
    };
    let evaluator = w.heldout_reward(args.heldout)?;
    let heldout = evaluator.prompts.prompts.clone();
    let before = evaluator.evaluate(&w.models.dit)?;
    let mut config = world::learner_config(args.steps, args.lr, args.out.join("run"));
    config.eval_every = (args.steps / 6).max(1);
    let mut learner =
        Learner::new(config, w.models_ad.dit.clone(), method)?.with_evaluator(evaluator);
    learner.run()?;
    let after = learner.evaluate()?.unwrap_or(f64::NAN);
    let log = refl_trainer::MetricsLog::read(&learner.config().out.join("metrics.jsonl"))?;
    let curve: Vec<String> = log
        .iter()
        .filter_map(|m| m.heldout_reward)
        .map(|r| format!("{r:.3}"))
        .collect();
    let tuned = world::with_dit(&w.models, learner.policy());
    let (t0, t1) = (
        OracleTerms::of(&w.models, &heldout, &dev)?,
        OracleTerms::of(&tuned, &heldout, &dev)?,
    );
    let (change, se) = t0.paired_change(&t1);
    println!("held-out at 1/6 ... 6/6 of the run: {}", curve.join(" "));
    println!(
        "held-out oracle reward: {before:.4} -> {after:.4} ({:+.4})",
        after - before
    );
    println!("second noise seed: {change:+.4} +- {se:.4}; terms after:");
    for (name, a) in ORACLE_TERMS.iter().zip(t1.means) {
        println!("  {name:<10} {a:.3}");
    }
    Ok(())
}
