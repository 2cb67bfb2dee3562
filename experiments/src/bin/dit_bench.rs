//! Times one DiT forward and one forward + backward on the selected backend and reports peak
//! memory (device pool on GPU backends, heap on CPU backends).
//!
//! ```text
//! cargo run --release -p experiments --bin dit_bench -- --preset small
//! cargo run --release -p experiments --features cuda --bin dit_bench -- --preset wan1.3b --latent 16,5,30,52
//! ```

use std::time::Duration;

use burn::{
    backend::Autodiff,
    tensor::{backend::Backend, Distribution, Tensor},
};
use diffusion_core::{
    backend::{DefaultBackend, DEFAULT_BACKEND_NAME},
    io::probe::{measure, PeakAlloc},
    WanConfig,
};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

type B = DefaultBackend;
type AD = Autodiff<B>;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut preset, mut latent, mut reps) = ("small".to_string(), None::<[usize; 4]>, 5usize);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--preset" => preset = val()?,
            "--reps" => reps = val()?.parse()?,
            "--latent" => {
                let v: Vec<usize> = val()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
                latent = Some(v.try_into().map_err(|_| "--latent takes C,F,H,W")?);
            }
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    let (cfg, default_latent) = match preset.as_str() {
        "tiny" => (WanConfig::tiny(), [4, 5, 16, 16]),
        "small" => (
            WanConfig::new(4, 64, 1024, 4)
                .with_text_dim(64)
                .with_freq_dim(64),
            [16, 5, 16, 16],
        ),
        "wan1.3b" => (WanConfig::wan21_1_3b(), [16, 5, 30, 52]),
        "wan14b" => (WanConfig::wan21_14b(), [16, 5, 30, 52]),
        other => {
            return Err(format!("unknown preset {other}: tiny | small | wan1.3b | wan14b").into())
        }
    };
    let [c, f, h, w] = latent.unwrap_or(default_latent);
    let dev = Default::default();
    let model = cfg.init::<AD>(&dev)?;
    let inner = burn::module::AutodiffModule::valid(&model);
    let tokens = f / cfg.patch_size[0] * (h / cfg.patch_size[1]) * (w / cfg.patch_size[2]);
    let x = Tensor::<AD, 5>::random([1, c, f, h, w], Distribution::Normal(0.0, 1.0), &dev);
    let t = Tensor::<AD, 1>::from_floats([500.0], &dev);
    let text = Tensor::<AD, 3>::random([1, 32, cfg.text_dim], Distribution::Normal(0.0, 1.0), &dev);
    let fwd = || {
        let v = inner.forward(x.clone().inner(), t.clone().inner(), text.clone().inner());
        let _ = v.sum().into_scalar();
    };
    let fwd_bwd = || {
        let loss = model
            .forward(x.clone(), t.clone(), text.clone())
            .powi_scalar(2)
            .mean();
        let grads = loss.backward();
        drop(grads);
        let _ = <B as Backend>::sync(&dev);
    };
    fwd();
    fwd_bwd();
    let (mut tf, mut tb, mut mf, mut mb) = (vec![], vec![], 0u64, 0u64);
    for _ in 0..reps {
        let ((), m) = measure::<B, _>(&dev, fwd);
        tf.push(m.time);
        mf = mf.max(m.peak_bytes.unwrap_or(0));
        let ((), m) = measure::<B, _>(&dev, fwd_bwd);
        tb.push(m.time);
        mb = mb.max(m.peak_bytes.unwrap_or(0));
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    println!("backend {DEFAULT_BACKEND_NAME}; preset {preset} ({:.1}M params), latent [1, {c}, {f}, {h}, {w}] = {tokens} tokens, median of {reps}", cfg.num_params() as f64 / 1e6);
    println!("| pass | time | peak memory |\n|---|---|---|");
    println!(
        "| forward (no autodiff) | {:.1} ms | {:.1} MiB |",
        median(tf).as_secs_f64() * 1e3,
        mib(mf)
    );
    println!(
        "| forward + backward | {:.1} ms | {:.1} MiB |",
        median(tb).as_secs_f64() * 1e3,
        mib(mb)
    );
    Ok(())
}
