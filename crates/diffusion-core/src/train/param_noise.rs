//! Gaussian perturbation of a module's weights: nearby policies, for probing which way a
//! generator's samples can move.
//!
//! Two samples from the same noise, one by a model `theta` and one by `theta + delta` with a
//! small random `delta`, differ by about `J delta` (`J` the Jacobian of the sample in the
//! weights), so their difference is a direction drawn from `N(0, J Sigma J^T)`: the directions a
//! fine-tuning step can move the sample in, weighted by how easily it moves there. Evolution
//! strategies (Salimans et al., 2017) estimate gradients from such pairs; here they are
//! preference data for a reward model whose gradient should agree with the true reward's along
//! exactly those directions (`shapes_world::RewardData::policy_neighbours`).

use burn::{
    module::{Module, ModuleMapper, Param},
    tensor::{backend::Backend, Tensor},
};
use rand::rngs::StdRng;

use crate::sampling::rollout::randn;

/// Adds `rel_sigma * rms(p) * N(0, 1)` to every float parameter `p` of `module`, drawn from
/// `rng` (each tensor scaled by its own root mean square, so layers of any scale move by the
/// same relative amount; a parameter that is all zeros stays zero).
pub fn perturb_params<B: Backend, M: Module<B>>(module: M, rel_sigma: f64, rng: &mut StdRng) -> M {
    module.map(&mut Perturb { rel_sigma, rng })
}

struct Perturb<'a> {
    rel_sigma: f64,
    rng: &'a mut StdRng,
}

impl<B: Backend> ModuleMapper<B> for Perturb<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let rms = tensor.clone().powi_scalar(2).mean().sqrt().into_scalar();
        let rms: f64 = burn::tensor::ElementConversion::elem(rms);
        let noise = randn::<B, D>(tensor.dims(), self.rng, &tensor.device());
        let moved = tensor + noise.mul_scalar(self.rel_sigma * rms);
        Param::from_mapped_value(id, moved, mapper)
    }
}

#[cfg(test)]
mod tests {
    use burn::{
        nn::{Linear, LinearConfig},
        tensor::TensorData,
    };
    use rand::SeedableRng;

    use super::*;
    use crate::backend::DefaultBackend as B;

    fn linear(w: [f32; 4], b: [f32; 2]) -> Linear<B> {
        let dev = Default::default();
        let mut lin = LinearConfig::new(2, 2).init::<B>(&dev);
        lin.weight =
            Param::from_tensor(Tensor::from_data(TensorData::new(w.to_vec(), [2, 2]), &dev));
        lin.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(b.to_vec(), [2]),
            &dev,
        )));
        lin
    }

    fn values(t: Tensor<B, 1>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    #[test]
    fn noise_scales_with_each_tensors_rms_and_zeros_stay() {
        // weight rms 2 (all entries +-2), bias all zeros
        let lin = linear([2.0, -2.0, 2.0, -2.0], [0.0, 0.0]);
        let mut rng = StdRng::seed_from_u64(3);
        let moved = perturb_params(lin.clone(), 0.1, &mut rng);
        assert_eq!(values(moved.bias.as_ref().unwrap().val()), vec![0.0, 0.0]);
        // the same draw, by hand: 0.1 * 2 * N(0, 1)
        let mut rng = StdRng::seed_from_u64(3);
        let noise: Vec<f32> =
            values(randn::<B, 2>([2, 2], &mut rng, &Default::default()).reshape([4]));
        let got = values(moved.weight.val().reshape([4]));
        for ((g, w), n) in got.iter().zip([2.0, -2.0, 2.0, -2.0]).zip(noise) {
            assert!((g - (w + 0.2 * n)).abs() < 1e-6, "{g} vs {w} + 0.2 * {n}");
        }
    }

    #[test]
    fn zero_sigma_is_the_identity_and_seeds_differ() {
        let lin = linear([1.0, 2.0, 3.0, 4.0], [0.5, -0.5]);
        let same = perturb_params(lin.clone(), 0.0, &mut StdRng::seed_from_u64(1));
        assert_eq!(
            values(same.weight.val().reshape([4])),
            vec![1.0, 2.0, 3.0, 4.0]
        );
        let a = perturb_params(lin.clone(), 0.1, &mut StdRng::seed_from_u64(1));
        let b = perturb_params(lin, 0.1, &mut StdRng::seed_from_u64(2));
        assert_ne!(
            values(a.weight.val().reshape([4])),
            values(b.weight.val().reshape([4]))
        );
    }
}
