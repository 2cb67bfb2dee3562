use burn::tensor::{backend::Backend, Tensor, TensorData};

/// Cosine and sine tables of Wan's 3D rotary position embedding for one token grid.
///
/// The head dimension is split into a frame part (`d - 4 (d / 6)`), a height part and a width
/// part (`2 (d / 6)` each); inside each part, pair `i` of a token at position `p` along that
/// axis is rotated by `p * theta^(-2i / part_dim)` (Su et al. 2021, RoPE; `WanRotaryPosEmbed`
/// in diffusers, interleaved pairs).
///
/// # Shapes
/// - `cos`, `sin`: `[L, head_dim / 2]` with `L = F' * H' * W'` tokens in frame-major order
#[derive(Debug, Clone)]
pub struct RopeTable<B: Backend> {
    /// Cosines per token and pair.
    pub cos: Tensor<B, 2>,
    /// Sines per token and pair.
    pub sin: Tensor<B, 2>,
}

impl<B: Backend> RopeTable<B> {
    /// Builds the tables for a grid of `[frames, height, width]` patches.
    pub fn new(head_dim: usize, grid: [usize; 3], theta: f64, device: &B::Device) -> Self {
        let hw = 2 * (head_dim / 6);
        let parts = [head_dim - 2 * hw, hw, hw];
        let half = head_dim / 2;
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
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for fi in 0..f {
            for hi in 0..h {
                for wi in 0..w {
                    for (axis, pos) in [fi, hi, wi].into_iter().enumerate() {
                        for &fr in &inv[axis] {
                            let a = pos as f64 * fr;
                            cos.push(a.cos() as f32);
                            sin.push(a.sin() as f32);
                        }
                    }
                }
            }
        }
        let mk = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [len, half]), device);
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
        let [b, l, h, d] = x.dims();
        let pairs: Tensor<B, 5> = x.reshape([b, l, h, d / 2, 2]);
        let x1 = pairs.clone().narrow(4, 0, 1);
        let x2 = pairs.narrow(4, 1, 1);
        let cos: Tensor<B, 5> = self.cos.clone().reshape([1, l, 1, d / 2, 1]);
        let sin: Tensor<B, 5> = self.sin.clone().reshape([1, l, 1, d / 2, 1]);
        let r1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
        let r2 = x1 * sin + x2 * cos;
        Tensor::cat(vec![r1, r2], 4).reshape([b, l, h, d])
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
        assert_eq!(&c[..3], &[1.0, 1.0, 1.0]);
        assert!((c[5] - 1f32.cos()).abs() < 1e-6);
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
