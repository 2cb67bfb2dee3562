//! RGB ReFL vs PRFL vs VELR vs GRPO (latent ensemble reward, and pixel oracle reward) on
//! shapes-world for equal wall time: each method fine-tunes a fresh copy of the shipped DiT for
//! `--seconds` of training time (evaluations excluded), and the held-out oracle reward is
//! measured every `--eval-every` seconds. Writes one PNG with the curves against training time
//! and a markdown table.
//!
//! ```text
//! cargo run --release --example compare_methods
//! cargo run --release --example compare_methods -- --seconds 120 --report docs/comparison.md
//! ```
//!
//! Uses the process reward model and the VELR members `velr_0.mpk ... velr_4.mpk` in `--rewards`
//! (default assets/shapes-world/rewards, where both are shipped; `train_rewards` writes them).
//! Flags: `--seconds`, `--eval-every`, `--batch`, `--lr`, `--heldout`, `--members`,
//! `--align-every N` (VELR's online alignment every N steps; 0: no oracle labels, no alignment),
//! `--velr-lcb K` (VELR scores by the ensemble's mean - K std; default 0: the mean),
//! GRPO (defaults: `common::grpo_config`, iso-temporal) with `--group G` (rollouts per prompt,
//! default 8), `--grpo-prompts N` (prompts per step, default 4), `--grpo-steps S` (rollout
//! sampling steps, default 10), `--grpo-fraction F` (train a random fraction of the SDE steps,
//! every step stochastic, no rectification: the recipe before session 14), `--grpo-kl B`
//! (default 0.01), `--grpo-lcb K` (the latent reward is the members' mean - K std, default 1),
//! `--independent-noise` (each rollout its own initial noise), `--global-std` (advantages scaled by the batch's std),
//! `--methods` (a comma-separated subset of `rgb-refl,prfl,prfl-denoised,velr,grpo-latent,grpo-latent-aligned,grpo-pixel`; the
//! VELR members are needed only for `prfl-denoised`, `velr` and the latent GRPOs), `--out`,
//! `--report`.

use std::{path::PathBuf, time::Instant};

use burn::{backend::Autodiff, module::AutodiffModule};
use diffusion_core::{
    backend::DefaultBackend, backend::DEFAULT_BACKEND_NAME, rollout::step_rng, vae::CausalVae,
    FlowMatchScheduleConfig,
};
use ensemble::{Aggregation, Ensemble};
use grpo::{
    GroupReward, GrpoConfig, GrpoTrainer, LatentScore, PixelScore, StdScope, TimestepSelection,
};
use rand::Rng;
use refl_trainer::{
    heldout_reward, write_curves_png, FrameSelection, LatentRewards, LrSchedule, Method,
    OptimConfig, PrflConfig, PromptSet, RgbReflConfig, RunConfig, SamplingConfig, Series, Trainer,
    TrainerParts, VelrConfig,
};
use shapes_world::{Caption, OracleReward, Split, WorldModels};

mod common;

use common::AlignedEnsemble;

type B = DefaultBackend;
type AD = Autodiff<B>;

/// A method under comparison: a ReFL trainer, or GRPO with its reward.
enum Runner {
    Refl(Box<Trainer<AD, CausalVae<AD>, OracleReward, Caption>>),
    /// GRPO with its reward and the prompts per step.
    Grpo(
        Box<GrpoTrainer<AD>>,
        Box<dyn GroupReward<B, Caption>>,
        usize,
    ),
    /// GRPO with the latent ensemble kept aligned on its rollouts (as `post_train`), and the
    /// prompts per step.
    AlignedGrpo(Box<GrpoTrainer<AD>>, Box<AlignedEnsemble<AD>>, usize),
}

impl Runner {
    fn policy(&self) -> &diffusion_core::WanTransformer<AD> {
        match self {
            Runner::Refl(t) => &t.policy,
            Runner::Grpo(t, ..) | Runner::AlignedGrpo(t, ..) => &t.policy,
        }
    }

    /// One training step; GRPO draws its training prompts from a generator seeded by the step
    /// (the aligned GRPO decodes its labelled rollouts with `world`).
    fn step(
        &mut self,
        train: &PromptSet<B, Caption>,
        step: usize,
        world: &WorldModels<B>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let latent_shape = world.config.latent_shape();
        let mut rng = step_rng(1, step);
        let mut draw =
            |n: usize| -> Vec<usize> { (0..n).map(|_| rng.random_range(0..train.len())).collect() };
        let m = match self {
            Runner::Refl(t) => {
                t.train_step()?;
                return Ok(());
            }
            Runner::Grpo(t, reward, prompts) => {
                let (prompts, text) = train.batch(&draw(*prompts));
                t.train_step(&prompts, text, latent_shape, reward.as_ref())?
            }
            Runner::AlignedGrpo(t, aligned, prompts) => {
                let idx = draw(*prompts);
                let (prompts, text) = train.batch(&idx);
                let m = t.train_step(&prompts, text, latent_shape, aligned.reward())?;
                aligned.after_update(t, &idx, train, world, &mut rng)?;
                m
            }
        };
        if step % 10 == 0 {
            println!(
                "    step {step}: rollout reward {:.4} (group std {:.4}), kl {:.2e}",
                m.reward, m.reward_std, m.kl
            );
        }
        Ok(())
    }
}

