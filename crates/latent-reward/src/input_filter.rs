//! A fixed low-pass filter on a reward model's latent input.

use burn::{
    config::Config,
    tensor::{backend::Backend, Tensor},
};

/// What a latent reward model sees of its input latent.
///
/// Gradient ascent on a learned reward exploits whatever the model is most sensitive to. On
/// shapes-world PRFL drives the process reward model to 1.0 by painting a texture at the
/// latent grid's own frequency over the background (docs/results/prm_refinement.md), which the pixel oracle
/// penalises. A fixed low-pass filter in front of the model makes its latent gradient the
/// filter's transpose applied to the model's, so those frequencies carry no reward gradient
/// and the policy can only gain along smooth directions: colour, position, size.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum InputFilter {
    /// The latent as it is.
    Identity,
    /// `passes` separable binomial `[1, 2, 1] / 4` blurs along height and width of every
    /// channel and frame, edges replicated. One pass removes the grid's highest frequency (a
    /// checkerboard) entirely and halves a period of four cells; constants pass unchanged.
    Binomial {
        /// Blurs applied one after another (2: the `[1, 4, 6, 4, 1] / 16` kernel).
        passes: usize,
    },
}

impl InputFilter {
    /// Applies the filter.
    ///
    /// # Shapes
    /// - `latents`: `[B, C, F, H, W]` -> `[B, C, F, H, W]`
    pub fn apply<B: Backend>(&self, latents: Tensor<B, 5>) -> Tensor<B, 5> {
        match *self {
            Self::Identity => latents,
            Self::Binomial { passes } => {
                (0..passes).fold(latents, |x, _| binomial_along(binomial_along(x, 3), 4))
            }
        }
    }
}

/// `[1, 2, 1] / 4` along `dim`, the edge values repeated beyond the ends.
fn binomial_along<B: Backend>(x: Tensor<B, 5>, dim: usize) -> Tensor<B, 5> {
    let n = x.dims()[dim];
    if n < 2 {
        return x;
    }
    let prev = Tensor::cat(
        vec![x.clone().narrow(dim, 0, 1), x.clone().narrow(dim, 0, n - 1)],
        dim,
    );
    let next = Tensor::cat(
        vec![
            x.clone().narrow(dim, 1, n - 1),
            x.clone().narrow(dim, n - 1, 1),
        ],
        dim,
    );
    (prev + next + x.mul_scalar(2.0)).div_scalar(4.0)
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Distribution, Tensor, TensorData};
    use diffusion_core::backend::DefaultBackend as B;

    use super::*;

    fn values(t: Tensor<B, 5>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    #[test]
    fn a_point_spreads_into_the_binomial_kernel() {
        // one frame of 1 x 5: a 4 in the middle, once along the width
        let dev = Default::default();
        let x = Tensor::<B, 5>::from_data(
            TensorData::new(vec![0.0, 0.0, 4.0, 0.0, 0.0], [1, 1, 1, 1, 5]),
            &dev,
        );
        let y = InputFilter::Binomial { passes: 1 }.apply(x);
        assert_eq!(values(y), vec![0.0, 1.0, 2.0, 1.0, 0.0]);
    }

    #[test]
    fn edges_repeat_and_a_checkerboard_vanishes() {
        let dev = Default::default();
        // 2 x 2 frame [[1, 3], [5, 7]]: along the width (1 + 2 + 3) / 4, (1 + 6 + 3) / 4 ...
        let x = Tensor::<B, 5>::from_data(
            TensorData::new(vec![1.0, 3.0, 5.0, 7.0], [1, 1, 1, 2, 2]),
            &dev,
        );
        let y = values(InputFilter::Binomial { passes: 1 }.apply(x));
        // width: [1.5, 2.5], [5.5, 6.5]; height: [2.5, 3.5], [4.5, 5.5]
        assert_eq!(y, vec![2.5, 3.5, 4.5, 5.5]);
        // a checkerboard of 4 x 4 (away from the edges) is removed
        let cb: Vec<f32> = (0..16)
            .map(|i| if (i / 4 + i % 4) % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let x = Tensor::<B, 5>::from_data(TensorData::new(cb, [1, 1, 1, 4, 4]), &dev);
        let y = values(InputFilter::Binomial { passes: 1 }.apply(x));
        for (i, v) in y.iter().enumerate() {
            let (r, c) = (i / 4, i % 4);
            if (1..3).contains(&r) && (1..3).contains(&c) {
                assert!(v.abs() < 1e-6, "inner {r},{c}: {v}");
            }
        }
    }

    #[test]
    fn constants_pass_and_identity_is_identity() {
        let dev = Default::default();
        let x = Tensor::<B, 5>::full([2, 3, 2, 4, 5], 0.7, &dev);
        let y = InputFilter::Binomial { passes: 3 }.apply(x.clone());
        for v in values(y) {
            assert!((v - 0.7).abs() < 1e-6);
        }
        let r = Tensor::<B, 5>::random([1, 2, 2, 3, 3], Distribution::Default, &dev);
        assert_eq!(values(InputFilter::Identity.apply(r.clone())), values(r));
    }
}
