//! Diffusers model folders as the Hub ships them (sharded, bf16; fixture from
//! `tests/fixtures/gen_wan_folder.py`), saving the same layout, and bad folders.

use std::path::{Path, PathBuf};

use crate::common::*;
use diffusion_core::{
    io::checkpoint::{SaveLayout, WeightDtype},
    CoreError, WanConfig, WanTransformer,
};
use proptest::prelude::*;

fn copy_fixture(to: &Path) -> PathBuf {
    let dir = to.join("transformer");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture("wan_folder")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn forward(model: &WanTransformer<B>) -> Vec<f32> {
    let dev = Default::default();
    let io = read_tensors("wan_folder_io.safetensors");
    values(model.forward(
        tensor(&io["x"], &dev),
        tensor(&io["timestep"], &dev),
        tensor(&io["text"], &dev),
    ))
}

#[test]
fn sharded_bf16_folder_matches_diffusers() {
    let model =
        WanTransformer::<B>::load_folder(fixture("wan_folder"), &Default::default()).unwrap();
    let want = &read_tensors("wan_folder_io.safetensors")["out"].1;
    let err = rel_err(&forward(&model), want);
    eprintln!("sharded bf16 folder, forward relative error vs diffusers: {err:.2e}");
    assert!(err <= 1e-4, "{err:.2e}");
    assert_eq!(model.config().num_layers, 3);
    assert_eq!(model.config().text_dim, 24);
}

#[test]
fn saved_folders_round_trip_in_every_dtype_and_sharding() {
    let dev = Default::default();
    let model = WanTransformer::<B>::load_folder(fixture("wan_folder"), &dev).unwrap();
    let want = forward(&model);
    let tmp = tempfile::tempdir().unwrap();
    for (dtype, max_shard_bytes, files) in [
        (WeightDtype::F32, u64::MAX, 1),
        (WeightDtype::BF16, 20_000, 6),
        (WeightDtype::F16, 40_000, 3),
    ] {
        let dir = tmp.path().join("saved");
        model
            .save_folder(
                &dir,
                SaveLayout {
                    dtype,
                    max_shard_bytes,
                },
            )
            .unwrap();
        let shards = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().unwrap() == "safetensors")
            .count();
        assert!(shards >= files, "{dtype:?}: {shards} shards");
        // the saved folder is itself a loadable diffusers folder of the same model
        assert_eq!(
            WanConfig::load_diffusers(dir.join("config.json")).unwrap(),
            model.config()
        );
        let again = WanTransformer::<B>::load_folder(&dir, &dev).unwrap();
        let err = rel_err(&forward(&again), &want);
        match dtype {
            // the fixture's weights are bf16 values: both exact in f32 and bf16
            WeightDtype::F32 | WeightDtype::BF16 => assert_eq!(err, 0.0, "{dtype:?}"),
            WeightDtype::F16 => assert!(err < 1e-2, "{dtype:?}: {err}"),
        }
    }
    // no staging folder is left beside the saved one
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(left.len(), 1);
}

fn load_err(dir: &Path) -> CoreError {
    WanTransformer::<B>::load_folder(dir, &Default::default())
        .err()
        .expect("the folder must be refused")
}

