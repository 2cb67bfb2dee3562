//! The quickstart: PRFL on the shipped shapes-world models, on the CPU, in minutes.
//!
//! Loads the pretrained world (VAE, text encoder, DiT) and the shipped VELR ensemble, and
//! fine-tunes the DiT with process reward feedback learning: no-grad rollout to a mid-noise step,
//! one step with gradients, and a process reward on the noisy latent there, with no VAE decoding
//! in the loop. The process reward is the ensemble's lower confidence bound on the frozen DiT's
//! prediction of the clean sample (`latent_reward::DenoisedReward`). It reports the held-out
//! pixel-oracle reward, which the trainer never sees, before and after (and the oracle's terms
//! on a second noise seed). Writes GIFs before/after, a PNG of the reward curves and the metrics
//! log to `--out` (default out/quickstart).
//!
//! ```text
//! cargo run --release --example quickstart
//! ```
//!
//! Flags: `--steps N`, `--batch N`, `--lr X`, `--lambda X` (reward loss weight), `--margin X`
//! (the loss is `relu(X - r)`; default 2, every sample pushed), `--kl X` (weight of the KL to
//! the initial model), `--sft-every N` (an SFT step every N reward steps, 0: none),
//! `--start A,B` (range of the gradient window's start step), `--heldout N` (test prompts
//! scored), `--models DIR`, `--out DIR`; the process reward: `--denoised-velr DIR` (the default,
//! assets/shapes-world/rewards), `--process-velr DIR` (the noise-aware VELR ensemble that
//! `train_rewards` saves), `--prm DIR[,DIR...]` (PRFL's reward model on the DiT's first blocks;
//! several: their ensemble), `--members N` (VELR members, default 5), `--lcb K` (ensembles are
//! scored by mean - K std, default 1).

use std::{path::PathBuf, time::Instant};

use burn::backend::Autodiff;
use diffusion_core::{backend::DefaultBackend, backend::DEFAULT_BACKEND_NAME};
use ensemble::{Aggregation, Ensemble};
use refl_trainer::{write_curves_png, LatentRewards, Series};
use shapes_world::{write_gif, Caption, OracleReward, Video, WorldModels};

mod common;

type B = DefaultBackend;
type AD = Autodiff<B>;

/// PRFL's process reward: which model scores the noisy latents.
enum ProcessRewardChoice {
    /// The noise-aware VELR ensemble that `train_rewards` saved in the directory
    /// (`process_velr.json`, `process_velr_{i}.mpk`), scored by its lower confidence bound.
    NoiseAwareVelr(PathBuf),
    /// The clean-latent VELR ensemble that `train_rewards` saved in the directory
    /// (`velr.json`, `velr_{i}.mpk`) on the frozen DiT's prediction of the clean sample
    /// (`DenoisedReward`), scored by its lower confidence bound.
    DenoisedVelr(PathBuf),
    /// PRFL's reward model on the DiT's first blocks (`prm.json`, `prm.mpk`), or several of them
    /// scored by their lower confidence bound.
    DitTrunk(Vec<PathBuf>),
}

struct Args {
    run: common::PrflRun,
    models: PathBuf,
    reward: ProcessRewardChoice,
    /// VELR members used (the first of those saved).
    members: usize,
    lcb: f64,
    out: PathBuf,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        run: common::PrflRun::denoised_recipe(),
        models: "assets/shapes-world".into(),
        reward: ProcessRewardChoice::DenoisedVelr("assets/shapes-world/rewards".into()),
        members: 5,
        lcb: 1.0,
        out: "out/quickstart".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--steps" => a.run.steps = num(val()?)?,
            "--batch" => a.run.batch = num(val()?)?,
            "--lr" => a.run.lr = val()?.parse().map_err(|e| format!("--lr: {e}"))?,
            "--lambda" => a.run.lambda = val()?.parse().map_err(|e| format!("--lambda: {e}"))?,
            "--margin" => a.run.margin = val()?.parse().map_err(|e| format!("--margin: {e}"))?,
            "--sft-every" => a.run.sft_every = num(val()?)?,
            "--kl" => a.run.kl_beta = val()?.parse().map_err(|e| format!("--kl: {e}"))?,
            "--start" => {
                let v: Vec<usize> = val()?
                    .split(',')
                    .map(|x| x.parse().map_err(|e| format!("--start: {e}")))
                    .collect::<Result<_, _>>()?;
                a.run.start = Some(v.try_into().map_err(|_| "--start takes A,B")?);
            }
            "--heldout" => a.run.heldout = num(val()?)?,
            "--models" => a.models = val()?.into(),
            "--prm" => {
                a.reward =
                    ProcessRewardChoice::DitTrunk(val()?.split(',').map(PathBuf::from).collect())
            }
            "--process-velr" => a.reward = ProcessRewardChoice::NoiseAwareVelr(val()?.into()),
            "--denoised-velr" => a.reward = ProcessRewardChoice::DenoisedVelr(val()?.into()),
            "--members" => a.members = num(val()?)?,
            "--lcb" => a.lcb = val()?.parse().map_err(|e| format!("--lcb: {e}"))?,
            "--out" => a.out = val()?.into(),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.members == 0 {
        return Err("--members must be >= 1".into());
    }
    Ok(a)
}

