//! AdamW whose per-parameter updates run on several threads.
//!
//! burn's `OptimizerAdaptor` updates one parameter after another, each with a handful of
//! element-wise tensor operations that the CPU backend runs on one thread: on the 19 M-parameter
//! Wan-proportional DiT that is 70-80 ms of a ~450 ms training step (docs/benchmarks.md).
//! [`ThreadedAdamW`] computes exactly the same update (burn's own [`AdamW`] step, on each
//! parameter flattened to one dimension, which an element-wise update does not notice) with the
//! parameters split into groups of about equal size, one thread per group. Its record is the
//! adaptor's (`HashMap<ParamId, AdaptorRecord<AdamW, B>>`, states at each parameter's rank), so
//! checkpoints are interchangeable with `AdamWConfig::init()`'s.

use burn::{
    module::{AutodiffModule, ModuleMapper, Param, ParamId},
    optim::{
        adaptor::GradAdaptor, record::AdaptorRecord, AdamW, AdamWConfig, AdamWState,
        AdaptiveMomentumState, GradientsParams, LearningRate, MultiGradientsParams, Optimizer,
        SimpleOptimizer,
    },
    tensor::{backend::AutodiffBackend, backend::Backend, Tensor},
};
use hashbrown::HashMap;
use rayon::prelude::*;

/// The optimiser state of every parameter, keyed as burn's `OptimizerAdaptor` keys it.
pub type AdamWRecord<B> = HashMap<ParamId, AdaptorRecord<AdamW, B>>;

/// AdamW with the parameter updates spread over `threads` threads (see the module docs).
#[derive(Clone)]
pub struct ThreadedAdamW<B: AutodiffBackend> {
    optim: AdamW,
    threads: usize,
    records: AdamWRecord<B>,
}

impl<B: AutodiffBackend> ThreadedAdamW<B> {
    /// The optimiser of `config` on `threads` threads (0 is taken as 1).
    pub fn new(config: &AdamWConfig, threads: usize) -> Self {
        Self {
            optim: config.build(),
            threads: threads.max(1),
            records: HashMap::new(),
        }
    }

    fn update<M: AutodiffModule<B>>(
        &mut self,
        lr: LearningRate,
        module: M,
        mut grads: GradAdaptor,
    ) -> M {
        let mut gather = Gather::<B> {
            grads: &mut grads,
            records: &mut self.records,
            jobs: Vec::new(),
        };
        // the parameters leave the module (an empty placeholder stays in their place), so each
        // update owns its tensors, as in burn's parameter-by-parameter mapper
        let module = module.map(&mut gather);
        let mut jobs = gather.jobs;

        // groups of about equal size: largest parameters first, each to the lightest group
        jobs.sort_by_key(|j| std::cmp::Reverse(j.param.dims()[0]));
        let mut load = vec![0usize; self.threads];
        let mut groups: Vec<Vec<Job<B::InnerBackend>>> =
            (0..self.threads).map(|_| Vec::new()).collect();
        for job in jobs {
            let g = (0..load.len()).min_by_key(|&g| load[g]).unwrap_or(0);
            load[g] += job.param.dims()[0];
            groups[g].push(job);
        }

        let optim = &self.optim;
        let run = |group: Vec<Job<B::InnerBackend>>| -> Vec<Done<B::InnerBackend>> {
            group
                .into_iter()
                .map(|j| {
                    let (param, state) = optim.step(lr, j.param, j.grad, j.state);
                    Done {
                        slot: j.slot,
                        param,
                        state: state.expect("AdamW always returns its state"),
                    }
                })
                .collect()
        };
        // on rayon's pool, whose threads persist between steps (fresh threads every step would
        // each get their own allocator arena and raise the peak memory)
        let done: Vec<Done<B::InnerBackend>> = groups.into_par_iter().flat_map_iter(run).collect();

        module.map(&mut Scatter {
            done: done.into_iter().map(|d| (d.slot.id, d)).collect(),
            records: &mut self.records,
        })
    }
}

/// Where a parameter goes back: its id, shape and whether it requires a gradient.
struct Slot {
    id: ParamId,
    dims: Vec<usize>,
    require_grad: bool,
}

