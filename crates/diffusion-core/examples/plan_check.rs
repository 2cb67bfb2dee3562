//! The memory planner against measurement: for each configuration of a grid of small Wan-shaped
//! models, the peak memory of one forward + backward (`loss = mean(v²)`) and of a Wan VAE
//! decode (with gradients to the latent, and without), measured on the selected backend (heap
//! on CPU backends, device pool on GPU backends, above what was allocated before) beside the
//! planner's step terms (`diffusion_core::plan`), with the relative error. Each configuration
//! runs in a fresh process, so a device pool grown by an earlier one does not hide its peak.
//!
//! ```text
//! cargo run --release -p diffusion-core --example plan_check
//! cargo run --release -p diffusion-core --features wgpu --example plan_check -- --dims 128 --tokens 2048 --grids dit
//! cargo run --release -p diffusion-core --features wgpu --example plan_check -- --dims 128 --tokens 2048 --grids dit --precision f16
//! ```
//!
//! `--precision bf16|f16` runs the transformer grid's LoRA rows with half-precision frozen
//! weights (rows that train every weight stay f32 and are left out).

use std::process::Command;

use burn::{
    backend::Autodiff,
    module::{AutodiffModule, Module},
    tensor::{backend::Backend, Distribution, Tensor},
};
use clap::Parser;
use diffusion_core::{
    backend::{DefaultBackend, DEFAULT_BACKEND_NAME},
    io::probe::{measure, PeakAlloc},
    models::{
        vae::{CheckpointedDecoder, DecoderGradient},
        wan_vae::WanVaeConfig,
    },
    ops::lora::{LoraConfig, LoraTarget},
    plan::{parse_fhw, ActivationPath, DitStep, TermKind, Trainable, VaeDecode},
    train::{checkpointing::Checkpointing, precision::Precision},
    WanConfig,
};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

type B = DefaultBackend;
type AD = Autodiff<B>;

/// Measured against planned peak memory over a grid of small models.
#[derive(Parser, Clone)]
struct Args {
    /// Transformer blocks.
    #[arg(long, default_value_t = 4)]
    blocks: usize,
    /// Model widths (heads of 64 channels).
    #[arg(long, value_delimiter = ',', default_values_t = [128, 256])]
    dims: Vec<usize>,
    /// Feed-forward widths as multiples of the width.
    #[arg(long, value_delimiter = ',', default_values_t = [4.0, 6.0])]
    ffn: Vec<f64>,
    /// Video tokens (multiples of 64).
    #[arg(long, value_delimiter = ',', default_values_t = [1024, 4096])]
    tokens: Vec<usize>,
    /// Rows (batch).
    #[arg(long, default_value_t = 1)]
    rows: usize,
    /// Text tokens.
    #[arg(long, default_value_t = 64)]
    text: usize,
    /// LoRA rank of the adapted rows of the grid (self- and cross-attention).
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// VAE decoder base widths of the decode grid.
    #[arg(long, value_delimiter = ',', default_values_t = [16, 32])]
    vae_dims: Vec<usize>,
    /// Latent sizes `FxHxW` of the decode grid.
    #[arg(long, value_delimiter = ',', default_values_t = ["3x8x8".to_string(), "5x16x16".to_string()])]
    latents: Vec<String>,
    /// Precision of the frozen weights of the LoRA rows (f32, bf16, f16).
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// Which grids to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Grid::Dit, Grid::Vae])]
    grids: Vec<Grid>,
    /// Measure only this case of the grid and print its peak in bytes (the parent process
    /// runs every case this way).
    #[arg(long, hide = true)]
    only: Option<usize>,
}

/// A grid of configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Grid {
    /// Transformer forward + backward.
    Dit,
    /// VAE decodes.
    Vae,
}

/// One configuration of the grid.
#[derive(Debug, Clone)]
enum Case {
    Dit {
        dim: usize,
        ffn_dim: usize,
        tokens: usize,
        trainable: Trainable,
        checkpointing: Checkpointing,
    },
    Vae {
        base: usize,
        latent: [usize; 3],
        gradient: Option<DecoderGradient>,
    },
}

