//! Times the flow-matching training step of the Wan DiT (forward, loss, backward, AdamW update)
//! on the selected backend, for comparison with PyTorch (issue: speed against PyTorch).
//!
//! ```text
//! cargo run --release --example train_step_bench -- --preset small --export out/twin/small
//! python benches/reference/wan_train_step.py out/twin/small
//! benches/reference/compare_train_step.sh        # both, back to back, for every preset
//! ```
//!
//! `--export DIR` writes the DiT's diffusers `config.json` and `weights.safetensors` and the
//! step's shapes (`bench.json`) so that the PyTorch twin runs the same model on the same
//! weights. Prints the median step time and the peak resident memory above the start of the
//! timed loop (`VmHWM - VmRSS` from `/proc/self/status`, the measure the twin uses too).

use std::{path::PathBuf, time::Instant};

use burn::{
    backend::Autodiff,
    optim::{AdamWConfig, GradientsParams, Optimizer},
    tensor::{backend::Backend, Distribution, Tensor},
};
use diffusion_core::{
    backend::{DefaultBackend, DEFAULT_BACKEND_NAME},
    checkpoint::{load_safetensors, save_safetensors},
    loss::flow_matching_loss,
    WanConfig, WanTransformer,
};

type B = DefaultBackend;
type AD = Autodiff<B>;

/// `(VmRSS, VmHWM)` of this process in bytes (Linux; zeros elsewhere).
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak resident set size to the current one (Linux: write 5 to clear_refs).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut preset, mut batch, mut reps) = ("small".to_string(), 2usize, 10usize);
    let mut export: Option<PathBuf> = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--preset" => preset = val()?,
            "--batch" => batch = val()?.parse()?,
            "--reps" => reps = val()?.parse()?,
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
        // the transformer-like case of the issue: 4 layers, 640 tokens of width 128
        "small" => (
            WanConfig::new(4, 32, 512, 4)
                .with_text_dim(64)
                .with_freq_dim(64),
            [16, 10, 16, 16],
            16,
        ),
        other => return Err(format!("unknown preset {other}: tiny | shapes | small").into()),
    };
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
            "sigma": 0.5, "lr": 1e-4, "reps": reps,
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
    let sigmas = vec![0.5; batch];
    let mut optim = AdamWConfig::new().with_weight_decay(0.01).init::<AD, _>();
    let mut step = |model: WanTransformer<AD>| -> WanTransformer<AD> {
        let loss =
            flow_matching_loss(&model, x0.clone(), eps.clone(), &sigmas, 1000, text.clone()).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = optim.step(1e-4, model, grads);
        let _ = <B as Backend>::sync(&dev);
        model
    };
    model = step(model); // warm-up
    let (start, _) = rss();
    reset_peak();
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        model = step(model);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (_, peak) = rss();
    times.sort_by(f64::total_cmp);
    let tokens = f / cfg.patch_size[0] * (h / cfg.patch_size[1]) * (w / cfg.patch_size[2]);
    println!(
        "burn {DEFAULT_BACKEND_NAME} | preset {preset} ({:.2}M params, batch {batch}, {tokens} tokens) | step {:.1} ms (median of {reps}) | peak {:.1} MiB above start",
        cfg.num_params() as f64 / 1e6,
        times[reps / 2],
        peak.saturating_sub(start) as f64 / 1048576.0
    );
    Ok(())
}
