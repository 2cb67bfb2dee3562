//! The world's vocabulary and tokenizer.

use crate::{
    attributes::{Background, Color, Direction, Shape, Size, Speed},
    error::WorldError,
};

/// Word-level vocabulary of every caption; id `0` is padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocabulary {
    words: Vec<&'static str>,
}

impl Default for Vocabulary {
    fn default() -> Self {
        let mut words = vec![
            "<pad>",
            "a",
            "moving",
            "staying",
            "still",
            "on",
            "background",
        ];
        words.extend(Shape::ALL.iter().map(|v| v.word()));
        words.extend(Color::ALL.iter().map(|v| v.word()));
        words.extend(Background::ALL.iter().map(|v| v.word()));
        words.extend(
            Direction::ALL
                .iter()
                .map(|v| v.word())
                .filter(|w| *w != "still"),
        );
        words.extend(Size::ALL.iter().map(|v| v.word()));
        words.extend(Speed::ALL.iter().map(|v| v.word()));
        Self { words }
    }
}

impl Vocabulary {
    /// Number of ids, padding included.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Always false: the vocabulary holds at least the padding token.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Token ids of a whitespace-separated text; unknown words are an error.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, WorldError> {
        text.split_whitespace()
            .map(|w| {
                self.words
                    .iter()
                    .position(|v| *v == w)
                    .map(|i| i as u32)
                    .ok_or_else(|| WorldError::UnknownWord(w.to_string()))
            })
            .collect()
    }

    /// The text of token ids (padding skipped).
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .filter(|&&i| i != 0)
            .map(|&i| self.words.get(i as usize).copied().unwrap_or("<unk>"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Caption;

    #[test]
    fn every_caption_round_trips() {
        let v = Vocabulary::default();
        for c in Caption::all() {
            let ids = v.encode(&c.text()).unwrap();
            assert!(ids.iter().all(|&i| i > 0));
            assert_eq!(v.decode(&ids), c.text());
        }
        assert!(
            matches!(v.encode("a purple circle"), Err(WorldError::UnknownWord(w)) if w == "purple")
        );
    }
}
