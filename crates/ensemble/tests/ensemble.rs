//! Ensemble scoring, aggregation and member training.

use burn::{
    backend::Autodiff,
    tensor::{backend::Backend, Distribution, Tensor, TensorData},
};
use diffusion_core::backend::DefaultBackend;
use ensemble::*;
use latent_reward::OptimConfig;
use latent_reward::*;

type B = DefaultBackend;
type AD = Autodiff<B>;

/// A reward that is `a + mean(latents)`: hand-derivable member scores.
#[derive(Debug, Clone)]
struct Offset(f32);

impl<Bk: Backend> LatentReward<Bk> for Offset {
    fn score(&self, latents: Tensor<Bk, 5>, _: Tensor<Bk, 1>, _: Tensor<Bk, 3>) -> Tensor<Bk, 1> {
        let b = latents.dims()[0];
        latents
            .reshape([b as i32, -1])
            .mean_dim(1)
            .reshape([b])
            .add_scalar(self.0)
    }
    fn range(&self) -> RewardRange {
        RewardRange::Real
    }
    fn check_input(&self, _: [usize; 5], _: [usize; 3]) -> latent_reward::Result<()> {
        Ok(())
    }
}

#[test]
fn members_aggregate_by_hand_and_threads_agree() {
    let dev = Default::default();
    let lat = Tensor::<B, 5>::from_data(TensorData::new(vec![1.0f32, 3.0], [2, 1, 1, 1, 1]), &dev);
    let sigma = Tensor::<B, 1>::zeros([2], &dev);
    let text = Tensor::<B, 3>::zeros([2, 1, 1], &dev);
    let e = Ensemble::new(vec![Offset(0.0), Offset(1.0), Offset(5.0)]).unwrap();
    let s = e.score_members(lat.clone(), sigma.clone(), text.clone());
    assert_eq!(s.scores.dims(), [3, 2]);
    let v: Vec<f32> = s.variance().into_data().to_vec().unwrap();
    // offsets 0, 1, 5: variance 14/3 for every sample
    assert!(v.iter().all(|x| (x - 14.0 / 3.0).abs() < 1e-5), "{v:?}");
    let mean: Vec<f32> = e
        .score(lat.clone(), sigma.clone(), text.clone())
        .into_data()
        .to_vec()
        .unwrap();
    assert_eq!(mean, vec![3.0, 5.0]);
    let min = e.clone().with_aggregation(Aggregation::Min);
    let m: Vec<f32> = min
        .score(lat.clone(), sigma.clone(), text.clone())
        .into_data()
        .to_vec()
        .unwrap();
    assert_eq!(m, vec![1.0, 3.0]);
    let threaded = e.clone().with_evaluation(Evaluation::Threaded);
    let t = threaded.score_members(lat.clone(), sigma.clone(), text.clone());
    assert_eq!(
        t.scores.into_data().to_vec::<f32>().unwrap(),
        s.scores.into_data().to_vec::<f32>().unwrap()
    );
    assert_eq!(e.truncated(2).unwrap().len(), 2);
    assert!(Ensemble::<Offset>::new(vec![]).is_err());
}

#[test]
fn members_train_independently() {
    let dev = Default::default();
    AD::seed(&dev, 11);
    let n = 32;
    let lat = Tensor::<AD, 5>::random([n, 2, 1, 2, 2], Distribution::Normal(0.0, 1.0), &dev);
    let targets: Vec<f32> = lat
        .clone()
        .reshape([n as i32, -1])
        .mean_dim(1)
        .into_data()
        .to_vec()
        .unwrap();
    let data = RegressionSet::new(lat, Tensor::zeros([n, 1, 4], &dev), targets).unwrap();
    let cfg = FitConfig {
        optim: OptimConfig::constant(3e-3, 0.0, Some(1.0)),
        steps: 40,
        batch: 8,
        seed: 7,
    };
    let init = |_seed| {
        MlpRewardConfig::new(2, 4)
            .with_hidden(vec![16])
            .init::<AD>(&dev)
    };
    let (ens, reports) = fit_members(
        3,
        init,
        &data,
        RegressionLoss::Mse,
        None,
        &cfg,
        Bootstrap::Resample,
    )
    .unwrap();
    assert_eq!((ens.len(), reports.len()), (3, 3));
    // minibatch losses are noisy: compare the first and last quarter of each run
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    for r in &reports {
        let q = r.losses.len() / 4;
        let (first, last) = (mean(&r.losses[..q]), mean(&r.losses[r.losses.len() - q..]));
        assert!(last < 0.7 * first, "{first} -> {last}: {:?}", r.losses);
    }
    let inner = ens.valid();
    let v = RegressionSet::new(
        data.latents.clone().inner(),
        data.text.clone().inner(),
        data.targets.clone(),
    )
    .unwrap();
    let s = inner.score_members(v.latents.clone(), Tensor::zeros([n], &dev), v.text.clone());
    // different seeds and resamples give different members: positive variance
    let var: Vec<f32> = s.variance().into_data().to_vec().unwrap();
    assert!(var.iter().all(|x| *x > 0.0));
    // the same seed gives the same ensemble, also when the members are trained one at a time
    let again = Ensemble::new(
        (0..3)
            .map(|i| {
                fit_member(
                    i,
                    init,
                    &data,
                    RegressionLoss::Mse,
                    None,
                    &cfg,
                    Bootstrap::Resample,
                )
                .map(|(m, _)| m)
            })
            .collect::<latent_reward::Result<Vec<_>>>()
            .unwrap(),
    )
    .unwrap();
    let s2 = again
        .valid()
        .score_members(v.latents, Tensor::zeros([n], &dev), v.text);
    assert_eq!(
        s.scores.into_data().to_vec::<f32>().unwrap(),
        s2.scores.into_data().to_vec::<f32>().unwrap()
    );
}