#[test]
fn bad_folders_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let shard = "diffusion_pytorch_model-00003-of-00005.safetensors";
    let index = "diffusion_pytorch_model.safetensors.index.json";

    // a missing shard
    let dir = copy_fixture(&tmp.path().join("missing"));
    std::fs::remove_file(dir.join(shard)).unwrap();
    let err = load_err(&dir);
    assert!(
        matches!(&err, CoreError::Io { path, .. } if path.ends_with(shard)),
        "{err}"
    );

    // an index naming a file outside the folder
    let dir = copy_fixture(&tmp.path().join("escape"));
    let text = std::fs::read_to_string(dir.join(index)).unwrap();
    std::fs::write(dir.join(index), text.replace(shard, "../x.safetensors")).unwrap();
    let err = load_err(&dir).to_string();
    assert!(
        err.contains(index) && err.contains("../x.safetensors"),
        "{err}"
    );

    // a truncated shard
    let dir = copy_fixture(&tmp.path().join("truncated"));
    let bytes = std::fs::read(dir.join(shard)).unwrap();
    std::fs::write(dir.join(shard), &bytes[..bytes.len() - 10]).unwrap();
    let err = load_err(&dir);
    assert!(
        matches!(&err, CoreError::Safetensors { path, .. } if path.ends_with(shard)),
        "{err}"
    );

    // a config with unsupported or unknown keys, or a wrongly typed value
    for (from, to, key) in [
        (
            r#""qk_norm": "rms_norm_across_heads""#,
            r#""qk_norm": "rms_norm""#,
            "qk_norm",
        ),
        (r#""image_dim": null"#, r#""image_dim": 1280"#, "image_dim"),
        (
            r#""added_kv_proj_dim": null"#,
            r#""added_kv_proj_dim": 5120"#,
            "added_kv_proj_dim",
        ),
        (
            r#""eps": 1e-06"#,
            r#""eps": 1e-06, "rope_theta": 10000"#,
            "rope_theta",
        ),
        (
            r#""num_layers": 3"#,
            r#""num_layers": "three""#,
            "num_layers",
        ),
    ] {
        let dir = copy_fixture(&tmp.path().join(key));
        let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
        assert!(text.contains(from), "{from}");
        std::fs::write(dir.join("config.json"), text.replace(from, to)).unwrap();
        match load_err(&dir) {
            CoreError::ConfigKey { path, key: k, .. } => {
                assert_eq!(k, key);
                assert!(path.ends_with("config.json"));
            }
            other => panic!("{key}: expected ConfigKey, got {other}"),
        }
    }

    // a weight of the wrong width in a shard
    let dir = copy_fixture(&tmp.path().join("width"));
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        text.replace(r#""text_dim": 24"#, r#""text_dim": 32"#),
    )
    .unwrap();
    match load_err(&dir) {
        CoreError::KeyShape { key, path, .. } => {
            assert_eq!(key, "condition_embedder.text_embedder.linear_1.weight");
            assert!(path
                .to_string_lossy()
                .contains("diffusion_pytorch_model-0000"));
        }
        other => panic!("expected KeyShape, got {other}"),
    }
}

/// Writes `tensors` (name, dtype, shape, bytes) as one safetensors file.
fn write_file(path: &Path, tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<_> = tensors
        .iter()
        .map(|(k, d, s, b)| {
            (
                k.to_string(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn wrong_dtype_and_non_finite_weights_are_named() {
    use diffusion_core::io::tensor_files::TensorFiles;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("w.safetensors");
    let nan = [1.0f32, f32::NAN]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    write_file(
        &path,
        &[
            (
                "ints",
                safetensors::Dtype::I64,
                vec![1],
                7i64.to_le_bytes().to_vec(),
            ),
            ("nan", safetensors::Dtype::F32, vec![2], nan),
        ],
    );
    let files = TensorFiles::open_file(&path).unwrap();
    assert!(
        matches!(files.read_f32("ints"), Err(CoreError::KeyDtype { key, path, .. })
            if key == "ints" && path.ends_with("w.safetensors"))
    );
    let err = files.read_f32("nan").unwrap_err().to_string();
    assert!(
        err.contains("`nan`") && err.contains("w.safetensors") && err.contains("element 1"),
        "{err}"
    );
    assert!(matches!(
        files.read_f32("absent"),
        Err(CoreError::MissingKey { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Random byte damage (1-5 bytes, or a truncation) to a shard of a sharded folder, or to
    /// its index, loads the model or gives a typed error, never a panic.
    #[test]
    fn damaged_folders_never_panic(
        file in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = copy_fixture(tmp.path());
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap() != "config.json")
            .collect();
        files.sort();
        let path = file.get(&files);
        let mut bytes = std::fs::read(path).unwrap();
        for (i, b) in edits {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        std::fs::write(path, &bytes).unwrap();
        let _ = WanTransformer::<B>::load_folder(&dir, &Default::default());
    }
}
