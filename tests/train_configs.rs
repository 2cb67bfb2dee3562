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
    cfg.model.heldout = 100;
    std::fs::write(&path, cfg.to_toml()).unwrap();
    let cfg = TrainConfig::load(&path).unwrap();
    assert!(matches!(
        cfg.run::<DefaultBackend>(&Default::default()),
        Err(SetupError::Train(TrainError::Config { field, .. })) if field == "model.heldout"
    ));
}
