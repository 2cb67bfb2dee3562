//! Refines the PRFL process reward model on the policy's own samples, in rounds.
//!
//! A reward model trained on base-model samples alone is exploited by PRFL: the policy finds
//! latents it scores high that the pixel oracle does not (docs/results/comparison.md). Each round here
//! fine-tunes a fresh copy of the DiT with PRFL against the current reward model (the quickstart's
//! settings), samples the tuned policy on training prompts, labels those samples with the oracle,
//! adds them to the preference data (paired by caption with the base samples and rendered videos
//! already there, so "tuned sample vs base sample" pairs teach the model where it was wrong), and
//! fine-tunes the reward model on the union. This is offline reward-model training, as in
//! iterated RLHF: the oracle labels data between runs, and PRFL itself never sees it.
//!
//! ```text
//! cargo run --release -p experiments --bin train_rewards   # base preference data (cached in out/reward-data)
//! cargo run --release -p experiments --bin refine_prm
//! ```
//!
//! Writes the refined model to `--save` (default out/refine-prm; to ship it, copy `prm.mpk` to
//! assets/shapes-world/rewards and its entry of `checksums.json` into that folder's) and a table of every round to `--report` (default
//! out/refine-prm/report.md; docs/results/prm_refinement.md holds the tables of the runs it cites).
//! Flags: `--rounds N`, `--prm-steps N` (reward-model steps per round), `--prompts N`
//! (training prompts sampled per round), `--per-prompt N`, `--prfl-steps N`,
//! `--sft-every N` (PRFL's SFT steps; 0: none, which shows exploitation unmasked),
//! `--fgsm EPS` (adversarial training of the reward model, `InputPerturbation::Fgsm`),
//! `--fit-first N` (steps on the base data before round 0), `--oracle-step H` (adds each base
//! sample's two neighbours along the oracle's latent gradient, `RewardData::oracle_neighbours`,
//! to the data before round 0), `--policy-pairs K` (adds, before round 0, samples of K copies of
//! the DiT with weight noise `--policy-sigma S` times each tensor's RMS, from the base samples'
//! noise, paired with them and each other at gap `--policy-margin M`:
//! `RewardData::policy_neighbours`), `--sobolev N` (N steps of value-and-gradient matching against the
//! oracle before round 0, `latent_reward::fit_gradient_match`, with `--grad-weight W` and
//! `--sobolev-lr LR`), `--refl-generator N` (adds, before round 0, samples of the DiT tuned by N
//! steps of RGB ReFL at `--refl-lr LR`, from the base samples' noise, paired by caption with them),
//! `--blur N` (the starting model with `InputFilter::Binomial { passes: N }` in front of it), `--fresh query|token-mean` (start from a fresh pool and head on the DiT's
//! blocks, with that `Pooling`), `--frozen-trunk` (the same, query pool unless `--fresh` says
//! otherwise, with the blocks frozen: `ProcessReward::freeze_trunk`), `--fit-lr LR` (the learning rate of `--fit-first`),
//! `--data DIR`, `--prm DIR` (starting model), `--models DIR`,
//! `--save DIR`, `--report FILE`.

use latent_reward::OptimConfig;
use std::{path::PathBuf, time::Instant};

use burn::{
    backend::Autodiff,
    module::{AutodiffModule, Module},
};
use diffusion_core::{
    backend::{DefaultBackend, DEFAULT_BACKEND_NAME},
    io::checkpoint::{load_record, save_record},
    train::loss::TimestepSampling,
};
use latent_refl::{
    rgb_refl,
    world::{self, World},
};
use latent_reward::{
    evaluate_pairs, fit_gradient_match, fit_preference, gradient_cosine, FitConfig,
    GradientMatchConfig, InputFilter, InputPerturbation, PairSet, Pooling, PreferenceLoss,
    ProcessReward,
};
use refl_trainer::{
    Evaluate, HeldoutReward, Learner, Method, Prfl, PrflConfig, RgbRefl, SamplingConfig,
};
use shapes_world::{Caption, OracleReward, PolicyNeighboursConfig, RewardData, Split, WorldModels};

type B = DefaultBackend;
type AD = Autodiff<B>;
type Dit = diffusion_core::WanTransformer<AD>;

