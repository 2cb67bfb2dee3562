use burn::tensor::{backend::Backend, Tensor, TensorData};

/// Cosine and sine tables of Wan's 3D rotary position embedding for one token grid.
///
/// The head dimension is split into a frame part (`d - 4 (d / 6)`), a height part and a width
/// part (`2 (d / 6)` each); inside each part, pair `i` of a token at position `p` along that
/// axis is rotated by `p * theta^(-2i / part_dim)` (Su et al. 2021, RoPE; `WanRotaryPosEmbed`
/// in diffusers, interleaved pairs).
///
/// The tables are stored at full head width, interleaved like the pairs, so that the rotation
/// is two products and a sum with the pair-swapped input (no split and re-join of the pairs):
/// `rot(x) = x * cos + swap(x) * sin` with `swap(x1, x2) = (x2, x1)`, `cos = (c, c)` and
/// `sin = (-s, s)` per pair.
///
/// # Shapes
/// - `cos`, `sin`: `[L, head_dim]` with `L = F' * H' * W'` tokens in frame-major order
#[derive(Debug, Clone)]
pub struct RopeTable<B: Backend> {
    /// Cosine of each pair's angle, twice per pair.
    pub cos: Tensor<B, 2>,
    /// Sine of each pair's angle, negated for the pair's first element.
    pub sin: Tensor<B, 2>,
}

impl<B: Backend> RopeTable<B> {
    /// Builds the tables for a grid of `[frames, height, width]` patches.
    pub fn new(head_dim: usize, grid: [usize; 3], theta: f64, device: &B::Device) -> Self {
        let hw = 2 * (head_dim / 6);
        let parts = [head_dim - 2 * hw, hw, hw];
        // per axis: inverse frequencies of its pairs
        let inv: Vec<Vec<f64>> = parts
            .iter()
            .map(|&d| {
                (0..d / 2)
                    .map(|i| theta.powf(-((2 * i) as f64) / d as f64))
                    .collect()
            })
            .collect();
        let [f, h, w] = grid;
        let len = f * h * w;
        let mut cos = Vec::with_capacity(len * head_dim);
        let mut sin = Vec::with_capacity(len * head_dim);
        for fi in 0..f {
            for hi in 0..h {
                for wi in 0..w {
                    for (axis, pos) in [fi, hi, wi].into_iter().enumerate() {
                        for &fr in &inv[axis] {
                            let (s, c) = (pos as f64 * fr).sin_cos();
                            cos.extend([c as f32, c as f32]);
                            sin.extend([-s as f32, s as f32]);
                        }
                    }
                }
            }
        }
        let mk = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [len, head_dim]), device);
        Self {
            cos: mk(cos),
            sin: mk(sin),
        }
    }

    /// Rotates interleaved pairs `(x[2i], x[2i+1])` of every head.
    ///
    /// # Shapes
    /// - `x`: `[B, L, H, head_dim]` -> same
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        crate::ops::rotary::rotate(x, &self.cos, &self.sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = burn_flex::Flex;

    #[test]
    fn rotation_by_hand() {
        let dev = Default::default();
        // head_dim 6: frame part 2, height 2, width 2 -> one pair each, inverse frequency 1.
        let t = RopeTable::<B>::new(6, [1, 1, 2], 10000.0, &dev);
        // token 1 is at w = 1: its third pair rotates by 1 rad, the others by 0.
        let c: Vec<f32> = t.cos.to_data().to_vec().unwrap();
        let s: Vec<f32> = t.sin.to_data().to_vec().unwrap();
        assert_eq!(&c[..6], &[1.0; 6]);
        assert!((c[10] - 1f32.cos()).abs() < 1e-6 && (c[11] - 1f32.cos()).abs() < 1e-6);
        assert!((s[10] + 1f32.sin()).abs() < 1e-6 && (s[11] - 1f32.sin()).abs() < 1e-6);
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(
                vec![0f32, 0., 0., 0., 0., 0., 1., 0., 1., 0., 1., 0.],
                [1, 2, 1, 6],
            ),
            &dev,
        );
        let y: Vec<f32> = t.apply(x).to_data().to_vec().unwrap();
        // (1, 0) rotated by 1 rad = (cos 1, sin 1)
        assert!((y[10] - 1f32.cos()).abs() < 1e-6 && (y[11] - 1f32.sin()).abs() < 1e-6);
        assert_eq!(&y[6..10], &[1.0, 0.0, 1.0, 0.0]);
    }
}
