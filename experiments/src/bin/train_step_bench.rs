//! Times a training step of the Wan DiT on the selected backend, for comparison with PyTorch.
//! `--step flow` (default): the flow-matching step (forward, loss,
//! backward, AdamW update). `--step prfl`: PRFL's reward step ("Video Generation Models Are Good Latent Reward Models"): a no-grad Euler
//! rollout of `--start` (10) of 20 steps (shift 3) from noise, one step with gradients, the process reward
//! model (the DiT's first 2 blocks, query pool, MLP 256-128, frozen) on the noisy latent at its
//! timestep, `0.1 * relu(2 - r)`, backward, AdamW.
//!
//! ```text
//! cargo run --release -p experiments --bin train_step_bench -- --preset small --export out/twin/small
//! python benches/reference/wan_train_step.py out/twin/small
//! benches/reference/compare_train_step.sh        # both, back to back, every preset and step
//! ```
//!
//! `--shards N` splits the batch into N shards that run forward and backward on their own threads
//! (`diffusion_core::train::parallel::sharded_grads`; default: one per core, at most the batch);
//! `--shards 1` is the plain single-graph step. The AdamW update's own median time is printed too.
//! `--lora R` freezes the base weights and trains rank-R adapters on the attention;
//! `--precision bf16|f16` then stores and computes the frozen weights (policy and process reward
//! trunk) in half precision; `--checkpointing every_block` recomputes each block in the backward.
//! `--preset wan2.1-1.3b` is Wan2.1-T2V-1.3B's width (1536, FFN 8960, 12 heads) with `--blocks`
//! blocks, `--latent FxHxW` overrides a preset's latent grid (Wan: 16 channels, patches of
//! 1 x 2 x 2, so `21x60x104` is 480p x 81 frames). On GPU backends the device pool's peak is
//! printed too.
//! `--export DIR` writes the DiT's diffusers `config.json` and `weights.safetensors` and the
//! step's shapes (`bench.json`) so that the PyTorch twin runs the same model on the same
//! weights. Prints the median step time and two peaks of resident memory (`VmHWM` from
//! `/proc/self/status`, the measures the twin uses too): above the start of the timed loop, and
//! above the loaded model, from before the warm-up step (the training's whole working set:
//! optimiser state, gradients, activations and what the allocator keeps).

use std::{path::PathBuf, time::Instant};

use burn::{
    backend::Autodiff,
    module::Module,
    optim::Optimizer,
    tensor::{activation::relu, backend::Backend, Distribution, Tensor},
};
use clap::Parser;
use diffusion_core::{
    backend::{DefaultBackend, DEFAULT_BACKEND_NAME},
    io::checkpoint::{load_safetensors, save_safetensors},
    io::probe::device_reserved_bytes,
    ops::fused_adamw::FusedAdamW,
    ops::lora::LoraConfig,
    plan::parse_fhw,
    train::loss::flow_matching_loss,
    train::parallel::{cores, sharded_grads},
    train::{checkpointing::Checkpointing, precision::Precision},
    Conditioning, CoreError, EulerOde, FlowMatchScheduleConfig, GradWindow, Rollout, WanConfig,
    WanTransformer,
};
use latent_refl::{
    plan::PlanConfig,
    wan::{BackendName, MethodName},
};
use latent_reward::{LatentReward, ProcessRewardConfig};

type B = DefaultBackend;
type AD = Autodiff<B>;

/// Resets the peak resident set size to the current one (Linux: write 5 to clear_refs).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// PRFL step: sampling steps of the chain.
const PRFL_STEPS: usize = 20;

