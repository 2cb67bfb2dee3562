//! Data parallelism inside one process: the shards of a batch run forward and backward on their
//! own threads and their gradients are summed.
//!
//! burn's CPU backend (`flex`) runs most element-wise operations, reductions and strided copies on
//! one thread and parallelises only large matrix products, so a training step of a small DiT
//! keeps one core of two busy. Splitting the batch puts the rest of the machine to work without
//! touching the kernels.

use burn::{
    module::AutodiffModule,
    optim::{GradientsAccumulator, GradientsParams},
    tensor::{backend::AutodiffBackend, Tensor},
};

use std::{
    panic::{catch_unwind, resume_unwind, AssertUnwindSafe},
    sync::Barrier,
};

use crate::error::{invalid, CoreError};

/// Gradients of `sum_i loss_i` where `(loss_i, out_i) = shard(model_i, i)` for `i` in
/// `0..shards`, each shard's forward and backward on its own thread; returns the gradients and
/// the shards' side outputs `out_i` in shard order.
///
/// Each thread works on a fork of `model` (the same parameter data and ids, fresh autodiff
/// leaves; frozen parameters stay frozen), so the shards' graphs share no node and burn's
/// autodiff runs them side by side; every shard's forward ends before the first backward starts
/// (see the body); the gradients are then summed per parameter. Give each shard
/// its share of a batch mean (the shard's summed loss divided by the whole batch size) and the
/// result is the whole batch's gradient; `shards = 1` runs on the calling thread.
///
/// # Errors
/// The first shard's error, in shard order; `InvalidConfig` when `shards` is 0.
///
/// # Panics
/// Re-raises a panic of `shard` on any thread.
pub fn sharded_grads<B, M, T, E, F>(
    model: &M,
    shards: usize,
    shard: F,
) -> std::result::Result<(GradientsParams, Vec<T>), E>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Send,
    T: Send,
    E: Send + From<CoreError>,
    F: Fn(&M, usize) -> std::result::Result<(Tensor<B, 1>, T), E> + Sync,
{
    if shards == 0 {
        return Err(invalid("shards", "must be at least 1").into());
    }
    if shards == 1 {
        let (loss, out) = shard(model, 0)?;
        return Ok((
            GradientsParams::from_grads(loss.backward(), model),
            vec![out],
        ));
    }
    // visiting the parameters also initialises lazy ones in place, so the forks share them
    let device = model
        .devices()
        .into_iter()
        .next()
        .ok_or_else(|| invalid("model", "has no parameters"))?;
    // every forward ends before any backward starts: a backward ends by sweeping burn's global
    // autodiff graph table, and a graph still being built on another thread can lose steps to
    // that sweep, and with them gradients, silently (tracel-ai/burn#5573, in burn 0.21)
    let forwards_done = Barrier::new(shards);
    let results: Vec<_> = std::thread::scope(|scope| {
        let (shard, forwards_done) = (&shard, &forwards_done);
        let handles: Vec<_> = (0..shards)
            .map(|i| {
                let fork = model.clone().fork(&device);
                scope.spawn(move || {
                    // a panicking shard still reaches the barrier, so the others do not hang
                    let forward = catch_unwind(AssertUnwindSafe(|| shard(&fork, i)));
                    forwards_done.wait();
                    let (loss, out) = forward.unwrap_or_else(|e| resume_unwind(e))?;
                    Ok((GradientsParams::from_grads(loss.backward(), &fork), out))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| resume_unwind(e)))
            .collect::<Vec<std::result::Result<_, E>>>()
    });
    let mut acc = GradientsAccumulator::<M>::new();
    let mut outs = Vec::with_capacity(shards);
    for result in results {
        let (grads, out) = result?;
        acc.accumulate(model, grads);
        outs.push(out);
    }
    Ok((acc.grads(), outs))
}

/// `f(0), ..., f(n - 1)` computed on up to `threads` threads (thread `t` takes the indices
/// `t, t + threads, ...`), returned in index order: for independent pieces of inference, such as
/// the chunks of an evaluation batch. `threads <= 1` runs on the calling thread.
///
/// # Panics
/// Re-raises a panic of `f` on any thread.
pub fn parallel_map<R, F>(n: usize, threads: usize, f: F) -> Vec<R>
where
    R: Send,
    F: Fn(usize) -> R + Sync,
{
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 {
        return (0..n).map(f).collect();
    }
    let mut indexed: Vec<(usize, R)> = std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t..n)
                        .step_by(threads)
                        .map(|i| (i, f(i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    indexed.sort_by_key(|(i, _)| *i);
    indexed.into_iter().map(|(_, r)| r).collect()
}

/// Rows `[i * len / shards, (i + 1) * len / shards)` of shard `i` of `len` rows: the shards
/// cover the rows in order and differ in size by at most one.
pub fn shard_rows(len: usize, shards: usize, i: usize) -> std::ops::Range<usize> {
    i * len / shards..(i + 1) * len / shards
}

/// Cores of this machine (1 when unknown): a default for shard and thread counts.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::DefaultBackend as TestBackend;
    use burn::{
        backend::Autodiff,
        nn::{Linear, LinearConfig},
        tensor::TensorData,
    };

    type AD = Autodiff<TestBackend>;

    #[test]
    fn parallel_map_keeps_the_order() {
        for threads in [0, 1, 2, 3, 8] {
            let squares = parallel_map(7, threads, |i| i * i);
            assert_eq!(squares, vec![0, 1, 4, 9, 16, 25, 36], "{threads} threads");
        }
        assert!(parallel_map(0, 2, |i| i).is_empty());
    }

    #[test]
    fn shard_rows_cover_the_batch() {
        let rows: Vec<_> = (0..3).map(|i| shard_rows(7, 3, i)).collect();
        assert_eq!(rows, vec![0..2, 2..4, 4..7]);
        assert_eq!(shard_rows(4, 1, 0), 0..4);
    }

    /// The gradient of a linear model's summed squared output over four rows, whole and in two
    /// shards of two rows: `d/dW sum_n (x_n W)^2 = sum_n 2 x_n^T (x_n W)`.
    #[test]
    fn two_shards_give_the_whole_batch_gradient() {
        let dev = Default::default();
        let model: Linear<AD> = LinearConfig::new(3, 2).with_bias(false).init(&dev);
        let x = Tensor::<AD, 2>::from_data(
            TensorData::new(
                vec![
                    1.0f32, 0.0, 2.0, -1.0, 0.5, 0.0, 0.0, 1.0, 1.0, 3.0, -2.0, 0.5,
                ],
                [4, 3],
            ),
            &dev,
        );
        let loss = |m: &Linear<AD>, rows: Tensor<AD, 2>| {
            let l = m.forward(rows).powi_scalar(2).sum();
            let v = l.clone().into_scalar();
            Ok::<_, CoreError>((l, v))
        };
        let (whole, v1) = sharded_grads(&model, 1, |m, _| loss(m, x.clone())).unwrap();
        let (split, v2) =
            sharded_grads(&model, 2, |m, i| loss(m, x.clone().narrow(0, 2 * i, 2))).unwrap();
        assert_eq!(v2.len(), 2);
        assert!((v1[0] - v2[0] - v2[1]).abs() < 1e-4 * (1.0 + v1[0].abs()));
        let weight = |g: &GradientsParams| {
            g.get::<TestBackend, 2>(model.weight.id)
                .expect("weight gradient")
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        };
        let (a, b) = (weight(&whole), weight(&split));
        assert!(a.iter().any(|v| v.abs() > 1e-3));
        for (u, v) in a.iter().zip(&b) {
            assert!((u - v).abs() < 1e-4 * (1.0 + u.abs()), "{a:?} vs {b:?}");
        }
        assert!(sharded_grads(&model, 0, |m, _| loss(m, x.clone())).is_err());
        // an error on one shard is returned, not a panic
        let failing = sharded_grads(&model, 2, |m, i| {
            if i == 1 {
                Err(invalid("shard", "fails"))
            } else {
                loss(m, x.clone())
            }
        });
        assert!(matches!(
            failing,
            Err(CoreError::InvalidConfig { field: "shard", .. })
        ));
        // a panic on one shard reaches the caller (the other shard does not wait forever)
        let panicking = catch_unwind(AssertUnwindSafe(|| {
            sharded_grads(&model, 2, |m, i| {
                assert!(i == 0, "shard {i} panics");
                loss(m, x.clone())
            })
        }));
        assert!(panicking.is_err());
    }

    /// Shards of very different lengths (the short ones wait at the barrier for the long ones),
    /// with concatenations (the operation named in tracel-ai/burn#5573), many times over: the
    /// summed gradients are the whole batch's every time.
    #[test]
    fn uneven_shards_lose_no_gradient() {
        let dev = Default::default();
        let a: Linear<AD> = LinearConfig::new(16, 16).init(&dev);
        let b: Linear<AD> = LinearConfig::new(16, 16).init(&dev);
        let model = (a, b);
        let x = Tensor::<AD, 2>::from_data(
            TensorData::new((0..64).map(|i| (i as f32 * 0.37).sin()).collect(), [4, 16]),
            &dev,
        );
        // shard i: (i + 1) * 8 rounds of a, cat, b
        let loss = |m: &(Linear<AD>, Linear<AD>), i: usize| {
            let mut h = x.clone();
            for _ in 0..(i + 1) * 8 {
                let u = m.0.forward(h).tanh();
                h =
                    m.1.forward(Tensor::cat(vec![u.clone(), u], 0).narrow(0, 0, 4))
                        .tanh();
            }
            h.sum()
        };
        let shards = 4;
        let (reference, _) = sharded_grads(&model, 1, |m, _| {
            let total = (0..shards)
                .map(|i| loss(m, i))
                .reduce(|p, q| p + q)
                .unwrap();
            Ok::<_, CoreError>((total, ()))
        })
        .unwrap();
        let flat = |g: &GradientsParams| -> Vec<f32> {
            [
                model.0.weight.id,
                model.1.weight.id,
                model.0.bias.as_ref().unwrap().id,
            ]
            .into_iter()
            .flat_map(|id| {
                g.get::<TestBackend, 1>(id)
                    .map(|t| t.into_data().to_vec::<f32>().unwrap())
                    .or_else(|| {
                        g.get::<TestBackend, 2>(id)
                            .map(|t| t.into_data().to_vec::<f32>().unwrap())
                    })
                    .expect("every parameter has a gradient")
            })
            .collect()
        };
        let want = flat(&reference);
        for round in 0..20 {
            let (got, _) =
                sharded_grads(&model, shards, |m, i| Ok::<_, CoreError>((loss(m, i), ()))).unwrap();
            let got = flat(&got);
            for (u, v) in want.iter().zip(&got) {
                assert!(
                    (u - v).abs() < 1e-4 * (1.0 + u.abs()),
                    "round {round}: {u} vs {v}"
                );
            }
        }
    }
}
