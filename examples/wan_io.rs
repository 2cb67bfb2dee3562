//! Runs Wan2.1 models from diffusers folders on tensors in safetensors files: the interface a
//! user or a script checks this library against diffusers with.
//!
//! ```text
//! cargo run --release --example wan_io -- transformer --model DIR [--lora FILE] --inputs IN --output OUT
//! cargo run --release --example wan_io -- vae-encode --model DIR --inputs IN --output OUT
//! cargo run --release --example wan_io -- vae-decode --model DIR --inputs IN --output OUT
//! ```
//! - `transformer`: IN holds `latents` `[B, C, F, H, W]`, `timestep` `[B]` and
//!   `encoder_hidden_states` `[B, S, D]`; OUT gets `velocity`, the model's forward.
//! - `vae-encode`: IN `video` `[B, 3, F, H, W]` in `[-1, 1]`; OUT `latent_mean`, the posterior
//!   mean (unnormalised, as `AutoencoderKLWan.encode(video).latent_dist.mean`).
//! - `vae-decode`: IN `latents` (unnormalised); OUT `video` (`AutoencoderKLWan.decode(z).sample`).
//!
//! Inputs may be F32, F16 or BF16; outputs are F32.

use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use clap::{Parser, Subcommand};
use latent_refl::diffusion_core::{
    backend::DefaultBackend,
    io::{checkpoint::write_atomic, tensor_files::TensorFiles},
    models::wan_vae::WanVae,
    CoreError, VelocityModel, WanTransformer,
};

type B = DefaultBackend;

#[derive(Subcommand)]
enum Command {
    /// The transformer's forward (the flow-matching velocity).
    Transformer {
        /// The transformer folder (`config.json` and weights, sharded or not).
        #[arg(long)]
        model: PathBuf,
        /// A LoRA adapter file in PEFT's layout, applied to the layers it adapts.
        #[arg(long)]
        lora: Option<PathBuf>,
        #[arg(long)]
        inputs: PathBuf,
        #[arg(long)]
        output: PathBuf,
    },
    /// The VAE's posterior mean of a video.
    VaeEncode {
        /// The VAE folder.
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        inputs: PathBuf,
        #[arg(long)]
        output: PathBuf,
    },
    /// The VAE's decoding of latents.
    VaeDecode {
        /// The VAE folder.
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        inputs: PathBuf,
        #[arg(long)]
        output: PathBuf,
    },
}

/// Wan2.1 transformer and VAE forwards on tensors from a file.
#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

/// Reads `key` of `files` as a rank-`D` tensor.
fn read<const D: usize>(files: &TensorFiles, key: &str) -> Result<Tensor<B, D>, CoreError> {
    let (shape, values) = files.read_f32(key)?;
    if shape.len() != D {
        return Err(CoreError::Shape {
            what: format!("`{key}` of {}", files.path().display()),
            expected: vec![0; D],
            found: shape,
        });
    }
    Ok(Tensor::from_data(
        TensorData::new(values, shape),
        &Default::default(),
    ))
}

/// Writes `tensor` as `key` (F32) to `path`, atomically.
fn write<const D: usize>(path: &Path, key: &str, tensor: Tensor<B, D>) -> Result<(), CoreError> {
    let shape = tensor.dims().to_vec();
    let bytes: Vec<u8> = tensor
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| CoreError::NonFinite {
            what: format!("{key}: {e:?}"),
        })?
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let err = |e: safetensors::SafeTensorError| CoreError::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes)
        .map_err(err)?;
    write_atomic(
        path,
        &safetensors::serialize([(key, view)], None).map_err(err)?,
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dev = Default::default();
    match Args::parse().command {
        Command::Transformer {
            model,
            lora,
            inputs,
            output,
        } => {
            let mut dit = WanTransformer::<B>::load_folder(&model, &dev)?;
            if let Some(lora) = lora {
                dit = dit.with_lora_file(&lora, &dev)?;
            }
            let files = TensorFiles::open_file(&inputs)?;
            let latents: Tensor<B, 5> = read(&files, "latents")?;
            let timestep: Tensor<B, 1> = read(&files, "timestep")?;
            let text: Tensor<B, 3> = read(&files, "encoder_hidden_states")?;
            dit.check_input(latents.dims(), text.dims())?;
            if timestep.dims()[0] != latents.dims()[0] {
                return Err(CoreError::Shape {
                    what: "`timestep` (one per latent)".into(),
                    expected: vec![latents.dims()[0]],
                    found: timestep.dims().to_vec(),
                }
                .into());
            }
            write(&output, "velocity", dit.forward(latents, timestep, text))?;
        }
        Command::VaeEncode {
            model,
            inputs,
            output,
        } => {
            let vae = WanVae::<B>::load_folder(&model, &dev)?;
            let video: Tensor<B, 5> = read(&TensorFiles::open_file(&inputs)?, "video")?;
            vae.checked_latent_shape(video.dims())?;
            write(&output, "latent_mean", vae.encode_video(video).mean)?;
        }
        Command::VaeDecode {
            model,
            inputs,
            output,
        } => {
            let vae = WanVae::<B>::load_folder(&model, &dev)?;
            let latents: Tensor<B, 5> = read(&TensorFiles::open_file(&inputs)?, "latents")?;
            let [b, c, f, h, w] = latents.dims();
            let s = vae.config().spatial_factor();
            let t = vae.config().temporal_factor();
            vae.checked_latent_shape([b, 3, 1 + t * (f.max(1) - 1), s * h, s * w])?;
            if c != vae.config().z_dim {
                return Err(CoreError::Shape {
                    what: "`latents` channels (z_dim)".into(),
                    expected: vec![b, vae.config().z_dim, f, h, w],
                    found: latents.dims().to_vec(),
                }
                .into());
            }
            write(&output, "video", vae.decode_latent(latents))?;
        }
    }
    Ok(())
}
