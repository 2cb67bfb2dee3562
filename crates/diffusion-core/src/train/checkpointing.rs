//! Which blocks of a transformer recompute their activations in the backward instead of keeping
//! them (activation checkpointing; Chen et al. 2016, "Training Deep Nets with Sublinear Memory
//! Cost", arXiv 1604.06174).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::error::{invalid, CoreError, Result};

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

/// `none`, `every block`, `every 3rd block`.
impl fmt::Display for Checkpointing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::None => f.write_str("none"),
            Self::EveryBlock => f.write_str("every block"),
            Self::EveryNth(n) => {
                let suffix = match (n % 10, n % 100) {
                    (1, r) if r != 11 => "st",
                    (2, r) if r != 12 => "nd",
                    (3, r) if r != 13 => "rd",
                    _ => "th",
                };
                write!(f, "every {n}{suffix} block")
            }
        }
    }
}

/// Command-line spelling: `none`, `every_block`, `every_nth:N`.
impl FromStr for Checkpointing {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self> {
        let c = match s {
            "none" => Self::None,
            "every_block" => Self::EveryBlock,
            _ => match s.strip_prefix("every_nth:").map(str::parse) {
                Some(Ok(n)) => Self::EveryNth(n),
                _ => {
                    return Err(invalid(
                        "checkpointing",
                        format!("`{s}`: expected none, every_block or every_nth:N"),
                    ))
                }
            },
        };
        c.validate()?;
        Ok(c)
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

    #[test]
    fn parses_and_names() {
        for (text, c, name) in [
            ("none", Checkpointing::None, "none"),
            ("every_block", Checkpointing::EveryBlock, "every block"),
            ("every_nth:2", Checkpointing::EveryNth(2), "every 2nd block"),
            (
                "every_nth:11",
                Checkpointing::EveryNth(11),
                "every 11th block",
            ),
        ] {
            assert_eq!(text.parse::<Checkpointing>().unwrap(), c);
            assert_eq!(c.to_string(), name);
        }
        for bad in ["every_nth:0", "every_nth:x", "all"] {
            assert!(bad.parse::<Checkpointing>().is_err(), "{bad}");
        }
    }
}
