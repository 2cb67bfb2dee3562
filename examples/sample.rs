//! Samples shapes-world videos from prompts with the shipped base model: one GIF per prompt, a
//! PNG contact sheet, and the oracle reward of each.
//!
//! ```text
//! cargo run --release --example sample -- "a large red square moving right quickly on a gray background"
//! cargo run --release --example sample --features wgpu -- --steps 30 --out out/samples
//! ```
//!
//! Without prompts it samples four test-split captions. Flags: `--models DIR` (default
//! assets/shapes-world), `--steps N`, `--seed N`, `--out DIR` (default out/samples).

use std::path::PathBuf;

use burn::tensor::ElementConversion;
use diffusion_core::{
    backend::{DefaultBackend, DEFAULT_BACKEND_NAME},
    io::progress::Progress,
};
use shapes_world::{
    captions, write_contact_sheet, write_gif, Caption, OracleReward, Split, Video, WorldModels,
};

type B = DefaultBackend;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut models_dir, mut steps, mut seed, mut out) = (
        PathBuf::from("assets/shapes-world"),
        20usize,
        0u64,
        PathBuf::from("out/samples"),
    );
    let mut prompts = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--models" => models_dir = val()?.into(),
            "--steps" => steps = val()?.parse()?,
            "--seed" => seed = val()?.parse()?,
            "--out" => out = val()?.into(),
            p => prompts.push(p.parse::<Caption>()?),
        }
    }
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
            "cannot load models from {}: {e} (run the pretrain_world example first?)",
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
