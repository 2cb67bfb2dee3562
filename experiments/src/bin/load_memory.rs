//! Peak host memory of loading a Wan transformer folder (the Hub's layout) against the size of
//! the loaded f32 model.
//!
//! ```text
//! cargo run --release -p experiments --bin load_memory -- write --preset wan1.3b --out out/wan13b-bf16
//! cargo run --release -p experiments --bin load_memory -- load --model out/wan13b-bf16
//! ```
//! `write` saves a randomly initialised model (bf16, 2 GB shards by default); `load` runs in a
//! fresh process so that its peak resident set (`VmHWM`) counts the load alone.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use diffusion_core::{
    backend::DefaultBackend,
    io::checkpoint::{SaveLayout, WeightDtype},
    WanConfig, WanTransformer,
};

#[derive(Clone, Copy, ValueEnum)]
enum Preset {
    /// Wan2.1-T2V-1.3B.
    #[value(name = "wan1.3b")]
    Wan13b,
    /// Width 1536 with 6 blocks (about 0.3B parameters).
    Small,
}

#[derive(Subcommand)]
enum Command {
    /// Writes a random model folder.
    Write {
        #[arg(long, value_enum, default_value = "wan1.3b")]
        preset: Preset,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = "bf16")]
        dtype: String,
        /// Largest shard in bytes.
        #[arg(long, default_value_t = 2_000_000_000)]
        max_shard_bytes: u64,
    },
    /// Loads a folder and prints the peak resident set against the model's f32 size.
    Load {
        #[arg(long)]
        model: PathBuf,
    },
}

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Default::default();
    match Args::parse().command {
        Command::Write {
            preset,
            out,
            dtype,
            max_shard_bytes,
        } => {
            let cfg = match preset {
                Preset::Wan13b => WanConfig::wan21_1_3b(),
                Preset::Small => WanConfig::new(12, 128, 8960, 6),
            };
            let dtype: WeightDtype = serde_json::from_value(dtype.into())?;
            let model = cfg.init::<DefaultBackend>(&device)?;
            model.save_folder(
                &out,
                SaveLayout {
                    dtype,
                    max_shard_bytes,
                },
            )?;
            println!("wrote {} ({} parameters)", out.display(), cfg.num_params());
        }
        Command::Load { model } => {
            let (before, _) = experiments::resident_memory();
            let start = std::time::Instant::now();
            let loaded = WanTransformer::<DefaultBackend>::load_folder(&model, &device)?;
            let secs = start.elapsed().as_secs_f64();
            let (after, peak) = experiments::resident_memory();
            let bytes = loaded.config().num_params() as f64 * 4.0;
            let gib = |b: f64| b / (1u64 << 30) as f64;
            println!("| folder | f32 model | RSS before | peak RSS | peak / model | load time |");
            println!("|---|---|---|---|---|---|");
            println!(
                "| {} | {:.2} GiB | {:.2} GiB | {:.2} GiB | {:.3} | {secs:.1} s |",
                model.display(),
                gib(bytes),
                gib(before as f64),
                gib(peak as f64),
                peak as f64 / bytes
            );
            eprintln!("resident after loading: {:.2} GiB", gib(after as f64));
        }
    }
    Ok(())
}
