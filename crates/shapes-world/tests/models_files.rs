//! The world models' files: a bad `config.json` or record is a typed error naming the file and
//! the key or parameter, and random damage to either never panics.

use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use diffusion_core::{backend::DefaultBackend, CoreError};
use proptest::prelude::*;
use serde_json::{json, Value};
use shapes_world::{WorldModels, WorldModelsConfig};

type B = DefaultBackend;

fn valid() -> Value {
    serde_json::to_value(WorldModelsConfig::small()).unwrap()
}

fn write(dir: &Path, text: &[u8]) -> PathBuf {
    let path = dir.join("config.json");
    std::fs::write(&path, text).unwrap();
    path
}

/// The key a `ConfigKey` error names.
fn named_key(result: Result<WorldModelsConfig, CoreError>) -> String {
    match result {
        Err(CoreError::ConfigKey { key, .. }) => key,
        other => panic!("expected a ConfigKey error, got {other:?}"),
    }
}

#[test]
fn bad_config_values_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let read = |v: &Value| WorldModelsConfig::read(&write(dir.path(), v.to_string().as_bytes()));
    assert!(read(&valid()).is_ok());
    let mutated = |f: &dyn Fn(&mut Value)| {
        let mut v = valid();
        f(&mut v);
        named_key(read(&v))
    };
    assert_eq!(
        mutated(&|v| v["latent_std"] = json!(vec![1.0; 15])),
        "latent_std"
    );
    assert_eq!(mutated(&|v| v["latent_std"][3] = json!(0.0)), "latent_std");
    // 1e39 overflows f32: read as infinity
    assert_eq!(
        mutated(&|v| v["latent_mean"][0] = json!(1e39)),
        "latent_mean"
    );
    assert_eq!(mutated(&|v| v["video"]["frames"] = json!(0)), "video");
    assert_eq!(mutated(&|v| v["video"]["frames"] = json!(18)), "video");
    assert_eq!(
        mutated(&|v| v["dit"]["in_channels"] = json!(8)),
        "dit.in_channels"
    );
    assert_eq!(
        mutated(&|v| v["dit"]["text_dim"] = json!(32)),
        "dit.text_dim"
    );
    assert_eq!(mutated(&|v| v["vae"]["bogus"] = json!(1)), "vae.bogus");
    assert_eq!(mutated(&|v| v["extra"] = json!(true)), "extra");
    assert_eq!(mutated(&|v| v["video"]["frames"] = json!("17")), "(file)");
    let text = valid().to_string();
    let truncated = write(dir.path(), &text.as_bytes()[..text.len() / 2]);
    assert_eq!(named_key(WorldModelsConfig::read(&truncated)), "(file)");
}

#[test]
fn bad_records_name_the_file_and_parameter() {
    let dev = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let models = WorldModelsConfig::small().init::<B>(&dev).unwrap();
    models.save(dir.path()).unwrap();
    assert!(WorldModels::<B>::load(dir.path(), &dev).is_ok());
    let record_error = |file: &str| match WorldModels::<B>::load(dir.path(), &dev) {
        Err(CoreError::Record { path, reason }) => {
            assert!(path.ends_with(file), "{path:?}");
            reason
        }
        other => panic!("expected a Record error for {file}, got {other:?}"),
    };
    let good = std::fs::read(dir.path().join("text.mpk")).unwrap();

    // a text encoder of another width
    let mut narrow = WorldModelsConfig::small().text;
    narrow.dim = 32;
    let narrow = narrow.init::<B>(&dev).unwrap();
    diffusion_core::io::checkpoint::save_record(narrow, &dir.path().join("text.mpk")).unwrap();
    let reason = record_error("text.mpk");
    assert!(reason.contains("shape"), "{reason}");

    // a NaN weight
    let mut nan = models.text.clone();
    nan.embedding.weight = Param::from_tensor(nan.embedding.weight.val().mul_scalar(f32::NAN));
    diffusion_core::io::checkpoint::save_record(nan, &dir.path().join("text.mpk")).unwrap();
    let reason = record_error("text.mpk");
    assert!(reason.contains("NaN"), "{reason}");

    // truncated, or one bit flipped: the folder's checksums name the file
    let text = dir.path().join("text.mpk");
    let mut flipped = good.clone();
    flipped[good.len() / 3] ^= 0x04;
    for bytes in [&good[..good.len() / 2], &flipped[..]] {
        std::fs::write(&text, bytes).unwrap();
        match WorldModels::<B>::load(dir.path(), &dev) {
            Err(CoreError::Checksum { path, .. }) => assert_eq!(path, text),
            other => panic!("expected a Checksum error, got {other:?}"),
        }
    }
    // without checksums, the decoder names the truncated file
    std::fs::write(&text, &good[..good.len() / 2]).unwrap();
    std::fs::remove_file(dir.path().join("checksums.json")).unwrap();
    record_error("text.mpk");
    std::fs::write(&text, &good).unwrap();
    assert!(WorldModels::<B>::load(dir.path(), &dev).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random byte damage to `config.json` gives a config or a typed error, never a panic.
    #[test]
    fn damaged_configs_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<prop::sample::Index>(), truncate in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = serde_json::to_vec_pretty(&valid()).unwrap();
        for (i, b) in edits {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        let _ = WorldModelsConfig::read(&write(dir.path(), &bytes));
    }

    /// Random byte damage to a record gives the model or a typed error, never a panic.
    #[test]
    fn damaged_records_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let dev = Default::default();
        let dir = tempfile::tempdir().unwrap();
        let text = WorldModelsConfig::small().text.init::<B>(&dev).unwrap();
        let path = dir.path().join("text.mpk");
        diffusion_core::io::checkpoint::save_record(text.clone(), &path).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        for (i, b) in edits {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        std::fs::write(&path, &bytes).unwrap();
        // (without the folder's checksums, which would refuse the file before it is decoded)
        std::fs::remove_file(dir.path().join("checksums.json")).unwrap();
        let _ = diffusion_core::io::checkpoint::load_record(text.no_grad(), &path, &dev);
    }
}
