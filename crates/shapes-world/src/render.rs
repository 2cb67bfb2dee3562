//! Procedural rendering of a caption into a video.

use burn::tensor::{backend::Backend, Tensor, TensorData};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{attributes::Shape, caption::Caption, error::WorldError};

/// Frame count and resolution of rendered videos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoConfig {
    /// Frames (Wan's `1 + 4k` layout: 17 = 1 + 4 * 4).
    pub frames: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
}

impl Default for VideoConfig {
    fn default() -> Self {
        Self {
            frames: 17,
            height: 64,
            width: 64,
        }
    }
}

impl VideoConfig {
    /// Checks the renderer can place a large, fast object for the whole clip.
    pub fn validate(&self) -> Result<(), WorldError> {
        if self.frames == 0 || self.height < 16 || self.width < 16 {
            return Err(WorldError::InvalidConfig(format!(
                "{self:?}: need frames >= 1 and 16 x 16 pixels at least"
            )));
        }
        Ok(())
    }

    /// The smaller side in pixels; sizes and speeds scale with it.
    pub fn side(&self) -> f32 {
        self.height.min(self.width) as f32
    }
}

/// A rendered RGB video, channel-first `[3, F, H, W]`, values in `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Video {
    /// Frame count and resolution.
    pub config: VideoConfig,
    /// Pixel values, `[3, F, H, W]` row-major.
    pub data: Vec<f32>,
    /// Object centre `(x, y)` in pixels per frame.
    pub track: Vec<(f32, f32)>,
}

impl Video {
    /// The video as a tensor in `[-1, 1]`.
    ///
    /// # Shapes
    /// - output: `[3, F, H, W]`
    pub fn to_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 4> {
        let c = self.config;
        let data: Vec<f32> = self.data.iter().map(|v| v * 2.0 - 1.0).collect();
        Tensor::from_data(
            TensorData::new(data, [3, c.frames, c.height, c.width]),
            device,
        )
    }

    /// Pixel `(r, g, b)` of frame `f` at row `y`, column `x`.
    pub fn pixel(&self, f: usize, y: usize, x: usize) -> [f32; 3] {
        let c = self.config;
        let plane = c.frames * c.height * c.width;
        let i = (f * c.height + y) * c.width + x;
        [self.data[i], self.data[plane + i], self.data[2 * plane + i]]
    }
}

/// Signed distance (pixels, negative inside) from `(px, py)` to a shape of radius `r` centred at
/// `(cx, cy)`. The triangle is equilateral with side `2r`, pointing up.
pub fn signed_distance(shape: Shape, px: f32, py: f32, cx: f32, cy: f32, r: f32) -> f32 {
    let (dx, dy) = (px - cx, py - cy);
    match shape {
        Shape::Circle => (dx * dx + dy * dy).sqrt() - r,
        Shape::Square => dx.abs().max(dy.abs()) - r,
        Shape::Triangle => {
            // Inigo Quilez's equilateral-triangle distance, y pointing up.
            let k = 3f32.sqrt();
            let (mut x, mut y) = (dx.abs() - r, -dy + r / k);
            if x + k * y > 0.0 {
                (x, y) = ((x - k * y) / 2.0, (-k * x - y) / 2.0);
            }
            x -= x.clamp(-2.0 * r, 0.0);
            -(x * x + y * y).sqrt() * y.signum()
        }
    }
}

/// Area of a shape of radius `r` (pixels squared).
pub fn shape_area(shape: Shape, r: f32) -> f32 {
    match shape {
        Shape::Circle => std::f32::consts::PI * r * r,
        Shape::Square => 4.0 * r * r,
        Shape::Triangle => 3f32.sqrt() * r * r,
    }
}

