//! RGB ReFL vs PRFL vs VELR on shapes-world for equal wall time: each method fine-tunes a fresh
//! copy of the shipped DiT for `--seconds` of training time (evaluations excluded), and the
//! held-out oracle reward is measured every `--eval-every` seconds. Writes one PNG with the
//! three curves against training time and a markdown table.
//!
//! ```text
//! cargo run --release --example compare_methods
//! cargo run --release --example compare_methods -- --seconds 120 --report docs/comparison.md
//! ```
//!
//! Needs the process reward model (shipped) and the VELR members `velr_0.mpk ...` that the
//! `train_rewards` example writes to `--rewards` (default assets/shapes-world/rewards).
//! Flags: `--seconds`, `--eval-every`, `--batch`, `--lr`, `--heldout`, `--members`, `--out`,
//! `--report`.

use std::{path::PathBuf, time::Instant};

use burn::{backend::Autodiff, config::Config};
use diffusion_core::{
    backend::DefaultBackend, backend::DEFAULT_BACKEND_NAME, checkpoint::load_record,
};
use ensemble::{Aggregation, Ensemble};
use latent_reward::{ProcessRewardConfig, VelrRewardConfig};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use refl_trainer::{
    write_curves_png, FrameSelection, LatentNorm, LatentRewards, LrSchedule, Method, OptimConfig,
    PrflConfig, PromptSet, RgbReflConfig, RunConfig, SamplingConfig, Series, SftData, Trainer,
    TrainerParts, VelrConfig,
};
use shapes_world::{captions, OracleReward, RewardData, Split, WorldModels};

type B = DefaultBackend;
type AD = Autodiff<B>;

struct Args {
    seconds: f64,
    eval_every: f64,
    batch: usize,
    lr: f64,
    heldout: usize,
    members: usize,
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
            "--models" => a.models = val()?.into(),
            "--rewards" => a.rewards = val()?.into(),
            "--out" => a.out = val()?.into(),
            "--report" => a.report = val()?.into(),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !(a.seconds > 0.0 && a.eval_every > 0.0) || a.members == 0 {
        return Err("--seconds and --eval-every must be > 0, --members >= 1".into());
    }
    Ok(a)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    let dev = Default::default();
    let models = WorldModels::<B>::load(&args.models, &dev)?;
    let models_ad = WorldModels::<AD>::load(&args.models, &dev)?;
    let missing = |what: &str, e: &dyn std::fmt::Display| {
        format!("cannot load {what} (run the train_rewards example): {e}")
    };
    let prm_cfg = ProcessRewardConfig::load(args.rewards.join("prm.json"))
        .map_err(|e| missing("prm.json", &e))?;
    let prm = prm_cfg.init(&models_ad.dit, &dev)?;
    let prm = load_record(prm, &args.rewards.join("prm.mpk"), &dev)?.freeze_embeddings();
    let velr_cfg = VelrRewardConfig::load(args.rewards.join("velr.json"))
        .map_err(|e| missing("velr.json", &e))?;
    let members = (0..args.members)
        .map(|i| {
            let path = args.rewards.join(format!("velr_{i}.mpk"));
            let member = velr_cfg.init::<AD>(&dev).map_err(|e| e.to_string())?;
            load_record(member, &path, &dev).map_err(|e| missing(&path.display().to_string(), &e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ensemble = Ensemble::new(members)?.with_aggregation(Aggregation::Mean);

    let mut train = captions(Split::Train);
    train.shuffle(&mut StdRng::seed_from_u64(1));
    train.truncate(512);
    let mut heldout = captions(Split::Test);
    heldout.shuffle(&mut StdRng::seed_from_u64(2));
    heldout.truncate(args.heldout);
    let train_set = PromptSet::new(train.clone(), models.embed(&train, &dev)?)?;
    let heldout_set = PromptSet::new(heldout.clone(), models.embed(&heldout, &dev)?)?;
    let real = RewardData::real(&models, &train[..128], &train[..128], 3, &dev)?
        .regression_set(&models, &dev)?;
    let sft = SftData {
        latents: real.latents,
        text: real.text,
    };
    let norm = LatentNorm {
        mean: models.config.latent_mean.clone(),
        std: models.config.latent_std.clone(),
    };

    let methods: Vec<(&str, Method, LatentRewards<AD>)> = vec![
        (
            "rgb refl",
            Method::RgbRefl(RgbReflConfig {
                window: 1,
                frames: FrameSelection::All,
                lambda: 1.0,
            }),
            LatentRewards::Pixel,
        ),
        (
            "prfl",
            Method::Prfl(PrflConfig {
                start: None,
                window: 1,
                lambda: 1.0,
                margin: 2.0,
                sft_every: 1,
            }),
            LatentRewards::Process(prm),
        ),
        (
            "velr",
            Method::Velr(VelrConfig {
                start: [6, 10],
                window: 2,
                kl_beta: 1.0,
                aggregation: Aggregation::Mean,
                buffer: 64,
                label_every: 1,
                align_every: 10,
                align_steps: 4,
                align_lr: 1e-5,
            }),
            LatentRewards::Ensemble(ensemble),
        ),
    ];
    let mut curves = Vec::new();
    let mut md = format!(
        "# RGB ReFL vs PRFL vs VELR at equal wall time\n\nProduced by `cargo run --release --example compare_methods -- --seconds {} --eval-every {}` on the {DEFAULT_BACKEND_NAME} backend (2 CPU cores): \
         each method fine-tunes a fresh copy of the shipped shapes-world DiT for {} s of training time (batch {}, AdamW lr {:e}, 20 Euler steps, shift 3); \
         the held-out oracle reward is the mean over {} test prompts (fixed noise), measured every {} s outside the timed training. \
         RGB ReFL: window 1 at the end of the chain, all frames decoded, `-r`. PRFL: shipped process reward model, window 1, `relu(2 - r)`, an SFT step per reward step. \
         VELR: {} ensemble members from `train_rewards`, start step 6-9, window 2, `x0_hat` jump, KL weight 1, buffer labelled every step, alignment every 10 steps.\n\n\
         | method | steps | held-out reward before | after | change |\n|---|---|---|---|---|\n",
        args.seconds, args.eval_every, args.seconds, args.batch, args.lr, args.heldout, args.eval_every, args.members
    );
    for (name, method, reward) in methods {
        let out = args.out.join(name.replace(' ', "_"));
        let _ = std::fs::remove_dir_all(&out);
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
            out,
        };
        let mut trainer = Trainer::new(TrainerParts {
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
        })?;
        let before = trainer.heldout_reward()?;
        let mut points = vec![(0.0, before)];
        let (mut trained, mut next_eval) = (0.0, args.eval_every);
        println!("{name}: held-out {before:.4}");
        while trained < args.seconds {
            let t = Instant::now();
            trainer.train_step()?;
            trained += t.elapsed().as_secs_f64();
            if trained >= next_eval || trained >= args.seconds {
                let r = trainer.heldout_reward()?;
                println!(
                    "  {trained:6.1} s, {} steps: held-out {r:.4}",
                    trainer.step()
                );
                points.push((trained, r));
                next_eval += args.eval_every;
            }
        }
        let after = points.last().expect("evaluated").1;
        md += &format!(
            "| {name} | {} | {before:.4} | {after:.4} | {:+.4} |\n",
            trainer.step(),
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
        std::fs::copy(&png, dir.join("comparison.png"))?;
    }
    std::fs::write(&args.report, &md)?;
    println!("{md}");
    Ok(())
}
