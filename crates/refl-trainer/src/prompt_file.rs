//! Prompt embeddings cached on disk by `scripts/encode_prompts.py` (umT5 of a Wan folder).

use std::path::Path;

use burn::tensor::{backend::Backend, Tensor, TensorData};
use diffusion_core::io::tensor_files::TensorFiles;

use crate::{
    error::{Result, TrainError},
    prompts::PromptSet,
};

/// Largest embeddings file loaded at once (f32 in memory): 2^33 values, 32 GiB.
pub const MAX_EMBEDDING_VALUES: usize = 1 << 33;

/// Prompts with their cached text embeddings, and the negative prompt's for guidance.
#[derive(Debug, Clone)]
pub struct PromptFile<B: Backend> {
    /// The prompts and their embeddings `[N, S, D]` (zero past each prompt's tokens).
    pub prompts: PromptSet<B, String>,
    /// Tokens under each prompt's attention mask.
    pub lengths: Vec<usize>,
    /// The negative prompt's embedding `[1, S, D]`, when the file holds one.
    pub negative: Option<Tensor<B, 3>>,
    /// The negative prompt's text.
    pub negative_prompt: Option<String>,
}

fn bad(path: &Path, key: &str, reason: impl Into<String>) -> TrainError {
    TrainError::Config {
        field: format!("{}: `{key}`", path.display()),
        reason: reason.into(),
    }
}

impl<B: Backend> PromptFile<B> {
    /// Loads a file written by `scripts/encode_prompts.py`, checking that the embeddings are
    /// `[N, S, text_dim]` and finite, `lengths` holds N values in `1..=S`, and the `prompts`
    /// metadata lists N prompts.
    ///
    /// # Errors
    /// `Core` (`Io`, `Safetensors`, `MissingKey`, `KeyDtype`, `NonFinite`) naming the file or
    /// key; `Config` naming the file and key for a wrong width, count or length.
    pub fn load(path: impl AsRef<Path>, text_dim: usize, device: &B::Device) -> Result<Self> {
        let path = path.as_ref();
        let files = TensorFiles::open_file(path)?;
        let (_, shape) = files.info("embeddings")?;
        let shape = shape.to_vec();
        let [n, s, d] = shape[..] else {
            return Err(bad(
                path,
                "embeddings",
                format!("expected [N, S, D], found {shape:?}"),
            ));
        };
        if d != text_dim {
            return Err(bad(
                path,
                "embeddings",
                format!("width {d}, the transformer's text_dim is {text_dim}"),
            ));
        }
        if n == 0 || s == 0 || n.saturating_mul(s).saturating_mul(d) > MAX_EMBEDDING_VALUES {
            return Err(bad(
                path,
                "embeddings",
                format!("{shape:?}: needs 1..={MAX_EMBEDDING_VALUES} values (split the file)"),
            ));
        }
        let (_, values) = files.read_f32("embeddings")?;
        let text = Tensor::<B, 3>::from_data(TensorData::new(values, [n, s, d]), device);
        let lengths = read_lengths(&files, path, "lengths", n, s)?;
        let prompts: Vec<String> = match files.metadata().and_then(|m| m.get("prompts")) {
            Some(json) => serde_json::from_str(json)
                .map_err(|e| bad(path, "prompts", format!("not a JSON list of strings: {e}")))?,
            None => return Err(bad(path, "prompts", "the metadata holds no prompt list")),
        };
        if prompts.len() != n {
            return Err(bad(
                path,
                "prompts",
                format!("{} prompts for {n} embeddings", prompts.len()),
            ));
        }
        let negative = match files.info("negative") {
            Err(_) => None,
            Ok((_, shape)) if shape == [1, s, d] => {
                read_lengths(&files, path, "negative_length", 1, s)?;
                let (_, values) = files.read_f32("negative")?;
                Some(Tensor::from_data(
                    TensorData::new(values, [1, s, d]),
                    device,
                ))
            }
            Ok((_, shape)) => {
                return Err(bad(
                    path,
                    "negative",
                    format!("expected [1, {s}, {d}], found {shape:?}"),
                ))
            }
        };
        let negative_prompt = negative.as_ref().and(
            files
                .metadata()
                .and_then(|m| m.get("negative_prompt").cloned()),
        );
        Ok(Self {
            prompts: PromptSet::new(prompts, text)?,
            lengths,
            negative,
            negative_prompt,
        })
    }
}

fn read_lengths(
    files: &TensorFiles,
    path: &Path,
    key: &str,
    n: usize,
    s: usize,
) -> Result<Vec<usize>> {
    let (shape, values) = files.read_i64(key)?;
    if shape != [n] {
        return Err(bad(path, key, format!("expected [{n}], found {shape:?}")));
    }
    values
        .iter()
        .map(|&l| {
            usize::try_from(l)
                .ok()
                .filter(|l| (1..=s).contains(l))
                .ok_or_else(|| bad(path, key, format!("length {l} outside 1..={s}")))
        })
        .collect()
}
