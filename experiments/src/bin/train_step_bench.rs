//! Times a training step of the Wan DiT on the selected backend, for comparison with PyTorch.
//! `--step flow` (default): the flow-matching step (forward, loss,
//! backward, AdamW update). `--step prfl`: PRFL's reward step ("Video Generation Models Are Good Latent Reward Models"): a no-grad Euler
//! rollout of 10 of 20 steps (shift 3) from noise, one step with gradients, the process reward
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
use diffusion_core::{
    backend::{DefaultBackend, DEFAULT_BACKEND_NAME},
    io::checkpoint::{load_safetensors, save_safetensors},
    ops::fused_adamw::FusedAdamW,
    train::loss::flow_matching_loss,
    train::parallel::{cores, sharded_grads},
    Conditioning, CoreError, EulerOde, FlowMatchScheduleConfig, GradWindow, Rollout, WanConfig,
    WanTransformer,
};
use latent_reward::{LatentReward, ProcessRewardConfig};

type B = DefaultBackend;
type AD = Autodiff<B>;

/// Resets the peak resident set size to the current one (Linux: write 5 to clear_refs).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// PRFL step: sampling steps of the chain and the step taken with gradients.
const PRFL_STEPS: usize = 20;
const PRFL_START: usize = 10;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut preset, mut batch, mut reps) = ("small".to_string(), 2usize, 10usize);
    let mut shards: Option<usize> = None;
    let mut kind = "flow".to_string();
    let mut export: Option<PathBuf> = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--preset" => preset = val()?,
            "--batch" => batch = val()?.parse()?,
            "--reps" => reps = val()?.parse()?,
            "--shards" => shards = Some(val()?.parse()?),
            "--step" => kind = val()?,
            "--export" => export = Some(val()?.into()),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    // (config, latent [C, F, H, W], text tokens)
    let (cfg, [c, f, h, w], seq) = match preset.as_str() {
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
        other => return Err(format!("unknown preset {other}: tiny | shapes | small | wan").into()),
    };
    if kind != "flow" && kind != "prfl" {
        return Err(format!("unknown step {kind}: flow | prfl").into());
    }
    let dev = Default::default();
    B::seed(&dev, 0);
    let mut model = cfg.init::<AD>(&dev)?;
    if let Some(dir) = &export {
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
            "prfl": { "steps": PRFL_STEPS, "shift": 3.0, "start": PRFL_START, "depth": 2,
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
    let shards = shards.unwrap_or_else(cores).clamp(1, batch);
    // shard i takes rows [i * batch / shards, (i + 1) * batch / shards)
    let rows = |i: usize| (i * batch / shards, (i + 1) * batch / shards);
    let schedule = FlowMatchScheduleConfig::new(PRFL_STEPS)
        .with_shift(3.0)
        .init()?;
    // the process reward model starts from the exported DiT and stays frozen in the step
    let prm = ProcessRewardConfig::new(2).init(&model, &dev)?.no_grad();
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
                .with_steps(0..PRFL_START + 1)
                .with_window(GradWindow::Range {
                    start: PRFL_START,
                    len: 1,
                })
                .run(m, part(&eps), &Conditioning::new(text.clone()), 0)?;
            let sigma = Tensor::full([b - a], schedule.sigmas()[PRFL_START + 1], &dev);
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
    let training_peak = peak.max(warm_peak).saturating_sub(loaded);
    times.sort_by(f64::total_cmp);
    let mut update_ms = update_ms.split_off(1); // without the warm-up
    update_ms.sort_by(f64::total_cmp);
    let tokens = f / cfg.patch_size[0] * (h / cfg.patch_size[1]) * (w / cfg.patch_size[2]);
    println!(
        "burn {DEFAULT_BACKEND_NAME} | {kind} step | preset {preset} ({:.2}M params, batch {batch}, {tokens} tokens, {shards} shards) | step {:.1} ms (median of {reps}; AdamW update {:.1} ms) | peak {:.1} MiB above start | training {:.1} MiB above the loaded model",
        cfg.num_params() as f64 / 1e6,
        times[reps / 2],
        update_ms[reps / 2],
        peak.saturating_sub(start) as f64 / 1048576.0,
        training_peak as f64 / 1048576.0
    );
    Ok(())
}
