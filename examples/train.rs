//! Post-trains a Wan2.1 transformer from diffusers folders with any method, from one TOML file:
//! the transformer and VAE folders, the cached prompt embeddings
//! (`scripts/encode_prompts.py`), LoRA or full weights, the rewards, the method and its
//! settings, the run (steps, optimiser, checkpoints). A run stopped and started again with the
//! same config resumes from its last checkpoint. LoRA runs write the adapter in the PEFT layout
//! diffusers loads (`pytorch_lora_weights.safetensors`), full runs the transformer folder.
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

use std::path::{Path, PathBuf};

use burn::{
    backend::Autodiff,
    module::{AutodiffModule, Module},
    tensor::{backend::Backend, TensorData},
};
use clap::Parser;
use latent_refl::{
    diffusion_core::{
        backend::DEFAULT_BACKEND_NAME,
        io::{checkpoint::SaveLayout, tensor_files::TensorFiles},
        models::wan_vae::WanVae,
        ops::lora::LoraConfig,
        FlowMatchScheduleConfig, WanTransformer,
    },
    ensemble::Ensemble,
    grpo::GrpoConfig,
    grpo::LatentScore,
    latent_reward::{ProcessRewardConfig, VelrRewardConfig},
    prelude::*,
    refl_trainer::{
        HeldoutReward, LearnerConfig, Method, PromptFile, PromptSet, RgbReflConfig, SftConfig,
        SftData, TrainError, VelrConfig,
    },
    world::OracleText,
};
use serde::{Deserialize, Serialize};

type AD = Autodiff<DefaultBackend>;
type Inner = DefaultBackend;
type Dit = WanTransformer<AD>;

/// The run, as the TOML file spells it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainConfig {
    /// The backend this binary was built for: "cpu", "wgpu" or "cuda" (cargo feature).
    backend: String,
    model: ModelConfig,
    /// Train low-rank adapters instead of every weight.
    #[serde(default)]
    lora: Option<LoraConfig>,
    reward: RewardConfig,
    /// Real latents for SFT steps (the SFT method, PRFL's `sft_every`).
    #[serde(default)]
    data: Option<DataConfig>,
    method: MethodConfig,
    learner: LearnerConfig,
    /// What is written after the last step.
    #[serde(default)]
    save: SaveConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelConfig {
    /// The transformer folder (diffusers layout; sharded or not; F32/F16/BF16).
    transformer: PathBuf,
    /// The VAE folder (decodes for RGB ReFL, VELR's labels and the evaluation).
    vae: PathBuf,
    /// Prompt embeddings from `scripts/encode_prompts.py`.
    prompts: PathBuf,
    /// Video `[frames, height, width]` the latents stand for.
    video: [usize; 3],
    /// Prompts held out for evaluation (the file's last ones).
    heldout: usize,
    /// Sampling steps of the evaluation.
    #[serde(default = "eval_steps")]
    eval_steps: usize,
}

