//! Golden parity with diffusers 0.42 (fixtures from `tests/fixtures/gen_fixtures.py`).

use crate::common::*;
use burn::tensor::Tensor;
use diffusion_core::{
    io::checkpoint::{load_safetensors, save_safetensors},
    CoreError, FlowMatchScheduleConfig, WanConfig, WanTransformer,
};

fn load_tiny<Bk: burn::tensor::backend::Backend>(dev: &Bk::Device) -> WanTransformer<Bk> {
    let cfg = WanConfig::load_diffusers(fixture("wan_tiny/config.json")).unwrap();
    let model = cfg.init::<Bk>(dev).unwrap();
    load_safetensors(model, fixture("wan_tiny/weights.safetensors"), dev).unwrap()
}

#[test]
fn wan_forward_matches_diffusers() {
    let dev = Default::default();
    let model = load_tiny::<B>(&dev);
    let io = read_tensors("wan_tiny/io.safetensors");
    let out = model.forward(
        tensor(&io["x"], &dev),
        tensor(&io["timestep"], &dev),
        tensor(&io["text"], &dev),
    );
    assert_eq!(out.dims().to_vec(), io["out"].0);
    let err = rel_err(&values(out), &io["out"].1);
    eprintln!("forward relative error vs diffusers: {err:.2e}");
    assert!(err <= 1e-4, "forward relative error {err:.2e}");
}

#[test]
fn wan_input_gradient_matches_diffusers() {
    let dev = Default::default();
    let model = load_tiny::<AD>(&dev);
    let io = read_tensors("wan_tiny/io.safetensors");
    let x: Tensor<AD, 5> = tensor::<AD, 5>(&io["x"], &dev).require_grad();
    let out = model.forward(
        x.clone(),
        tensor(&io["timestep"], &dev),
        tensor(&io["text"], &dev),
    );
    let loss = (out * tensor::<AD, 5>(&io["w"], &dev)).sum();
    let grads = loss.backward();
    let gx = x.grad(&grads).expect("input gradient");
    let err = rel_err(&values(gx), &io["grad_x"].1);
    eprintln!("input-gradient relative error vs diffusers: {err:.2e}");
    assert!(err <= 1e-3, "input-gradient relative error {err:.2e}");
}

#[test]
fn loaded_weights_stay_trainable() {
    // a regression: parameters loaded from safetensors once lost `require_grad`, which made
    // every loaded model silently frozen on an autodiff backend
    struct Count(usize);
    impl burn::module::ModuleVisitor<AD> for Count {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<AD, D>>) {
            assert!(p.is_require_grad());
            self.0 += 1;
        }
    }
    let dev = Default::default();
    let model = load_tiny::<AD>(&dev);
    let mut count = Count(0);
    burn::module::Module::visit(&model, &mut count);
    let io = read_tensors("wan_tiny/io.safetensors");
    let out = model.forward(
        tensor(&io["x"], &dev),
        tensor(&io["timestep"], &dev),
        tensor(&io["text"], &dev),
    );
    let grads = burn::optim::GradientsParams::from_grads(out.sum().backward(), &model);
    assert_eq!(
        grads.len(),
        count.0,
        "every loaded parameter gets a gradient"
    );
}

