//! The peak memory of one training step of any method on a Wan2.1-shaped model, planned term
//! by term before anything is allocated: weights, optimiser state, gradients, saved
//! activations, the backward's working set (with a checkpointed block's recompute), the
//! reward's trunk, the reference model, the VAE decode.
//!
//! [`PlanConfig::from_train_config`] reads the shapes of a run's TOML (its transformer and VAE
//! `config.json`, its prompt file); [`PlanConfig::new`] starts from a model config for models
//! that are not on disk. `examples/plan.rs` is the command line; `docs/guide/memory.md`
//! explains the terms and `docs/results/memory.md` compares them with measured peaks.

use std::path::Path;

use diffusion_core::{
    io::tensor_files::TensorFiles,
    models::wan_vae::WanVaeConfig,
    ops::lora::LoraConfig,
    plan::{ActivationPath, DitStep, MemoryPlan, TermKind, Trainable, VaeDecode},
    train::{checkpointing::Checkpointing, precision::Precision},
    WanConfig,
};
use refl_trainer::{DecoderGradient, FrameSelection, TrainError};

use crate::wan::{BackendName, MethodConfig, MethodName, TrainConfig};

/// What one training step of a method holds: the model, the video, the method's batch shape
/// and the memory choices.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    /// The method whose step is planned.
    pub method: MethodName,
    /// The transformer's shape.
    pub model: WanConfig,
    /// The VAE's shape (compression, and the decoder for RGB ReFL and VELR's labels).
    pub vae: WanVaeConfig,
    /// Video `[frames, height, width]`.
    pub video: [usize; 3],
    /// Text tokens per prompt (Wan2.1: 512).
    pub text_tokens: usize,
    /// Prompts per step.
    pub batch: usize,
    /// Denoising steps with gradients (PRFL, VELR, RGB ReFL).
    pub window: usize,
    /// GRPO's rollouts per prompt.
    pub group: usize,
    /// Sampling steps of a rollout (GRPO keeps every step's latent).
    pub steps: usize,
    /// Low-rank adapters, or every weight trains.
    pub lora: Option<LoraConfig>,
    /// Which blocks are checkpointed (the policy's and the process reward's).
    pub checkpointing: Checkpointing,
    /// Blocks of the process reward's trunk (PRFL, GRPO's latent reward).
    pub process_depth: usize,
    /// Whether a reference model is evaluated for a KL term (PRFL and VELR with `kl_beta > 0`,
    /// GRPO always).
    pub kl: bool,
    /// RGB ReFL decodes every frame with gradients, or only the first latent frame.
    pub frames: FrameSelection,
    /// How RGB ReFL's gradient goes back through the decoder.
    pub decoder_gradient: DecoderGradient,
    /// The backend the step runs on (its operation path decides the saved tensors).
    pub backend: BackendName,
    /// Precision of the frozen weights and of what is computed from them: the base under
    /// LoRA (then the policy's activations too), the process reward's trunk. Weights that
    /// train, the VAE and the latents stay f32.
    pub precision: Precision,
}

impl PlanConfig {
    /// A PRFL step of one prompt, one step with gradients, LoRA rank 64 on the attention,
    /// every block checkpointed, a 2-block process reward, on CUDA with f32 weights.
    pub fn new(method: MethodName, model: WanConfig, video: [usize; 3]) -> Self {
        Self {
            method,
            model,
            vae: WanVaeConfig::new(),
            video,
            text_tokens: 512,
            batch: 1,
            window: 1,
            group: 4,
            steps: 40,
            lora: Some(LoraConfig::new(64)),
            checkpointing: Checkpointing::EveryBlock,
            process_depth: 2,
            kl: matches!(method, MethodName::Grpo),
            frames: FrameSelection::All,
            decoder_gradient: DecoderGradient::Graph,
            backend: BackendName::Cuda,
            precision: Precision::F32,
        }
    }

    /// The shapes of a run's TOML: the transformer's and VAE's `config.json`, the prompt
    /// file's text length, the method's batch, window and group.
    ///
    /// # Errors
    /// `ConfigFile` for the TOML; `Core` naming the `config.json` or prompt file that cannot be
    /// read.
    pub fn from_train_config(path: &Path) -> Result<Self, TrainError> {
        let cfg = TrainConfig::read(path)?;
        let model = WanConfig::load_diffusers(cfg.model.transformer.join("config.json"))?;
        let vae = WanVaeConfig::load_diffusers(cfg.model.vae.join("config.json"))?;
        let (_, shape) = TensorFiles::open_file(&cfg.model.prompts)?
            .info("embeddings")
            .map(|(d, s)| (d, s.to_vec()))?;
        let mut plan = Self::new(cfg.method.name(), model, cfg.model.video);
        plan.vae = vae;
        plan.text_tokens = shape.get(1).copied().unwrap_or(0);
        plan.lora = cfg.lora.clone();
        plan.checkpointing = cfg.model.checkpointing;
        plan.precision = cfg.model.precision;
        plan.process_depth = cfg.reward.process.depth;
        plan.backend = cfg.backend;
        match &cfg.method {
            MethodConfig::Prfl(m) => {
                (plan.batch, plan.window, plan.kl) = (m.batch, m.window, m.kl_beta > 0.0)
            }
            MethodConfig::Velr(m) => {
                (plan.batch, plan.window, plan.kl) = (m.batch, m.window, m.kl_beta > 0.0)
            }
            MethodConfig::Grpo(m) => {
                (plan.batch, plan.group, plan.steps) = (m.prompts, m.group, m.steps)
            }
            MethodConfig::RgbRefl(m) => {
                (plan.batch, plan.window, plan.frames) = (m.batch, m.window, m.frames.clone());
                plan.decoder_gradient = m.decoder_gradient;
            }
            MethodConfig::Sft(m) => plan.batch = m.batch,
        }
        Ok(plan)
    }