fn gifs(
    models: &WorldModels<B>,
    prompts: &[Caption],
    dir: &std::path::Path,
    tag: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let z = models.sample_latents(prompts, 20, 3.0, 7, &Default::default())?;
    let video = models.decode(z);
    let r = OracleReward.score(video.clone(), prompts)?;
    let r: Vec<f32> = r.into_data().to_vec().map_err(|e| format!("{e:?}"))?;
    for (i, p) in prompts.iter().enumerate() {
        let v = Video::from_tensor(video.clone().narrow(0, i, 1).squeeze_dim::<4>(0))?;
        let path = dir.join(format!("{tag}_{i}.gif"));
        write_gif(&path, &v, 3, 100)?;
        println!("  {tag} {:.3}  {p}  -> {}", r[i], path.display());
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    let t0 = Instant::now();
    let dev = Default::default();
    let missing = |what: &str, e: &dyn std::fmt::Display| format!("cannot load {what}: {e}");
    let models =
        WorldModels::<B>::load(&args.models, &dev).map_err(|e| missing("the world models", &e))?;
    let models_ad = WorldModels::<AD>::load(&args.models, &dev)?;
    let lcb = Aggregation::LowerConfidenceBound { k: args.lcb };
    let reward = match &args.reward {
        ProcessRewardChoice::NoiseAwareVelr(dir) => {
            let members = args.members;
            let ens = common::load_velr_members::<AD>(dir, "process_velr", members, &dev)?;
            println!(
                "process reward: the noise-aware VELR ensemble of {members} in {}, mean - {} std",
                dir.display(),
                args.lcb
            );
            LatentRewards::Ensemble(Ensemble::new(ens)?.with_aggregation(lcb))
        }
        ProcessRewardChoice::DenoisedVelr(dir) => {
            let members = args.members;
            let ens = common::load_velr_members::<AD>(dir, "velr", members, &dev)?;
            println!(
                "process reward: the VELR ensemble of {members} in {} on the frozen DiT's clean-sample prediction, mean - {} std",
                dir.display(),
                args.lcb
            );
            common::denoised_velr(&models_ad.dit, ens, args.lcb)?
        }
        ProcessRewardChoice::DitTrunk(dirs) => {
            let prms = dirs
                .iter()
                .map(|dir| common::load_prm(&models_ad.dit, dir, &dev))
                .collect::<Result<Vec<_>, _>>()?;
            match prms.len() {
                1 => LatentRewards::Process(prms.into_iter().next().expect("one")),
                n => {
                    println!(
                        "{n} process reward models, lower confidence bound mean - {} std",
                        args.lcb
                    );
                    LatentRewards::ProcessEnsemble(Ensemble::new(prms)?.with_aggregation(lcb))
                }
            }
        }
    };
    println!("backend {DEFAULT_BACKEND_NAME}; models and process reward model loaded");

    let out = args.out.clone();
    std::fs::create_dir_all(&out)?;
    let (mut trainer, heldout) =
        common::prfl_trainer(&models, &models_ad, reward, &args.run, &out.join("run"))?;
    // the run's config, loadable with `RunConfig::load`
    std::fs::write(
        out.join("config.json"),
        serde_json::to_string_pretty(trainer.config())?,
    )?;
    let show: Vec<Caption> = heldout.iter().copied().take(4).collect();
    println!("before fine-tuning:");
    gifs(&models, &show, &out, "before")?;
    let before = trainer.heldout_reward()?;
    let terms_before = common::OracleTerms::of(&models, &heldout, &dev)?;
    println!(
        "held-out oracle reward before: {before:.4} ({} test prompts)",
        heldout.len()
    );
    let t_train = Instant::now();
    let metrics = trainer.run()?;
    let train_secs = t_train.elapsed().as_secs_f64();
    let after = metrics
        .last()
        .and_then(|m| m.heldout_reward)
        .unwrap_or(f64::NAN);
    let mut tuned = models.clone();
    tuned.dit = burn::module::AutodiffModule::valid(&trainer.policy);
    println!("after fine-tuning:");
    gifs(&tuned, &show, &out, "after")?;
    let terms_after = common::OracleTerms::of(&tuned, &heldout, &dev)?;
    let (change, se) = terms_before.paired_change(&terms_after);
    println!(
        "\noracle on the held-out prompts from a second noise seed: change {change:+.4} +- {se:.4} (standard error of the paired mean); terms before -> after:"
    );
    for ((name, b), a) in common::ORACLE_TERMS
        .iter()
        .zip(terms_before.means)
        .zip(terms_after.means)
    {
        println!("  {name:<10} {b:.4} -> {a:.4} ({:+.4})", a - b);
    }

    // curves: latent reward (smoothed over 10 steps) and held-out oracle reward
    let lat: Vec<f64> = metrics
        .iter()
        .map(|m| m.latent_reward.unwrap_or(f64::NAN))
        .collect();
    let smooth: Vec<(f64, f64)> = (0..lat.len())
        .map(|i| {
            let w = &lat[i.saturating_sub(9)..=i];
            (i as f64 + 1.0, w.iter().sum::<f64>() / w.len() as f64)
        })
        .collect();
    let mut held = vec![(0.0, before)];
    held.extend(
        metrics
            .iter()
            .filter_map(|m| m.heldout_reward.map(|r| (m.step as f64 + 1.0, r))),
    );
    write_curves_png(
        &out.join("rewards.png"),
        "prfl on shapes-world",
        "step",
        &[
            Series {
                label: "process reward (train)".into(),
                points: smooth,
            },
            Series {
                label: "held-out oracle".into(),
                points: held.clone(),
            },
        ],
    )?;
    println!(
        "\nheld-out oracle reward: {before:.4} -> {after:.4} ({:+.4}) after {} PRFL steps of {} videos; {:.1} s training, {:.1} min total",
        after - before,
        args.run.steps,
        args.run.batch,
        train_secs,
        t0.elapsed().as_secs_f64() / 60.0
    );
    println!(
        "curves: {}; GIFs, config.json and run/metrics.jsonl in {}",
        out.join("rewards.png").display(),
        out.display()
    );
    Ok(())
}