/// The methods compared, in the order they run (`--methods` picks some).
const METHODS: [&str; 7] = [
    "rgb refl",
    "prfl",
    "prfl denoised",
    "velr",
    "grpo latent",
    "grpo latent aligned",
    "grpo pixel",
];

struct Args {
    seconds: f64,
    eval_every: f64,
    batch: usize,
    lr: f64,
    heldout: usize,
    members: usize,
    align_every: usize,
    velr_lcb: f64,
    grpo: GrpoConfig,
    grpo_prompts: usize,
    grpo_lcb: f64,
    methods: Vec<String>,
    models: PathBuf,
    rewards: PathBuf,
    out: PathBuf,
    report: PathBuf,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        seconds: 150.0,
        eval_every: 30.0,
        batch: 4,
        lr: 1e-4,
        heldout: 16,
        members: 5,
        align_every: 10,
        velr_lcb: 0.0,
        grpo: common::grpo_config(1e-4),
        grpo_prompts: common::GRPO_PROMPTS,
        grpo_lcb: 1.0,
        methods: METHODS.iter().map(|m| m.to_string()).collect(),
        models: "assets/shapes-world".into(),
        rewards: "assets/shapes-world/rewards".into(),
        out: "out/compare".into(),
        report: "docs/comparison.md".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        let f = |v: String| v.parse::<f64>().map_err(|e| format!("{flag}: {e}"));
        let n = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--seconds" => a.seconds = f(val()?)?,
            "--eval-every" => a.eval_every = f(val()?)?,
            "--batch" => a.batch = n(val()?)?,
            "--lr" => a.lr = f(val()?)?,
            "--heldout" => a.heldout = n(val()?)?,
            "--members" => a.members = n(val()?)?,
            "--align-every" => a.align_every = n(val()?)?,
            "--velr-lcb" => a.velr_lcb = f(val()?)?,
            "--group" => a.grpo.group = n(val()?)?,
            "--grpo-prompts" => a.grpo_prompts = n(val()?)?,
            "--grpo-steps" => a.grpo.steps = n(val()?)?,
            "--grpo-kl" => a.grpo.kl_beta = f(val()?)?,
            "--grpo-lcb" => a.grpo_lcb = f(val()?)?,
            "--grpo-fraction" => {
                a.grpo.timesteps = TimestepSelection::RandomFraction {
                    fraction: f(val()?)?,
                    skip_last: 1,
                };
                a.grpo.rectify = false;
            }
            "--independent-noise" => a.grpo.shared_noise = false,
            "--global-std" => a.grpo.advantage.std = StdScope::Global,
            "--methods" => {
                a.methods = val()?
                    .split(',')
                    .map(|m| m.trim().replace('-', " "))
                    .collect();
                if let Some(bad) = a.methods.iter().find(|m| !METHODS.contains(&m.as_str())) {
                    return Err(format!(
                        "--methods: unknown {bad:?} (of {METHODS:?}, spaces or '-')"
                    ));
                }
            }
            "--models" => a.models = val()?.into(),
            "--rewards" => a.rewards = val()?.into(),
            "--out" => a.out = val()?.into(),
            "--report" => a.report = val()?.into(),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !(a.seconds > 0.0 && a.eval_every > 0.0) || a.members == 0 || a.grpo_prompts == 0 {
        return Err(
            "--seconds and --eval-every must be > 0, --members and --grpo-prompts >= 1".into(),
        );
    }
    a.grpo.lr = a.lr;
    a.grpo.validate().map_err(|e| e.to_string())?;
    Ok(a)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    let dev = Default::default();
    let models = WorldModels::<B>::load(&args.models, &dev)?;
    let models_ad = WorldModels::<AD>::load(&args.models, &dev)?;
    let prm = common::load_prm(&models_ad.dit, &args.rewards, &dev)?;
    let want = |name: &str| args.methods.iter().any(|m| m == name);
    // the VELR members only where a method uses them (`train_rewards` writes them; not shipped)
    let ensemble = if [
        "velr",
        "grpo latent",
        "grpo latent aligned",
        "prfl denoised",
    ]
    .into_iter()
    .any(want)
    {
        let members = common::load_velr_members::<AD>(&args.rewards, "velr", args.members, &dev)?;
        Some(Ensemble::new(members)?.with_aggregation(Aggregation::Mean))
    } else {
        None
    };