    /// Latent `[channels, frames, height, width]` of the video.
    pub fn latent_shape(&self) -> [usize; 4] {
        let [f, h, w] = self.video;
        let (t, s) = (self.vae.temporal_factor(), self.vae.spatial_factor());
        [self.vae.z_dim, (f.saturating_sub(1)) / t + 1, h / s, w / s]
    }

    /// Video tokens per row (the latent over the transformer's patches).
    pub fn tokens(&self) -> usize {
        let [_, f, h, w] = self.latent_shape();
        let [pt, ph, pw] = self.model.patch_size;
        (f / pt) * (h / ph) * (w / pw)
    }

    fn path(&self) -> ActivationPath {
        match self.backend {
            BackendName::Cpu => ActivationPath::CpuKernels,
            BackendName::Wgpu | BackendName::Cuda => ActivationPath::TensorOps,
        }
    }

    /// The policy's forward + backward: `rows` rows with gradients alive at once.
    fn policy(&self, rows: usize) -> DitStep {
        let trainable = match &self.lora {
            Some(l) => Trainable::Lora(l.clone()),
            None => Trainable::All,
        };
        let mut step = DitStep::new(
            self.model.clone(),
            self.tokens(),
            self.text_tokens,
            rows,
            trainable,
            self.path(),
        );
        step.checkpointing = self.checkpointing;
        step.weight_bytes = self.policy_bytes();
        step.activation_bytes = self.policy_bytes();
        step
    }

    /// Bytes per weight and activation of the policy: the frozen precision under LoRA, f32
    /// when every weight trains.
    fn policy_bytes(&self) -> usize {
        match self.lora {
            Some(_) => self.precision.bytes(),
            None => 4,
        }
    }

    /// The planned peak of one step, term by term.
    pub fn plan(&self) -> MemoryPlan {
        let mut plan = MemoryPlan::default();
        let rows = match self.method {
            MethodName::Grpo => self.batch * self.group,
            MethodName::Sft => self.batch,
            _ => self.batch * self.window,
        };
        let policy = self.policy(rows);
        let full = self.lora.is_none();
        let policy_plan = policy.plan();
        let mut policy_step = policy_plan.clone();
        policy_step.terms.retain(|t| t.kind == TermKind::Step);
        let mut resident = policy_plan;
        resident.terms.retain(|t| t.kind == TermKind::Resident);
        plan.extend("policy", resident);
        // a frozen copy of the initial weights: shared with the policy's frozen base under
        // LoRA, a copy when every weight trains
        let reference_copy = |plan: &mut MemoryPlan, what: &str, step: &DitStep| {
            if full {
                plan.push(
                    format!("{what}: weights"),
                    step.num_params() * self.precision.bytes() as f64,
                    TermKind::Resident,
                    "a frozen copy of the initial weights (every policy weight trains)".into(),
                );
            }
        };
        let mut trunk = self.policy(match self.method {
            MethodName::Grpo => rows,
            _ => self.batch,
        });
        trunk.blocks = self.process_depth.min(self.model.num_layers);
        trunk.trainable = Trainable::Frozen;
        trunk.weight_bytes = self.precision.bytes();
        trunk.activation_bytes = self.precision.bytes();
        if matches!(self.method, MethodName::Prfl | MethodName::Grpo) {
            reference_copy(&mut plan, "process reward", &trunk);
        }
        if self.kl {
            reference_copy(&mut plan, "reference", &policy);
        }
        // the step's moments, each with what is alive then; the peak is the largest
        let saved = || {
            let mut p = MemoryPlan::default();
            p.push(
                "policy: saved activations",
                policy.saved_activations(),
                TermKind::Step,
                "every block's, the policy's backward not started".into(),
            );
            p
        };
        let mut moments = vec![("the policy's backward", {
            let mut p = MemoryPlan::default();
            p.extend("policy", policy_step);
            p
        })];
        if self.kl {
            let mut p = saved();
            p.push(
                "reference: forward",
                self.no_grad_forward(rows, self.policy_bytes()),
                TermKind::Step,
                "one block at a time, without gradients".into(),
            );
            moments.push(("the reference model's forward", p));
        }
        let [c, f, h, w] = self.latent_shape();
        match self.method {
            MethodName::Prfl => {
                // the gradient flows through the reward's trunk into the policy's output
                let mut p = saved();
                let mut terms = trunk.plan();
                terms.terms.retain(|t| t.kind == TermKind::Step);
                p.extend("process reward", terms);
                moments.push(("the process reward's backward", p));
            }
            MethodName::Grpo => {
                let mut p = MemoryPlan::default();
                p.push(
                    "process reward: forward",
                    self.no_grad_forward(trunk.rows, self.precision.bytes()),
                    TermKind::Step,
                    "scores the rollouts without gradients".into(),
                );
                moments.push(("the rollouts' scoring", p));
            }
            MethodName::RgbRefl | MethodName::Velr => {
                let rgb = self.method == MethodName::RgbRefl;
                let frames = match (rgb, &self.frames) {
                    (true, FrameSelection::First) => 1,
                    _ => f,
                };
                let decode = VaeDecode {
                    vae: self.vae.clone(),
                    latent: [c, frames, h, w],
                    rows: self.batch,
                    gradient: rgb.then_some(self.decoder_gradient),
                    weight_bytes: 4,
                    activation_bytes: 4,
                };
                let decode = decode.plan();
                let mut weights = decode.clone();
                weights.terms.retain(|t| t.kind == TermKind::Resident);
                plan.extend("VAE", weights);
                let mut work = decode;
                work.terms.retain(|t| t.kind == TermKind::Step);
                // RGB ReFL decodes with gradients after the policy's forward; VELR decodes
                // its labels without a graph alive
                let (name, mut p) = if rgb {
                    ("the decode's backward", saved())
                } else {
                    ("the labels' decode", MemoryPlan::default())
                };
                p.extend("VAE", work);
                moments.push((name, p));
            }
            MethodName::Sft => {}
        }
        if let Some((moment, peak)) = moments
            .into_iter()
            .max_by(|a, b| a.1.total().total_cmp(&b.1.total()))
        {
            plan.terms.extend(peak.terms);
            plan.moment = moment.to_string();
        }
        if self.method == MethodName::Grpo {
            let n = self.steps + 1;
            plan.push(
                "rollouts",
                (rows * c * f * h * w * 4 * n) as f64,
                TermKind::Step,
                format!("{rows} trajectories of {n} latents [{c}, {f}, {h}, {w}]"),
            );
        }
        plan
    }

