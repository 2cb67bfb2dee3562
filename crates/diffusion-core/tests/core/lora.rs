//! LoRA adapters in PEFT's layout: diffusers' adapter file loads and gives diffusers' output
//! (fixture from `tests/fixtures/gen_wan_folder.py`), saving round-trips in the pipeline's key
//! form, merging is exact, only adapters train, mismatches are named.

use crate::common::*;
use burn::{module::Module, tensor::Tensor};
use diffusion_core::{
    ops::lora::{LoraConfig, LoraTarget},
    CoreError, WanTransformer,
};

fn base<Bk: burn::tensor::backend::Backend>() -> WanTransformer<Bk> {
    WanTransformer::load_folder(fixture("wan_folder"), &Default::default()).unwrap()
}

fn forward<Bk: burn::tensor::backend::Backend>(model: &WanTransformer<Bk>) -> Tensor<Bk, 5> {
    let dev = Default::default();
    let io = read_tensors("wan_folder_io.safetensors");
    model.forward(
        tensor(&io["x"], &dev),
        tensor(&io["timestep"], &dev),
        tensor(&io["text"], &dev),
    )
}

fn with_fixture_adapter(config: &LoraConfig) -> WanTransformer<B> {
    let dev = Default::default();
    base::<B>()
        .with_lora(config, &dev)
        .unwrap()
        .load_lora(fixture("wan_folder_lora.safetensors"), &dev)
        .unwrap()
}

#[test]
fn diffusers_adapter_file_gives_diffusers_output() {
    let mut model = with_fixture_adapter(&LoraConfig::new(4));
    assert_eq!(model.lora_layer_count(), 3 * 8);
    let want = &read_tensors("wan_folder_lora_io.safetensors")["out"].1;
    let got = values(forward(&model));
    let err = rel_err(&got, want);
    eprintln!("LoRA forward relative error vs diffusers: {err:.2e}");
    assert!(err <= 1e-4, "{err:.2e}");
    // the adapter matters: without it the output is another one
    assert!(rel_err(&values(forward(&base::<B>())), want) > 1e-2);

    // merged into the base weights: the same output
    let merged = model.merge_lora();
    assert!(rel_err(&values(forward(&merged)), &got) < 1e-5);
    let unmerged = merged.unmerge_lora();
    assert!(rel_err(&values(forward(&unmerged)), &got) < 1e-5);
}

#[test]
fn saved_adapters_round_trip_with_any_alpha() {
    let dev = Default::default();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("pytorch_lora_weights.safetensors");
    // alpha != rank: the scale is folded into lora_B, so the file means the same to diffusers
    let config = LoraConfig::new(4).with_alpha(Some(16.0));
    let model = with_fixture_adapter(&config);
    let want = values(forward(&model));
    model.save_lora(&path).unwrap();
    let files = diffusion_core::io::tensor_files::TensorFiles::open_file(&path).unwrap();
    assert!(files.keys().all(|k| k.starts_with("transformer.blocks.")));
    for cfg in [config.clone(), LoraConfig::new(4)] {
        let again = base::<B>()
            .with_lora(&cfg, &dev)
            .unwrap()
            .load_lora(&path, &dev)
            .unwrap();
        assert!(rel_err(&values(forward(&again)), &want) < 1e-6, "{cfg:?}");
    }
}

#[test]
fn only_adapters_receive_gradients() {
    let dev = Default::default();
    let model = base::<AD>().with_lora(&LoraConfig::new(2), &dev).unwrap();
    let grads = forward(&model).powf_scalar(2.0).sum().backward();
    let block = &model.blocks[1];
    assert!(block.attn1.to_q.base.weight.grad(&grads).is_none());
    assert!(block.ffn_in.base.weight.grad(&grads).is_none());
    assert!(model.proj_out.weight.grad(&grads).is_none());
    let adapter = block.attn2.to_v.adapter.as_ref().unwrap();
    // B starts at zero: it gets the gradient, A's is zero until B moves
    let g_up = adapter.up.grad(&grads).expect("lora_B trains");
    assert!(g_up.abs().sum().into_scalar() > 0.0);
    assert!(adapter.down.grad(&grads).is_some());
    let trainable = model.num_params();
    assert!(trainable > 0);
}

#[test]
fn mismatched_adapters_are_named() {
    let dev = Default::default();
    let file = fixture("wan_folder_lora.safetensors");
    // the file adapts attention, the model only the feed-forward
    let ffn = LoraConfig::new(4).with_targets(vec![LoraTarget::FeedForward]);
    let err = base::<B>()
        .with_lora(&ffn, &dev)
        .unwrap()
        .load_lora(&file, &dev)
        .unwrap_err();
    assert!(
        matches!(&err, CoreError::Safetensors { path, .. } if path.ends_with("wan_folder_lora.safetensors")),
        "{err}"
    );
    // another rank
    let err = base::<B>()
        .with_lora(&LoraConfig::new(8), &dev)
        .unwrap()
        .load_lora(&file, &dev)
        .unwrap_err();
    assert!(
        matches!(&err, CoreError::KeyShape { key, .. } if key.ends_with("lora_A.weight")),
        "{err}"
    );
    // a model without adapters has nothing to save
    let tmp = tempfile::tempdir().unwrap();
    assert!(base::<B>()
        .save_lora(tmp.path().join("x.safetensors"))
        .is_err());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Random byte damage (1-5 bytes, or a truncation) to a diffusers LoRA adapter file loads
    /// it or gives a typed error, never a panic, through both readers.
    #[test]
    fn damaged_adapter_files_never_panic(
        edits in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()), 1..6),
        cut in proptest::option::of(proptest::prelude::any::<proptest::sample::Index>()),
    ) {
        let mut bytes = std::fs::read(fixture("wan_folder_lora.safetensors")).unwrap();
        for (i, b) in edits {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pytorch_lora_weights.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let dev = Default::default();
        let _ = base::<B>().with_lora_file(&path, &dev);
        let _ = base::<B>()
            .with_lora(&LoraConfig::new(4), &dev)
            .and_then(|m| m.load_lora(&path, &dev));
    }
}
