//! RGB ReFL vs PRFL vs VELR vs GRPO (latent ensemble reward, and pixel oracle reward) on
//! shapes-world for equal wall time: each method fine-tunes a fresh copy of the shipped DiT in
//! the Learner for `--seconds` of training time (evaluations excluded), and the held-out oracle
//! reward is measured every `--eval-every` seconds. Writes one PNG with the curves against
//! training time and a markdown table to `--out` (and to `--report` when given).
//!
//! ```text
//! cargo run --release -p experiments --bin compare_methods
//! cargo run --release -p experiments --bin compare_methods -- --seconds 120 --report docs/results/comparison.md
//! ```
//!
//! A method whose run finished keeps its curve in `--out/NAME/curve.json`; the same command run
//! again skips it (`--fresh` reruns all). Uses the process reward model and the VELR members in
//! `--rewards` (default assets/shapes-world/rewards, where both are shipped).

use std::{path::PathBuf, time::Instant};

use burn::{
    backend::Autodiff,
    module::{AutodiffModule, Module},
};
use clap::Parser;
use diffusion_core::{
    backend::DefaultBackend, backend::DEFAULT_BACKEND_NAME, io::atomic::write_atomic,
    WanTransformer,
};
use ensemble::{Aggregation, Ensemble};
use latent_refl::{
    grpo::{
        self, AlignedEnsemble, Grpo, GrpoConfig, LatentScore, PixelScore, StdScope,
        TimestepSelection,
    },
    prfl, rgb_refl, velr,
    world::{self, World},
};
use refl_trainer::{
    write_curves_png, AlignmentConfig, Evaluate, Learner, LrSchedule, Method, Prfl, PrflConfig,
    RgbRefl, SamplingConfig, Series, Velr, VelrConfig,
};
use shapes_world::{Caption, OracleReward};

type B = DefaultBackend;
type AD = Autodiff<B>;
type Dit = WanTransformer<AD>;

/// The methods compared, in the order they run (`--methods` picks some).
const METHODS: [&str; 7] = [
    "rgb-refl",
    "prfl",
    "prfl-denoised",
    "velr",
    "grpo-latent",
    "grpo-latent-aligned",
    "grpo-pixel",
];

/// A held-out curve: (training seconds, reward) points.
type Curve = Vec<(f64, f64)>;

/// GRPO updates between online-alignment rounds of `grpo-latent-aligned`.
const GRPO_ALIGN_EVERY: usize = 5;

/// Reward fine-tuning methods at equal wall time on shapes-world.
#[derive(Parser)]
struct Args {
    /// Training seconds per method.
    #[arg(long, default_value_t = 150.0)]
    seconds: f64,
    /// Seconds of training between held-out evaluations.
    #[arg(long, default_value_t = 30.0)]
    eval_every: f64,
    /// Videos per step of the ReFL methods.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Learning rate of every method.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Held-out test prompts.
    #[arg(long, default_value_t = 16)]
    heldout: usize,
    /// VELR ensemble members.
    #[arg(long, default_value_t = 5)]
    members: usize,
    /// VELR's online alignment every N steps (0: no oracle labels, no alignment).
    #[arg(long, default_value_t = 10)]
    align_every: usize,
    /// VELR scores by the ensemble's mean - K std (0: the mean).
    #[arg(long, default_value_t = 0.0)]
    velr_lcb: f64,
    /// GRPO rollouts per prompt.
    #[arg(long, default_value_t = 8)]
    group: usize,
    /// GRPO prompts per step.
    #[arg(long, default_value_t = 4)]
    grpo_prompts: usize,
    /// GRPO rollout sampling steps.
    #[arg(long, default_value_t = 10)]
    grpo_steps: usize,
    /// Train a random fraction of GRPO's SDE steps (every step stochastic, no rectification)
    /// instead of the iso-temporal step.
    #[arg(long)]
    grpo_fraction: Option<f64>,
    /// GRPO's KL weight.
    #[arg(long, default_value_t = 0.01)]
    grpo_kl: f64,
    /// GRPO's latent reward is the members' mean - K std.
    #[arg(long, default_value_t = 1.0)]
    grpo_lcb: f64,
    /// Each GRPO rollout from its own initial noise.
    #[arg(long)]
    independent_noise: bool,
    /// GRPO's advantages scaled by the batch's std.
    #[arg(long)]
    global_std: bool,
    /// A comma-separated subset of the methods.
    #[arg(long, value_delimiter = ',', default_values_t = METHODS.map(String::from))]
    methods: Vec<String>,
    /// The pretrained world models.
    #[arg(long, default_value = world::MODELS)]
    models: PathBuf,
    /// The process reward model and the VELR members.
    #[arg(long, default_value = world::REWARDS)]
    rewards: PathBuf,
    /// Output folder.
    #[arg(long, default_value = "out/compare")]
    out: PathBuf,
    /// Also write the report here (the PNG goes next to it).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Rerun every method, even those with a finished curve in --out.
    #[arg(long)]
    fresh: bool,
}

