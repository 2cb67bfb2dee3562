//! Pieces the experiment drivers share: how a report names the command that produced it.

/// The command that produced a report: `cargo run --release -p experiments --bin NAME` and the
/// run's flags.
pub fn command(name: &str) -> String {
    let flags: String = std::env::args().skip(1).map(|a| format!(" {a}")).collect();
    let sep = if flags.is_empty() { "" } else { " --" };
    format!("cargo run --release -p experiments --bin {name}{sep}{flags}")
}

/// `(VmRSS, VmHWM)`: resident and peak resident memory of this process in bytes (Linux; zeros
/// elsewhere).
pub fn resident_memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

use latent_refl::grpo::{GrpoConfig, Sde, TimestepSelection};

/// A GRPO run's settings in words, for reports.
pub fn grpo_settings(config: &GrpoConfig) -> String {
    let sde = match config.sde {
        Sde::FlowGrpo(s) => format!("Flow-GRPO (noise level {})", s.noise_level),
        Sde::DanceGrpo(_) => "DanceGRPO".to_string(),
    };
    let noise = if config.shared_noise {
        " (a group shares its initial noise)"
    } else {
        ""
    };
    let steps = match &config.timesteps {
        TimestepSelection::All => "every step an SDE step and trained".to_string(),
        TimestepSelection::RandomFraction { fraction, .. } => format!(
            "every step an SDE step, {:.0}% of them trained (one at a time)",
            fraction * 100.0
        ),
        TimestepSelection::IsoTemporal { .. } => {
            "one random step per update the SDE step and trained, the others ODE (iso-temporal)"
                .to_string()
        }
    };
    let rectified = if config.rectify { ", rectified" } else { "" };
    format!(
        "{} prompts x {} {sde} rollouts of {} steps per update{noise}, {steps}{rectified}, {:?} advantage std, clip {}, KL weight {}",
        config.prompts, config.group, config.steps, config.advantage.std, config.clip, config.kl_beta
    )
}

use burn::tensor::{backend::AutodiffBackend, Tensor};
use latent_reward::PairSet;

/// A preference set moved onto the autodiff backend (as constants) for training.
///
/// # Errors
/// Shape errors of the set.
pub fn to_autodiff_pairs<B: AutodiffBackend>(
    s: &PairSet<B::InnerBackend>,
) -> latent_reward::Result<PairSet<B>> {
    PairSet::new(
        Tensor::from_inner(s.winners.clone()),
        Tensor::from_inner(s.losers.clone()),
        Tensor::from_inner(s.text.clone()),
    )
}