/// Renders `caption` deterministically from `seed` (the seed picks the start position).
pub fn render(caption: &Caption, config: VideoConfig, seed: u64) -> Result<Video, WorldError> {
    config.validate()?;
    let VideoConfig {
        frames,
        height,
        width,
    } = config;
    let side = config.side();
    let r = caption.size.radius() * side;
    let (ux, uy) = caption.direction.vector();
    let step = caption.speed.per_frame() * side;
    let (vx, vy) = (ux * step, uy * step);
    let travel = (frames.saturating_sub(1)) as f32;
    let margin = r + 2.0;
    let mut rng = StdRng::seed_from_u64(seed);
    // a start so that the whole path stays inside the frame; about the middle when no start
    // does (exactly the middle where 1e-3 px is below the float's resolution there)
    let mut start = |lo: f32, hi: f32, v: f32| {
        let (a, b) = (lo + (-v * travel).max(0.0), hi - (v * travel).max(0.0));
        let (a, b) = if b > a {
            (a, b)
        } else {
            ((a + b) / 2.0, (a + b) / 2.0 + 1e-3)
        };
        if b > a {
            rng.random_range(a..b)
        } else {
            a
        }
    };
    let sx = start(margin, width as f32 - margin, vx);
    let sy = start(margin, height as f32 - margin, vy);
    let fg = caption.color.rgb();
    let bg = caption.background.rgb();
    let plane = frames * height * width;
    let mut data = vec![0f32; 3 * plane];
    let mut track = Vec::with_capacity(frames);
    for f in 0..frames {
        let (cx, cy) = (sx + vx * f as f32, sy + vy * f as f32);
        track.push((cx, cy));
        for y in 0..height {
            for x in 0..width {
                let d = signed_distance(caption.shape, x as f32 + 0.5, y as f32 + 0.5, cx, cy, r);
                let cover = (0.5 - d).clamp(0.0, 1.0);
                let i = (f * height + y) * width + x;
                for ch in 0..3 {
                    data[ch * plane + i] = bg[ch] + cover * (fg[ch] - bg[ch]);
                }
            }
        }
    }
    Ok(Video {
        config,
        data,
        track,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attributes::*;

    #[test]
    fn distances_by_hand() {
        assert_eq!(signed_distance(Shape::Circle, 3.0, 4.0, 0.0, 0.0, 2.0), 3.0);
        assert_eq!(
            signed_distance(Shape::Square, 1.0, -3.0, 0.0, 0.0, 2.0),
            1.0
        );
        // triangle of side 2r = 4: apex at y = -2r / sqrt(3) * 2 above the centre line; centre inside
        assert!(signed_distance(Shape::Triangle, 0.0, 0.0, 0.0, 0.0, 2.0) < 0.0);
        assert!(signed_distance(Shape::Triangle, 0.0, 5.0, 0.0, 0.0, 2.0) > 0.0);
    }

    #[test]
    fn rendered_area_matches_the_geometry() {
        for &shape in Shape::ALL {
            let c = Caption::new(
                shape,
                Color::Red,
                Background::Black,
                Direction::Still,
                Size::Large,
                Speed::Slow,
            );
            let v = render(&c, VideoConfig::default(), 1).unwrap();
            let red: f32 = (0..64 * 64)
                .map(|i| (v.data[i] - 0.04) / (0.95 - 0.04))
                .sum();
            let want = shape_area(shape, 10.0);
            assert!(
                (red - want).abs() / want < 0.03,
                "{shape:?}: {red} vs {want}"
            );
        }
    }

    #[test]
    fn deterministic_and_moves_as_captioned() {
        let c = Caption::new(
            Shape::Square,
            Color::Cyan,
            Background::Gray,
            Direction::Right,
            Size::Small,
            Speed::Fast,
        );
        let a = render(&c, VideoConfig::default(), 42).unwrap();
        assert_eq!(a, render(&c, VideoConfig::default(), 42).unwrap());
        assert_ne!(a, render(&c, VideoConfig::default(), 43).unwrap());
        let (first, last) = (a.track[0], a.track[16]);
        assert!((last.0 - first.0 - 32.0).abs() < 1e-3 && (last.1 - first.1).abs() < 1e-3);
        // the object stays inside the frame
        assert!(a
            .track
            .iter()
            .all(|&(x, y)| x >= 6.0 && x <= 58.0 && y >= 6.0 && y <= 58.0));
    }
}
