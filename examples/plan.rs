//! Plans the peak memory of one training step, term by term, before anything is allocated:
//! from a run's TOML (`--config`), or for a published model shape at any video size.
//!
//! ```text
//! cargo run --release --example plan -- --config examples/configs/tiny-wan-prfl.toml
//! cargo run --release --example plan -- --model wan2.1-1.3b --video 81x480x832 --method prfl
//! cargo run --release --example plan -- --model wan2.1-14b --video 81x720x1280 --method all --frozen bf16
//! ```
//!
//! `docs/guide/memory.md` explains the terms; `docs/results/memory.md` compares them with
//! measured peaks.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use latent_refl::{
    diffusion_core::{
        ops::lora::{LoraConfig, LoraTarget},
        plan::{gib, parse_fhw},
        train::{checkpointing::Checkpointing, precision::Precision},
        WanConfig,
    },
    plan::PlanConfig,
    refl_trainer::{DecoderGradient, FrameSelection},
    wan::{BackendName, MethodName},
};

/// A published transformer shape.
#[derive(Clone, Copy, ValueEnum)]
enum Model {
    /// Wan2.1-T2V-1.3B (width 1536, 30 blocks).
    #[value(name = "wan2.1-1.3b")]
    Wan13b,
    /// Wan2.1-T2V-14B (width 5120, 40 blocks).
    #[value(name = "wan2.1-14b")]
    Wan14b,
}

/// Frames RGB ReFL decodes with gradients.
#[derive(Clone, Copy, ValueEnum)]
enum Frames {
    /// Every frame.
    All,
    /// The first latent frame only.
    First,
}

/// Plans the peak memory of one training step.
#[derive(Parser)]
struct Args {
    /// A run's TOML: shapes from its transformer and VAE folders and prompt file.
    #[arg(long, conflicts_with = "model")]
    config: Option<PathBuf>,
    /// A published model shape instead of a config.
    #[arg(long, value_enum, required_unless_present = "config")]
    model: Option<Model>,
    /// Video `FRAMESxHEIGHTxWIDTH`.
    #[arg(long, default_value = "81x480x832")]
    video: String,
    /// The method (prfl, velr, grpo, rgb_refl, sft), or `all`.
    #[arg(long, default_value = "prfl")]
    method: String,
    /// Prompts per step.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// GRPO's rollouts per prompt.
    #[arg(long, default_value_t = 4)]
    group: usize,
    /// LoRA rank on the self- and cross-attention; 0 trains every weight.
    #[arg(long, default_value_t = 64)]
    lora_rank: usize,
    /// `none`, `every_block` or `every_nth:N`.
    #[arg(long, default_value = "every_block")]
    checkpointing: Checkpointing,
    /// The backend whose operation path is planned.
    #[arg(long, default_value = "cuda")]
    backend: BackendName,
    /// Precision of the frozen weights and what is computed from them (`f32`, `bf16`, `f16`):
    /// the base under LoRA, the reference, the process reward's trunk.
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// RGB ReFL decodes every frame with gradients, or only the first latent frame.
    #[arg(long, value_enum, default_value = "all")]
    frames: Frames,
    /// How RGB ReFL's gradient goes back through the VAE decoder (`graph`, `checkpointed`).
    #[arg(long, default_value = "graph")]
    decoder_gradient: DecoderGradient,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let plans: Vec<PlanConfig> = match (&args.config, args.model) {
        (Some(path), _) => vec![PlanConfig::from_train_config(path)?],
        (None, Some(model)) => {
            let model = match model {
                Model::Wan13b => WanConfig::wan21_1_3b(),
                Model::Wan14b => WanConfig::wan21_14b(),
            };
            let methods = match args.method.as_str() {
                "all" => MethodName::ALL.to_vec(),
                m => vec![m.parse::<MethodName>()?],
            };
            let video = parse_fhw(&args.video).map_err(|e| format!("--video {e}"))?;
            methods
                .into_iter()
                .map(|method| {
                    let mut p = PlanConfig::new(method, model.clone(), video);
                    p.batch = args.batch;
                    p.group = args.group;
                    p.lora = (args.lora_rank > 0).then(|| {
                        LoraConfig::new(args.lora_rank).with_targets(vec![
                            LoraTarget::SelfAttention,
                            LoraTarget::CrossAttention,
                        ])
                    });
                    p.checkpointing = args.checkpointing;
                    p.backend = args.backend;
                    p.precision = args.precision;
                    p.frames = match args.frames {
                        Frames::All => FrameSelection::All,
                        Frames::First => FrameSelection::First,
                    };
                    p.decoder_gradient = args.decoder_gradient;
                    p
                })
                .collect()
        }
        (None, None) => return Err("--config or --model is required".into()),
    };
    let mut summary = Vec::new();
    for p in &plans {
        let plan = p.plan();
        println!(
            "## {}: {:?} video, {} tokens, batch {}, {}, checkpointing {}, {:?} path, {} frozen weights\n",
            p.method,
            p.video,
            p.tokens(),
            p.batch,
            p.lora
                .as_ref()
                .map_or("every weight trains".to_string(), |l| format!(
                    "LoRA rank {}",
                    l.rank
                )),
            p.checkpointing,
            p.backend,
            p.precision,
        );
        println!("{plan}\n");
        summary.push((p.method, plan.total()));
    }
    if summary.len() > 1 {
        println!("| method | planned peak |\n|---|---|");
        for (m, total) in summary {
            println!("| {m} | {:.1} GiB |", gib(total));
        }
    }
    Ok(())
}
