//! Captions: one value of every attribute, and their text.

use serde::{Deserialize, Serialize};

use crate::{
    attributes::{Background, Color, Direction, Shape, Size, Speed},
    error::WorldError,
};

/// What a video shows; the prompt it is generated from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Caption {
    /// Object shape.
    pub shape: Shape,
    /// Object colour.
    pub color: Color,
    /// Background.
    pub background: Background,
    /// Direction of motion.
    pub direction: Direction,
    /// Object size.
    pub size: Size,
    /// Speed (normalised to `Slow` for `Still`, where it has no meaning).
    pub speed: Speed,
}

impl Caption {
    /// A caption; `speed` is normalised to `Slow` when `direction` is `Still`.
    pub fn new(
        shape: Shape,
        color: Color,
        background: Background,
        direction: Direction,
        size: Size,
        speed: Speed,
    ) -> Self {
        let speed = if direction == Direction::Still {
            Speed::Slow
        } else {
            speed
        };
        Self {
            shape,
            color,
            background,
            direction,
            size,
            speed,
        }
    }

    /// Every distinct caption of the world, in a fixed order.
    pub fn all() -> Vec<Caption> {
        let mut out = Vec::new();
        for &shape in Shape::ALL {
            for &color in Color::ALL {
                for &background in Background::ALL {
                    for &direction in Direction::ALL {
                        for &size in Size::ALL {
                            let speeds: &[Speed] = if direction == Direction::Still {
                                &[Speed::Slow]
                            } else {
                                Speed::ALL
                            };
                            for &speed in speeds {
                                out.push(Caption::new(
                                    shape, color, background, direction, size, speed,
                                ));
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// The captions that differ from this one in exactly one of the attributes the oracle
    /// checks (colour, shape, direction), in a fixed order: hard negatives for reward models,
    /// which must learn to match the prompt rather than to recognise a clean video.
    pub fn near_misses(&self) -> Vec<Caption> {
        let c = *self;
        let colours = Color::ALL.iter().filter(|&&x| x != c.color);
        let shapes = Shape::ALL.iter().filter(|&&x| x != c.shape);
        let directions = Direction::ALL.iter().filter(|&&x| x != c.direction);
        colours
            .map(|&color| Caption { color, ..c })
            .chain(shapes.map(|&shape| Caption { shape, ..c }))
            .chain(directions.map(|&direction| {
                Caption::new(c.shape, c.color, c.background, direction, c.size, c.speed)
            }))
            .collect()
    }

    /// Every caption that differs from this one in exactly one attribute the oracle checks
    /// against the video: the [`Caption::near_misses`] (colour, shape, direction), the other
    /// size, and for a moving object the other speed. The background stays.
    pub fn variations(&self) -> Vec<Caption> {
        let c = *self;
        let mut out = c.near_misses();
        out.extend(
            Size::ALL
                .iter()
                .filter(|&&x| x != c.size)
                .map(|&size| Caption { size, ..c }),
        );
        if c.direction != Direction::Still {
            out.extend(
                Speed::ALL
                    .iter()
                    .filter(|&&x| x != c.speed)
                    .map(|&speed| Caption { speed, ..c }),
            );
        }
        out
    }

    /// The caption text, e.g. `a small red circle moving left slowly on a black background`.
    pub fn text(&self) -> String {
        let motion = match self.direction {
            Direction::Still => "staying still".to_string(),
            d => format!("moving {} {}", d.word(), self.speed.word()),
        };
        format!(
            "a {} {} {} {motion} on a {} background",
            self.size.word(),
            self.color.word(),
            self.shape.word(),
            self.background.word()
        )
    }
}

impl Caption {
    /// Parses a caption by its attribute words, in any order, each named at most once; an
    /// attribute the text leaves out is taken from `defaults` (an error without defaults, except
    /// the speed of `still`).
    ///
    /// # Errors
    /// `Caption` for an unknown word, an attribute named twice, or one missing without defaults.
    pub fn parse_with(text: &str, defaults: Option<&Caption>) -> Result<Self, WorldError> {
        fn find<T: Copy + PartialEq>(
            words: &[&str],
            all: &[T],
            word: fn(T) -> &'static str,
            what: &str,
        ) -> Result<Option<T>, WorldError> {
            let hits: Vec<T> = all
                .iter()
                .copied()
                .filter(|v| words.contains(&word(*v)))
                .collect();
            match hits.as_slice() {
                [] => Ok(None),
                [one] => Ok(Some(*one)),
                _ => Err(WorldError::Caption(format!(
                    "`{}` names more than one {what}",
                    words.join(" ")
                ))),
            }
        }
        let words: Vec<&str> = text.split_whitespace().collect();
        crate::vocab::Vocabulary::default().encode(text)?;
        fn pick<T>(
            found: Option<T>,
            default: Option<T>,
            text: &str,
            what: &str,
        ) -> Result<T, WorldError> {
            found
                .or(default)
                .ok_or_else(|| WorldError::Caption(format!("`{text}` names no {what}")))
        }
        let d = defaults;
        let direction = if words.contains(&"still") {
            Direction::Still
        } else {
            let found = find(&words, Direction::ALL, Direction::word, "direction")?;
            pick(found, d.map(|d| d.direction), text, "direction")?
        };
        let speed = match find(&words, Speed::ALL, Speed::word, "speed")? {
            Some(s) => s,
            None if direction == Direction::Still => Speed::Slow,
            None => pick(None, d.map(|d| d.speed), text, "speed")?,
        };
        Ok(Caption::new(
            pick(
                find(&words, Shape::ALL, Shape::word, "shape")?,
                d.map(|d| d.shape),
                text,
                "shape",
            )?,
            pick(
                find(&words, Color::ALL, Color::word, "colour")?,
                d.map(|d| d.color),
                text,
                "colour",
            )?,
            pick(
                find(&words, Background::ALL, Background::word, "background")?,
                d.map(|d| d.background),
                text,
                "background",
            )?,
            direction,
            pick(
                find(&words, Size::ALL, Size::word, "size")?,
                d.map(|d| d.size),
                text,
                "size",
            )?,
            speed,
        ))
    }
}

/// The world's rule-based [`PromptEnhancer`]: a terse prompt (`"red circle left"`) becomes a full
/// caption in the training vocabulary, the attributes it leaves out taken from `defaults`.
///
/// [`PromptEnhancer`]: diffusion_core::PromptEnhancer
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CaptionEnhancer {
    /// Attributes for what a prompt leaves out.
    pub defaults: Caption,
}

impl diffusion_core::PromptEnhancer for CaptionEnhancer {
    type Error = WorldError;

    fn enhance(&self, prompt: &str) -> Result<String, WorldError> {
        Ok(Caption::parse_with(prompt, Some(&self.defaults))?.text())
    }
}

impl std::str::FromStr for Caption {
    type Err = WorldError;

    /// Parses a caption by its attribute words, in any order; every attribute must be named
    /// once (speed may be left out for `still`).
    fn from_str(text: &str) -> Result<Self, WorldError> {
        Caption::parse_with(text, None)
    }
}

impl std::fmt::Display for Caption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caption_text() {
        let c = Caption::new(
            Shape::Circle,
            Color::Red,
            Background::Black,
            Direction::Left,
            Size::Small,
            Speed::Slow,
        );
        assert_eq!(
            c.text(),
            "a small red circle moving left slowly on a black background"
        );
        let s = Caption::new(
            Shape::Square,
            Color::Blue,
            Background::Gray,
            Direction::Still,
            Size::Large,
            Speed::Fast,
        );
        assert_eq!(
            s.text(),
            "a large blue square staying still on a gray background"
        );
        assert_eq!(s.speed, Speed::Slow);
    }

    #[test]
    fn near_misses_change_one_checked_attribute() {
        for c in Caption::all().into_iter().step_by(37) {
            let misses = c.near_misses();
            let n = Color::ALL.len() + Shape::ALL.len() + Direction::ALL.len() - 3;
            assert_eq!(misses.len(), n);
            for m in misses {
                let changed = [
                    m.color != c.color,
                    m.shape != c.shape,
                    m.direction != c.direction,
                ];
                assert_eq!(changed.iter().filter(|x| **x).count(), 1, "{c} -> {m}");
                assert_eq!((m.background, m.size), (c.background, c.size));
            }
        }
    }

    #[test]
    fn variations_change_exactly_one_attribute() {
        for c in Caption::all().into_iter().step_by(29) {
            let vars = c.variations();
            let moving = usize::from(c.direction != Direction::Still);
            assert_eq!(vars.len(), c.near_misses().len() + 1 + moving, "{c}");
            for v in vars {
                let changed = [
                    v.color != c.color,
                    v.shape != c.shape,
                    v.direction != c.direction,
                    v.size != c.size,
                    // a still object has no speed (`Caption::new` sets the canonical one)
                    v.speed != c.speed && v.direction == c.direction,
                ];
                assert_eq!(changed.iter().filter(|x| **x).count(), 1, "{c} -> {v}");
                assert_eq!(v.background, c.background);
            }
        }
    }

    #[test]
    fn enhancer_completes_terse_prompts() {
        use diffusion_core::PromptEnhancer;
        let e = CaptionEnhancer {
            defaults: Caption::new(
                Shape::Square,
                Color::White,
                Background::Black,
                Direction::Still,
                Size::Large,
                Speed::Slow,
            ),
        };
        assert_eq!(
            e.enhance("red circle left").unwrap(),
            "a large red circle moving left slowly on a black background"
        );
        assert_eq!(
            e.enhance("blue").unwrap(),
            "a large blue square staying still on a black background"
        );
        let full = "a small red circle moving up quickly on a gray background";
        assert_eq!(e.enhance(full).unwrap(), full);
        assert!(e.enhance("red blue circle").is_err());
        assert!(e.enhance("purple circle").is_err());
    }

    #[test]
    fn every_caption_parses_back() {
        for c in Caption::all() {
            assert_eq!(c.text().parse::<Caption>().unwrap(), c);
        }
        assert!("a small red circle on a black background"
            .parse::<Caption>()
            .is_err());
        assert!(
            "a small red blue circle moving left slowly on a black background"
                .parse::<Caption>()
                .is_err()
        );
        assert!("a small purple circle".parse::<Caption>().is_err());
    }

    #[test]
    fn all_captions_are_distinct() {
        let all = Caption::all();
        // 3 shapes x 7 colours x 4 backgrounds x 2 sizes x (6 moving directions x 2 speeds + still)
        assert_eq!(all.len(), 3 * 7 * 4 * 2 * 13);
        let set: std::collections::HashSet<_> = all.iter().map(Caption::text).collect();
        assert_eq!(set.len(), all.len());
    }
}