#[test]
fn flow_match_schedule_matches_diffusers() {
    let text = std::fs::read_to_string(fixture("flow_match_schedules.json")).unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(rows.len(), 9);
    for row in rows {
        let steps = row["steps"].as_u64().unwrap() as usize;
        let shift = row["shift"].as_f64().unwrap();
        let s = FlowMatchScheduleConfig::new(steps)
            .with_shift(shift)
            .init()
            .unwrap();
        let want_s: Vec<f64> = row["sigmas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let want_t: Vec<f64> = row["timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(s.sigmas().len(), want_s.len());
        for (a, b) in s.sigmas().iter().zip(&want_s) {
            assert!(
                (a - b).abs() <= 1e-6,
                "steps {steps} shift {shift}: sigma {a} vs {b}"
            );
        }
        for (a, b) in s.timesteps().iter().zip(&want_t) {
            assert!(
                (a - b).abs() <= 1e-3,
                "steps {steps} shift {shift}: timestep {a} vs {b}"
            );
        }
    }
}

/// Writes a copy of the fixture weights with `edit` applied to the tensor map.
fn edited_weights(
    dir: &std::path::Path,
    name: &str,
    edit: impl FnOnce(&mut std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>),
) -> std::path::PathBuf {
    let mut w = read_tensors("wan_tiny/weights.safetensors");
    edit(&mut w);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = w
        .into_iter()
        .map(|(k, (s, v))| (k, s, v.iter().flat_map(|f| f.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(k, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    let path = dir.join(format!("{name}.safetensors"));
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    path
}

#[test]
fn missing_and_misshaped_keys_are_named() {
    let dev = Default::default();
    let cfg = WanConfig::load_diffusers(fixture("wan_tiny/config.json")).unwrap();
    let tmp = tempfile::tempdir().unwrap();

    let path = edited_weights(tmp.path(), "missing", |w| {
        w.remove("blocks.1.attn2.norm_k.weight");
    });
    match load_safetensors(cfg.init::<B>(&dev).unwrap(), &path, &dev) {
        Err(CoreError::MissingKey { key, path }) => {
            assert_eq!(key, "blocks.1.attn2.norm_k.weight");
            assert!(path.ends_with("missing.safetensors"));
        }
        other => panic!("expected MissingKey, got {other:?}"),
    }

    let path = edited_weights(tmp.path(), "shape", |w| {
        w.insert("proj_out.weight".into(), (vec![16, 25], vec![0.0; 400]));
    });
    let err = load_safetensors(cfg.init::<B>(&dev).unwrap(), &path, &dev).unwrap_err();
    assert!(
        matches!(&err, CoreError::KeyShape { key, expected, found, .. }
        if key == "proj_out.weight" && expected == &vec![16, 24] && found == &vec![16, 25]),
        "{err}"
    );
    assert!(err.to_string().contains("proj_out.weight"));

    let path = edited_weights(tmp.path(), "extra", |w| {
        w.insert("blocks.9.attn1.to_q.weight".into(), (vec![1], vec![0.0]));
    });
    let err = load_safetensors(cfg.init::<B>(&dev).unwrap(), &path, &dev).unwrap_err();
    assert!(
        err.to_string().contains("blocks.9.attn1.to_q.weight"),
        "{err}"
    );
}

#[test]
fn save_then_load_round_trips() {
    let dev = Default::default();
    let model = load_tiny::<B>(&dev);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("roundtrip.safetensors");
    save_safetensors(&model, &path).unwrap();
    let cfg = WanConfig::load_diffusers(fixture("wan_tiny/config.json")).unwrap();
    let again = load_safetensors(cfg.init::<B>(&dev).unwrap(), &path, &dev).unwrap();
    let io = read_tensors("wan_tiny/io.safetensors");
    let run = |m: &WanTransformer<B>| {
        values(m.forward(
            tensor(&io["x"], &dev),
            tensor(&io["timestep"], &dev),
            tensor(&io["text"], &dev),
        ))
    };
    assert_eq!(run(&model), run(&again));
}

#[test]
fn fresh_model_its_clone_and_its_saved_copy_agree() {
    // burn initialises parameters lazily; a clone of an untouched model would draw its own
    // weights. `WanConfig::init` materialises them, so all three forwards match.
    let dev = Default::default();
    let model = WanConfig::tiny().init::<B>(&dev).unwrap();
    let clone = model.clone();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("fresh.safetensors");
    save_safetensors(&clone, &path).unwrap();
    let loaded = load_safetensors(WanConfig::tiny().init::<B>(&dev).unwrap(), &path, &dev).unwrap();
    let x = Tensor::<B, 5>::ones([1, 4, 1, 4, 4], &dev);
    let text = Tensor::<B, 3>::ones([1, 2, 16], &dev);
    let run = |m: &WanTransformer<B>| {
        values(m.forward(x.clone(), Tensor::from_floats([300.0], &dev), text.clone()))
    };
    // equal up to the order of multithreaded float reductions (an independent draw would differ by ~1)
    let a = run(&model);
    assert!(rel_err(&run(&clone), &a) < 1e-5);
    assert!(rel_err(&run(&loaded), &a) < 1e-5);
}

/// UniPC as Wan2.1's pipeline runs it: sigmas, integer timesteps and whole trajectories under a
/// formula model match diffusers (`tests/fixtures/gen_unipc.py`).
#[test]
fn unipc_matches_diffusers() {
    use diffusion_core::sampling::unipc::{UniPc, UniPcConfig};
    let text = std::fs::read_to_string(fixture("unipc.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let dev = Default::default();
    let floats = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    for case in &cases {
        let config = UniPcConfig {
            order: case["order"].as_u64().unwrap() as usize,
            ..UniPcConfig::wan21(
                case["steps"].as_u64().unwrap() as usize,
                case["shift"].as_f64().unwrap(),
            )
        };
        let sigmas: Vec<f64> = config.sigmas().iter().map(|&s| s as f64).collect();
        assert_eq!(sigmas, floats(&case["sigmas"]), "{config:?}");
        let timesteps: Vec<f64> = config.timesteps().iter().map(|&t| t as f64).collect();
        assert_eq!(timesteps, floats(&case["timesteps"]), "{config:?}");

        let x0: Vec<f32> = floats(&case["x0"]).iter().map(|&v| v as f32).collect();
        let c = Tensor::<B, 2>::from_floats([[0.3, -0.2, 0.1], [0.4, -0.5, 0.25]], &dev);
        let mut x = Tensor::<B, 2>::from_data(burn::tensor::TensorData::new(x0, [2, 3]), &dev);
        let mut sampler = UniPc::new(config.clone()).unwrap();
        while let Some(t) = sampler.timestep() {
            let v =
                x.clone().tanh().mul_scalar(0.5) + c.clone().mul_scalar((3.0 * t / 1000.0).cos());
            x = sampler.step(v, x);
        }
        let want: Vec<f32> = floats(&case["final"]).iter().map(|&v| v as f32).collect();
        let err = rel_err(&values(x), &want);
        assert!(err < 1e-5, "{config:?}: relative error {err:.2e}");
    }
}