/// Times a training step of the Wan DiT.
#[derive(Parser)]
struct Args {
    /// tiny | shapes | small | wan | wan2.1-1.3b.
    #[arg(long, default_value = "small")]
    preset: String,
    /// Blocks of the model (default: the preset's; wan2.1-1.3b: 2).
    #[arg(long)]
    blocks: Option<usize>,
    /// Latent `FRAMESxHEIGHTxWIDTH` instead of the preset's.
    #[arg(long)]
    latent: Option<String>,
    /// Rows per step.
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Batch shards on their own threads (default: one per core on the CPU, 1 on a GPU).
    #[arg(long)]
    shards: Option<usize>,
    /// flow | prfl.
    #[arg(long, default_value = "flow")]
    step: String,
    /// PRFL: the sampling step taken with gradients (the ones before it run without).
    #[arg(long, default_value_t = 10)]
    start: usize,
    /// LoRA rank on the self- and cross-attention (0: every weight trains).
    #[arg(long, default_value_t = 0)]
    lora: usize,
    /// Precision of the frozen weights (with --lora): f32 | bf16 | f16.
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// none | every_block | every_nth:N.
    #[arg(long, default_value = "none")]
    checkpointing: Checkpointing,
    /// Writes the model and the step's shapes for the PyTorch twin.
    #[arg(long)]
    export: Option<PathBuf>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let (preset, batch, reps, kind) = (args.preset.as_str(), args.batch, args.reps, &args.step);
    // (config, latent [C, F, H, W], text tokens)
    let (mut cfg, [c, mut f, mut h, mut w], seq) = match preset {
        "tiny" => (WanConfig::tiny(), [4, 5, 16, 16], 8),
        // the shapes-world DiT: 80 tokens of width 128
        "shapes" => (
            WanConfig::new(4, 32, 384, 4)
                .with_text_dim(64)
                .with_freq_dim(64),
            [16, 5, 8, 8],
            16,
        ),
        // a transformer-like case: 4 layers, 640 tokens of width 128
        "small" => (
            WanConfig::new(4, 32, 512, 4)
                .with_text_dim(64)
                .with_freq_dim(64),
            [16, 10, 16, 16],
            16,
        ),
        // the Wan-proportional DiT of the refl_step benchmark: width 512 (8 heads of 64), FFN
        // 2048, 4 blocks, on the latents of 17 x 64 x 64 videos (80 tokens)
        "wan" => (
            WanConfig::new(8, 64, 2048, 4)
                .with_text_dim(64)
                .with_freq_dim(256),
            [16, 5, 8, 8],
            16,
        ),
        // Wan2.1-T2V-1.3B's blocks (2 of its 30 unless --blocks), 512 text tokens
        "wan2.1-1.3b" => (
            WanConfig {
                num_layers: 2,
                ..WanConfig::wan21_1_3b()
            },
            [16, 5, 30, 52],
            512,
        ),
        other => {
            let presets = "tiny | shapes | small | wan | wan2.1-1.3b";
            return Err(format!("unknown preset {other}: {presets}").into());
        }
    };
    if let Some(blocks) = args.blocks {
        cfg.num_layers = blocks;
    }
    if let Some(latent) = &args.latent {
        [f, h, w] = parse_fhw(latent).map_err(|e| format!("--latent {e}"))?;
    }
    if kind != "flow" && kind != "prfl" {
        return Err(format!("unknown step {kind}: flow | prfl").into());
    }
    if args.start >= PRFL_STEPS {
        return Err(format!("--start must be below {PRFL_STEPS}").into());
    }
    let lora = (args.lora > 0).then(|| LoraConfig::new(args.lora));
    if lora.is_none() && args.precision != Precision::F32 {
        return Err("--precision needs --lora (weights that train stay f32)".into());
    }
    let dev = Default::default();
    B::seed(&dev, 0);
    let mut model = cfg.init::<AD>(&dev)?;
    if let Some(dir) = &args.export {
        std::fs::create_dir_all(dir)?;
        let mut json = serde_json::to_value(&cfg)?;
        json["_class_name"] = "WanTransformer3DModel".into();
        json["qk_norm"] = "rms_norm_across_heads".into();
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&json)?,
        )?;
        save_safetensors(&model, dir.join("weights.safetensors"))?;
        // read back: the timed model is exactly the exported one
        model = load_safetensors(cfg.init::<AD>(&dev)?, dir.join("weights.safetensors"), &dev)?;
        let bench = serde_json::json!({
            "latent": [batch, c, f, h, w], "text": [batch, seq, cfg.text_dim],
            "sigma": 0.5, "lr": 1e-4, "reps": reps, "step": kind,
            "lora": args.lora, "precision": args.precision.to_string(),
            "checkpointing": args.checkpointing != Checkpointing::None,
            "prfl": { "steps": PRFL_STEPS, "shift": 3.0, "start": args.start, "depth": 2,
                      "pool_heads": 4, "head": [256, 128], "lambda": 0.1, "margin": 2.0 },
        });
        std::fs::write(
            dir.join("bench.json"),
            serde_json::to_string_pretty(&bench)?,
        )?;
    }
    let x0 = Tensor::<AD, 5>::random([batch, c, f, h, w], Distribution::Normal(0.0, 1.0), &dev);
    let eps = Tensor::<AD, 5>::random([batch, c, f, h, w], Distribution::Normal(0.0, 1.0), &dev);
    let text = Tensor::<AD, 3>::random(
        [batch, seq, cfg.text_dim],
        Distribution::Normal(0.0, 1.0),
        &dev,
    );
    let on_device = device_reserved_bytes::<B>(&dev).is_some();
    let shards = args
        .shards
        .unwrap_or_else(|| if on_device { 1 } else { cores() })
        .clamp(1, batch);
    // shard i takes rows [i * batch / shards, (i + 1) * batch / shards)
    let rows = |i: usize| (i * batch / shards, (i + 1) * batch / shards);
    let schedule = FlowMatchScheduleConfig::new(PRFL_STEPS)
        .with_shift(3.0)
        .init()?;
    // the process reward model starts from the exported DiT and stays frozen in the step
    let mut prm = ProcessRewardConfig::new(2).init(&model, &dev)?.no_grad();
    prm.trunk = prm.trunk.with_frozen_precision(args.precision, &dev)?;
    if let Some(lora) = &lora {
        model = model
            .with_lora(lora, &dev)?
            .with_frozen_precision(args.precision, &dev)?;
    }
    let mut model = model.with_checkpointing(args.checkpointing)?;
    // PyTorch's AdamW defaults (eps 1e-8) with the twin's weight decay
    let mut optim = FusedAdamW::new(0.01).init();
    let mut update_ms = Vec::with_capacity(reps + 1);
    let mut step = |model: WanTransformer<AD>| -> WanTransformer<AD> {
        let (grads, _) = sharded_grads(&model, shards, |m, i| {
            let (a, b) = rows(i);
            let part = |t: &Tensor<AD, 5>| t.clone().narrow(0, a, b - a);
            let text = text.clone().narrow(0, a, b - a);
            // each shard's share of the batch mean
            if kind == "flow" {
                let sigmas = vec![0.5; b - a];
                let loss = flow_matching_loss(m, part(&x0), part(&eps), &sigmas, 1000, text).sum();
                return Ok::<_, CoreError>((loss / batch as f64, ()));
            }
            let traj = Rollout::new(&schedule, &EulerOde)
                .with_steps(0..args.start + 1)
                .with_window(GradWindow::Range {
                    start: args.start,
                    len: 1,
                })
                .run(m, part(&eps), &Conditioning::new(text.clone()), 0)?;
            let sigma = Tensor::full([b - a], schedule.sigmas()[args.start + 1], &dev);
            let r = prm.score(traj.last().clone(), sigma, text);
            Ok((
                relu(r.neg().add_scalar(2.0)).sum() * (0.1 / batch as f64),
                (),
            ))
        })
        .expect("shards >= 1");
        let t = Instant::now();
        let model = optim.step(1e-4, model, grads);
        let _ = <B as Backend>::sync(&dev);
        update_ms.push(t.elapsed().as_secs_f64() * 1e3);
        model
    };
    // from the loaded model: the optimiser's state, the gradients, the activations and what the
    // allocator keeps, as the twin measures it
    let (loaded, _) = experiments::resident_memory();
    let _ = B::sync(&dev);
    B::memory_cleanup(&dev);
    let device_loaded = device_reserved_bytes::<B>(&dev);
    reset_peak();
    model = step(model); // warm-up
    let (start, warm_peak) = experiments::resident_memory();
    reset_peak();
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        model = step(model);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (_, peak) = experiments::resident_memory();
    let mib = |b: f64| b / 1048576.0;
    // the pool's high-water mark, whole and above the loaded model (the pool only grows)
    let device =
        device_reserved_bytes::<B>(&dev)
            .zip(device_loaded)
            .map_or(String::new(), |(p, l)| {
                format!(
                    " | device peak {:.1} MiB, {:.1} MiB above the loaded model",
                    mib(p as f64),
                    mib(p.saturating_sub(l) as f64)
                )
            });
    // the planner's peak of the same PRFL step (Wan latents: 16 channels, 4x / 8x compression)
    let planned = (c == 16 && kind == "prfl").then(|| {
        let video = [(f - 1) * 4 + 1, h * 8, w * 8];
        let mut p = PlanConfig::new(MethodName::Prfl, cfg.clone(), video);
        (p.text_tokens, p.batch, p.window, p.process_depth) = (seq, batch, 1, 2);
        (p.lora, p.checkpointing, p.precision) = (lora.clone(), args.checkpointing, args.precision);
        p.backend = BackendName::built();
        let plan = p.plan();
        let weights: f64 = plan
            .terms
            .iter()
            .filter(|t| t.name.ends_with("weights"))
            .map(|t| t.bytes)
            .sum();
        format!(
            " | planned {:.1} MiB, {:.1} MiB without the weights",
            mib(plan.total()),
            mib(plan.total() - weights)
        )
    });
    let planned = planned.unwrap_or_default();
    let training_peak = peak.max(warm_peak).saturating_sub(loaded);
    times.sort_by(f64::total_cmp);
    let mut update_ms = update_ms.split_off(1); // without the warm-up
    update_ms.sort_by(f64::total_cmp);
    let tokens = f / cfg.patch_size[0] * (h / cfg.patch_size[1]) * (w / cfg.patch_size[2]);
    println!(
        "burn {DEFAULT_BACKEND_NAME} | {kind} step {}{} | preset {preset} ({:.2}M params, batch {batch}, {tokens} tokens, {shards} shards, checkpointing {}) | step {:.1} ms (median of {reps}; AdamW update {:.1} ms) | peak {:.1} MiB above start | training {:.1} MiB above the loaded model{device}{planned}",
        args.precision,
        lora.as_ref().map_or(String::new(), |l| format!(" LoRA {}", l.rank)),
        cfg.num_params() as f64 / 1e6,
        args.checkpointing,
        times[reps / 2],
        update_ms[reps / 2],
        peak.saturating_sub(start) as f64 / 1048576.0,
        training_peak as f64 / 1048576.0
    );
    Ok(())
}
