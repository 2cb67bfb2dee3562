//! Preference data generation and the batch loader.

use diffusion_core::backend::DefaultBackend as B;
use shapes_world::*;

fn tiny_models() -> WorldModels<B> {
    WorldModelsConfig::small()
        .init::<B>(&Default::default())
        .unwrap()
}

#[test]
fn generated_data_pairs_and_batches() {
    let dev = Default::default();
    let models = tiny_models();
    let caps: Vec<Caption> = captions(Split::Train).into_iter().take(2).collect();
    let data = RewardData::generate(&models, &caps, 3, 2, 0.0, 5, &dev).unwrap();
    assert_eq!(data.samples.len(), 6);
    assert_eq!(data.latent_shape, [16, 5, 8, 8]);
    // margin 0: every pair of a prompt with distinct rewards, winner first
    assert!(data.pairs.len() <= 6 && !data.pairs.is_empty());
    for p in &data.pairs {
        let (w, l) = (&data.samples[p.winner], &data.samples[p.loser]);
        assert_eq!(w.caption, l.caption);
        assert!(w.reward >= l.reward);
    }
    assert!(data.samples.iter().all(|s| (0.0..=1.0).contains(&s.reward)));

    // save / load round trip
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("data.json");
    data.save(&path).unwrap();
    assert_eq!(RewardData::load(&path).unwrap(), data);

    // one epoch of batches visits every sample once, deterministically per seed
    let batches = data.regression_batches::<B>(4, 1, &dev);
    assert_eq!(
        batches.iter().map(|b| b.captions.len()).collect::<Vec<_>>(),
        vec![4, 2]
    );
    assert_eq!(batches[0].latents.dims(), [4, 16, 5, 8, 8]);
    let total: f32 = batches
        .iter()
        .map(|b| b.rewards.clone().sum().into_scalar())
        .sum();
    let want: f32 = data.samples.iter().map(|s| s.reward).sum();
    assert!((total - want).abs() < 1e-4);
    let again = data.regression_batches::<B>(4, 1, &dev);
    assert_eq!(batches[0].captions, again[0].captions);
    let pairs = data.pair_batches::<B>(8, 1, &dev);
    assert_eq!(pairs[0].winners.dims()[0], data.pairs.len());
}

/// Policy neighbours: the base policy's samples come first and are what the unperturbed models
/// sample from the same seed; perturbed policies move them a little; pairs stay within a caption
/// and its noise; with no weight noise every policy samples the same latents and nothing pairs.
#[test]
fn policy_neighbours_share_noise_and_pair_within_a_caption() {
    let dev = Default::default();
    let models = tiny_models();
    let caps: Vec<Caption> = captions(Split::Train).into_iter().take(3).collect();
    let cfg = PolicyNeighboursConfig {
        perturbations: 2,
        rel_sigma: 0.05,
        steps: 2,
        margin: 0.0,
        seed: 9,
    };
    let data = RewardData::policy_neighbours(&models, &caps, &cfg, &dev).unwrap();
    assert_eq!(data.samples.len(), 9);
    let (z, _) = models.sample_scored(&caps, 2, 9, &dev).unwrap();
    let base: Vec<f32> = z.into_data().to_vec().unwrap();
    let flat: Vec<f32> = data.samples[..3]
        .iter()
        .flat_map(|s| s.latent.clone())
        .collect();
    assert_eq!(flat, base);
    let dist = |a: &[f32], b: &[f32]| {
        (a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>() / a.len() as f32).sqrt()
    };
    for k in 1..3 {
        for i in 0..3 {
            let (s, b) = (&data.samples[3 * k + i], &data.samples[i]);
            assert_eq!(s.caption, b.caption);
            let d = dist(&s.latent, &b.latent);
            assert!(
                d > 0.0 && d < 0.5,
                "policy {k}, caption {i}: rms distance {d}"
            );
        }
    }
    assert!(!data.pairs.is_empty() && data.pairs.len() <= 9);
    for p in &data.pairs {
        assert_eq!(p.winner % 3, p.loser % 3, "a pair mixes captions");
        assert!(data.samples[p.winner].reward >= data.samples[p.loser].reward);
    }
    let cfg = PolicyNeighboursConfig {
        rel_sigma: 0.0,
        margin: 1e-6,
        ..cfg
    };
    let same = RewardData::policy_neighbours(&models, &caps, &cfg, &dev).unwrap();
    assert!(same.pairs.is_empty());
    assert_eq!(same.samples[0].latent, same.samples[6].latent);
}

