//! Train / test / out-of-distribution prompt splits.

use crate::{
    attributes::{Color, Shape},
    caption::Caption,
};

/// Colour-shape pairs never seen in training: every caption with one of them is
/// out-of-distribution (each colour and each shape still appears in training, only these
/// combinations do not).
pub const OOD_PAIRS: &[(Color, Shape)] = &[
    (Color::Red, Shape::Triangle),
    (Color::Blue, Shape::Circle),
    (Color::Green, Shape::Square),
    (Color::Yellow, Shape::Circle),
];

/// Which split a caption belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Split {
    /// Seen in training.
    Train,
    /// Held out, but made of attribute combinations seen in training.
    Test,
    /// Made of a colour-shape combination never seen in training.
    Ood,
}

/// The split of `caption`: OOD by [`OOD_PAIRS`]; of the rest, one in ten goes to test by a
/// fixed hash of the caption text.
pub fn split_of(caption: &Caption) -> Split {
    if OOD_PAIRS.contains(&(caption.color, caption.shape)) {
        return Split::Ood;
    }
    // FNV-1a of the text: stable across platforms and releases
    let h = caption
        .text()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
    if h % 10 == 0 {
        Split::Test
    } else {
        Split::Train
    }
}

/// The captions of one split, in [`Caption::all`] order.
pub fn captions(split: Split) -> Vec<Caption> {
    Caption::all()
        .into_iter()
        .filter(|c| split_of(c) == split)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn splits_partition_the_world() {
        let (tr, te, ood) = (
            captions(Split::Train),
            captions(Split::Test),
            captions(Split::Ood),
        );
        assert_eq!(tr.len() + te.len() + ood.len(), Caption::all().len());
        assert_eq!(ood.len(), OOD_PAIRS.len() * Caption::all().len() / 21);
        assert!(
            te.len() > tr.len() / 20 && te.len() < tr.len() / 5,
            "{} test of {}",
            te.len(),
            tr.len()
        );
        let train_pairs: HashSet<_> = tr.iter().map(|c| (c.color, c.shape)).collect();
        for c in &ood {
            assert!(!train_pairs.contains(&(c.color, c.shape)));
        }
        // every attribute value of an OOD caption is seen in training on its own
        let colours: HashSet<_> = tr.iter().map(|c| c.color).collect();
        let shapes: HashSet<_> = tr.iter().map(|c| c.shape).collect();
        assert!(ood
            .iter()
            .all(|c| colours.contains(&c.color) && shapes.contains(&c.shape)));
    }
}
