#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod attributes;
pub mod caption;
pub mod error;
pub mod oracle;
pub mod render;
pub mod splits;
pub mod vocab;

pub use attributes::{Background, Color, Direction, Shape, Size, Speed};
pub use caption::Caption;
pub use error::WorldError;
pub use oracle::{OracleReward, OracleScores};
pub use render::{render, Video, VideoConfig};
pub use splits::{captions, split_of, Split};
pub use vocab::Vocabulary;