/// PRFL (or RGB ReFL) as the refinement rounds run it.
#[derive(Debug, Clone)]
struct PrflRun {
    /// Reward steps.
    steps: usize,
    /// Videos per step.
    batch: usize,
    /// Peak learning rate (10 warm-up steps).
    lr: f64,
    /// Reward loss weight.
    lambda: f64,
    /// An SFT step every this many reward steps (0: none).
    sft_every: usize,
    /// Held-out test prompts scored by the oracle.
    heldout: usize,
    /// Evaluations of the held-out reward during the run.
    evals: usize,
}

impl Default for PrflRun {
    fn default() -> Self {
        Self {
            steps: 120,
            batch: 4,
            lr: 5e-5,
            lambda: 0.1,
            sft_every: 1,
            heldout: 32,
            evals: 6,
        }
    }
}

impl PrflRun {
    /// PRFL's settings of this run: 20-step chains (shift 3), a window of one step anywhere but
    /// the last, `lambda * relu(2 - r)`.
    fn prfl(&self) -> PrflConfig {
        PrflConfig {
            batch: self.batch,
            sampling: SamplingConfig {
                steps: 20,
                shift: 3.0,
            },
            lambda: self.lambda,
            sft_every: self.sft_every,
            shards: 2,
            ..PrflConfig::default()
        }
    }

    /// Runs `method` on a fresh copy of the world's DiT into `out` (resuming a checkpoint there)
    /// and returns the tuned models and the held-out reward before and after.
    fn run(
        &self,
        w: &World<AD>,
        method: Box<dyn Method<AD, Dit>>,
        out: &std::path::Path,
    ) -> Result<(WorldModels<B>, f64, f64), Box<dyn std::error::Error>> {
        let mut config = world::learner_config(self.steps, self.lr, out);
        config.eval_every = (self.steps / self.evals.max(1)).max(1);
        let evaluator: HeldoutReward<B, _, OracleReward, Caption> =
            w.heldout_reward(self.heldout)?;
        let before = evaluator.evaluate(&w.models.dit)?;
        let mut learner =
            Learner::new(config, w.models_ad.dit.clone(), method)?.with_evaluator(evaluator);
        learner.run()?;
        let after = learner.evaluate()?.unwrap_or(f64::NAN);
        Ok((world::with_dit(&w.models, learner.policy()), before, after))
    }
}

/// Least oracle-reward gap of a preference pair (as `train_rewards`).
const MARGIN: f32 = 0.05;