impl Args {
    fn grpo(&self) -> GrpoConfig {
        let mut g = GrpoConfig {
            prompts: self.grpo_prompts,
            group: self.group,
            steps: self.grpo_steps,
            kl_beta: self.grpo_kl,
            shared_noise: !self.independent_noise,
            ..grpo::iso_temporal()
        };
        if let Some(fraction) = self.grpo_fraction {
            g.timesteps = TimestepSelection::RandomFraction {
                fraction,
                skip_last: 1,
            };
            g.rectify = false;
        }
        if self.global_std {
            g.advantage.std = StdScope::Global;
        }
        g
    }
}

/// The run of `name`.
fn method(
    name: &str,
    args: &Args,
    w: &World<AD>,
) -> Result<Box<dyn Method<AD, Dit>>, Box<dyn std::error::Error>> {
    let dev = Default::default();
    let (shape, train) = (w.latent_shape(), w.train_prompts(512)?);
    let members = || world::load_velr_members::<AD>(&args.rewards, "velr", args.members, &dev);
    let lcb = |k| Aggregation::LowerConfidenceBound { k };
    let pixel = || PixelScore {
        vae: w.models.vae.clone(),
        norm: w.models.latent_norm(),
        pixel: OracleReward,
    };
    let batch = args.batch;
    Ok(match name {
        "rgb-refl" => {
            let config = refl_trainer::RgbReflConfig {
                batch,
                ..rgb_refl::shapes_world()
            };
            let vae = w.models_ad.vae.clone().no_grad();
            Box::new(RgbRefl::new(
                config,
                vae,
                w.models.latent_norm(),
                OracleReward,
                train,
                shape,
            )?)
        }
        "prfl" => {
            let config = PrflConfig {
                batch,
                sampling: SamplingConfig {
                    steps: 20,
                    shift: 3.0,
                },
                lambda: 1.0,
                shards: 2,
                ..PrflConfig::default()
            };
            let prm = world::load_prm(&w.models_ad.dit, &args.rewards, &dev)?;
            let sft = w.sft_data(&train.prompts[..128])?;
            Box::new(Prfl::<AD, Dit, _, _>::new(
                config,
                prm,
                train,
                shape,
                Some(sft),
            )?)
        }
        "prfl-denoised" => {
            let config = PrflConfig {
                batch,
                ..prfl::shapes_world()
            };
            let reward = world::denoised_velr(&w.models_ad.dit, members()?, 1.0)?;
            Box::new(Prfl::<AD, Dit, _, _>::new(
                config, reward, train, shape, None,
            )?)
        }
        "velr" => {
            let config = VelrConfig {
                batch,
                aggregation: if args.velr_lcb > 0.0 {
                    lcb(args.velr_lcb)
                } else {
                    Aggregation::Mean
                },
                label_every: usize::from(args.align_every > 0),
                align_every: args.align_every,
                ..velr::shapes_world()
            };
            let vae = w.models.vae.clone();
            let ens = Ensemble::new(members()?)?;
            Box::new(Velr::<AD, Dit, _, _, _, _>::new(
                config,
                ens,
                vae,
                w.models.latent_norm(),
                OracleReward,
                train,
                shape,
            )?)
        }
        "grpo-latent" => {
            let ens = Ensemble::new(members()?)?
                .valid()
                .with_aggregation(lcb(args.grpo_lcb));
            Box::new(Grpo::<AD, Dit, _, Caption>::new(
                args.grpo(),
                LatentScore(ens),
                train,
                shape,
            )?)
        }
        "grpo-latent-aligned" => {
            let ens = Ensemble::new(members()?)?.with_aggregation(lcb(args.grpo_lcb));
            let alignment = AlignmentConfig {
                capacity: 256,
                steps: 4,
                batch: 16,
                lr: 1e-4,
            };
            let reward = AlignedEnsemble::new(ens, pixel(), alignment, GRPO_ALIGN_EVERY, shape)?;
            Box::new(Grpo::<AD, Dit, _, Caption>::new(
                args.grpo(),
                reward,
                train,
                shape,
            )?)
        }
        "grpo-pixel" => Box::new(Grpo::<AD, Dit, _, Caption>::new(
            args.grpo(),
            pixel(),
            train,
            shape,
        )?),
        other => return Err(format!("unknown method {other:?} (of {METHODS:?})").into()),
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(bad) = args.methods.iter().find(|m| !METHODS.contains(&m.as_str())) {
        return Err(format!("--methods: unknown {bad:?} (of {METHODS:?})").into());
    }
    if !(args.seconds > 0.0 && args.seconds.is_finite() && args.eval_every > 0.0) {
        return Err("--seconds must be finite and > 0, --eval-every > 0".into());
    }
    if args.fresh {
        let _ = std::fs::remove_dir_all(&args.out);
    }
    let dev = Default::default();
    let w = World::<AD>::load(&args.models, &dev)?;
    let evaluator = w.heldout_reward(args.heldout)?;
    // each method's name, held-out curve (training seconds, reward) and steps
    let mut runs: Vec<(String, Curve, usize)> = Vec::new();
    for name in &args.methods {
        let dir = args.out.join(name);
        let done = dir.join("curve.json");
        if let Ok(text) = std::fs::read_to_string(&done) {
            let (points, steps): (Curve, usize) = serde_json::from_str(&text)?;
            println!("{name}: finished earlier ({}), skipped", done.display());
            runs.push((name.clone(), points, steps));
            continue;
        }
        // an unfinished run starts over: equal time cannot be resumed
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = world::learner_config(1_000_000, args.lr, &dir);
        (
            config.optim.schedule,
            config.eval_every,
            config.checkpoint_every,
        ) = (LrSchedule::Constant, 0, 0);
        let mut learner = Learner::new(config, w.models_ad.dit.clone(), method(name, &args, &w)?)?;
        let before = evaluator.evaluate(&learner.policy().valid())?;
        let mut points = vec![(0.0, before)];
        let (mut trained, mut next_eval) = (0.0, args.eval_every);
        println!("{name}: held-out {before:.4}");
        while trained < args.seconds {
            let t = Instant::now();
            let m = learner.train_step()?;
            trained += t.elapsed().as_secs_f64();
            if m.step % 10 == 0 {
                println!(
                    "    step {}: reward {:.4}, kl {:.2e}",
                    m.step,
                    m.latent_reward.unwrap_or(f64::NAN),
                    m.kl.unwrap_or(0.0)
                );
            }
            if trained >= next_eval || trained >= args.seconds {
                let r = evaluator.evaluate(&learner.policy().valid())?;
                println!(
                    "  {trained:6.1} s, {} steps: held-out {r:.4}",
                    learner.step()
                );
                points.push((trained, r));
                next_eval += args.eval_every;
            }
        }
        write_atomic(
            &done,
            serde_json::to_string(&(&points, learner.step()))?.as_bytes(),
        )?;
        runs.push((name.clone(), points, learner.step()));
    }
    let velr_align = match args.align_every {
        0 => "no oracle labels and no alignment".to_string(),
        n => format!("buffer labelled every step, alignment every {n} steps"),
    };
    let velr_score = match args.velr_lcb {
        k if k > 0.0 => format!("scored by the members' mean - {k} std"),
        _ => "scored by the members' mean".to_string(),
    };
    let mut md = format!(
        "# Reward fine-tuning methods at equal wall time\n\nProduced by `{}` on the {DEFAULT_BACKEND_NAME} backend (2 CPU cores): \
         each method fine-tunes a fresh copy of the shipped shapes-world DiT for {} s of training time (AdamW lr {:e}, 20-step chains, shift 3); \
         the held-out oracle reward is the mean over {} test prompts of Euler samples from fixed noise, measured every {} s outside the timed training.\n\n\
         - RGB ReFL: batch {b}, window 1 at the end of the chain, all frames decoded, `-r`.\n\
         - PRFL: batch {b}, the shipped process reward model, window 1, `relu(2 - r)`, an SFT step per reward step.\n\
         - PRFL denoised (the quickstart's recipe): batch {b}, the VELR ensemble's mean - 1 std on the frozen DiT's clean-sample prediction, start step 6-9, window 1, `relu(2 - r)`, KL weight 0.1, no SFT steps.\n\
         - VELR: batch {b}, {} ensemble members, start step 6-9, window 2, `x0_hat` jump, KL weight 1, {velr_align}, {velr_score}.\n\
         - GRPO: {}; the reward is the VELR ensemble's mean - {} std (latent; `grpo-latent-aligned`: with VELR's online alignment of the members on the rollouts every {} updates) or the pixel oracle of every decoded sample (pixel).\n\n\
         | method | steps | held-out reward before | after | change |\n|---|---|---|---|---|\n",
        experiments::command("compare_methods"), args.seconds, args.lr, args.heldout, args.eval_every, args.members,
        experiments::grpo_settings(&args.grpo()), args.grpo_lcb, GRPO_ALIGN_EVERY, b = args.batch
    );
    let mut curves = Vec::new();
    for (name, points, steps) in runs {
        let (before, after) = (points[0].1, points.last().map_or(f64::NAN, |p| p.1));
        md += &format!(
            "| {name} | {steps} | {before:.4} | {after:.4} | {:+.4} |\n",
            after - before
        );
        curves.push(Series {
            label: name,
            points,
        });
    }
    std::fs::create_dir_all(&args.out)?;
    let png = args.out.join("comparison.png");
    write_curves_png(&png, "held-out oracle reward", "training seconds", &curves)?;
    md += "\nCurves: `comparison.png` next to this file.\n";
    std::fs::write(args.out.join("comparison.md"), &md)?;
    if let Some(report) = &args.report {
        let dir = report
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        std::fs::create_dir_all(dir)?;
        // a report next to the curves: copying a file onto itself would empty it
        if std::fs::canonicalize(dir)? != std::fs::canonicalize(&args.out)? {
            std::fs::copy(&png, dir.join("comparison.png"))?;
        }
        std::fs::write(report, &md)?;
    }
    println!("{md}");
    Ok(())
}
