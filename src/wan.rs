//! A Wan2.1 post-training run from one config: the transformer and VAE folders (diffusers
//! layout), the cached prompt embeddings (`scripts/encode_prompts.py`), LoRA or full weights,
//! the rewards, the method and its settings, the learner (steps, optimiser, checkpoints) and
//! what is saved. [`TrainConfig::run`] builds the run and trains; stopped and started again with
//! the same config, it resumes from its last checkpoint. LoRA runs write the adapter in the PEFT
//! layout diffusers loads (`pytorch_lora_weights.safetensors`), full runs the transformer folder.
//!
//! `examples/train.rs` is the command line over this module; `examples/configs/` holds a config
//! per method on `assets/tiny-wan` ([`TrainConfig::template`] writes them).

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
};

use burn::{
    backend::Autodiff,
    module::{AutodiffModule, Module},
    tensor::{backend::Backend, Tensor, TensorData},
};
use diffusion_core::{
    io::{
        checkpoint::{load_record, SaveLayout},
        tensor_files::TensorFiles,
    },
    models::{wan::LORA_WEIGHTS, wan_vae::WanVae},
    ops::lora::LoraConfig,
    train::{checkpointing::Checkpointing, loss::TimestepSampling, precision::Precision},
    CoreError, FlowMatchScheduleConfig, WanTransformer,
};
use ensemble::Ensemble;
use grpo::{GrpoConfig, LatentScore};
use latent_reward::{ProcessRewardConfig, VelrRewardConfig};
use refl_trainer::{
    Grpo, HeldoutReward, Learner, LearnerConfig, Method, Prfl, PrflConfig, PromptFile, PromptSet,
    RgbRefl, RgbReflConfig, SamplingConfig, Sft, SftConfig, SftData, StepMetrics, TrainError, Velr,
    VelrConfig,
};
use serde::{Deserialize, Serialize};

use crate::world::{config_error, load_velr_members, OracleText, SetupError};

/// The backend a binary runs on, as a config names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendName {
    /// burn's flex CPU backend (the default build).
    Cpu,
    /// wgpu (cargo feature `wgpu`).
    Wgpu,
    /// CUDA (cargo feature `cuda`).
    Cuda,
}

impl BackendName {
    /// The backend this build's cargo features select.
    pub fn built() -> Self {
        if cfg!(feature = "cuda") {
            Self::Cuda
        } else if cfg!(feature = "wgpu") {
            Self::Wgpu
        } else {
            Self::Cpu
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        }
    }
}

impl FromStr for BackendName {
    type Err = TrainError;

    fn from_str(s: &str) -> Result<Self, TrainError> {
        [Self::Cpu, Self::Wgpu, Self::Cuda]
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| TrainError::Config {
                field: "backend".into(),
                reason: format!("unknown backend `{s}` (cpu, wgpu, cuda)"),
            })
    }
}

/// A method, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodName {
    /// Process reward feedback learning.
    Prfl,
    /// Ensemble latent rewards with online alignment.
    Velr,
    /// GRPO for flow models.
    Grpo,
    /// ReFL on decoded frames.
    RgbRefl,
    /// Supervised fine-tuning.
    Sft,
}

impl MethodName {
    /// Every method.
    pub const ALL: [Self; 5] = [Self::Prfl, Self::Velr, Self::Grpo, Self::RgbRefl, Self::Sft];

    /// The name configs and file names use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prfl => "prfl",
            Self::Velr => "velr",
            Self::Grpo => "grpo",
            Self::RgbRefl => "rgb_refl",
            Self::Sft => "sft",
        }
    }
}

impl fmt::Display for MethodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MethodName {
    type Err = TrainError;

    fn from_str(s: &str) -> Result<Self, TrainError> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| TrainError::Config {
                field: "method".into(),
                reason: format!("unknown method `{s}` (prfl, velr, grpo, rgb_refl, sft)"),
            })
    }
}

/// The run, as the TOML file spells it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The backend the run is meant for ([`TrainConfig::load`] checks it against the build).
    pub backend: BackendName,
    /// Model folders, prompts and video size.
    pub model: ModelConfig,
    /// Train low-rank adapters instead of every weight.
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// The rewards.
    pub reward: RewardConfig,
    /// Real latents for SFT steps (the SFT method, PRFL's `sft_every`).
    #[serde(default)]
    pub data: Option<DataConfig>,
    /// The method and its settings.
    pub method: MethodConfig,
    /// Steps, optimiser, evaluation, checkpoints, output folder.
    pub learner: LearnerConfig,
    /// What is written after the last step.
    #[serde(default)]
    pub save: SaveConfig,
}