/// One parameter's update: the flattened parameter, gradient and state.
struct Job<B: Backend> {
    slot: Slot,
    param: Tensor<B, 1>,
    grad: Tensor<B, 1>,
    state: Option<AdamWState<B, 1>>,
}

/// One parameter's result, flattened.
struct Done<B: Backend> {
    slot: Slot,
    param: Tensor<B, 1>,
    state: AdamWState<B, 1>,
}

/// Reshapes both moments of a state (time and AMSGrad's maximum carried along).
fn reshape_state<B: Backend, const D: usize, const E: usize>(
    state: AdamWState<B, D>,
    dims: [usize; E],
) -> AdamWState<B, E> {
    let m = state.momentum;
    AdamWState {
        momentum: AdaptiveMomentumState {
            time: m.time,
            moment_1: m.moment_1.reshape(dims),
            moment_2: m.moment_2.reshape(dims),
            max_moment_2: m.max_moment_2.map(|t| t.reshape(dims)),
        },
    }
}

/// Takes every parameter that has a gradient out of the module into a [`Job`].
struct Gather<'a, B: AutodiffBackend> {
    grads: &'a mut GradAdaptor,
    records: &'a mut AdamWRecord<B>,
    jobs: Vec<Job<B::InnerBackend>>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Gather<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let Some((grad, _)) = self.grads.remove::<B::InnerBackend, D>(param.id) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let dims = tensor.dims();
        let n = grad.shape().num_elements();
        let state = self
            .records
            .remove(&id)
            .map(|r| reshape_state(r.into_state::<D>(), [n]));
        let placeholder = Tensor::empty([0; D], &tensor.device());
        self.jobs.push(Job {
            slot: Slot {
                id,
                dims: dims.to_vec(),
                require_grad: tensor.is_require_grad(),
            },
            param: tensor.inner().reshape([n]),
            grad: grad.reshape([n]),
            state,
        });
        Param::from_mapped_value(id, placeholder, mapper)
    }
}

/// Writes the updated values back at their shapes and stores the states at their ranks.
struct Scatter<'a, B: AutodiffBackend> {
    done: HashMap<ParamId, Done<B::InnerBackend>>,
    records: &'a mut AdamWRecord<B>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Scatter<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(done) = self.done.remove(&id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let dims: [usize; D] = done
            .slot
            .dims
            .try_into()
            .expect("a parameter keeps its rank");
        self.records.insert(
            id,
            AdaptorRecord::from_state::<D>(reshape_state(done.state, dims)),
        );
        let mut value = Tensor::from_inner(done.param.reshape(dims));
        if done.slot.require_grad {
            value = value.require_grad();
        }
        Param::from_mapped_value(id, value, mapper)
    }
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> Optimizer<M, B> for ThreadedAdamW<B> {
    type Record = AdamWRecord<B>;

    fn step(&mut self, lr: LearningRate, module: M, grads: GradientsParams) -> M {
        self.update(lr, module, grads.into())
    }

    fn step_multi(&mut self, lr: LearningRate, module: M, grads: MultiGradientsParams) -> M {
        self.update(lr, module, grads.into())
    }

    fn to_record(&self) -> Self::Record {
        self.records.clone()
    }

    fn load_record(mut self, record: Self::Record) -> Self {
        self.records = record;
        self
    }
}

#[cfg(test)]
mod tests {
    use burn::{
        backend::Autodiff,
        module::Module,
        nn::{Linear, LinearConfig},
        tensor::TensorData,
    };

    use super::*;
    use crate::{backend::DefaultBackend, optim::adamw};

    type AD = Autodiff<DefaultBackend>;

    #[derive(Module, Debug)]
    struct Net<B: Backend> {
        a: Linear<B>,
        b: Linear<B>,
        scale: Param<Tensor<B, 3>>,
    }

