//! Training and evaluation data of reward models, held as tensors: regression sets
//! `(latent, text, target)` and preference sets `(winner, loser, text)`.

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use rand::{seq::SliceRandom, Rng};

use crate::{
    base::shape_error,
    error::{invalid, Result},
};

/// A batch drawn from a [`RegressionSet`].
///
/// # Shapes
/// - `latents`: `[B, C, F, H, W]`, `text`: `[B, S, D]`, `targets`: `[B]`
#[derive(Debug, Clone)]
pub struct RegressionBatch<B: Backend> {
    /// Latents.
    pub latents: Tensor<B, 5>,
    /// Prompt embeddings.
    pub text: Tensor<B, 3>,
    /// Target rewards.
    pub targets: Tensor<B, 1>,
}

/// Latents with prompt embeddings and the reward each should get (VELR: the pixel reward of
/// the decoded video).
///
/// # Shapes
/// - `latents`: `[N, C, F, H, W]`, `text`: `[N, S, D]`, `targets`: `N` values
#[derive(Debug, Clone)]
pub struct RegressionSet<B: Backend> {
    /// Latents.
    pub latents: Tensor<B, 5>,
    /// Prompt embeddings.
    pub text: Tensor<B, 3>,
    /// Target rewards.
    pub targets: Vec<f32>,
}

pub(crate) fn index<B: Backend>(idx: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let ids: Vec<i64> = idx.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(ids, [idx.len()]), device)
}

/// Shuffled index batches covering `0..n` once (the last may be short).
pub fn epoch_batches<R: Rng>(n: usize, batch: usize, rng: &mut R) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(rng);
    idx.chunks(batch.max(1)).map(<[usize]>::to_vec).collect()
}

impl<B: Backend> RegressionSet<B> {
    /// Checks that the three parts agree on `N`.
    ///
    /// # Errors
    /// `Shape` naming the part whose length differs; `InvalidConfig` for an empty set or a
    /// non-finite target.
    pub fn new(latents: Tensor<B, 5>, text: Tensor<B, 3>, targets: Vec<f32>) -> Result<Self> {
        let n = latents.dims()[0];
        if text.dims()[0] != n {
            return Err(shape_error("text [N, S, D]", vec![n], vec![text.dims()[0]]));
        }
        if targets.len() != n {
            return Err(shape_error("targets [N]", vec![n], vec![targets.len()]));
        }
        if n == 0 {
            return Err(invalid("regression set", "empty"));
        }
        if let Some(t) = targets.iter().find(|t| !t.is_finite()) {
            return Err(invalid("targets", format!("non-finite target {t}")));
        }
        Ok(Self {
            latents,
            text,
            targets,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether the set is empty (never, for a set built by [`RegressionSet::new`]).
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The samples at `idx` (repeats allowed).
    pub fn batch(&self, idx: &[usize]) -> RegressionBatch<B> {
        let device = self.latents.device();
        let i = index::<B>(idx, &device);
        let targets: Vec<f32> = idx.iter().map(|&k| self.targets[k]).collect();
        RegressionBatch {
            latents: self.latents.clone().select(0, i.clone()),
            text: self.text.clone().select(0, i),
            targets: Tensor::from_data(TensorData::new(targets, [idx.len()]), &device),
        }
    }

    /// A bootstrap resample: `N` samples drawn with replacement (for ensemble diversity).
    pub fn bootstrap<R: Rng>(&self, rng: &mut R) -> Self {
        let n = self.len();
        let idx: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
        let b = self.batch(&idx);
        Self {
            latents: b.latents,
            text: b.text,
            targets: idx.iter().map(|&k| self.targets[k]).collect(),
        }
    }
}

/// A batch drawn from a [`PairSet`].
///
/// # Shapes
/// - `winners`, `losers`: `[B, C, F, H, W]`, `text`: `[B, S, D]`
#[derive(Debug, Clone)]
pub struct PairBatch<B: Backend> {
    /// Preferred latents.
    pub winners: Tensor<B, 5>,
    /// Rejected latents.
    pub losers: Tensor<B, 5>,
    /// Prompt embeddings (one prompt per pair).
    pub text: Tensor<B, 3>,
}

/// Preference pairs of clean latents of one prompt each.
///
/// # Shapes
/// - `winners`, `losers`: `[P, C, F, H, W]`, `text`: `[P, S, D]`
#[derive(Debug, Clone)]
pub struct PairSet<B: Backend> {
    /// Preferred latents.
    pub winners: Tensor<B, 5>,
    /// Rejected latents.
    pub losers: Tensor<B, 5>,
    /// Prompt embeddings.
    pub text: Tensor<B, 3>,
}

impl<B: Backend> PairSet<B> {
    /// Checks that the parts agree.
    ///
    /// # Errors
    /// `Shape` naming the mismatched part; `InvalidConfig` for no pairs.
    pub fn new(winners: Tensor<B, 5>, losers: Tensor<B, 5>, text: Tensor<B, 3>) -> Result<Self> {
        if winners.dims() != losers.dims() {
            return Err(shape_error(
                "losers [P, C, F, H, W]",
                winners.dims().to_vec(),
                losers.dims().to_vec(),
            ));
        }
        let p = winners.dims()[0];
        if text.dims()[0] != p {
            return Err(shape_error("text [P, S, D]", vec![p], vec![text.dims()[0]]));
        }
        if p == 0 {
            return Err(invalid("pair set", "empty"));
        }
        Ok(Self {
            winners,
            losers,
            text,
        })
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.winners.dims()[0]
    }

    /// Whether the set is empty (never, for a set built by [`PairSet::new`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pairs at `idx`.
    pub fn batch(&self, idx: &[usize]) -> PairBatch<B> {
        let i = index::<B>(idx, &self.winners.device());
        PairBatch {
            winners: self.winners.clone().select(0, i.clone()),
            losers: self.losers.clone().select(0, i.clone()),
            text: self.text.clone().select(0, i),
        }
    }
}

#[cfg(test)]
mod tests {
    use diffusion_core::backend::DefaultBackend as B;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn batches_select_rows_and_mismatches_are_named() {
        let dev = Default::default();
        let lat = Tensor::<B, 1, burn::tensor::Int>::arange(0..3, &dev)
            .float()
            .reshape([3, 1, 1, 1, 1]);
        let text = Tensor::<B, 3>::zeros([3, 2, 4], &dev);
        let set = RegressionSet::new(lat.clone(), text.clone(), vec![0.0, 1.0, 2.0]).unwrap();
        let b = set.batch(&[2, 0]);
        assert_eq!(
            b.latents.into_data().to_vec::<f32>().unwrap(),
            vec![2.0, 0.0]
        );
        assert_eq!(
            b.targets.into_data().to_vec::<f32>().unwrap(),
            vec![2.0, 0.0]
        );
        let err = RegressionSet::new(lat.clone(), text.clone(), vec![0.0]).unwrap_err();
        assert!(err.to_string().contains("targets"), "{err}");
        let err = RegressionSet::new(lat.clone(), text, vec![0.0, f32::NAN, 1.0]).unwrap_err();
        assert!(err.to_string().contains("non-finite"), "{err}");
        // a bootstrap resample keeps latents and targets together
        let boot = set.bootstrap(&mut rand::rngs::StdRng::seed_from_u64(0));
        let l: Vec<f32> = boot.latents.into_data().to_vec().unwrap();
        assert_eq!(l, boot.targets);
    }

    #[test]
    fn epochs_cover_every_index_once() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let batches = epoch_batches(10, 4, &mut rng);
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        let mut all: Vec<usize> = batches.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }
}