fn cases(args: &Args) -> Result<Vec<Case>, String> {
    let lora = LoraConfig::new(args.rank)
        .with_targets(vec![LoraTarget::SelfAttention, LoraTarget::CrossAttention]);
    let mut cases = Vec::new();
    let dims = if args.grids.contains(&Grid::Dit) {
        &args.dims[..]
    } else {
        &[]
    };
    for &dim in dims {
        for &ffn in &args.ffn {
            for &tokens in &args.tokens {
                if tokens % 64 != 0 || dim % 64 != 0 {
                    return Err("--tokens must be multiples of 64 and --dims of 64".into());
                }
                let half = args.precision != Precision::F32;
                let trainables = [Trainable::All, Trainable::Lora(lora.clone())];
                for trainable in trainables.into_iter().skip(usize::from(half)) {
                    for checkpointing in [Checkpointing::None, Checkpointing::EveryBlock] {
                        cases.push(Case::Dit {
                            dim,
                            ffn_dim: (ffn * dim as f64) as usize,
                            tokens,
                            trainable: trainable.clone(),
                            checkpointing,
                        });
                    }
                }
            }
        }
    }
    let vae_dims = if args.grids.contains(&Grid::Vae) {
        &args.vae_dims[..]
    } else {
        &[]
    };
    for &base in vae_dims {
        for latent in &args.latents {
            let latent = parse_fhw(latent).map_err(|e| format!("--latents {e}"))?;
            for gradient in [
                Some(DecoderGradient::Graph),
                Some(DecoderGradient::Checkpointed),
                None,
            ] {
                cases.push(Case::Vae {
                    base,
                    latent,
                    gradient,
                });
            }
        }
    }
    Ok(cases)
}

fn wan(args: &Args, dim: usize, ffn_dim: usize) -> WanConfig {
    WanConfig::new(dim / 64, 64, ffn_dim, args.blocks)
        .with_text_dim(64)
        .with_freq_dim(64)
}

/// Measures the case's first run (a fresh process: a pool grown by a warm-up run would be
/// reused by the measured one).
fn measured(args: &Args, case: &Case) -> Result<u64, Box<dyn std::error::Error>> {
    let dev = Default::default();
    let rows = args.rows;
    let m = match case {
        Case::Dit {
            dim,
            ffn_dim,
            tokens,
            trainable,
            checkpointing,
        } => {
            let cfg = wan(args, *dim, *ffn_dim);
            let latent = [rows, cfg.in_channels, tokens / 64, 16, 16];
            let x = Tensor::<AD, 5>::random(latent, Distribution::Normal(0.0, 1.0), &dev);
            let t = Tensor::<AD, 1>::full([rows], 500.0, &dev);
            let text_shape = [rows, args.text, 64];
            let text = Tensor::<AD, 3>::random(text_shape, Distribution::Normal(0.0, 1.0), &dev);
            let base = cfg.init::<AD>(&dev)?;
            let model = match trainable {
                Trainable::Lora(l) => base
                    .with_lora(l, &dev)?
                    .with_frozen_precision(args.precision, &dev)?,
                _ => base,
            }
            .with_checkpointing(*checkpointing)?;
            let step = || {
                let v = model.forward(x.clone(), t.clone(), text.clone());
                drop(v.powi_scalar(2).mean().backward());
                let _ = <B as Backend>::sync(&dev);
            };
            measure::<B, _>(&dev, step).1
        }
        Case::Vae {
            base,
            latent,
            gradient,
        } => {
            let cfg = WanVaeConfig::new().with_base_dim(*base);
            let vae = cfg.init::<AD>(&dev)?.no_grad();
            let inner = vae.valid();
            let [f, h, w] = *latent;
            let shape = [rows, cfg.z_dim, f, h, w];
            let z = Tensor::<AD, 5>::random(shape, Distribution::Normal(0.0, 1.0), &dev);
            let step = || {
                match gradient {
                    Some(DecoderGradient::Graph) => {
                        let video = vae.decode_latent(z.clone().require_grad());
                        drop(video.powi_scalar(2).mean().backward());
                    }
                    // the same loss's gradient on the video, carried back by recomputation
                    Some(DecoderGradient::Checkpointed) => {
                        let (video, tape) = vae.decode_taped(z.clone());
                        let n = video.dims().iter().product::<usize>() as f64;
                        drop(vae.decode_vjp(tape, video.mul_scalar(2.0 / n)));
                    }
                    None => drop(inner.decode_latent(z.clone().inner())),
                }
                let _ = <B as Backend>::sync(&dev);
            };
            measure::<B, _>(&dev, step).1
        }
    };
    Ok(m.peak_bytes.unwrap_or(0))
}

