#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod attributes;
pub mod caption;
pub mod data;
pub mod error;
pub mod eval;
pub mod media;
pub mod models;
pub mod oracle;
pub mod pretrain;
pub mod render;
pub mod splits;
pub mod vocab;

pub use attributes::{Background, Color, Direction, Shape, Size, Speed};
pub use caption::{Caption, CaptionEnhancer};
pub use data::{
    PairBatch, PolicyNeighboursConfig, PreferencePair, RegressionBatch, RewardData, ScoredSample,
};
pub use error::WorldError;
pub use media::{write_contact_sheet, write_gif};
pub use models::{vae_psnr_batch, WorldModels, WorldModelsConfig};
pub use oracle::{OracleReward, OracleScores};
pub use render::{render, Video, VideoConfig};
pub use splits::{captions, split_of, Split};
pub use vocab::Vocabulary;
