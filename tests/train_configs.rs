//! Every method runs from its shipped config on `assets/tiny-wan` on the backend the tests are
//! built for, writes its adapters, and a finished run resumes at its last step and does nothing
//! more; a full-weight run writes a transformer folder that loads back; bad configs are errors
//! naming the file or field.

use latent_refl::{
    diffusion_core::{io::checkpoint::SaveLayout, WanTransformer},
    prelude::DefaultBackend,
    refl_trainer::TrainError,
    wan::{BackendName, MethodName, SaveConfig, TrainConfig},
    world::SetupError,
};

fn tiny(method: MethodName, out: &std::path::Path) -> TrainConfig {
    let mut cfg = TrainConfig::template(method);
    cfg.backend = BackendName::built();
    cfg.learner.out = out.to_path_buf();
    cfg.learner.steps = 2;
    cfg
}

#[test]
fn every_method_trains_saves_and_resumes() {
    let dev = Default::default();
    for method in MethodName::ALL {
        let dir = tempfile::tempdir().unwrap();
        let cfg = tiny(method, dir.path());
        let report = cfg.run::<DefaultBackend>(&dev).unwrap();
        assert_eq!(report.resumed_at, 0, "{method}");
        assert_eq!(report.metrics.len(), 2, "{method}");
        assert!(
            report
                .metrics
                .iter()
                .all(|m| m.loss.is_some_and(f64::is_finite)),
            "{method}: {:?}",
            report.metrics
        );
        assert_eq!(
            report.saved,
            vec![dir.path().join("pytorch_lora_weights.safetensors")]
        );
        assert!(report.saved[0].is_file(), "{method}");
        if method == MethodName::Prfl {
            let again = cfg.run::<DefaultBackend>(&dev).unwrap();
            assert_eq!(again.resumed_at, 2);
            assert!(again.metrics.is_empty());
        }
    }
}

#[test]
fn a_full_weight_run_writes_a_folder_that_loads() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny(MethodName::Sft, dir.path());
    cfg.lora = None;
    cfg.learner.steps = 1;
    cfg.save = SaveConfig {
        merged: false,
        layout: Some(SaveLayout::default()),
    };
    let report = cfg.run::<DefaultBackend>(&Default::default()).unwrap();
    assert_eq!(report.saved, vec![dir.path().join("transformer")]);
    let loaded =
        WanTransformer::<DefaultBackend>::load_folder(&report.saved[0], &Default::default())
            .unwrap();
    assert_eq!(loaded.config().text_dim, 32);
}

#[test]
fn bad_configs_name_the_file_or_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.toml");
    let mut cfg = tiny(MethodName::Prfl, dir.path());

    std::fs::write(
        &path,
        cfg.to_toml().replace("[model]", "[model]\nframes = 3"),
    )
    .unwrap();
    match TrainConfig::load(&path) {
        Err(TrainError::ConfigFile { path: p, reason }) => {
            assert_eq!(p, path);
            assert!(reason.contains("frames"), "{reason}");
        }
        other => panic!("{other:?}"),
    }

    let other = match BackendName::built() {
        BackendName::Cpu => BackendName::Wgpu,
        _ => BackendName::Cpu,
    };
    cfg.backend = other;
    std::fs::write(&path, cfg.to_toml()).unwrap();
    assert!(matches!(
        TrainConfig::load(&path),
        Err(TrainError::Config { field, .. }) if field == "backend"
    ));

    cfg.backend = BackendName::built();
    for (field, edit) in [
        ("model.video[0] (frames)", "video = [100001, 32, 32]"),
        ("reward.velr.members", "members = 0"),
    ] {
        let key = edit.split(' ').next().unwrap();
        let text = cfg.to_toml();
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{key} =")))
            .unwrap();
        std::fs::write(&path, text.replace(line, edit)).unwrap();
        assert!(
            matches!(TrainConfig::load(&path), Err(TrainError::Config { field: f, .. }) if f == field),
            "{edit}"
        );
    }

    cfg.model.heldout = 100;
    std::fs::write(&path, cfg.to_toml()).unwrap();
    let cfg = TrainConfig::load(&path).unwrap();
    assert!(matches!(
        cfg.run::<DefaultBackend>(&Default::default()),
        Err(SetupError::Train(TrainError::Config { field, .. })) if field == "model.heldout"
    ));
}

/// Half-precision frozen weights (bf16, or f16 where the backend lacks bf16) follow the f32
/// run's loss curve step by step and every method trains on them; a backend with neither
/// refuses the config naming the field.
#[test]
fn half_precision_follows_the_f32_loss_curve() {
    use latent_refl::diffusion_core::train::precision::Precision;
    let dev = Default::default();
    let half = [Precision::Bf16, Precision::F16]
        .into_iter()
        .find(|p| p.check::<DefaultBackend>(&dev, "precision").is_ok());
    let losses = |precision: Precision| {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = tiny(MethodName::Prfl, dir.path());
        cfg.learner.steps = 6;
        cfg.model.precision = precision;
        cfg.run::<DefaultBackend>(&dev).map(|r| {
            r.metrics
                .iter()
                .map(|m| m.loss.expect("finite loss"))
                .collect::<Vec<f64>>()
        })
    };
    let Some(half) = half else {
        assert!(matches!(
            losses(Precision::Bf16),
            Err(SetupError::Train(TrainError::Config { field, .. })) if field == "model.precision"
        ));
        return;
    };
    let want = losses(Precision::F32).unwrap();
    let got = losses(half).unwrap();
    assert_eq!(got.len(), 6);
    // every other method runs on the half-precision base too
    for method in MethodName::ALL
        .into_iter()
        .filter(|m| *m != MethodName::Prfl)
    {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = tiny(method, dir.path());
        cfg.learner.steps = 1;
        cfg.model.precision = half;
        let report = cfg.run::<DefaultBackend>(&dev).unwrap();
        assert!(
            report.metrics[0].loss.is_some_and(f64::is_finite),
            "{method}: {:?}",
            report.metrics
        );
    }
    // within a quarter of the f32 curve's own range over the steps (which must not be flat)
    let range =
        want.iter().fold(f64::MIN, |a, &b| a.max(b)) - want.iter().fold(f64::MAX, |a, &b| a.min(b));
    assert!(range > 1e-5, "{want:?}");
    for (step, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 0.25 * range,
            "{half} step {step}: {g} against f32 {w} ({got:?} / {want:?})"
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Random byte damage (1-5 bytes, or a truncation) to a run config reads a config or gives
    /// a typed error, never a panic.
    #[test]
    fn damaged_run_configs_never_panic(
        edits in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()), 1..6),
        cut in proptest::option::of(proptest::prelude::any::<proptest::sample::Index>()),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.toml");
        let mut bytes = tiny(MethodName::Velr, dir.path()).to_toml().into_bytes();
        for (i, b) in edits {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        std::fs::write(&path, &bytes).unwrap();
        let _ = TrainConfig::load(&path);
    }
}