/// The neighbours sit `step` (root mean square per element) from their sample on either side,
/// and the `+` side, up the oracle's gradient, scores higher on the whole.
#[test]
fn oracle_neighbours_follow_the_gradient() {
    type AD = burn::backend::Autodiff<B>;
    let dev = Default::default();
    let models = WorldModelsConfig::small().init::<AD>(&dev).unwrap();
    let caps: Vec<Caption> = captions(Split::Train).into_iter().take(2).collect();
    let data = RewardData::generate(&models.valid(), &caps, 2, 2, 0.0, 5, &dev).unwrap();
    let step = 0.02;
    let moved = data.oracle_neighbours(&models, step, &dev).unwrap();
    assert_eq!(moved.samples.len(), 2 * data.samples.len());
    assert!(moved.pairs.is_empty());
    let mut rise = 0.0;
    for (s, pm) in data.samples.iter().zip(moved.samples.chunks(2)) {
        assert_eq!((pm[0].caption, pm[1].caption), (s.caption, s.caption));
        for (side, sign) in [(&pm[0], 1.0), (&pm[1], -1.0)] {
            let rms = (side
                .latent
                .iter()
                .zip(&s.latent)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f32>()
                / s.latent.len() as f32)
                .sqrt();
            assert!((rms - step).abs() < 1e-4, "{sign}: rms {rms}");
        }
        rise += pm[0].reward - pm[1].reward;
    }
    assert!(rise > 0.0, "the + side should score higher, got {rise}");
    assert!(matches!(
        data.oracle_neighbours(&models, 0.0, &dev),
        Err(WorldError::InvalidConfig(_))
    ));
}

#[test]
fn corrupt_data_file_is_a_typed_error() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.json");
    let c = captions(Split::Train)[0];
    let bad = RewardData {
        latent_shape: [1, 1, 2, 2],
        samples: vec![ScoredSample {
            caption: c,
            latent: vec![0.0; 3],
            reward: 0.5,
        }],
        pairs: vec![],
    };
    bad.save(&path).unwrap();
    assert!(matches!(
        RewardData::load(&path),
        Err(WorldError::Shape { .. })
    ));
}

#[test]
fn models_save_and_load() {
    let dev = Default::default();
    let models = tiny_models();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("models");
    models.save(&dir).unwrap();
    let back = WorldModels::<B>::load(&dir, &dev).unwrap();
    let c = [captions(Split::Test)[0]];
    let a: Vec<f32> = models
        .sample_latents(&c, 2, 3.0, 0, &dev)
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    let b: Vec<f32> = back
        .sample_latents(&c, 2, 3.0, 0, &dev)
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    // equal up to the order of multithreaded float reductions
    let err = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-4, "max difference {err}");
}

#[test]
fn real_video_data_and_merging() {
    let dev = Default::default();
    let models = tiny_models();
    let caps: Vec<Caption> = captions(Split::Train)
        .into_iter()
        .step_by(97)
        .take(3)
        .collect();
    let own = RewardData::real(&models, &caps, &caps, 0, &dev).unwrap();
    let shuffled = [caps[1], caps[2], caps[0]];
    let wrong = RewardData::real(&models, &caps, &shuffled, 0, &dev).unwrap();
    // the same videos: latents agree, the oracle reads the prompt
    assert_eq!(own.samples[0].latent, wrong.samples[0].latent);
    for (o, w) in own.samples.iter().zip(&wrong.samples) {
        assert!(
            o.reward >= 0.9 && o.reward > w.reward + 0.2,
            "{} vs {}",
            o.reward,
            w.reward
        );
    }
    assert!(RewardData::real(&models, &caps, &caps[..2], 0, &dev).is_err());
    assert!(own.rescore(&models, &caps[..1], &dev).is_err());

    let mut gen = RewardData::generate(&models, &caps[..1], 2, 2, 0.0, 5, &dev).unwrap();
    // rescoring decodes the same latents: against their own captions it gives back the rewards
    // of generation; the new captions are recorded
    let own_caps = [caps[0]; 2];
    let again = gen.rescore(&models, &own_caps, &dev).unwrap();
    let miss = [caps[0].near_misses()[0]; 2];
    let missed = gen.rescore(&models, &miss, &dev).unwrap();
    for ((a, m), g) in again.samples.iter().zip(&missed.samples).zip(&gen.samples) {
        assert_eq!((&a.latent, &m.latent), (&g.latent, &g.latent));
        assert!(
            (a.reward - g.reward).abs() < 1e-5,
            "{} vs {}",
            a.reward,
            g.reward
        );
        assert_eq!(m.caption, miss[0]);
    }
    assert!(again.pairs.is_empty());
    let n_pairs = gen.pairs.len();
    let mut merged = own.clone();
    merged.extend(gen.clone()).unwrap();
    assert_eq!(merged.samples.len(), 5);
    assert!(merged.pairs.iter().all(|p| p.winner >= 3 && p.loser >= 3));
    assert_eq!(merged.pairs.len(), n_pairs);
    let set = merged.regression_set(&models, &dev).unwrap();
    assert_eq!(set.latents.dims(), [5, 16, 5, 8, 8]);
    assert_eq!(set.text.dims()[0], 5);
    // re-pairing by caption pairs the ground-truth video with the generated ones of its caption
    let mut both = RewardData::real(&models, &caps[..1], &caps[..1], 0, &dev).unwrap();
    both.extend(gen.clone()).unwrap();
    both.pair_by_caption(0.0);
    assert!(both.pairs.iter().any(|p| p.winner == 0 || p.loser == 0));
    for p in &both.pairs {
        assert!(both.samples[p.winner].reward >= both.samples[p.loser].reward);
        assert_eq!(
            both.samples[p.winner].caption,
            both.samples[p.loser].caption
        );
    }
    gen.latent_shape = [1, 1, 1, 1];
    assert!(merged.extend(gen).is_err());
}
