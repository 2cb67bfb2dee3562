//! Samples shapes-world videos from prompts with the shipped base model: one GIF per prompt, a
//! PNG contact sheet, and the oracle reward of each.
//!
//! ```text
//! cargo run --release --example sample -- "a large red square moving right quickly on a gray background"
//! cargo run --release --example sample --features wgpu -- --steps 30 --out out/samples
//! ```
//!
//! Without prompts it samples four test-split captions.

use std::path::PathBuf;

use burn::tensor::ElementConversion;
use clap::Parser;
use diffusion_core::{
    backend::{DefaultBackend, DEFAULT_BACKEND_NAME},
    io::progress::Progress,
};
use shapes_world::{
    captions, write_contact_sheet, write_gif, Caption, OracleReward, Split, Video, WorldModels,
};

type B = DefaultBackend;

/// Samples shapes-world videos with the shipped base model.
#[derive(Parser)]
struct Args {
    /// Captions to sample (four test captions without any).
    prompts: Vec<Caption>,
    /// The pretrained world models.
    #[arg(long, default_value = "assets/shapes-world")]
    models: PathBuf,
    /// Euler steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Seed of the first prompt's noise (the next prompts: seed + 1, ...).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder.
    #[arg(long, default_value = "out/samples")]
    out: PathBuf,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Args {
        mut prompts,
        models: models_dir,
        steps,
        seed,
        out,
    } = Args::parse();
    if prompts.is_empty() {
        prompts = captions(Split::Test)
            .into_iter()
            .step_by(41)
            .take(4)
            .collect();
    }
    let dev = Default::default();
    let models = WorldModels::<B>::load(&models_dir, &dev).map_err(|e| {
        format!(
            "cannot load models from {}: {e} (run the pretrain_world experiment first?)",
            models_dir.display()
        )
    })?;
    std::fs::create_dir_all(&out)?;
    println!("backend {DEFAULT_BACKEND_NAME}, {steps} Euler steps");
    let mut pb = Progress::new(prompts.len(), "sample");
    let mut sheet = Vec::new();
    for (i, caption) in prompts.iter().enumerate() {
        let z = models.sample_latents(&[*caption], steps, 3.0, seed + i as u64, &dev)?;
        let video = models.decode(z);
        let reward = OracleReward
            .score(video.clone(), &[*caption])?
            .into_scalar()
            .elem::<f32>();
        let video = Video::from_tensor(video.squeeze_dim::<4>(0))?;
        let path = out.join(format!("sample_{i:02}.gif"));
        write_gif(&path, &video, 3, 100)?;
        println!("{reward:.3}  {}  -> {}", caption, path.display());
        sheet.push(video);
        pb.tick(format!("{reward:.3}"));
    }
    drop(pb);
    let sheet_path = out.join("contact_sheet.png");
    write_contact_sheet(&sheet_path, &sheet, 2)?;
    println!("contact sheet -> {}", sheet_path.display());
    Ok(())
}
