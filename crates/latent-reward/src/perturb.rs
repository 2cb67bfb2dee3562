//! Adversarial input perturbations for preference training.
//!
//! PRFL fine-tunes the generator along the reward model's input gradient, so every direction in
//! latent space that raises the score without raising the true reward is a way to exploit the
//! model. Training on latents pushed a small step against the model (FGSM; Goodfellow et al.
//! 2015, "Explaining and harnessing adversarial examples") removes such directions near the
//! data.

use burn::tensor::{backend::AutodiffBackend, Tensor};
use serde::{Deserialize, Serialize};

use crate::{LatentReward, PreferenceLoss};

/// How the noisy latents of a preference pair are perturbed before the training loss.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputPerturbation {
    /// Train on the latents as they are.
    #[default]
    None,
    /// Fast gradient sign method: each latent moves by `eps` per element in the sign of the
    /// loss's gradient (the winner towards a lower score, the loser towards a higher one); the
    /// training loss is the mean of the clean and the perturbed pair's loss.
    Fgsm {
        /// Step per latent element (latents are normalised to about unit scale).
        eps: f64,
    },
}

impl InputPerturbation {
    /// The preference loss of `model` on the pair `(winners, losers)` at `sigma`, with this
    /// perturbation; `[B]` latents in, a scalar mean loss out.
    ///
    /// # Shapes
    /// - `winners`, `losers`: `[B, C, F, H, W]`; `sigma`: `[B]`; `text`: `[B, S, D]` -> `[1]`
    pub fn loss<B: AutodiffBackend, M: LatentReward<B>>(
        &self,
        model: &M,
        loss_fn: PreferenceLoss,
        winners: Tensor<B, 5>,
        losers: Tensor<B, 5>,
        sigma: Tensor<B, 1>,
        text: Tensor<B, 3>,
    ) -> Tensor<B, 1> {
        let pair_loss = |w: Tensor<B, 5>, l: Tensor<B, 5>| {
            let sw = model.score(w, sigma.clone(), text.clone());
            let sl = model.score(l, sigma.clone(), text.clone());
            loss_fn.forward(sw, sl).mean()
        };
        let Self::Fgsm { eps } = *self else {
            return pair_loss(winners, losers);
        };
        let (w, l) = (
            winners.clone().detach().require_grad(),
            losers.clone().detach().require_grad(),
        );
        let grads = pair_loss(w.clone(), l.clone()).backward();
        let step = |x: Tensor<B, 5>, input: &Tensor<B, 5>| -> Tensor<B, 5> {
            match input.grad(&grads) {
                Some(g) => x.detach() + Tensor::from_inner(g.sign()).mul_scalar(eps),
                None => x.detach(),
            }
        };
        let (w_adv, l_adv) = (step(winners.clone(), &w), step(losers.clone(), &l));
        (pair_loss(winners, losers) + pair_loss(w_adv, l_adv)).div_scalar(2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MlpReward, MlpRewardConfig};
    use burn::{backend::Autodiff, module::Param, tensor::TensorData};
    use diffusion_core::backend::DefaultBackend;

    type AD = Autodiff<DefaultBackend>;

    /// The perturbed pair is harder: its loss is at least the clean loss, so the mean of the two
    /// is too; with `eps = 0` the perturbation changes nothing.
    #[test]
    fn fgsm_makes_the_pair_harder() {
        let dev = Default::default();
        // fixed weights and inputs (no device random streams involved: a random initialisation
        // can leave the score almost flat, and the test would depend on the draw)
        let wave = |shape: [usize; 5], f: f32| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|i| (i as f32 * f + 0.5).sin()).collect();
            Tensor::<AD, 5>::from_data(TensorData::new(v, shape), &dev)
        };
        let mut model: MlpReward<AD> = MlpRewardConfig::new(4, 8)
            .with_hidden(vec![16])
            .init(&dev)
            .unwrap();
        for (k, layer) in model.layers.iter_mut().enumerate() {
            let [i, o] = layer.weight.dims();
            let weight = wave([1, 1, 1, i, o], 0.7 + k as f32)
                .reshape([i, o])
                .mul_scalar(0.5);
            layer.weight = Param::from_tensor(weight);
            layer.bias = None;
        }
        let (w, l) = (
            wave([3, 4, 2, 4, 4], 0.37).mul_scalar(2.0),
            wave([3, 4, 2, 4, 4], 0.11),
        );
        let text = wave([1, 1, 3, 2, 8], 0.23).reshape([3, 2, 8]);
        let sigma = Tensor::<AD, 1>::zeros([3], &dev);
        let value = |p: InputPerturbation| {
            p.loss(
                &model,
                PreferenceLoss::BradleyTerry,
                w.clone(),
                l.clone(),
                sigma.clone(),
                text.clone(),
            )
            .into_scalar()
        };
        let clean = value(InputPerturbation::None);
        let zero = value(InputPerturbation::Fgsm { eps: 0.0 });
        let adv = value(InputPerturbation::Fgsm { eps: 0.1 });
        assert!((clean - zero).abs() < 1e-6, "{clean} vs {zero}");
        assert!(adv > clean + 1e-4, "{adv} should exceed {clean}");
    }
}
