//! The Wan2.1 VAE against diffusers' `AutoencoderKLWan` at Wan2.1's real size (fixture from
//! `tests/fixtures/gen_wan_vae.py`; the weights are a function of key and position that both
//! sides compute), and its diffusers folder.

use crate::common::*;
use burn::{
    module::{Module, Param},
    tensor::{backend::Backend, Distribution, Tensor, TensorData},
};
use diffusion_core::{
    io::checkpoint::{NamedWeights, ParamLayout, SaveLayout, WeightDtype, WeightVisitor},
    models::{
        vae::CheckpointedDecoder,
        wan_vae::{WanVae, WanVaeConfig},
    },
    CoreError,
};

/// `formula` of the fixture script.
fn formula(key: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let seed = key.bytes().map(u64::from).sum::<u64>();
    (0..n as u64)
        .map(|j| {
            let mut z = j.wrapping_add(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let v = 2.0 * ((z >> 11) as f64 / (1u64 << 53) as f64) - 1.0;
            let v = if key.ends_with("gamma") {
                1.0 + 0.1 * v
            } else if key.ends_with("bias") {
                0.05 * v
            } else {
                v * 1.7 / ((n / shape[0]) as f64).sqrt()
            };
            v as f32
        })
        .collect()
}

struct Formula<Bk: Backend>(Bk::Device);

impl<Bk: Backend> WeightVisitor<Bk> for Formula<Bk> {
    fn param<const D: usize>(
        &mut self,
        key: &str,
        param: &mut Param<Tensor<Bk, D>>,
        _: ParamLayout,
    ) -> diffusion_core::Result<()> {
        let shape = param.lazy_shape().dims::<D>().to_vec();
        let t = Tensor::from_data(TensorData::new(formula(key, &shape), shape), &self.0);
        *param = Param::initialized(param.id, t);
        Ok(())
    }
}

fn vae<Bk: Backend>() -> WanVae<Bk> {
    let dev: Bk::Device = Default::default();
    let mut vae = WanVaeConfig::new().init::<Bk>(&dev).unwrap();
    vae.visit_weights(&mut Formula::<Bk>(dev)).unwrap();
    vae.no_grad()
}

/// On the CPU backends only: lavapipe needs over ten minutes for the real size; wgpu runs the
/// same layers in the folder round trip below and in the train example's RGB ReFL.
#[test]
#[cfg_attr(feature = "wgpu", ignore = "real-size VAE: minutes on a software GPU")]
fn wan_vae_matches_diffusers_in_value_and_decode_gradient() {
    let dev = Default::default();
    let io = read_tensors("wan_vae_io.safetensors");
    let model = vae::<AD>();
    assert_eq!(
        model.checked_latent_shape([1, 3, 9, 16, 16]).unwrap(),
        [1, 16, 3, 2, 2]
    );

    let mean = vae::<B>().encode_video(tensor(&io["video"], &dev)).mean;
    assert_eq!(mean.dims().to_vec(), io["mean"].0);
    let err = rel_err(&values(mean), &io["mean"].1);
    eprintln!("Wan VAE encode (posterior mean) relative error vs diffusers: {err:.2e}");
    assert!(err <= 1e-4, "encode {err:.2e}");

    let latents = tensor::<AD, 5>(&io["latents"], &dev).require_grad();
    let decoded = model.decode_latent(latents.clone());
    assert_eq!(decoded.dims().to_vec(), io["decoded"].0);
    let err = rel_err(&values(decoded.clone().inner()), &io["decoded"].1);
    eprintln!("Wan VAE decode relative error vs diffusers: {err:.2e}");
    assert!(err <= 1e-4, "decode {err:.2e}");
    let w = tensor::<AD, 5>(&io["w"], &dev);
    let grads = (decoded * w.clone()).sum().backward();
    let g = latents.grad(&grads).expect("gradient to the latents");
    let err = rel_err(&values(g), &io["grad_latents"].1);
    eprintln!("Wan VAE decode gradient relative error vs diffusers: {err:.2e}");
    assert!(err <= 1e-3, "gradient {err:.2e}");

    let (video, tape) = model.decode_taped(latents);
    let err = rel_err(&values(video.inner()), &io["decoded"].1);
    assert!(err <= 1e-4, "taped decode {err:.2e}");
    let err = rel_err(&values(model.decode_vjp(tape, w)), &io["grad_latents"].1);
    eprintln!("Wan VAE checkpointed decode gradient relative error vs diffusers: {err:.2e}");
    assert!(err <= 1e-3, "checkpointed gradient {err:.2e}");
}

/// Checkpointed decoding (one latent frame's stage inputs recomputed at a time, each stage's
/// graph on leaf copies of its input and cache) against the kept graph, on a narrow VAE with
/// three latent frames (the temporal upsamplers' first-frame and cached paths) and two rows.
#[test]
fn checkpointed_decode_gives_the_kept_graphs_gradient() {
    let dev = Default::default();
    let model = WanVaeConfig::new()
        .with_base_dim(8)
        .init::<AD>(&dev)
        .unwrap()
        .no_grad();
    let normal = Distribution::Normal(0.0, 1.0);
    let z = Tensor::<AD, 5>::random([2, 16, 3, 2, 3], normal, &dev);
    let w = Tensor::<AD, 5>::random([2, 3, 9, 16, 24], normal, &dev);

    let leaf = z.clone().require_grad();
    let video = model.decode_latent(leaf.clone());
    let grads = (video.clone() * w.clone()).sum().backward();
    let want = values(leaf.grad(&grads).expect("gradient to the latent"));

    // the same kernels in another order: f32 round-off apart (GPU kernels are picked by tuning)
    let (taped, tape) = model.decode_taped(z);
    let video_err = rel_err(&values(taped.inner()), &values(video.inner()));
    let got = model.decode_vjp(tape, w);
    assert_eq!(got.dims(), [2, 16, 3, 2, 3]);
    let err = rel_err(&values(got), &want);
    eprintln!(
        "checkpointed decode against the kept graph: video {video_err:.2e}, gradient {err:.2e}"
    );
    assert!(video_err <= 1e-5, "video {video_err:.2e}");
    assert!(err <= 5e-5, "gradient {err:.2e}");
}

#[test]
fn wan_vae_folders_round_trip_and_bad_configs_are_named() {
    let dev = Default::default();
    let cfg = WanVaeConfig::new()
        .with_base_dim(8)
        .with_z_dim(4)
        .with_num_res_blocks(1)
        .with_latents_mean(vec![0.1, -0.2, 0.3, 0.0])
        .with_latents_std(vec![1.5, 2.0, 0.5, 1.0]);
    let model = cfg.init::<B>(&dev).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vae");
    model
        .save_folder(
            &dir,
            SaveLayout {
                dtype: WeightDtype::F32,
                max_shard_bytes: 30_000,
            },
        )
        .unwrap();
    assert!(dir
        .join("diffusion_pytorch_model.safetensors.index.json")
        .exists());
    let again = WanVae::<B>::load_folder(&dir, &dev).unwrap();
    assert_eq!(again.config(), &cfg);
    let video = Tensor::<B, 5>::random(
        [1, 3, 5, 16, 16],
        burn::tensor::Distribution::Uniform(-1.0, 1.0),
        &dev,
    );
    let a = values(model.encode_video(video.clone()).mean);
    let b = values(again.encode_video(video).mean);
    assert_eq!(a, b);

    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    for (from, to, key) in [
        (
            r#""z_dim": 4"#,
            r#""z_dim": 4, "is_residual": true"#,
            "is_residual",
        ),
        (
            r#""z_dim": 4"#,
            r#""z_dim": 4, "attn_scales": [0.5]"#,
            "attn_scales",
        ),
        (
            r#""z_dim": 4"#,
            r#""z_dim": 4, "scale_factor_spatial": 16"#,
            "scale_factor_spatial",
        ),
        (
            r#""z_dim": 4"#,
            r#""z_dim": 4, "clip_output": true"#,
            "clip_output",
        ),
    ] {
        assert!(text.contains(from));
        std::fs::write(dir.join("config.json"), text.replace(from, to)).unwrap();
        match WanVae::<B>::load_folder(&dir, &dev) {
            Err(CoreError::ConfigKey { key: k, .. }) => assert_eq!(k, key),
            other => panic!("{key}: expected ConfigKey, got {:?}", other.err()),
        }
    }
    // latent statistics of the wrong length, or a zero std
    for bad in [
        r#""latents_std": [1.5, 2.0, 0.5]"#,
        r#""latents_std": [1.5, 2.0, 0.5, 0.0]"#,
    ] {
        let edited = regex_free_replace(&text, "\"latents_std\"", bad);
        std::fs::write(dir.join("config.json"), edited).unwrap();
        assert!(matches!(
            WanVae::<B>::load_folder(&dir, &dev),
            Err(CoreError::InvalidConfig {
                field: "latents_mean/latents_std",
                ..
            })
        ));
    }
    // a video of the wrong frame count is refused before encoding
    assert!(model.checked_latent_shape([1, 3, 6, 16, 16]).is_err());
}

/// Replaces the JSON entry starting at `key` (up to its closing bracket) with `entry`.
fn regex_free_replace(text: &str, key: &str, entry: &str) -> String {
    let start = text.find(key).unwrap();
    let end = start + text[start..].find(']').unwrap() + 1;
    format!("{}{}{}", &text[..start], entry, &text[end..])
}