    /// A fixed network (no random initialisation: every call builds the same values).
    fn net() -> Net<AD> {
        let dev = Default::default();
        let fixed = |shape: Vec<usize>, f: f32| {
            let n: usize = shape.iter().product();
            TensorData::new(
                (0..n).map(|i| (i as f32 * f).sin()).collect::<Vec<f32>>(),
                shape,
            )
        };
        let linear = |i: usize, o: usize, f: f32| {
            let mut l: Linear<AD> = LinearConfig::new(i, o).init(&dev);
            l.weight = Param::from_tensor(Tensor::from_data(fixed(vec![i, o], f), &dev));
            l.bias = Some(Param::from_tensor(Tensor::from_data(
                fixed(vec![o], f + 0.2),
                &dev,
            )));
            l
        };
        Net {
            a: linear(3, 4, 0.3),
            b: linear(4, 2, 0.7),
            scale: Param::from_tensor(Tensor::from_data(fixed(vec![1, 2, 2], 1.1), &dev)),
        }
    }

    fn grads(net: &Net<AD>, k: f32) -> GradientsParams {
        let dev = Default::default();
        let x = Tensor::<AD, 2>::from_data(
            TensorData::new(vec![1.0, -2.0 * k, 0.5, k, 0.0, 3.0], [2, 3]),
            &dev,
        );
        let y = net.b.forward(net.a.forward(x).tanh()); // [2, 2]
        let loss = (y.unsqueeze::<3>() * net.scale.val()).powi_scalar(2).sum();
        GradientsParams::from_grads(loss.backward(), net)
    }

    fn values(net: &Net<AD>) -> Vec<Vec<f32>> {
        let t = |x: Tensor<AD, 2>| x.into_data().to_vec::<f32>().unwrap();
        vec![
            t(net.a.weight.val()),
            t(net.b.weight.val()),
            net.scale.val().into_data().to_vec::<f32>().unwrap(),
            net.a
                .bias
                .as_ref()
                .unwrap()
                .val()
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
        ]
    }

    /// Three steps on one, two and three threads give burn's AdamW's parameters and state
    /// exactly, and a record saved by one optimiser continues in the other.
    #[test]
    fn matches_burns_adamw_exactly() {
        let cfg = adamw(0.1);
        let mut reference = cfg.init::<AD, Net<AD>>();
        let mut want = net();
        for k in 0..3 {
            let g = grads(&want, k as f32);
            want = reference.step(1e-2, want, g);
        }
        for threads in [1, 2, 3] {
            let mut ours = ThreadedAdamW::<AD>::new(&cfg, threads);
            let mut got = net();
            for k in 0..3 {
                let g = grads(&got, k as f32);
                got = ours.step(1e-2, got, g);
            }
            assert_eq!(values(&got), values(&want), "{threads} threads");
            assert!(got.a.weight.val().is_require_grad());
            // burn's adaptor continues from our record, and we from its: both give the
            // uninterrupted reference's fourth step (a fresh state would not)
            let next = |o: &mut dyn FnMut(Net<AD>, GradientsParams) -> Net<AD>, n: &Net<AD>| {
                values(&o(n.clone(), grads(n, 5.0)))
            };
            let want_next = next(&mut |n, g| reference.clone().step(1e-2, n, g), &want);
            let mut theirs = cfg
                .init::<AD, Net<AD>>()
                .load_record(Optimizer::<Net<AD>, AD>::to_record(&ours));
            assert_eq!(next(&mut |n, g| theirs.step(1e-2, n, g), &got), want_next);
            let mut again = Optimizer::<Net<AD>, AD>::load_record(
                ThreadedAdamW::<AD>::new(&cfg, threads),
                reference.to_record(),
            );
            assert_eq!(next(&mut |n, g| again.step(1e-2, n, g), &want), want_next);
            let mut fresh = cfg.init::<AD, Net<AD>>();
            assert_ne!(next(&mut |n, g| fresh.step(1e-2, n, g), &want), want_next);
        }
    }

    /// Parameters without a gradient (frozen) are left as they are and get no state.
    #[test]
    fn frozen_parameters_stay() {
        let cfg = adamw(0.0);
        let mut n = net();
        n.scale = n.scale.set_require_grad(false);
        let before = values(&n);
        let mut ours = ThreadedAdamW::<AD>::new(&cfg, 2);
        let g = grads(&n, 1.0);
        let after = ours.step(1e-2, n.clone(), g);
        let a = values(&after);
        assert_eq!(a[2], before[2]);
        assert_ne!(a[0], before[0]);
        let record = Optimizer::<Net<AD>, AD>::to_record(&ours);
        assert!(!record.contains_key(&n.scale.id) && record.contains_key(&n.a.weight.id));
    }
}
