//! Half-precision frozen weights under LoRA: the frozen weights are stored in bf16/f16, the
//! adapters stay f32, the output and the adapters' gradients stay close to the f32 model's (and
//! checkpointed blocks give the plain half-precision gradients); a model whose base weights
//! train is refused.

use crate::common::*;
use burn::{
    module::{Module, ModuleVisitor, Param},
    tensor::{
        backend::{AutodiffBackend, Backend},
        DType, Distribution, Tensor,
    },
};
use diffusion_core::{
    ops::lora::LoraConfig,
    train::{checkpointing::Checkpointing, precision::Precision},
    CoreError, WanTransformer,
};

/// Dtypes and gradients of every parameter, in visiting order.
struct Collect<'a, Bk: AutodiffBackend> {
    grads: &'a Bk::Gradients,
    dtypes: Vec<DType>,
    out: Vec<Option<Vec<f32>>>,
}

impl<Bk: AutodiffBackend> ModuleVisitor<Bk> for Collect<'_, Bk> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
        self.dtypes.push(param.val().dtype());
        self.out.push(param.grad(self.grads).map(values));
    }
}

/// The output, and the dtype and gradient of `sum(out * w)` of every parameter.
fn run(model: &WanTransformer<AD>) -> (Vec<f32>, Vec<DType>, Vec<Option<Vec<f32>>>) {
    let dev = Default::default();
    let io = read_tensors("wan_folder_io.safetensors");
    let x: Tensor<AD, 5> = tensor(&io["x"], &dev);
    let out = model.forward(x, tensor(&io["timestep"], &dev), tensor(&io["text"], &dev));
    assert_eq!(out.dtype(), DType::F32);
    AD::seed(&dev, 3);
    let w = Tensor::<AD, 5>::random(out.dims(), Distribution::Normal(0.0, 1.0), &dev);
    let grads = (out.clone() * w).sum().backward();
    let mut collect = Collect {
        grads: &grads,
        dtypes: Vec::new(),
        out: Vec::new(),
    };
    model.visit(&mut collect);
    (values(out), collect.dtypes, collect.out)
}

fn lora_model() -> WanTransformer<AD> {
    let dev = Default::default();
    WanTransformer::<AD>::load_folder(fixture("wan_folder"), &dev)
        .unwrap()
        .with_lora(&LoraConfig::new(4), &dev)
        .unwrap()
        // non-zero lora_B, so that every adapter matrix has a gradient
        .load_lora(fixture("wan_folder_lora.safetensors"), &dev)
        .unwrap()
}

/// The largest relative error over the adapters' gradients.
fn grad_err(got: &[Option<Vec<f32>>], want: &[Option<Vec<f32>>]) -> f64 {
    let mut worst = 0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        match (g, w) {
            (Some(g), Some(w)) => worst = worst.max(rel_err(g, w)),
            (None, None) => {}
            _ => panic!("parameter {i}: a gradient on one side only"),
        }
    }
    worst
}

#[test]
fn half_precision_base_stays_close_to_f32() {
    let dev = Default::default();
    let f32_model = lora_model();
    let (want_out, want_dtypes, want_grads) = run(&f32_model);
    assert!(want_dtypes.iter().all(|d| *d == DType::F32));
    let trained = want_grads.iter().filter(|g| g.is_some()).count();
    assert!(trained > 0);
    // bf16 keeps 8 bits of mantissa (relative step 2^-8), f16 11 bits (2^-11); each where the
    // backend supports it (wgpu: f16 only), at least one
    let supported = [
        (Precision::Bf16, DType::BF16, 2e-2),
        (Precision::F16, DType::F16, 4e-3),
    ]
    .into_iter()
    .filter(|(p, ..)| p.check::<AD>(&dev, "precision").is_ok())
    .collect::<Vec<_>>();
    assert!(!supported.is_empty());
    for (precision, dtype, tol) in supported {
        let model = f32_model
            .clone()
            .with_frozen_precision(precision, &dev)
            .unwrap();
        assert_eq!(model.compute_dtype(), dtype);
        let (out, dtypes, grads) = run(&model);
        // adapters (the parameters with gradients) f32, every other weight in half precision
        for ((d, g), w) in dtypes.iter().zip(&grads).zip(&want_grads) {
            assert_eq!(g.is_some(), w.is_some());
            assert_eq!(*d, if g.is_some() { DType::F32 } else { dtype });
        }
        let out_err = rel_err(&out, &want_out);
        let g_err = grad_err(&grads, &want_grads);
        assert!(out_err < tol, "{precision} output: {out_err:.2e}");
        assert!(g_err < 4.0 * tol, "{precision} gradients: {g_err:.2e}");

        // checkpointed blocks: the same gradients, in the same precision
        let checkpointed = model.with_checkpointing(Checkpointing::EveryBlock).unwrap();
        let (c_out, _, c_grads) = run(&checkpointed);
        let c_err = grad_err(&c_grads, &grads);
        assert!(
            rel_err(&c_out, &out) < tol,
            "{precision} checkpointed output"
        );
        assert!(
            c_err < 4.0 * tol,
            "{precision} checkpointed gradients: {c_err:.2e}"
        );
    }
}

#[test]
fn half_precision_needs_frozen_base_weights() {
    let dev = Default::default();
    let full = WanTransformer::<AD>::load_folder(fixture("wan_folder"), &dev).unwrap();
    let err = full.clone().with_frozen_precision(Precision::F16, &dev);
    assert!(matches!(
        err,
        Err(CoreError::InvalidConfig {
            field: "precision",
            ..
        })
    ));
    // f32 is always accepted, and a frozen model casts whole
    let frozen = full
        .no_grad()
        .with_frozen_precision(Precision::F16, &dev)
        .unwrap();
    assert_eq!(
        frozen.blocks[0].ffn_in.base.weight.val().dtype(),
        DType::F16
    );
}

/// A folder read straight into half precision is the f32 read cast afterwards, with every
/// weight frozen and in f16.
#[test]
fn a_folder_loads_frozen_in_half_precision() {
    let dev = Default::default();
    let direct =
        WanTransformer::<AD>::load_folder_frozen(fixture("wan_folder"), Precision::F16, &dev)
            .unwrap();
    let cast = WanTransformer::<AD>::load_folder(fixture("wan_folder"), &dev)
        .unwrap()
        .no_grad()
        .with_frozen_precision(Precision::F16, &dev)
        .unwrap();
    let mut dtypes = Vec::new();
    direct.visit(&mut Dtypes(&mut dtypes));
    assert!(dtypes.iter().all(|(d, trains)| *d == DType::F16 && !trains));
    let io = read_tensors("wan_folder_io.safetensors");
    let forward = |m: &WanTransformer<AD>| {
        let x: Tensor<AD, 5> = tensor(&io["x"], &dev);
        values(m.forward(x, tensor(&io["timestep"], &dev), tensor(&io["text"], &dev)))
    };
    assert!(rel_err(&forward(&direct), &forward(&cast)) < 1e-3);
}

/// The dtype of every parameter and whether it trains.
struct Dtypes<'a>(&'a mut Vec<(DType, bool)>);

impl<Bk: AutodiffBackend> ModuleVisitor<Bk> for Dtypes<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
        self.0.push((param.val().dtype(), param.is_require_grad()));
    }
}