fn eval_steps() -> usize {
    20
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RewardConfig {
    /// The pixel reward of RGB ReFL, VELR's labels and the evaluation. The one a config can
    /// name is "shapes_oracle" (prompts must be shapes-world captions); others plug in through
    /// the library (`PixelReward`).
    pixel: String,
    /// PRFL's and GRPO's latent reward: a process reward on the initial transformer's first
    /// blocks; `weights` loads a trained one (`save_record`), else it starts from the seed.
    process: ProcessRewardConfig,
    #[serde(default)]
    process_weights: Option<PathBuf>,
    /// VELR's ensemble: `members` models, aligned online to the pixel reward.
    velr: VelrMembers,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VelrMembers {
    members: usize,
    /// Block widths and strides of fresh members (latent shape and text width come from the
    /// model).
    channels: Vec<usize>,
    strides: Vec<[usize; 3]>,
    /// Or trained members: `velr.json` and `velr_0.mpk`, ... in this folder.
    #[serde(default)]
    dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataConfig {
    /// Render this many shapes-world videos per training prompt and encode them with the VAE.
    #[serde(default)]
    shapes_world_videos: Option<usize>,
    /// Or a file of VAE latents: `latents` `[N, C, F, H, W]` (unnormalised, as the VAE's
    /// posterior means) and `prompt_index` `[N]` (rows of the prompt file).
    #[serde(default)]
    latents: Option<PathBuf>,
}

/// The method and its settings (`kind` names it; the other keys are its config's).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum MethodConfig {
    Prfl(PrflConfig),
    Velr(VelrConfig),
    Grpo(GrpoConfig),
    RgbRefl(RgbReflConfig),
    Sft(SftConfig),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SaveConfig {
    /// Also write the full transformer folder of a LoRA run (adapters merged).
    #[serde(default)]
    merged: bool,
    /// Layout of a written transformer folder (default f32, 10 GB shards).
    #[serde(default)]
    layout: Option<SaveLayout>,
}

/// Post-trains a Wan2.1 transformer from a TOML config.
#[derive(Parser)]
struct Args {
    /// The run's config.
    #[arg(long, required_unless_present = "print_config")]
    config: Option<PathBuf>,
    /// Print a complete config for this method (prfl, velr, grpo, rgb_refl, sft) and exit.
    #[arg(long)]
    print_config: Option<String>,
}

/// Reads the TOML file; relative paths are relative to the working directory.
fn load(path: &Path) -> Result<TrainConfig, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::ConfigFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let cfg: TrainConfig = toml::from_str(&text).map_err(|e| TrainError::ConfigFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let built = DEFAULT_BACKEND_NAME
        .split(' ')
        .next_back()
        .unwrap_or_default();
    if !DEFAULT_BACKEND_NAME.contains(cfg.backend.as_str()) || cfg.backend.is_empty() {
        return Err(TrainError::Config {
            field: "backend".into(),
            reason: format!(
                "`{}`, but this binary runs on {DEFAULT_BACKEND_NAME}: set `backend = \"{}\"` or build with `--features {}`",
                cfg.backend,
                built.trim_matches(|c| c == '(' || c == ')'),
                cfg.backend
            ),
        });
    }
    Ok(cfg)
}

/// A complete config for `method` on the tiny pipeline.
fn template(method: &str) -> Result<TrainConfig, TrainError> {
    let sampling = SamplingConfig {
        steps: 8,
        shift: 3.0,
    };
    let method = match method {
        "prfl" => MethodConfig::Prfl(PrflConfig {
            sampling,
            sft_every: 2,
            ..PrflConfig::default()
        }),
        "velr" => MethodConfig::Velr(VelrConfig {
            sampling,
            start: [2, 6],
            window: 2,
            buffer: 16,
            align_every: 2,
            align_steps: 2,
            ..VelrConfig::default()
        }),
        "grpo" => MethodConfig::Grpo(GrpoConfig {
            prompts: 2,
            group: 2,
            steps: 6,
            ..GrpoConfig::default()
        }),
        "rgb_refl" => MethodConfig::RgbRefl(RgbReflConfig {
            sampling,
            ..RgbReflConfig::default()
        }),
        "sft" => MethodConfig::Sft(SftConfig {
            batch: 2,
            timesteps: latent_refl::diffusion_core::train::loss::TimestepSampling::Uniform {
                shift: 3.0,
            },
            shards: 1,
        }),
        other => {
            return Err(TrainError::Config {
                field: "--print-config".into(),
                reason: format!("unknown method `{other}` (prfl, velr, grpo, rgb_refl, sft)"),
            })
        }
    };
    let name = match &method {
        MethodConfig::Prfl(_) => "prfl",
        MethodConfig::Velr(_) => "velr",
        MethodConfig::Grpo(_) => "grpo",
        MethodConfig::RgbRefl(_) => "rgb_refl",
        MethodConfig::Sft(_) => "sft",
    };
    let mut learner = LearnerConfig::new(4, format!("out/train/tiny-wan-{name}"));
    learner.optim.lr = 1e-3;
    Ok(TrainConfig {
        backend: "cpu".into(),
        model: ModelConfig {
            transformer: "assets/tiny-wan/transformer".into(),
            vae: "assets/tiny-wan/vae".into(),
            prompts: "assets/tiny-wan/prompts.safetensors".into(),
            video: [5, 32, 32],
            heldout: 2,
            eval_steps: 8,
        },
        lora: Some(LoraConfig::new(4)),
        reward: RewardConfig {
            pixel: "shapes_oracle".into(),
            process: ProcessRewardConfig::new(1).with_head(vec![16]),
            process_weights: None,
            velr: VelrMembers {
                members: 2,
                channels: vec![8, 8],
                strides: vec![[1, 1, 1], [1, 1, 1]],
                dir: None,
            },
        },
        data: Some(DataConfig {
            shapes_world_videos: Some(1),
            latents: None,
        }),
        method,
        learner,
        save: SaveConfig::default(),
    })
}

/// `[N]` rows of `prompts` with `[N, C, F, H, W]` normalised latents: rendered shapes-world
/// videos of the training prompts, or a latents file.
fn sft_data(
    data: &DataConfig,
    vae: &WanVae<Inner>,
    train: &PromptSet<Inner, String>,
    video: [usize; 3],
) -> Result<SftData<Inner>, Box<dyn std::error::Error>> {
    let dev = Default::default();
    let norm = vae.latent_norm();
    let (latents, rows) = match (&data.shapes_world_videos, &data.latents) {
        (Some(n), None) => {
            let [frames, height, width] = video;
            let config = shapes_world::VideoConfig {
                frames,
                height,
                width,
            };
            let mut videos = Vec::new();
            let mut rows = Vec::new();
            for (i, prompt) in train.prompts.iter().enumerate() {
                let caption: shapes_world::Caption = prompt.parse()?;
                for k in 0..*n {
                    let v = shapes_world::render(&caption, config, (i * 1000 + k) as u64)?;
                    // [3, F, H, W] in [0, 1] -> [-1, 1]
                    videos.push(v.to_tensor::<Inner>(&dev).mul_scalar(2.0).sub_scalar(1.0));
                    rows.push(i);
                }
            }
            let videos = burn::tensor::Tensor::stack(videos, 0);
            (norm.encode(vae, videos), rows)
        }
        (None, Some(path)) => {
            let files = TensorFiles::open_file(path)?;
            let (shape, values) = files.read_f32("latents")?;
            let (_, index) = files.read_i64("prompt_index")?;
            let n = train.len() as i64;
            if shape.len() != 5 || index.len() != shape[0] || index.iter().any(|&i| i < 0 || i >= n)
            {
                return Err(format!(
                    "{}: `latents` must be [N, C, F, H, W] with N `prompt_index` rows in 0..{n}",
                    path.display()
                )
                .into());
            }
            let latents = burn::tensor::Tensor::from_data(TensorData::new(values, shape), &dev);
            let (mean, std) = (
                burn::tensor::Tensor::<Inner, 1>::from_floats(norm.mean.as_slice(), &dev),
                burn::tensor::Tensor::<Inner, 1>::from_floats(norm.std.as_slice(), &dev),
            );
            let c = norm.mean.len();
            let latents = (latents - mean.reshape([1, c, 1, 1, 1])) / std.reshape([1, c, 1, 1, 1]);
            (latents, index.iter().map(|&i| i as usize).collect())
        }
        _ => return Err("`data`: give exactly one of `shapes_world_videos` and `latents`".into()),
    };
    let (_, text) = train.batch(&rows);
    Ok(SftData::new(latents, text)?)
}

/// Trains `method` on `policy`, evaluates, saves.
fn run<M: Method<AD, Dit>>(
    cfg: &TrainConfig,
    policy: Dit,
    method: M,
    evaluator: HeldoutReward<Inner, WanVae<Inner>, OracleText, String>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut learner = Learner::new(cfg.learner.clone(), policy, method)?.with_evaluator(evaluator);
    if learner.step() > 0 {
        println!(
            "resuming at step {} of {}",
            learner.step(),
            cfg.learner.steps
        );
    }
    let t = std::time::Instant::now();
    let metrics = learner.run()?;
    let last = metrics.last();
    println!(
        "{} steps in {:.1} s; last loss {:?}, held-out reward {:?}",
        metrics.len(),
        t.elapsed().as_secs_f64(),
        last.and_then(|m| m.loss),
        last.and_then(|m| m.heldout_reward)
    );
    let out = &cfg.learner.out;
    let layout = cfg.save.layout.unwrap_or_default();
    let policy = learner.policy().valid();
    if cfg.lora.is_some() {
        let path = out.join(latent_refl::diffusion_core::models::wan::LORA_WEIGHTS);
        policy.save_lora(&path)?;
        println!("adapters: {}", path.display());
        if cfg.save.merged {
            policy
                .merge_lora()
                .save_folder(out.join("transformer"), layout)?;
        }
    } else {
        policy.save_folder(out.join("transformer"), layout)?;
        println!("transformer: {}", out.join("transformer").display());
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(method) = &args.print_config {
        print!("{}", toml::to_string(&template(method)?)?);
        return Ok(());
    }
    let cfg = load(args.config.as_deref().expect("clap requires --config"))?;
    let dev = Default::default();
    AD::seed(&dev, cfg.learner.seed);

    let base = WanTransformer::<AD>::load_folder(&cfg.model.transformer, &dev)?;
    let vae = WanVae::<Inner>::load_folder(&cfg.model.vae, &dev)?;
    let text_dim = base.config().text_dim;
    let file = PromptFile::<Inner>::load(&cfg.model.prompts, text_dim, &dev)?;
    let [frames, height, width] = cfg.model.video;
    let [_, c, f, h, w] = vae.checked_latent_shape([1, 3, frames, height, width])?;
    let latent_shape = [c, f, h, w];
    let n = file.prompts.len();
    if cfg.model.heldout == 0 || cfg.model.heldout >= n {
        return Err(format!(
            "model.heldout: {} not in 1..{n} (the file's prompts)",
            cfg.model.heldout
        )
        .into());
    }
    let split = |range: std::ops::Range<usize>| -> Result<PromptSet<Inner, String>, TrainError> {
        let idx: Vec<usize> = range.collect();
        let (prompts, text) = file.prompts.batch(&idx);
        PromptSet::new(prompts, text)
    };
    let train = split(0..n - cfg.model.heldout)?;
    let heldout = split(n - cfg.model.heldout..n)?;
    if cfg.reward.pixel != "shapes_oracle" {
        return Err(format!(
            "reward.pixel: `{}` is not a pixel reward this example knows (shapes_oracle)",
            cfg.reward.pixel
        )
        .into());
    }
    let evaluator = HeldoutReward {
        vae: vae.clone(),
        norm: vae.latent_norm(),
        pixel: OracleText,
        prompts: heldout,
        schedule: FlowMatchScheduleConfig::new(cfg.model.eval_steps)
            .with_shift(3.0)
            .init()?,
        latent_shape,
    };
    let policy = match &cfg.lora {
        Some(lora) => base.clone().with_lora(lora, &dev)?,
        None => base.clone(),
    };
    let process = || -> Result<_, Box<dyn std::error::Error>> {
        let prm = cfg.reward.process.init(&base, &dev)?;
        let prm = match &cfg.reward.process_weights {
            Some(path) => {
                latent_refl::diffusion_core::io::checkpoint::load_record(prm, path, &dev)?
            }
            None => prm,
        };
        Ok(prm.no_grad())
    };
    let sft = |needed: bool| -> Result<Option<SftData<Inner>>, Box<dyn std::error::Error>> {
        match (&cfg.data, needed) {
            (Some(data), true) => Ok(Some(sft_data(data, &vae, &train, cfg.model.video)?)),
            (None, true) => Err("this method needs `data` (real latents for its SFT steps)".into()),
            (_, false) => Ok(None),
        }
    };
    match &cfg.method {
        MethodConfig::Prfl(m) => {
            let method = Prfl::new(
                m.clone(),
                process()?,
                train.clone(),
                latent_shape,
                sft(m.sft_every > 0)?,
            )?;
            run(&cfg, policy, method, evaluator)
        }
        MethodConfig::Grpo(m) => {
            let method = Grpo::new(
                m.clone(),
                LatentScore(process()?.valid()),
                train.clone(),
                latent_shape,
            )?;
            run(&cfg, policy, method, evaluator)
        }
        MethodConfig::Velr(m) => {
            let v = &cfg.reward.velr;
            let member_cfg = VelrRewardConfig::new(latent_shape, text_dim)
                .with_channels(v.channels.clone())
                .with_strides(v.strides.clone());
            let members = match &v.dir {
                Some(dir) => {
                    latent_refl::world::load_velr_members::<AD>(dir, "velr", v.members, &dev)?
                }
                None => (0..v.members)
                    .map(|_| member_cfg.init::<AD>(&dev))
                    .collect::<Result<Vec<_>, _>>()?,
            };
            let method = Velr::new(
                m.clone(),
                Ensemble::new(members)?,
                vae.clone(),
                vae.latent_norm(),
                OracleText,
                train.clone(),
                latent_shape,
            )?;
            run(&cfg, policy, method, evaluator)
        }
        MethodConfig::RgbRefl(m) => {
            let vae_ad = WanVae::<AD>::load_folder(&cfg.model.vae, &dev)?.no_grad();
            let method = RgbRefl::new(
                m.clone(),
                vae_ad,
                vae.latent_norm(),
                OracleText,
                train.clone(),
                latent_shape,
            )?;
            run(&cfg, policy, method, evaluator)
        }
        MethodConfig::Sft(m) => {
            let data = sft(true)?.expect("needed");
            run(&cfg, policy, Sft::new(m.clone(), data)?, evaluator)
        }
    }
}
