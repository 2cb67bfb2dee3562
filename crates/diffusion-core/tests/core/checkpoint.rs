//! Block checkpointing gives the gradients of the plain forward, to f32 round-off, for every
//! parameter and input: full weights, LoRA adapters over frozen weights, every block or every
//! other, the recomputed feed-forward whole or in chunks of tokens; it needs LoRA without
//! dropout.

use crate::common::*;
use burn::{
    module::{Module, ModuleVisitor, Param},
    tensor::{
        backend::{AutodiffBackend, Backend},
        Distribution, Tensor,
    },
};
use diffusion_core::{
    ops::lora::LoraConfig, train::checkpointing::Checkpointing, CoreError, WanTransformer,
};

/// Gradients of every parameter, in visiting order (`None` where there is none).
struct Collect<'a, Bk: AutodiffBackend> {
    grads: &'a Bk::Gradients,
    out: Vec<Option<Vec<f32>>>,
}

impl<Bk: AutodiffBackend> ModuleVisitor<Bk> for Collect<'_, Bk> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
        self.out.push(param.grad(self.grads).map(values));
    }
}

/// Gradients of `sum(out * w)` with respect to every parameter, the latent and the text.
fn gradients(model: &WanTransformer<AD>) -> (Vec<Option<Vec<f32>>>, [Vec<f32>; 2]) {
    let dev = Default::default();
    let io = read_tensors("wan_folder_io.safetensors");
    let x: Tensor<AD, 5> = tensor::<AD, 5>(&io["x"], &dev).require_grad();
    let text: Tensor<AD, 3> = tensor::<AD, 3>(&io["text"], &dev).require_grad();
    let out = model.forward(x.clone(), tensor(&io["timestep"], &dev), text.clone());
    let w = Tensor::<AD, 5>::random(out.dims(), Distribution::Normal(0.0, 1.0), &dev);
    let grads = (out * w).sum().backward();
    let mut collect = Collect {
        grads: &grads,
        out: Vec::new(),
    };
    model.visit(&mut collect);
    let inputs = [
        values(x.grad(&grads).unwrap()),
        values(text.grad(&grads).unwrap()),
    ];
    (collect.out, inputs)
}

fn assert_same(plain: &WanTransformer<AD>, checkpointing: Checkpointing) {
    AD::seed(&Default::default(), 7);
    let (want, want_in) = gradients(plain);
    AD::seed(&Default::default(), 7);
    let checkpointed = plain.clone().with_checkpointing(checkpointing).unwrap();
    let (got, got_in) = gradients(&checkpointed);
    assert_eq!(got.len(), want.len());
    let mut trained = 0;
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        match (g, w) {
            (Some(g), Some(w)) => {
                let err = rel_err(g, w);
                let scale = w.iter().map(|v| v.abs()).fold(0f32, f32::max);
                assert!(err < 1e-4 || scale < 1e-6, "parameter {i}: {err:.2e}");
                trained += 1;
            }
            (None, None) => {}
            _ => panic!("parameter {i}: a gradient on one side only"),
        }
    }
    assert!(trained > 0);
    for (g, w) in got_in.iter().zip(&want_in) {
        let err = rel_err(g, w);
        assert!(err < 1e-4, "input: {err:.2e}");
    }
}

#[test]
fn checkpointed_blocks_give_the_plain_gradients() {
    let model =
        WanTransformer::<AD>::load_folder(fixture("wan_folder"), &Default::default()).unwrap();
    assert!(model.blocks[0].norm2.is_some());
    assert_same(&model, Checkpointing::EveryBlock);
    assert_same(&model, Checkpointing::EveryNth(2));
    // the recomputed feed-forward over chunks of 3 tokens (the last one shorter)
    let chunked = model.with_ffn_chunk(Some(3)).unwrap();
    assert_same(&chunked, Checkpointing::EveryBlock);
    assert!(chunked.with_ffn_chunk(Some(0)).is_err());
}

#[test]
fn checkpointed_lora_trains_the_adapters_only() {
    let dev = Default::default();
    let model = WanTransformer::<AD>::load_folder(fixture("wan_folder"), &dev)
        .unwrap()
        .with_lora(&LoraConfig::new(4), &dev)
        .unwrap()
        // non-zero lora_B, so that every adapter matrix has a gradient
        .load_lora(fixture("wan_folder_lora.safetensors"), &dev)
        .unwrap();
    assert_same(&model, Checkpointing::EveryBlock);

    let dropout = LoraConfig::new(4).with_dropout(0.1);
    let with_dropout = WanTransformer::<AD>::load_folder(fixture("wan_folder"), &dev)
        .unwrap()
        .with_lora(&dropout, &dev)
        .unwrap();
    assert!(matches!(
        with_dropout.with_checkpointing(Checkpointing::EveryBlock),
        Err(CoreError::InvalidConfig {
            field: "checkpointing",
            ..
        })
    ));
}