/// The models and prompts of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The transformer folder (diffusers layout; sharded or not; F32/F16/BF16).
    pub transformer: PathBuf,
    /// The VAE folder (decodes for RGB ReFL, VELR's labels and the evaluation).
    pub vae: PathBuf,
    /// Prompt embeddings from `scripts/encode_prompts.py`.
    pub prompts: PathBuf,
    /// Video `[frames, height, width]` the latents stand for.
    pub video: [usize; 3],
    /// Prompts held out for evaluation (the file's last ones).
    pub heldout: usize,
    /// Sampling steps of the evaluation.
    #[serde(default = "eval_steps")]
    pub eval_steps: usize,
    /// Which transformer blocks recompute their activations in the backward instead of keeping
    /// them (the policy's and the process reward's): `"none"`, `"every_block"`,
    /// `{ every_nth = n }`.
    #[serde(default)]
    pub checkpointing: Checkpointing,
    /// Precision of the frozen weights and of what is computed from them (`"f32"`, `"bf16"`,
    /// `"f16"`): the base under LoRA and the process reward's trunk. Weights that train, the
    /// optimiser state, the loss and the VAE stay f32.
    #[serde(default)]
    pub precision: Precision,
}

fn eval_steps() -> usize {
    20
}

/// The pixel reward by name (others plug in through the library's `PixelReward`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PixelRewardName {
    /// The shapes-world oracle on caption prompts ([`OracleText`]).
    ShapesOracle,
}

/// The rewards of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardConfig {
    /// The pixel reward of RGB ReFL, VELR's labels and the evaluation.
    pub pixel: PixelRewardName,
    /// PRFL's and GRPO's latent reward: a process reward on the initial transformer's first
    /// blocks, from the run's seed unless `process_weights` names a trained one (`save_record`).
    pub process: ProcessRewardConfig,
    /// Trained process-reward weights.
    #[serde(default)]
    pub process_weights: Option<PathBuf>,
    /// VELR's ensemble.
    pub velr: VelrMembers,
}

/// VELR's ensemble: `members` models, aligned online to the pixel reward.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VelrMembers {
    /// Ensemble size.
    pub members: usize,
    /// Block widths of fresh members (latent shape and text width come from the model).
    pub channels: Vec<usize>,
    /// Block strides `[t, h, w]` of fresh members.
    pub strides: Vec<[usize; 3]>,
    /// Or trained members: `velr.json` and `velr_0.mpk`, ... in this folder.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

/// Where the real latents of SFT steps come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataConfig {
    /// Render this many shapes-world videos per training prompt and encode them with the VAE.
    ShapesWorldVideos(usize),
    /// A safetensors file of VAE latents: `latents` `[N, C, F, H, W]` (unnormalised, as the
    /// VAE's posterior means) and `prompt_index` `[N]` (rows of the prompt file).
    Latents(PathBuf),
}

/// The method and its settings (`kind` names it; the other keys are its config's).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MethodConfig {
    /// Process reward feedback learning.
    Prfl(PrflConfig),
    /// Ensemble latent rewards with online alignment.
    Velr(VelrConfig),
    /// GRPO for flow models.
    Grpo(GrpoConfig),
    /// ReFL on decoded frames.
    RgbRefl(RgbReflConfig),
    /// Supervised fine-tuning.
    Sft(SftConfig),
}

impl MethodConfig {
    /// The method's name.
    pub fn name(&self) -> MethodName {
        match self {
            Self::Prfl(_) => MethodName::Prfl,
            Self::Velr(_) => MethodName::Velr,
            Self::Grpo(_) => MethodName::Grpo,
            Self::RgbRefl(_) => MethodName::RgbRefl,
            Self::Sft(_) => MethodName::Sft,
        }
    }
}

/// What a run writes after its last step.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveConfig {
    /// Also write the full transformer folder of a LoRA run (adapters merged).
    #[serde(default)]
    pub merged: bool,
    /// Layout of a written transformer folder (default f32, 10 GB shards).
    #[serde(default)]
    pub layout: Option<SaveLayout>,
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The step the run started at (non-zero when it resumed from a checkpoint).
    pub resumed_at: usize,
    /// The metrics of the steps this run took.
    pub metrics: Vec<StepMetrics>,
    /// Files and folders written after the last step.
    pub saved: Vec<PathBuf>,
}

type Ad<B> = Autodiff<B>;

/// The largest video a config accepts, `[frames, height, width]`: Wan2.1's longest clips at
/// 720p (81 x 720 x 1280) fit with room.
pub const MAX_VIDEO: [usize; 3] = [1025, 4096, 4096];

