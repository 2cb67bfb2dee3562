//! Which CPU backend should be the default? One DiT forward + backward on burn's `flex` and
//! `ndarray` backends, interleaved in one run, median of several repetitions.
//!
//! ```text
//! cargo bench --bench cpu_backends --features ndarray
//! ```

use std::time::{Duration, Instant};

use burn::{
    backend::Autodiff,
    tensor::{backend::Backend, Distribution, Tensor},
};
use diffusion_core::{
    backend::{Flex, NdArray},
    io::probe::{HeapProbe, PeakAlloc},
    WanConfig,
};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// A small but not toy DiT: width 256, 4 blocks, 5 x 16 x 16 latent (320 tokens).
fn config() -> WanConfig {
    WanConfig::new(4, 64, 1024, 4)
        .with_text_dim(64)
        .with_freq_dim(64)
}

fn fwd_bwd<Bk: Backend>(
    model: &diffusion_core::WanTransformer<Autodiff<Bk>>,
    dev: &burn::tensor::Device<Autodiff<Bk>>,
) -> (Duration, usize) {
    let x =
        Tensor::<Autodiff<Bk>, 5>::random([1, 16, 5, 16, 16], Distribution::Normal(0.0, 1.0), dev);
    let t = Tensor::<Autodiff<Bk>, 1>::from_floats([500.0], dev);
    let text = Tensor::<Autodiff<Bk>, 3>::random([1, 8, 64], Distribution::Normal(0.0, 1.0), dev);
    let probe = HeapProbe::start();
    let start = Instant::now();
    let loss = model.forward(x, t, text).powi_scalar(2).mean();
    let grads = loss.backward();
    drop(grads);
    (start.elapsed(), probe.peak().unwrap_or(0))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let reps = std::env::var("REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7);
    let fdev = Default::default();
    let ndev = Default::default();
    let flex = config().init::<Autodiff<Flex>>(&fdev).unwrap();
    let nd = config().init::<Autodiff<NdArray>>(&ndev).unwrap();
    let (mut tf, mut tn, mut mf, mut mn) = (vec![], vec![], 0, 0);
    // warm-up, then interleave so both see the same machine load
    fwd_bwd(&flex, &fdev);
    fwd_bwd(&nd, &ndev);
    for _ in 0..reps {
        let (t, m) = fwd_bwd(&flex, &fdev);
        tf.push(t);
        mf = mf.max(m);
        let (t, m) = fwd_bwd(&nd, &ndev);
        tn.push(t);
        mn = mn.max(m);
    }
    let (tf, tn) = (median(tf), median(tn));
    println!(
        "DiT forward+backward ({} params, latent 1x16x5x16x16, {reps} reps, median)",
        config().num_params()
    );
    println!("| backend | time | peak heap | time vs flex |");
    println!("|---|---|---|---|");
    println!(
        "| flex | {:.1} ms | {:.1} MiB | 1.00 |",
        tf.as_secs_f64() * 1e3,
        mf as f64 / 1048576.0
    );
    println!(
        "| ndarray | {:.1} ms | {:.1} MiB | {:.2} |",
        tn.as_secs_f64() * 1e3,
        mn as f64 / 1048576.0,
        tn.as_secs_f64() / tf.as_secs_f64()
    );
}