struct Args {
    fit_first: usize,
    sobolev: usize,
    sobolev_lr: f64,
    grad_weight: f64,
    oracle_step: Option<f32>,
    policy_pairs: usize,
    policy_sigma: f64,
    policy_margin: f32,
    refl_generator: usize,
    refl_lr: f64,
    input_filter: Option<InputFilter>,
    frozen_trunk: bool,
    fresh: Option<Pooling>,
    fit_lr: f64,
    perturb: InputPerturbation,
    rounds: usize,
    prm_steps: usize,
    prompts: usize,
    per_prompt: usize,
    run: PrflRun,
    data: PathBuf,
    prm: PathBuf,
    models: PathBuf,
    save: PathBuf,
    report: PathBuf,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        fit_first: 0,
        sobolev: 0,
        sobolev_lr: 1e-4,
        grad_weight: 1.0,
        oracle_step: None,
        policy_pairs: 0,
        policy_sigma: 0.02,
        policy_margin: 0.02,
        refl_generator: 0,
        refl_lr: 1e-4,
        input_filter: None,
        frozen_trunk: false,
        fresh: None,
        fit_lr: 1e-4,
        perturb: InputPerturbation::None,
        rounds: 3,
        prm_steps: 300,
        prompts: 96,
        per_prompt: 4,
        run: PrflRun::default(),
        data: "out/reward-data".into(),
        prm: "assets/shapes-world/rewards".into(),
        models: "assets/shapes-world".into(),
        save: "out/refine-prm".into(),
        report: "out/refine-prm/report.md".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--rounds" => a.rounds = num(val()?)?,
            "--prm-steps" => a.prm_steps = num(val()?)?,
            "--prompts" => a.prompts = num(val()?)?,
            "--per-prompt" => a.per_prompt = num(val()?)?,
            "--prfl-steps" => a.run.steps = num(val()?)?,
            "--sft-every" => a.run.sft_every = num(val()?)?,
            "--fit-first" => a.fit_first = num(val()?)?,
            "--sobolev" => a.sobolev = num(val()?)?,
            "--sobolev-lr" => {
                a.sobolev_lr = val()?.parse().map_err(|e| format!("--sobolev-lr: {e}"))?
            }
            "--grad-weight" => {
                a.grad_weight = val()?.parse().map_err(|e| format!("--grad-weight: {e}"))?
            }
            "--oracle-step" => {
                let h: f32 = val()?.parse().map_err(|e| format!("--oracle-step: {e}"))?;
                a.oracle_step = Some(h);
            }
            "--policy-pairs" => a.policy_pairs = num(val()?)?,
            "--policy-sigma" => {
                a.policy_sigma = val()?.parse().map_err(|e| format!("--policy-sigma: {e}"))?
            }
            "--policy-margin" => {
                a.policy_margin = val()?
                    .parse()
                    .map_err(|e| format!("--policy-margin: {e}"))?
            }
            "--refl-generator" => a.refl_generator = num(val()?)?,
            "--refl-lr" => a.refl_lr = val()?.parse().map_err(|e| format!("--refl-lr: {e}"))?,
            "--blur" => {
                a.input_filter = Some(InputFilter::Binomial {
                    passes: num(val()?)?,
                })
            }
            "--frozen-trunk" => a.frozen_trunk = true,
            "--fresh" => {
                a.fresh = Some(match val()?.as_str() {
                    "query" => Pooling::Query,
                    "token-mean" => Pooling::TokenMean,
                    other => return Err(format!("--fresh takes query or token-mean, not {other}")),
                })
            }
            "--fit-lr" => a.fit_lr = val()?.parse().map_err(|e| format!("--fit-lr: {e}"))?,
            "--data" => a.data = val()?.into(),
            "--prm" => a.prm = val()?.into(),
            "--models" => a.models = val()?.into(),
            "--save" => a.save = val()?.into(),
            "--report" => a.report = val()?.into(),
            "--fgsm" => {
                let eps: f64 = val()?.parse().map_err(|e| format!("--fgsm: {e}"))?;
                a.perturb = InputPerturbation::Fgsm { eps };
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.per_prompt < 2 || a.prompts == 0 {
        return Err("--per-prompt must be >= 2 and --prompts >= 1".into());
    }
    Ok(a)
}

/// The base preference data `train_rewards` cached for `split` (`<split>_<n>x4_m0.05.json`).
fn cached(args: &Args, name: &str) -> Result<RewardData, String> {
    let path = args.data.join(format!("{name}_m{MARGIN}.json"));
    let mut data = RewardData::load(&path).map_err(|e| {
        format!(
            "cannot load {} (run the train_rewards example first): {e}",
            path.display()
        )
    })?;
    data.pair_by_caption(MARGIN);
    Ok(data)
}

/// The captions of `data`'s samples, in order, each once.
fn captions_of(data: &RewardData) -> Vec<Caption> {
    let mut caps: Vec<Caption> = Vec::new();
    for s in &data.samples {
        if !caps.contains(&s.caption) {
            caps.push(s.caption);
        }
    }
    caps
}

/// `RewardData::policy_neighbours`' settings: `perturbations` policies besides the base, the
/// flags' weight noise and margin, 20 Euler steps.
fn neighbours(args: &Args, perturbations: usize, seed: u64) -> PolicyNeighboursConfig {
    PolicyNeighboursConfig {
        perturbations,
        rel_sigma: args.policy_sigma,
        steps: 20,
        margin: args.policy_margin,
        seed,
    }
}

/// The pairs of `data` (base data with `added` samples appended after index `from`) that
/// involve at least one added sample.
fn pairs_with_added(mut data: RewardData, from: usize) -> RewardData {
    data.pairs.retain(|p| p.winner >= from || p.loser >= from);
    data
}

/// Preference data from a stronger generator: a copy of the DiT tuned by `args.refl_generator`
/// steps of RGB ReFL (the pixel oracle's gradient through the VAE decoder) samples
/// `args.per_prompt` videos for each caption of `train_rewards`' training data, from the same
/// noise as the base samples (`train_rewards`' seed for the split); the oracle labels them and
/// they are paired by caption with the base samples in `pool`. Reward datasets are built from
/// several generators, better ones included; here the better generator's samples differ from
/// the base ones along directions that fine-tuning the DiT can take and that raise the oracle.
/// Returns the test pairs (base test samples of `test_caps` against the tuned generator's).
fn stronger_generator(
    args: &Args,
    w: &World<AD>,
    pool: &mut RewardData,
    test: &RewardData,
    test_caps: &[Caption],
) -> Result<PairSet<B>, Box<dyn std::error::Error>> {
    let t = Instant::now();
    let dev = Default::default();
    let run = PrflRun {
        steps: args.refl_generator,
        lr: args.refl_lr,
        evals: 1,
        ..args.run.clone()
    };
    let config = refl_trainer::RgbReflConfig {
        batch: run.batch,
        ..rgb_refl::shapes_world()
    };
    let method = RgbRefl::new(
        config,
        w.models_ad.vae.clone().no_grad(),
        w.models.latent_norm(),
        OracleReward,
        w.train_prompts(512)?,
        w.latent_shape(),
    )?;
    let (tuned, before, after) = run.run(w, Box::new(method), &args.save.join("refl_generator"))?;
    // the noise of `train_rewards`' samples of each split (its seed: the split's index x 1000)
    let sample = |caps: &[Caption], split: Split| {
        RewardData::generate(
            &tuned,
            caps,
            args.per_prompt,
            20,
            MARGIN,
            split as u64 * 1000,
            &dev,
        )
    };
    let caps = captions_of(pool);
    let added = sample(&caps[..caps.len().min(192)], Split::Train)?;
    let (gen_mean, n) = (added.mean_reward(), added.samples.len());
    pool.extend(added)?;
    pool.pair_by_caption(MARGIN);
    let mut with_test = test.clone();
    let from = with_test.samples.len();
    with_test.extend(sample(test_caps, Split::Test)?)?;
    with_test.pair_by_caption(MARGIN);
    let set = pairs_with_added(with_test, from).pair_set(&w.models, &dev)?;
    println!(
        "RGB ReFL generator ({} steps, lr {:e}): held-out {before:.4} -> {:.4}; {n} training samples, mean reward {gen_mean:.3}; {} pairs in all; {} test pairs ({:.0} s)",
        args.refl_generator,
        args.refl_lr,
        after,
        pool.pairs.len(),
        set.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(set)
}

/// Pairwise accuracy of `prm` on `pairs` at `t/T = 0.0` and `0.6`.
fn accuracy(prm: &ProcessReward<AD>, pairs: &PairSet<B>) -> latent_reward::Result<[f64; 2]> {
    let prm = prm.valid();
    Ok([
        evaluate_pairs(&prm, pairs, 0.0, 17, 32)?,
        evaluate_pairs(&prm, pairs, 0.6, 17, 32)?,
    ])
}

/// `args.prm_steps` (round >= 1) or `args.fit_first` (round 0) steps of the reward model on all
/// pairs of `pool` (Bradley-Terry, batch 16, AdamW lr 1e-4, `args.perturb`); saves it. Returns
/// the model and the seconds taken.
fn refit(
    prm: ProcessReward<AD>,
    pool: &RewardData,
    models: &WorldModels<B>,
    args: &Args,
    round: usize,
) -> Result<(ProcessReward<AD>, f64), Box<dyn std::error::Error>> {
    let fit = FitConfig {
        optim: OptimConfig::constant(if round == 0 { args.fit_lr } else { 1e-4 }, 0.01, Some(1.0)),
        steps: if round == 0 {
            args.fit_first
        } else {
            args.prm_steps
        },
        batch: 16,
        seed: round as u64 + 1,
    };
    let pairs = experiments::to_autodiff_pairs(&pool.pair_set(models, &Default::default())?)?;
    let (prm, report) = fit_preference(
        prm,
        &pairs,
        PreferenceLoss::BradleyTerry,
        Some(TimestepSampling::Uniform { shift: 3.0 }),
        args.perturb,
        &fit,
        &format!("prm round {round}"),
    )?;
    save_record(prm.clone(), &args.save.join("prm.mpk"))?;
    Ok((prm, report.seconds))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    let t_all = Instant::now();
    let dev = Default::default();
    let w = World::<AD>::load(&args.models, &dev)?;
    let (models, models_ad) = (&w.models, &w.models_ad);
    std::fs::create_dir_all(&args.save)?;
    let mut prm = {
        use burn::config::Config;
        let mut cfg = latent_reward::ProcessRewardConfig::load(args.prm.join("prm.json"))?;
        if let Some(filter) = args.input_filter {
            cfg = cfg.with_input_filter(Some(filter));
        }
        let fresh = args.frozen_trunk || args.fresh.is_some();
        if fresh {
            // a fresh pool and head on the pretrained DiT's blocks (which stay as they are with
            // --frozen-trunk): the starting model's config, not its weights
            cfg = cfg.with_pooling(Some(args.fresh.unwrap_or(Pooling::Query)));
        }
        cfg.save(args.save.join("prm.json"))?;
        let model = cfg.init(&models_ad.dit, &dev)?;
        match (fresh, args.frozen_trunk) {
            (_, true) => model.freeze_trunk(),
            (true, false) => model,
            (false, _) => load_record(model, &args.prm.join("prm.mpk"), &dev)?.freeze_embeddings(),
        }
    };
    if let Some(dir) = args.report.parent() {
        std::fs::create_dir_all(dir)?;
    }

    let mut pool = cached(&args, "train_192x4")?;
    if let Some(step) = args.oracle_step {
        let t = Instant::now();
        let moved = pool.oracle_neighbours(models_ad, step, &dev)?;
        let gaps: Vec<f32> = moved
            .samples
            .chunks(2)
            .map(|p| p[0].reward - p[1].reward)
            .collect();
        println!(
            "oracle neighbours at step {step}: {} samples, mean r+ - r- {:.4}, {} of {} above the margin ({:.0} s)",
            moved.samples.len(),
            gaps.iter().sum::<f32>() / gaps.len() as f32,
            gaps.iter().filter(|g| g.abs() >= MARGIN).count(),
            gaps.len(),
            t.elapsed().as_secs_f64()
        );
        pool.extend(moved)?;
        pool.pair_by_caption(MARGIN);
    }
    if args.policy_pairs > 0 {
        let t = Instant::now();
        let near = RewardData::policy_neighbours(
            models,
            &captions_of(&pool),
            &neighbours(&args, args.policy_pairs, 8000),
            &dev,
        )?;
        let n = near.samples.len() / (args.policy_pairs + 1);
        let (mut gap, mut dist) = (0.0f64, 0.0f64);
        // each perturbed policy's sample against the base policy's sample of the same caption
        for (s, b) in near.samples[n..]
            .iter()
            .zip(near.samples[..n].iter().cycle())
        {
            gap += (s.reward - b.reward).abs() as f64;
            let d2: f32 = s
                .latent
                .iter()
                .zip(&b.latent)
                .map(|(x, y)| (x - y).powi(2))
                .sum();
            dist += (d2 / s.latent.len() as f32).sqrt() as f64;
        }
        let m = (near.samples.len() - n) as f64;
        println!(
            "policy neighbours (weight noise {} x rms, {} policies): mean |r' - r| {:.4}, mean rms latent distance {:.4}, {} pairs at margin {} ({:.0} s)",
            args.policy_sigma,
            args.policy_pairs,
            gap / m,
            dist / m,
            near.pairs.len(),
            args.policy_margin,
            t.elapsed().as_secs_f64()
        );
        // keep only the local pairs (same caption, same noise): no re-pairing by caption
        pool.extend(near)?;
    }
    let test = cached(&args, "test_48x4")?;
    let test_pairs = test.pair_set(models, &dev)?;
    // the oracle's gradients on the test samples, once for every round's gradient cosine
    let test_grads = test.gradient_set(models_ad, &dev)?;
    let test_near = match args.policy_pairs {
        0 => None,
        k => {
            let near = RewardData::policy_neighbours(
                models,
                &captions_of(&test),
                &neighbours(&args, k.min(2), 9000),
                &dev,
            )?;
            let set = near.pair_set(models, &dev)?;
            let acc = accuracy(&prm, &set)?;
            println!(
                "starting model on {} test policy-neighbour pairs: accuracy {:.3} / {:.3}",
                set.len(),
                acc[0],
                acc[1]
            );
            Some(set)
        }
    };
    let mut test_caps = captions_of(&test);
    test_caps.truncate(24);
    let refl_test = match args.refl_generator {
        0 => None,
        _ => Some(stronger_generator(&args, &w, &mut pool, &test, &test_caps)?),
    };
    let train_caps = captions_of(&pool);

    let mut md = format!(
        "# Refining the process reward model on the policy's samples\n\n\
         Produced by `cargo run --release -p experiments --bin refine_prm` on the {DEFAULT_BACKEND_NAME} backend (2 CPU cores). \
         Round 0 is the shipped model, trained by `train_rewards` on base-model samples. Each round: PRFL fine-tunes a fresh copy of the DiT against the current reward model \
         ({} steps of {} videos, lr {:e}, lambda {}, {}); the tuned policy samples {} videos for each of {} training prompts, \
         the oracle labels them, they join the preference data (pairs by caption, gap >= {MARGIN}, with the base samples and rendered videos of the same captions), \
         and the reward model trains {} more steps (Bradley-Terry, batch 16, AdamW lr 1e-4, {:?} perturbation) on all of it. \
         Columns: pairwise accuracy at t/T = 0 and 0.6 on the base test pairs, and on test pairs that involve samples of the PRFL-tuned policy \
         (24 test prompts x {}: how well the model ranks what PRFL actually produces); the mean cosine between the reward model's and the oracle's gradients in the latent on the test samples (at t/T = 0 and 0.6); PRFL's held-out oracle reward (32 test prompts) before and after its run.\n\n\
         | round | train pairs | test acc (0 / 0.6) | on-policy test acc (0 / 0.6) | gradient cosine (0 / 0.6) | PRFL held-out before | after | change |\n|---|---|---|---|---|---|---|---|\n",
        args.run.steps,
        args.run.batch,
        args.run.lr,
        args.run.lambda,
        match args.run.sft_every {
            0 => "no SFT steps".to_string(),
            1 => "an SFT step per reward step, as the quickstart".to_string(),
            n => format!("an SFT step every {n} reward steps"),
        },
        args.per_prompt,
        args.prompts,
        args.prm_steps,
        args.perturb,
        args.per_prompt,
    );
    if args.fit_first > 0 {
        let seconds;
        (prm, seconds) = refit(prm, &pool, models, &args, 0)?;
        md = md.replace(
            "Round 0 is the shipped model",
            &format!(
                "Round 0 is the starting model (`--prm`) after {} steps on the base data with {:?} ({seconds:.0} s)",
                args.fit_first, args.perturb
            ),
        );
    }
    if args.sobolev > 0 {
        let t = Instant::now();
        let set = pool.gradient_set(models_ad, &dev)?;
        let grads_s = t.elapsed().as_secs_f64();
        let cfg = GradientMatchConfig {
            weight: args.grad_weight,
            ..GradientMatchConfig::default()
        };
        let fit = FitConfig {
            optim: OptimConfig::constant(args.sobolev_lr, 0.01, Some(1.0)),
            steps: args.sobolev,
            batch: 16,
            seed: 99,
        };
        let (fitted, report) = fit_gradient_match(
            prm,
            &set,
            Some(TimestepSampling::Uniform { shift: 3.0 }),
            &cfg,
            &fit,
            "prm value+gradient",
        )?;
        prm = fitted;
        save_record(prm.clone(), &args.save.join("prm.mpk"))?;
        let tail = &report.losses[report.losses.len().saturating_sub(50)..];
        md = md.replace(
            "Round 0 is the shipped model",
            &format!(
                "Round 0 is the starting model (`--prm`) after {} steps of value-and-gradient matching against the oracle \
                 (`fit_gradient_match`, {:?} directions, gradient weight {}, half-step {}, batch 16, AdamW lr {:e}; oracle gradients of {} samples in {grads_s:.0} s; \
                 loss {:.3} -> {:.3} (mean of the last 50), {:.0} s)",
                args.sobolev,
                cfg.directions,
                cfg.weight,
                cfg.step,
                args.sobolev_lr,
                set.len(),
                report.losses[0],
                tail.iter().sum::<f64>() / tail.len() as f64,
                report.seconds
            ),
        );
    }
    let extra_sets = [
        (
            &refl_test,
            "test pairs that involve samples of the RGB-ReFL-tuned generator (24 test prompts, from the base samples' noise)",
        ),
        (
            &test_near,
            "test policy-neighbour pairs (48 test prompts, 2 perturbed policies, `RewardData::policy_neighbours`)",
        ),
    ];
    for (set, what) in extra_sets {
        if let Some(set) = set {
            let acc = accuracy(&prm, set)?;
            let line = format!(
                "Accuracy on {} {what} of round 0's model: {:.3} / {:.3} (t/T = 0 / 0.6).\n\n",
                set.len(),
                acc[0],
                acc[1]
            );
            print!("{line}");
            md = md.replace("| round |", &format!("{line}| round |"));
        }
    }
    for round in 0..=args.rounds {
        let t_round = Instant::now();
        let out = args.save.join(format!("prfl_{round}"));
        let method = Prfl::<AD, Dit, _, _>::new(
            args.run.prfl(),
            prm.clone().no_grad(),
            w.train_prompts(512)?,
            w.latent_shape(),
            Some(w.sft_data(&world::shuffled_captions(Split::Train, 1, 128))?),
        )?;
        let (tuned, before, after) = args.run.run(&w, Box::new(method), &out)?;

        // how the reward model ranks the tuned policy's samples on held-out prompts
        let onp_test = RewardData::generate(
            &tuned,
            &test_caps,
            args.per_prompt,
            20,
            MARGIN,
            7000 + round as u64,
            &dev,
        )?;
        let mut with_test = test.clone();
        let from = with_test.samples.len();
        with_test.extend(onp_test)?;
        with_test.pair_by_caption(MARGIN);
        let onp_pairs = pairs_with_added(with_test, from).pair_set(models, &dev)?;
        let acc = accuracy(&prm, &test_pairs)?;
        let onp = accuracy(&prm, &onp_pairs)?;
        let cos = [
            gradient_cosine(&prm, &test_grads, 0.0, 23, 16)?,
            gradient_cosine(&prm, &test_grads, 0.6, 23, 16)?,
        ];
        let row = format!(
            "| {round} | {} | {:.3} / {:.3} | {:.3} / {:.3} ({} pairs) | {:.3} / {:.3} | {before:.4} | {after:.4} | {:+.4} |\n",
            pool.pairs.len(),
            acc[0],
            acc[1],
            onp[0],
            onp[1],
            onp_pairs.len(),
            cos[0],
            cos[1],
            after - before
        );
        print!("round {round}: {row}");
        md += &row;
        std::fs::write(&args.report, &md)?;
        if round == args.rounds {
            break;
        }

        // on-policy training data, then the reward model's refinement
        let start = (round * args.prompts) % train_caps.len();
        let caps: Vec<Caption> = train_caps
            .iter()
            .cycle()
            .skip(start)
            .take(args.prompts)
            .copied()
            .collect();
        let onp_train = RewardData::generate(
            &tuned,
            &caps,
            args.per_prompt,
            20,
            MARGIN,
            6000 + round as u64,
            &dev,
        )?;
        pool.extend(onp_train)?;
        pool.pair_by_caption(MARGIN);
        let seconds;
        (prm, seconds) = refit(prm, &pool, models, &args, round + 1)?;
        println!(
            "round {round} took {:.0} s (reward model {seconds:.0} s)",
            t_round.elapsed().as_secs_f64(),
        );
    }
    md += &format!(
        "\nTotal run time {:.1} min.\n",
        t_all.elapsed().as_secs_f64() / 60.0
    );
    std::fs::write(&args.report, &md)?;
    println!("report: {}", args.report.display());
    Ok(())
}
