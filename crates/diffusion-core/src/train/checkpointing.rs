//! Which blocks of a transformer recompute their activations in the backward instead of keeping
//! them (activation checkpointing; Chen et al. 2016, "Training Deep Nets with Sublinear Memory
//! Cost", arXiv 1604.06174).

use serde::{Deserialize, Serialize};

use crate::error::{invalid, Result};

/// Which blocks are checkpointed: a checkpointed block keeps only its input for the backward
/// and runs its forward again there (one block's activations live at a time), for about a third
/// more compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checkpointing {
    /// Every block keeps its activations.
    #[default]
    None,
    /// Every block is checkpointed.
    EveryBlock,
    /// Blocks `0, n, 2n, ...` are checkpointed.
    EveryNth(usize),
}

impl Checkpointing {
    /// Whether block `index` is checkpointed.
    pub fn selects(&self, index: usize) -> bool {
        match *self {
            Self::None => false,
            Self::EveryBlock => true,
            Self::EveryNth(n) => n > 0 && index % n == 0,
        }
    }

    /// # Errors
    /// `Invalid` naming `checkpointing` for `every_nth = 0`.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::EveryNth(0) => Err(invalid("checkpointing.every_nth", "must be at least 1")),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_by_hand() {
        let picked = |c: Checkpointing| (0..5).filter(|&i| c.selects(i)).collect::<Vec<_>>();
        assert_eq!(picked(Checkpointing::None), Vec::<usize>::new());
        assert_eq!(picked(Checkpointing::EveryBlock), vec![0, 1, 2, 3, 4]);
        assert_eq!(picked(Checkpointing::EveryNth(2)), vec![0, 2, 4]);
        assert!(Checkpointing::EveryNth(0).validate().is_err());
        assert!(Checkpointing::EveryNth(3).validate().is_ok());
    }
}
