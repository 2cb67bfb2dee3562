//! The attributes a caption names.

use serde::{Deserialize, Serialize};

macro_rules! attribute {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $word:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The caption word(s) of this value.
            pub fn word(self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }

            /// Position in [`Self::ALL`].
            pub fn index(self) -> usize {
                Self::ALL.iter().position(|v| *v == self).expect("listed in ALL")
            }
        }
    };
}

attribute!(
    /// The moving object's shape.
    Shape {
        /// A disc.
        Circle => "circle",
        /// An axis-aligned square.
        Square => "square",
        /// An upward-pointing equilateral triangle.
        Triangle => "triangle",
    }
);

attribute!(
    /// The object's colour.
    Color {
        /// Red.
        Red => "red",
        /// Green.
        Green => "green",
        /// Blue.
        Blue => "blue",
        /// Yellow.
        Yellow => "yellow",
        /// Magenta.
        Magenta => "magenta",
        /// Cyan.
        Cyan => "cyan",
        /// White.
        White => "white",
    }
);

attribute!(
    /// The static background.
    Background {
        /// Near black.
        Black => "black",
        /// Mid gray.
        Gray => "gray",
        /// Dark blue.
        Navy => "navy",
        /// Dark brown.
        Brown => "brown",
    }
);

attribute!(
    /// Direction of motion.
    Direction {
        /// Towards smaller x.
        Left => "left",
        /// Towards larger x.
        Right => "right",
        /// Towards the top row.
        Up => "up",
        /// Towards the bottom row.
        Down => "down",
        /// No motion.
        Still => "still",
        /// Up and right.
        UpRight => "up-right",
        /// Down and left.
        DownLeft => "down-left",
    }
);

attribute!(
    /// Object size.
    Size {
        /// Radius 6/64 of the frame.
        Small => "small",
        /// Radius 10/64 of the frame.
        Large => "large",
    }
);

attribute!(
    /// Motion speed.
    Speed {
        /// One pixel per frame at 64 px.
        Slow => "slowly",
        /// Two pixels per frame at 64 px.
        Fast => "quickly",
    }
);

impl Color {
    /// RGB in `[0, 1]`.
    pub fn rgb(self) -> [f32; 3] {
        match self {
            Color::Red => [0.95, 0.1, 0.1],
            Color::Green => [0.1, 0.85, 0.15],
            Color::Blue => [0.15, 0.35, 1.0],
            Color::Yellow => [0.95, 0.9, 0.1],
            Color::Magenta => [0.9, 0.15, 0.9],
            Color::Cyan => [0.1, 0.9, 0.9],
            Color::White => [0.95, 0.95, 0.95],
        }
    }
}

impl Background {
    /// RGB in `[0, 1]`.
    pub fn rgb(self) -> [f32; 3] {
        match self {
            Background::Black => [0.04, 0.04, 0.04],
            Background::Gray => [0.42, 0.42, 0.42],
            Background::Navy => [0.05, 0.07, 0.3],
            Background::Brown => [0.3, 0.18, 0.08],
        }
    }
}

impl Direction {
    /// Unit motion vector `(dx, dy)` in image coordinates (y grows downwards).
    pub fn vector(self) -> (f32, f32) {
        let d = std::f32::consts::FRAC_1_SQRT_2;
        match self {
            Direction::Left => (-1.0, 0.0),
            Direction::Right => (1.0, 0.0),
            Direction::Up => (0.0, -1.0),
            Direction::Down => (0.0, 1.0),
            Direction::Still => (0.0, 0.0),
            Direction::UpRight => (d, -d),
            Direction::DownLeft => (-d, d),
        }
    }
}

impl Size {
    /// Radius as a fraction of the frame's smaller side.
    pub fn radius(self) -> f32 {
        match self {
            Size::Small => 6.0 / 64.0,
            Size::Large => 10.0 / 64.0,
        }
    }
}

impl Speed {
    /// Displacement per frame as a fraction of the frame's smaller side.
    pub fn per_frame(self) -> f32 {
        match self {
            Speed::Slow => 1.0 / 64.0,
            Speed::Fast => 2.0 / 64.0,
        }
    }
}
