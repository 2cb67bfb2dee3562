//! Euler against UniPC (Wan2.1's default sampler) on the shipped shapes-world models: for each
//! step count, the held-out oracle reward of the decoded samples and how far the final latent
//! lies from a 200-step Euler reference from the same noise. The inference-optimisation stage
//! picks a sampler and a step count from such a table.
//!
//! ```text
//! cargo run --release -p experiments --bin samplers -- --steps 4,6,8,12,20 --prompts 32
//! ```

use clap::Parser;
use diffusion_core::{
    backend::DefaultBackend,
    sampling::{
        rollout::{randn, Conditioning, Rollout},
        unipc::{sample_unipc, UniPcConfig},
    },
    EulerOde, FlowMatchScheduleConfig,
};
use latent_refl::world::{self, World};
use rand::{rngs::StdRng, SeedableRng};
use shapes_world::OracleReward;

type B = DefaultBackend;
type AD = burn::backend::Autodiff<B>;

/// Compares the samplers at equal model evaluations.
#[derive(Parser)]
struct Args {
    /// Step counts (model evaluations per video).
    #[arg(long, value_delimiter = ',', default_value = "4,6,8,12,20")]
    steps: Vec<usize>,
    /// Held-out prompts.
    #[arg(long, default_value_t = 32)]
    prompts: usize,
    /// Flow shift of both samplers.
    #[arg(long, default_value_t = 3.0)]
    shift: f64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let dev = Default::default();
    let world = World::<AD>::load(world::MODELS.as_ref(), &dev)?;
    let models = &world.models;
    let heldout = world.heldout_reward(args.prompts)?.prompts;
    let text = heldout.text.clone();
    let [c, f, h, w] = world.latent_shape();
    let noise = randn::<B, 5>(
        [heldout.len(), c, f, h, w],
        &mut StdRng::seed_from_u64(7),
        &dev,
    );
    let cond = Conditioning::new(text.clone());
    let euler = |steps: usize| -> Result<_, Box<dyn std::error::Error>> {
        let schedule = FlowMatchScheduleConfig::new(steps)
            .with_shift(args.shift)
            .init()?;
        let traj =
            Rollout::new(&schedule, &EulerOde).sample(&models.dit, noise.clone(), &cond, 0)?;
        Ok(traj.last().clone())
    };
    let reference = euler(200)?;
    let score = |z: burn::tensor::Tensor<B, 5>| -> Result<(f64, f64), Box<dyn std::error::Error>> {
        let dist = (z.clone() - reference.clone())
            .powi_scalar(2)
            .mean()
            .sqrt()
            .into_scalar() as f64;
        let reward = OracleReward
            .score(models.decode(z), &heldout.prompts)?
            .mean()
            .into_scalar() as f64;
        Ok((reward, dist))
    };
    let (r_ref, _) = score(reference.clone())?;
    println!(
        "{} held-out prompts, shift {}; 200-step Euler reference: oracle reward {r_ref:.4}",
        heldout.len(),
        args.shift
    );
    println!(
        "| steps | Euler reward | UniPC reward | Euler RMS to reference | UniPC RMS to reference |"
    );
    println!("|---|---|---|---|---|");
    for &steps in &args.steps {
        let (re, de) = score(euler(steps)?)?;
        let z = sample_unipc(
            &models.dit,
            noise.clone(),
            text.clone(),
            None,
            UniPcConfig::wan21(steps, args.shift),
        )?;
        let (ru, du) = score(z)?;
        println!("| {steps} | {re:.4} | {ru:.4} | {de:.4} | {du:.4} |");
    }
    Ok(())
}
