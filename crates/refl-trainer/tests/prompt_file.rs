//! Cached prompt embeddings (`scripts/encode_prompts.py`) load with their prompts, and bad
//! files are named.

use std::path::{Path, PathBuf};

use refl_trainer::{PromptFile, TrainError};
use safetensors::{tensor::TensorView, Dtype};

type B = diffusion_core::backend::DefaultBackend;

fn tiny_wan() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/tiny-wan")
}

#[test]
fn encoded_prompts_load_with_lengths_and_negative() {
    let file = PromptFile::<B>::load(
        tiny_wan().join("prompts.safetensors"),
        32,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(file.prompts.len(), 8);
    assert_eq!(file.prompts.text.dims(), [8, 16, 32]);
    assert_eq!(
        file.prompts.prompts[0],
        "a small red circle moving right slowly on a black background"
    );
    assert!(file.lengths.iter().all(|&l| (1..=16).contains(&l)));
    // zero past each prompt's tokens, as the pipeline pads
    let text = file
        .prompts
        .text
        .clone()
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    for (i, &len) in file.lengths.iter().enumerate() {
        let row = &text[i * 16 * 32..(i + 1) * 16 * 32];
        assert!(row[len * 32..].iter().all(|v| *v == 0.0), "prompt {i}");
        assert!(row[..len * 32].iter().any(|v| *v != 0.0), "prompt {i}");
    }
    assert_eq!(file.negative.as_ref().map(|n| n.dims()), Some([1, 16, 32]));
    assert!(file.negative_prompt.is_some());
}

/// Writes a prompt file with the given tensors and `prompts` metadata.
fn write(path: &Path, emb: [usize; 3], lengths: &[i64], prompts: &str) {
    let values: Vec<u8> = (0..emb.iter().product::<usize>())
        .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
        .collect();
    let lens: Vec<u8> = lengths.iter().flat_map(|l| l.to_le_bytes()).collect();
    let views = vec![
        (
            "embeddings",
            TensorView::new(Dtype::F32, emb.to_vec(), &values).unwrap(),
        ),
        (
            "lengths",
            TensorView::new(Dtype::I64, vec![lengths.len()], &lens).unwrap(),
        ),
    ];
    let meta = [("prompts".to_string(), prompts.to_string())].into();
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

#[test]
fn bad_prompt_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("p.safetensors");
    let dev = Default::default();
    let field_of = |r: Result<PromptFile<B>, TrainError>| match r {
        Err(TrainError::Config { field, .. }) => field,
        other => panic!("expected Config, got {:?}", other.err()),
    };
    // embeddings of another width than the transformer's text_dim
    write(&path, [2, 4, 8], &[3, 4], r#"["a", "b"]"#);
    assert!(field_of(PromptFile::load(&path, 16, &dev)).ends_with("`embeddings`"));
    // a length beyond the sequence
    write(&path, [2, 4, 8], &[3, 5], r#"["a", "b"]"#);
    assert!(field_of(PromptFile::load(&path, 8, &dev)).ends_with("`lengths`"));
    // fewer prompts than embeddings
    write(&path, [2, 4, 8], &[3, 4], r#"["a"]"#);
    assert!(field_of(PromptFile::load(&path, 8, &dev)).ends_with("`prompts`"));
    // the metadata is not a list
    write(&path, [2, 4, 8], &[3, 4], "a, b");
    assert!(field_of(PromptFile::load(&path, 8, &dev)).contains("p.safetensors"));
    // a missing file
    assert!(matches!(
        PromptFile::<B>::load(tmp.path().join("none.safetensors"), 8, &dev),
        Err(TrainError::Core(diffusion_core::CoreError::Io { .. }))
    ));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Random byte damage (1-5 bytes, or a truncation) to a prompt file loads it or gives a
    /// typed error, never a panic.
    #[test]
    fn damaged_prompt_files_never_panic(
        edits in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()), 1..6),
        cut in proptest::option::of(proptest::prelude::any::<proptest::sample::Index>()),
    ) {
        let mut bytes = std::fs::read(tiny_wan().join("prompts.safetensors")).unwrap();
        for (i, b) in edits {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prompts.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let _ = PromptFile::<B>::load(&path, 32, &Default::default());
    }
}