    /// The working set of a forward without gradients: a block's widest tensors, of `bytes`
    /// per value.
    fn no_grad_forward(&self, rows: usize, bytes: usize) -> f64 {
        let d = self.model.dim() as f64;
        let f = self.model.ffn_dim as f64;
        (rows * self.tokens()) as f64 * (4.0 * d + 2.0 * f) * bytes as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_video_sizes_give_the_published_token_counts() {
        let p = PlanConfig::new(MethodName::Prfl, WanConfig::wan21_1_3b(), [81, 480, 832]);
        assert_eq!(p.latent_shape(), [16, 21, 60, 104]);
        assert_eq!(p.tokens(), 32_760);
        let p = PlanConfig::new(MethodName::Prfl, WanConfig::wan21_14b(), [81, 720, 1280]);
        assert_eq!(p.tokens(), 75_600);
    }

    #[test]
    fn a_shipped_config_plans_every_method() {
        for method in MethodName::ALL {
            let path = format!("examples/configs/tiny-wan-{method}.toml");
            let p = PlanConfig::from_train_config(Path::new(&path)).unwrap();
            assert_eq!(p.method, method);
            assert_eq!(p.video, [5, 32, 32]);
            let plan = p.plan();
            assert!(plan.total() > 0.0 && !plan.moment.is_empty(), "{method}");
            assert!(plan
                .terms
                .iter()
                .any(|t| t.name.starts_with("policy: weights")));
        }
        // bad paths name the file
        let err = PlanConfig::from_train_config(Path::new("missing.toml")).unwrap_err();
        assert!(err.to_string().contains("missing.toml"), "{err}");
    }

    #[test]
    fn methods_add_their_own_terms() {
        let model = WanConfig::wan21_1_3b();
        let plan = |m| PlanConfig::new(m, model.clone(), [81, 480, 832]).plan();
        let (sft, grpo, rgb) = (
            plan(MethodName::Sft),
            plan(MethodName::Grpo),
            plan(MethodName::RgbRefl),
        );
        // GRPO: four rollouts with gradients and the trajectories; RGB ReFL: the decoder's
        // activations dwarf the transformer's
        assert!(grpo.total() > 2.0 * sft.total());
        assert!(grpo.terms.iter().any(|t| t.name == "rollouts"));
        assert!(rgb
            .terms
            .iter()
            .any(|t| t.name == "VAE: decoder activations"));
        assert!(rgb.total() > 10.0 * sft.total());
        // half-precision frozen weights halve the base's bytes
        let mut half = PlanConfig::new(MethodName::Sft, model.clone(), [81, 480, 832]);
        half.precision = Precision::Bf16;
        let weights = |p: &MemoryPlan| p.terms[0].bytes;
        assert!(weights(&half.plan()) < 0.55 * weights(&sft));
    }
}
