#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod aggregation;
pub mod fit;
pub mod model;

pub use aggregation::Aggregation;
pub use fit::{fit_member, fit_members, Bootstrap};
pub use model::{Ensemble, Evaluation, MemberScores};