    let train = common::shuffled_captions(Split::Train, 1, 512);
    let heldout = common::shuffled_captions(Split::Test, 2, args.heldout);
    let train_set = PromptSet::new(train.clone(), models.embed(&train, &dev)?)?;
    let heldout_set = PromptSet::new(heldout.clone(), models.embed(&heldout, &dev)?)?;
    let sft = common::sft_data(&models, &train[..128], &dev)?;
    let norm = models.latent_norm();

    let refl = |method: Method, reward: LatentRewards<AD>, name: &str| {
        let config = RunConfig {
            method,
            steps: 1_000_000,
            batch: args.batch,
            sampling: SamplingConfig {
                steps: 20,
                shift: 3.0,
            },
            optim: OptimConfig {
                lr: args.lr,
                weight_decay: 0.01,
                grad_clip: Some(1.0),
                schedule: LrSchedule::Constant,
            },
            max_skipped: 10,
            seed: 0,
            eval_every: 0,
            checkpoint_every: 0,
            out: args.out.join(name.replace(' ', "_")),
            shards: diffusion_core::parallel::cores(),
        };
        let _ = std::fs::remove_dir_all(&config.out);
        Trainer::new(TrainerParts {
            config,
            policy: models_ad.dit.clone(),
            vae: models_ad.vae.clone(),
            norm: norm.clone(),
            pixel: OracleReward,
            reward,
            train: train_set.clone(),
            heldout: heldout_set.clone(),
            sft: Some(sft.clone()),
            latent_shape: models.config.latent_shape(),
        })
        .map(|t| Runner::Refl(Box::new(t)))
    };
    let grpo = |reward: Box<dyn GroupReward<B, Caption>>| {
        GrpoTrainer::new(args.grpo.clone(), models_ad.dit.clone())
            .map(|t| Runner::Grpo(Box::new(t), reward, args.grpo_prompts))
    };
    let pixel_score = PixelScore {
        vae: models.vae.clone(),
        norm: norm.clone(),
        pixel: OracleReward,
    };
    let mut runs: Vec<(&str, Runner)> = Vec::new();
    if want("rgb refl") {
        let method = Method::RgbRefl(RgbReflConfig {
            window: 1,
            frames: FrameSelection::All,
            lambda: 1.0,
        });
        runs.push(("rgb refl", refl(method, LatentRewards::Pixel, "rgb refl")?));
    }
    if want("prfl") {
        let method = Method::Prfl(PrflConfig {
            start: None,
            window: 1,
            lambda: 1.0,
            margin: 2.0,
            sft_every: 1,
            kl_beta: 0.0,
        });
        runs.push(("prfl", refl(method, LatentRewards::Process(prm), "prfl")?));
    }
    if let Some(ensemble) = ensemble {
        if want("prfl denoised") {
            // the quickstart's recipe (its method settings; time and lr are this comparison's)
            let method = common::PrflRun::denoised_recipe().method();
            let reward = common::denoised_velr(&models_ad.dit, ensemble.members.clone(), 1.0)?;
            runs.push(("prfl denoised", refl(method, reward, "prfl_denoised")?));
        }
        if want("velr") {
            let method = Method::Velr(VelrConfig {
                start: [6, 10],
                window: 2,
                kl_beta: 1.0,
                aggregation: if args.velr_lcb > 0.0 {
                    Aggregation::LowerConfidenceBound { k: args.velr_lcb }
                } else {
                    Aggregation::Mean
                },
                buffer: 64,
                label_every: usize::from(args.align_every > 0),
                align_every: args.align_every,
                align_steps: 4,
                align_lr: 1e-5,
            });
            let reward = LatentRewards::Ensemble(ensemble.clone());
            runs.push(("velr", refl(method, reward, "velr")?));
        }
        if want("grpo latent") {
            let lcb = ensemble
                .valid()
                .with_aggregation(Aggregation::LowerConfidenceBound { k: args.grpo_lcb });
            runs.push(("grpo latent", grpo(Box::new(LatentScore(lcb)))?));
        }
        if want("grpo latent aligned") {
            let aligned = AlignedEnsemble::new(
                ensemble.with_aggregation(Aggregation::LowerConfidenceBound { k: args.grpo_lcb }),
                common::GRPO_ALIGNMENT,
                common::GRPO_ALIGN_EVERY,
                models.config.latent_shape(),
            )?;
            let trainer = GrpoTrainer::new(args.grpo.clone(), models_ad.dit.clone())?;
            runs.push((
                "grpo latent aligned",
                Runner::AlignedGrpo(Box::new(trainer), Box::new(aligned), args.grpo_prompts),
            ));
        }
    }
    if want("grpo pixel") {
        runs.push(("grpo pixel", grpo(Box::new(pixel_score))?));
    }
    let schedule = FlowMatchScheduleConfig::new(20).with_shift(3.0).init()?;
    let evaluate = |runner: &Runner| {
        heldout_reward(
            &runner.policy().valid(),
            &models.vae,
            &norm,
            &OracleReward,
            &heldout_set,
            &schedule,
            models.config.latent_shape(),
        )
    };
    let mut curves = Vec::new();
    let flags = common::command_flags();
    let velr_align = match args.align_every {
        0 => "no oracle labels and no alignment".to_string(),
        n => format!("buffer labelled every step, alignment every {n} steps"),
    };
    let velr_score = match args.velr_lcb {
        k if k > 0.0 => format!("scored by the members' mean - {k} std"),
        _ => "scored by the members' mean".to_string(),
    };
    let mut md = format!(
        "# Reward fine-tuning methods at equal wall time\n\nProduced by `cargo run --release --example compare_methods{flags}` on the {DEFAULT_BACKEND_NAME} backend (2 CPU cores): \
         each method fine-tunes a fresh copy of the shipped shapes-world DiT for {} s of training time (AdamW lr {:e}, 20-step chains, shift 3); \
         the held-out oracle reward is the mean over {} test prompts of Euler samples from fixed noise, measured every {} s outside the timed training.\n\n\
         - RGB ReFL: batch {b}, window 1 at the end of the chain, all frames decoded, `-r`.\n\
         - PRFL: batch {b}, the shipped process reward model, window 1, `relu(2 - r)`, an SFT step per reward step.\n\
         - PRFL denoised (the quickstart's recipe): batch {b}, the VELR ensemble's mean - 1 std on the frozen DiT's clean-sample prediction, start step 6-9, window 1, `relu(2 - r)`, KL weight 0.1, no SFT steps.\n\
         - VELR: batch {b}, {} ensemble members from `train_rewards`, start step 6-9, window 2, `x0_hat` jump, KL weight 1, {velr_align}, {velr_score}.\n\
         - GRPO: {}; the reward is the VELR ensemble's mean - {} std (latent; `grpo latent aligned`: with VELR's online alignment of the members on the rollouts every {} updates, as `post_train`) or the pixel oracle of every decoded sample (pixel).\n\n\
         | method | steps | held-out reward before | after | change |\n|---|---|---|---|---|\n",
        args.seconds, args.lr, args.heldout, args.eval_every, args.members,
        common::grpo_settings(&args.grpo, args.grpo_prompts), args.grpo_lcb, common::GRPO_ALIGN_EVERY, b = args.batch
    );
    for (name, mut runner) in runs {
        let before = evaluate(&runner)?;
        let mut points = vec![(0.0, before)];
        let (mut trained, mut next_eval, mut steps) = (0.0, args.eval_every, 0usize);
        println!("{name}: held-out {before:.4}");
        while trained < args.seconds {
            let t = Instant::now();
            runner.step(&train_set, steps, &models)?;
            trained += t.elapsed().as_secs_f64();
            steps += 1;
            if trained >= next_eval || trained >= args.seconds {
                let r = evaluate(&runner)?;
                println!("  {trained:6.1} s, {steps} steps: held-out {r:.4}");
                points.push((trained, r));
                next_eval += args.eval_every;
            }
        }
        let after = points.last().expect("evaluated").1;
        md += &format!(
            "| {name} | {steps} | {before:.4} | {after:.4} | {:+.4} |\n",
            after - before
        );
        curves.push(Series {
            label: name.into(),
            points,
        });
    }
    std::fs::create_dir_all(&args.out)?;
    let png = args.out.join("comparison.png");
    write_curves_png(&png, "held-out oracle reward", "training seconds", &curves)?;
    md += &format!(
        "\nCurves: `{}` (copied next to this file as `comparison.png`).\n",
        png.display()
    );
    if let Some(dir) = args.report.parent() {
        std::fs::create_dir_all(dir)?;
        let copy = dir.join("comparison.png");
        // a report next to the curves: copying a file onto itself would empty it
        if std::fs::canonicalize(dir)? != std::fs::canonicalize(&args.out)? {
            std::fs::copy(&png, copy)?;
        }
    }
    std::fs::write(&args.report, &md)?;
    println!("{md}");
    Ok(())
}