/// The planner's step bytes of the case, and its table row without the figures.
fn planned(args: &Args, case: &Case, path: ActivationPath) -> (f64, String) {
    match case {
        Case::Dit {
            dim,
            ffn_dim,
            tokens,
            trainable,
            checkpointing,
        } => {
            let mut plan = DitStep::new(
                wan(args, *dim, *ffn_dim),
                *tokens,
                args.text,
                args.rows,
                trainable.clone(),
                path,
            );
            plan.checkpointing = *checkpointing;
            let weights = match trainable {
                Trainable::Lora(l) => {
                    plan.weight_bytes = args.precision.bytes();
                    plan.activation_bytes = args.precision.bytes();
                    format!("LoRA r{} {}", l.rank, args.precision)
                }
                _ => "all".to_string(),
            };
            (
                plan.plan().bytes(TermKind::Step),
                format!("| DiT width {dim}, ffn {ffn_dim} | {tokens} tokens | {weights}, checkpointing {checkpointing}"),
            )
        }
        Case::Vae {
            base,
            latent,
            gradient,
        } => {
            let cfg = WanVaeConfig::new().with_base_dim(*base);
            let [f, h, w] = *latent;
            let plan = VaeDecode {
                latent: [cfg.z_dim, f, h, w],
                vae: cfg,
                rows: args.rows,
                gradient: *gradient,
                weight_bytes: 4,
                activation_bytes: 4,
            };
            (
                plan.plan().bytes(TermKind::Step),
                format!(
                    "| VAE decode, width {base} | latent {f}x{h}x{w} | {}",
                    match gradient {
                        Some(DecoderGradient::Graph) => "gradients to the latent, graph kept",
                        Some(DecoderGradient::Checkpointed) =>
                            "gradients to the latent, checkpointed",
                        None => "no gradients",
                    }
                ),
            )
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let cases = cases(&args)?;
    if let Some(i) = args.only {
        let case = cases
            .get(i)
            .ok_or_else(|| format!("--only {i}: {} cases", cases.len()))?;
        println!("{}", measured(&args, case)?);
        return Ok(());
    }
    let path = ActivationPath::of::<B>();
    println!(
        "backend {DEFAULT_BACKEND_NAME} ({path:?}); DiT: {} blocks, {} rows, {} text tokens\n",
        args.blocks, args.rows, args.text
    );
    println!("| model | size | setting | measured | planned | error |\n|---|---|---|---|---|---|");
    let exe = std::env::current_exe()?;
    let mut worst: f64 = 0.0;
    for (i, case) in cases.iter().enumerate() {
        let out = Command::new(&exe)
            .args(std::env::args().skip(1))
            .args(["--only", &i.to_string()])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let measured: f64 = text.trim().parse().map_err(|_| {
            format!(
                "case {i} ({case:?}) printed `{}`: {}",
                text.trim(),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        let (planned, row) = planned(&args, case, path);
        let error = planned / measured - 1.0;
        worst = worst.max(error.abs());
        println!(
            "{row} | {:.1} MiB | {:.1} MiB | {:+.1}% |",
            measured / 1048576.0,
            planned / 1048576.0,
            100.0 * error
        );
    }
    println!("\nlargest error: {:.1}%", 100.0 * worst);
    Ok(())
}