impl TrainConfig {
    /// Reads a TOML config; relative paths in it are relative to the working directory.
    ///
    /// # Errors
    /// `ConfigFile` naming the file (unreadable, bad TOML, unknown key); `Config` on `backend`
    /// when it is not the one this build runs on.
    pub fn load(path: &Path) -> Result<Self, TrainError> {
        let cfg = Self::read(path)?;
        let built = BackendName::built();
        if cfg.backend != built {
            return Err(TrainError::Config {
                field: "backend".into(),
                reason: format!(
                    "`{}`, but this build runs on `{}`: set `backend = \"{}\"` or build with `--features {}`",
                    cfg.backend.as_str(),
                    built.as_str(),
                    built.as_str(),
                    cfg.backend.as_str()
                ),
            });
        }
        Ok(cfg)
    }

    /// Reads a TOML config without checking its backend against the build (the memory
    /// planner reads configs meant for other machines).
    ///
    /// # Errors
    /// `ConfigFile` naming the file (unreadable, bad TOML, unknown key); `Config` naming a
    /// value out of range ([`TrainConfig::validate`]).
    pub fn read(path: &Path) -> Result<Self, TrainError> {
        let file_error = |reason: String| TrainError::ConfigFile {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        let cfg: Self = toml::from_str(&text).map_err(|e| file_error(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the values no later stage bounds before it allocates: the video's size, the
    /// evaluation's steps, the ensemble's members, the rendered SFT videos.
    ///
    /// # Errors
    /// `Config` naming the field and the accepted range.
    pub fn validate(&self) -> Result<(), TrainError> {
        let check = |field: &str, value: usize, max: usize| {
            if (1..=max).contains(&value) {
                Ok(())
            } else {
                Err(TrainError::Config {
                    field: field.into(),
                    reason: format!("{value} not in 1..={max}"),
                })
            }
        };
        let [frames, height, width] = self.model.video;
        let [max_frames, max_height, max_width] = MAX_VIDEO;
        check("model.video[0] (frames)", frames, max_frames)?;
        check("model.video[1] (height)", height, max_height)?;
        check("model.video[2] (width)", width, max_width)?;
        check("model.eval_steps", self.model.eval_steps, 10_000)?;
        check("reward.velr.members", self.reward.velr.members, 64)?;
        if let Some(DataConfig::ShapesWorldVideos(n)) = self.data {
            check("data.shapes_world_videos", n, 1024)?;
        }
        Ok(())
    }

    /// The config as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a TrainConfig is plain data")
    }

    /// A complete config for `method` on `assets/tiny-wan`, four steps of LoRA writing to
    /// `out/train/tiny-wan-<method>`: the shipped `examples/configs/tiny-wan-*.toml`.
    pub fn template(method: MethodName) -> Self {
        let sampling = SamplingConfig {
            steps: 8,
            shift: 3.0,
        };
        let method = match method {
            MethodName::Prfl => MethodConfig::Prfl(PrflConfig {
                sampling,
                sft_every: 2,
                ..PrflConfig::default()
            }),
            MethodName::Velr => MethodConfig::Velr(VelrConfig {
                sampling,
                start: [2, 6],
                window: 2,
                buffer: 16,
                align_every: 2,
                align_steps: 2,
                ..VelrConfig::default()
            }),
            MethodName::Grpo => MethodConfig::Grpo(GrpoConfig {
                prompts: 2,
                group: 2,
                steps: 6,
                ..GrpoConfig::default()
            }),
            MethodName::RgbRefl => MethodConfig::RgbRefl(RgbReflConfig {
                sampling,
                ..RgbReflConfig::default()
            }),
            MethodName::Sft => MethodConfig::Sft(SftConfig {
                batch: 2,
                timesteps: TimestepSampling::Uniform { shift: 3.0 },
                shards: 1,
            }),
        };
        let mut learner = LearnerConfig::new(4, format!("out/train/tiny-wan-{}", method.name()));
        learner.optim.lr = 1e-3;
        Self {
            backend: BackendName::Cpu,
            model: ModelConfig {
                transformer: "assets/tiny-wan/transformer".into(),
                vae: "assets/tiny-wan/vae".into(),
                prompts: "assets/tiny-wan/prompts.safetensors".into(),
                video: [5, 32, 32],
                heldout: 2,
                eval_steps: 8,
                checkpointing: Checkpointing::EveryBlock,
                precision: Precision::F32,
            },
            lora: Some(LoraConfig::new(4)),
            reward: RewardConfig {
                pixel: PixelRewardName::ShapesOracle,
                process: ProcessRewardConfig::new(1).with_head(vec![16]),
                process_weights: None,
                velr: VelrMembers {
                    members: 2,
                    channels: vec![8, 8],
                    strides: vec![[1, 1, 1], [1, 1, 1]],
                    dir: None,
                },
            },
            data: Some(DataConfig::ShapesWorldVideos(1)),
            method,
            learner,
            save: SaveConfig::default(),
        }
    }

    /// Loads the models, prompts and rewards, trains (resuming from the output folder's
    /// checkpoint when there is one), evaluates, and saves the adapters or the transformer.
    /// The learner prints its progress.
    ///
    /// # Errors
    /// Any load, config or training error, naming the file, key or field.
    pub fn run<B: Backend>(&self, device: &B::Device) -> Result<TrainReport, SetupError> {
        Ad::<B>::seed(device, self.learner.seed);
        // under LoRA with half precision the base is read straight into it (never f32 on the
        // device); a base that trains is read in f32
        let precision = self.model.precision;
        let base = match (&self.lora, precision) {
            (Some(_), Precision::Bf16 | Precision::F16) => {
                WanTransformer::<Ad<B>>::load_folder_frozen(
                    &self.model.transformer,
                    precision,
                    device,
                )
                .map_err(precision_error)?
            }
            _ => WanTransformer::<Ad<B>>::load_folder(&self.model.transformer, device)?,
        }
        .with_checkpointing(self.model.checkpointing)?;
        let vae = WanVae::<B>::load_folder(&self.model.vae, device)?;
        let text_dim = base.config().text_dim;
        let file = PromptFile::<B>::load(&self.model.prompts, text_dim, device)?;
        let [frames, height, width] = self.model.video;
        let [_, c, f, h, w] = vae.checked_latent_shape([1, 3, frames, height, width])?;
        let latent_shape = [c, f, h, w];
        let n = file.prompts.len();
        if self.model.heldout == 0 || self.model.heldout >= n {
            return Err(config_error(
                "model.heldout",
                format!(
                    "{} not in 1..{n} (the prompt file's prompts)",
                    self.model.heldout
                ),
            ));
        }
        let split = |range: std::ops::Range<usize>| -> Result<PromptSet<B, String>, TrainError> {
            let (prompts, text) = file.prompts.batch(&range.collect::<Vec<_>>());
            PromptSet::new(prompts, text)
        };
        let train = split(0..n - self.model.heldout)?;
        let heldout = split(n - self.model.heldout..n)?;
        let PixelRewardName::ShapesOracle = self.reward.pixel;
        let evaluator = HeldoutReward {
            vae: vae.clone(),
            norm: vae.latent_norm(),
            pixel: OracleText,
            prompts: heldout,
            schedule: FlowMatchScheduleConfig::new(self.model.eval_steps)
                .with_shift(3.0)
                .init()?,
            latent_shape,
        };
        let policy = match &self.lora {
            Some(lora) => base.clone().with_lora(lora, device)?,
            None => base.clone(),
        };
        let process = || -> Result<_, SetupError> {
            let prm = self.reward.process.init(&base, device)?;
            let mut prm = match &self.reward.process_weights {
                Some(path) => load_record(prm, path, device)?,
                None => prm,
            }
            .no_grad();
            prm.trunk = prm
                .trunk
                .with_frozen_precision(precision, device)
                .map_err(precision_error)?;
            Ok(prm)
        };
        let sft = |needed: bool| -> Result<Option<SftData<B>>, SetupError> {
            match (&self.data, needed) {
                (Some(data), true) => Ok(Some(sft_data(data, &vae, &train, self.model.video)?)),
                (None, true) => Err(config_error(
                    "data",
                    "this method needs real latents for its SFT steps".into(),
                )),
                (_, false) => Ok(None),
            }
        };
        match &self.method {
            MethodConfig::Prfl(m) => {
                let data = sft(m.sft_every > 0)?;
                let method = Prfl::new(m.clone(), process()?, train, latent_shape, data)?;
                self.train(policy, method, evaluator)
            }
            MethodConfig::Grpo(m) => {
                let reward = LatentScore(process()?.valid());
                let method = Grpo::new(m.clone(), reward, train, latent_shape)?;
                self.train(policy, method, evaluator)
            }
            MethodConfig::Velr(m) => {
                let v = &self.reward.velr;
                let members = match &v.dir {
                    Some(dir) => load_velr_members::<Ad<B>>(dir, "velr", v.members, device)?,
                    None => {
                        let member = VelrRewardConfig::new(latent_shape, text_dim)
                            .with_channels(v.channels.clone())
                            .with_strides(v.strides.clone());
                        (0..v.members)
                            .map(|_| member.init::<Ad<B>>(device))
                            .collect::<Result<Vec<_>, _>>()?
                    }
                };
                let norm = vae.latent_norm();
                let ensemble = Ensemble::new(members)?;
                let method = Velr::new(
                    m.clone(),
                    ensemble,
                    vae,
                    norm,
                    OracleText,
                    train,
                    latent_shape,
                )?;
                self.train(policy, method, evaluator)
            }
            MethodConfig::RgbRefl(m) => {
                let vae_ad = WanVae::<Ad<B>>::load_folder(&self.model.vae, device)?.no_grad();
                let norm = vae.latent_norm();
                let method =
                    RgbRefl::new(m.clone(), vae_ad, norm, OracleText, train, latent_shape)?;
                self.train(policy, method, evaluator)
            }
            MethodConfig::Sft(m) => {
                let data = sft(true)?.expect("asked for");
                self.train(policy, Sft::new(m.clone(), data)?, evaluator)
            }
        }
    }

    /// Trains `method` on `policy`, evaluates, saves.
    fn train<B: Backend, M: Method<Ad<B>, WanTransformer<Ad<B>>>>(
        &self,
        policy: WanTransformer<Ad<B>>,
        method: M,
        evaluator: HeldoutReward<B, WanVae<B>, OracleText, String>,
    ) -> Result<TrainReport, SetupError> {
        let mut learner =
            Learner::new(self.learner.clone(), policy, method)?.with_evaluator(evaluator);
        let resumed_at = learner.step();
        let metrics = learner.run()?;
        let out = &self.learner.out;
        let layout = self.save.layout.unwrap_or_default();
        let policy = learner.policy().valid();
        let mut saved = Vec::new();
        if self.lora.is_some() {
            let path = out.join(LORA_WEIGHTS);
            policy.save_lora(&path)?;
            saved.push(path);
            if self.save.merged {
                let dir = out.join("transformer");
                policy.merge_lora().save_folder(&dir, layout)?;
                saved.push(dir);
            }
        } else {
            let dir = out.join("transformer");
            policy.save_folder(&dir, layout)?;
            saved.push(dir);
        }
        Ok(TrainReport {
            resumed_at,
            metrics,
            saved,
        })
    }
}

/// A precision the backend lacks, named as the config's field.
fn precision_error(e: CoreError) -> SetupError {
    match e {
        CoreError::InvalidConfig {
            field: "precision",
            reason,
        } => config_error("model.precision", reason),
        e => e.into(),
    }
}

/// `[N]` rows of `train` with `[N, C, F, H, W]` normalised latents: rendered shapes-world
/// videos of the training prompts, or a latents file.
fn sft_data<B: Backend>(
    data: &DataConfig,
    vae: &WanVae<B>,
    train: &PromptSet<B, String>,
    video: [usize; 3],
) -> Result<SftData<B>, SetupError> {
    let dev = vae.devices()[0].clone();
    let norm = vae.latent_norm();
    let (latents, rows) = match data {
        DataConfig::ShapesWorldVideos(n) => {
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
                    videos.push(v.to_tensor::<B>(&dev).mul_scalar(2.0).sub_scalar(1.0));
                    rows.push(i);
                }
            }
            (norm.encode(vae, Tensor::stack(videos, 0)), rows)
        }
        DataConfig::Latents(path) => {
            let files = TensorFiles::open_file(path)?;
            let (shape, values) = files.read_f32("latents")?;
            let (_, index) = files.read_i64("prompt_index")?;
            let n = train.len() as i64;
            if shape.len() != 5 || index.len() != shape[0] || index.iter().any(|&i| i < 0 || i >= n)
            {
                return Err(SetupError::Load {
                    path: path.clone(),
                    reason: format!(
                        "`latents` must be [N, C, F, H, W] with N `prompt_index` rows in 0..{n}; got {shape:?} and {} rows",
                        index.len()
                    ),
                });
            }
            let latents = Tensor::<B, 5>::from_data(TensorData::new(values, shape), &dev);
            let c = norm.mean.len();
            let mean = Tensor::<B, 1>::from_floats(norm.mean.as_slice(), &dev);
            let std = Tensor::<B, 1>::from_floats(norm.std.as_slice(), &dev);
            let latents = (latents - mean.reshape([1, c, 1, 1, 1])) / std.reshape([1, c, 1, 1, 1]);
            (latents, index.iter().map(|&i| i as usize).collect())
        }
    };
    let (_, text) = train.batch(&rows);
    Ok(SftData::new(latents, text)?)
}
