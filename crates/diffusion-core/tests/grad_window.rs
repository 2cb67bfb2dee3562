//! The gradient window of the denoising chain: which steps record a graph, and that the others
//! leave none behind.

#[path = "core/common.rs"]
mod common;

#[global_allocator]
static ALLOC: diffusion_core::io::probe::PeakAlloc = diffusion_core::io::probe::PeakAlloc;

use burn::{
    module::Param,
    optim::GradientsParams,
    tensor::{Distribution, Tensor},
};
use common::*;
use diffusion_core::{
    io::checkpoint::{NamedWeights, ParamLayout, WeightVisitor},
    io::probe::memory_in_use,
    sampling::rollout::randn,
    Conditioning, FlowGrpoSde, FlowMatchScheduleConfig, GradWindow, Rollout, WanConfig,
    WanTransformer,
};
use rand::SeedableRng;

/// The heap probe counts the whole process: tests of this file run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn setup(latent: [usize; 5]) -> (WanTransformer<AD>, Tensor<AD, 5>, Conditioning<AD>) {
    let dev = Default::default();
    let model = WanConfig::tiny().init::<AD>(&dev).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let x = randn::<AD, 5>(latent, &mut rng, &dev);
    let text = Tensor::<AD, 3>::random([latent[0], 3, 16], Distribution::Normal(0.0, 1.0), &dev);
    (model, x, Conditioning::new(text))
}

/// Compares the gradients two backward passes left on every parameter.
struct GradCompare<'a> {
    a: &'a GradientsParams,
    b: &'a GradientsParams,
    max_rel: f64,
    nonzero: usize,
    total: usize,
}

impl WeightVisitor<AD> for GradCompare<'_> {
    fn param<const D: usize>(
        &mut self,
        key: &str,
        p: &mut Param<Tensor<AD, D>>,
        _: ParamLayout,
    ) -> diffusion_core::Result<()> {
        type Inner = <AD as burn::tensor::backend::AutodiffBackend>::InnerBackend;
        let ga = self
            .a
            .get::<Inner, D>(p.id)
            .unwrap_or_else(|| panic!("no gradient for {key} (window run)"));
        let gb = self
            .b
            .get::<Inner, D>(p.id)
            .unwrap_or_else(|| panic!("no gradient for {key} (single step)"));
        let (va, vb) = (values(ga), values(gb));
        let norm = vb.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        if norm > 0.0 {
            self.nonzero += 1;
            self.max_rel = self.max_rel.max(rel_err(&va, &vb));
        } else {
            assert!(
                va.iter().all(|v| *v == 0.0),
                "{key}: gradient where the single step has none"
            );
        }
        self.total += 1;
        Ok(())
    }
}

#[test]
fn window_of_one_step_equals_that_step_alone() {
    let _serial = serial();
    let (mut model, x, cond) = setup([2, 4, 3, 4, 4]);
    let schedule = FlowMatchScheduleConfig::new(5)
        .with_shift(3.0)
        .init()
        .unwrap();
    let sde = FlowGrpoSde::default();
    let s = 2;
    let w = Tensor::<AD, 5>::random(x.dims(), Distribution::Normal(0.0, 1.0), &x.device());

    let traj = Rollout::new(&schedule, &sde)
        .with_steps(0..s + 1)
        .with_window(GradWindow::Range { start: s, len: 1 })
        .run(&model, x, &cond, 11)
        .unwrap();
    let ga =
        GradientsParams::from_grads((traj.last().clone() * w.clone()).sum().backward(), &model);

    let start = Tensor::<AD, 5>::from_inner(traj.latents[s].clone().inner());
    let alone = Rollout::new(&schedule, &sde)
        .with_steps(s..s + 1)
        .with_window(GradWindow::Full)
        .run(&model, start, &cond, 11)
        .unwrap();
    // same seed, same step: the same noise, hence the same sample
    assert_eq!(values(alone.last().clone()), values(traj.last().clone()));
    let gb = GradientsParams::from_grads((alone.last().clone() * w).sum().backward(), &model);

    let mut cmp = GradCompare {
        a: &ga,
        b: &gb,
        max_rel: 0.0,
        nonzero: 0,
        total: 0,
    };
    model.visit_weights(&mut cmp).unwrap();
    assert!(
        cmp.max_rel < 1e-5,
        "max relative gradient difference {:.2e}",
        cmp.max_rel
    );
    // every parameter takes part in a step: all gradients are non-zero
    assert_eq!(
        cmp.nonzero, cmp.total,
        "{} of {} parameters got gradients",
        cmp.nonzero, cmp.total
    );
}

#[test]
fn steps_outside_the_window_leave_no_graph() {
    let _serial = serial();
    let (model, x, cond) = setup([1, 4, 5, 16, 16]);
    let dev = x.device();
    let schedule = FlowMatchScheduleConfig::new(6).init().unwrap();
    let sde = FlowGrpoSde::default();
    // memory still held by a trajectory after the rollout returns: its graph, if any
    let held = |window: GradWindow| {
        let before = memory_in_use::<AD>(&dev).expect("PeakAlloc or a CubeCL device");
        let traj = Rollout::new(&schedule, &sde)
            .with_window(window)
            .run(&model, x.clone(), &cond, 3)
            .unwrap();
        let during = memory_in_use::<AD>(&dev).unwrap();
        drop(traj);
        during.saturating_sub(before) as f64
    };
    let _warm = held(GradWindow::None);
    let none = held(GradWindow::None);
    let last1 = held(GradWindow::LastK(1));
    let full = held(GradWindow::Full);
    let per_step = last1 - none;
    eprintln!("held: none {none} B, last-1 {last1} B, full {full} B");
    assert!(
        per_step > 4.0 * none.max(1.0),
        "one recorded step ({per_step} B) should dwarf a graph-free chain ({none} B)"
    );
    // six recorded steps hold about six times one step's graph
    let ratio = (full - none) / per_step;
    assert!(
        (4.5..7.5).contains(&ratio),
        "full/one-step graph ratio {ratio:.2}"
    );
}

#[test]
fn window_validation_errors() {
    let _serial = serial();
    let (model, x, cond) = setup([1, 4, 1, 4, 4]);
    let schedule = FlowMatchScheduleConfig::new(4).init().unwrap();
    let sde = FlowGrpoSde::default();
    let r = Rollout::new(&schedule, &sde).with_window(GradWindow::Range { start: 3, len: 2 });
    assert!(r.run(&model, x.clone(), &cond, 0).is_err());
    let r = Rollout::new(&schedule, &sde).with_steps(2..9);
    assert!(r.run(&model, x.clone(), &cond, 0).is_err());
    // wrong channel count is a typed error, not a panic
    let bad = Tensor::<AD, 5>::zeros([1, 3, 1, 4, 4], &x.device());
    assert!(Rollout::new(&schedule, &sde)
        .run(&model, bad, &cond, 0)
        .is_err());
}

#[test]
fn full_window_with_checkpointing_gives_the_same_gradients() {
    let _serial = serial();
    use burn::backend::{autodiff::checkpoint::strategy::BalancedCheckpointing, Autodiff};
    type Ckpt = Autodiff<B, BalancedCheckpointing>;
    let dev = Default::default();
    let plain = WanConfig::tiny().init::<AD>(&dev).unwrap();
    // the same weights on the checkpointing backend
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("ckpt.safetensors");
    diffusion_core::io::checkpoint::save_safetensors(&plain, &path).unwrap();
    let ckpt: WanTransformer<Ckpt> = diffusion_core::io::checkpoint::load_safetensors(
        WanConfig::tiny().init::<Ckpt>(&dev).unwrap(),
        &path,
        &dev,
    )
    .unwrap();
    let schedule = FlowMatchScheduleConfig::new(3).init().unwrap();
    let grad_of_input =
        |loss: Tensor<AD, 1>, x: &Tensor<AD, 5>| values(x.grad(&loss.backward()).unwrap());
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let x0 = randn::<AD, 5>([1, 4, 1, 4, 4], &mut rng, &dev);
    let text = Tensor::<AD, 3>::random([1, 3, 16], Distribution::Normal(0.0, 1.0), &dev);

    let x = x0.clone().require_grad();
    let traj = Rollout::new(&schedule, &diffusion_core::EulerOde)
        .with_window(GradWindow::Full)
        .run(&plain, x.clone(), &Conditioning::new(text.clone()), 0)
        .unwrap();
    let out_plain = values(traj.last().clone());
    let g_plain = grad_of_input(traj.last().clone().powi_scalar(2).sum(), &x);

    let xc = Tensor::<Ckpt, 5>::from_data(x0.into_data(), &dev).require_grad();
    let tc = Tensor::<Ckpt, 3>::from_data(text.into_data(), &dev);
    let traj = Rollout::new(&schedule, &diffusion_core::EulerOde)
        .with_window(GradWindow::Full)
        .run(&ckpt, xc.clone(), &Conditioning::new(tc), 0)
        .unwrap();
    eprintln!(
        "forward rel err {:.2e}",
        rel_err(&values(traj.last().clone()), &out_plain)
    );
    let g_ckpt = values(
        xc.grad(&traj.last().clone().powi_scalar(2).sum().backward())
            .unwrap(),
    );
    let err = rel_err(&g_ckpt, &g_plain);
    assert!(
        err < 1e-5,
        "checkpointed vs plain input gradient: relative error {err:.2e}"
    );
}
