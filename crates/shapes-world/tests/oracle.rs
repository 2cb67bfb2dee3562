//! Properties of the pixel-space oracle reward.

use burn::{
    backend::Autodiff,
    tensor::{Distribution, Tensor},
};
use diffusion_core::backend::DefaultBackend as B;
use shapes_world::*;

fn video(c: &Caption, seed: u64) -> Tensor<B, 5> {
    render(c, VideoConfig::default(), seed)
        .unwrap()
        .to_tensor::<B>(&Default::default())
        .unsqueeze()
}

fn reward(v: Tensor<B, 5>, c: &Caption) -> f32 {
    OracleReward.score(v, &[*c]).unwrap().into_scalar()
}

fn moving() -> Vec<Caption> {
    Caption::all()
        .into_iter()
        .filter(|c| c.direction != Direction::Still)
        .step_by(37)
        .collect()
}

#[test]
fn ground_truth_scores_at_least_0_9() {
    let all = Caption::all();
    let mut worst = (1.0f32, String::new());
    for (i, c) in all.iter().enumerate().step_by(23) {
        let r = reward(video(c, i as u64), c);
        if r < worst.0 {
            worst = (r, c.text());
        }
    }
    assert!(
        worst.0 >= 0.9,
        "worst ground-truth reward {} for `{}`",
        worst.0,
        worst.1
    );
}

#[test]
fn corruptions_score_clearly_lower() {
    let dev = Default::default();
    for (i, c) in moving().iter().enumerate() {
        let v = video(c, i as u64);
        let gt = reward(v.clone(), c);
        // wrong caption: another colour, another shape, another direction
        let other_color = Color::ALL[(c.color.index() + 3) % Color::ALL.len()];
        let wrong_color = Caption {
            color: other_color,
            ..*c
        };
        let other_shape = Shape::ALL[(c.shape.index() + 1) % Shape::ALL.len()];
        let wrong_shape = Caption {
            shape: other_shape,
            ..*c
        };
        let opposite = match c.direction {
            Direction::Left => Direction::Right,
            Direction::Right => Direction::Left,
            Direction::Up => Direction::Down,
            Direction::Down => Direction::Up,
            Direction::UpRight => Direction::DownLeft,
            _ => Direction::UpRight,
        };
        let wrong_dir = Caption {
            direction: opposite,
            ..*c
        };
        // shuffled frames
        let f = v.dims()[2];
        let order: Vec<i64> = (0..f as i64).map(|k| (k * 7) % f as i64).collect();
        let idx = Tensor::<B, 1, burn::tensor::Int>::from_ints(order.as_slice(), &dev);
        let shuffled = v.clone().select(2, idx);
        // added noise, frozen first frame
        let noisy = v.clone() + Tensor::random(v.dims(), Distribution::Normal(0.0, 0.2), &dev);
        let frozen = v.clone().narrow(2, 0, 1).repeat_dim(2, f);
        let cases = [
            ("wrong colour", reward(v.clone(), &wrong_color)),
            ("wrong shape", reward(v.clone(), &wrong_shape)),
            ("wrong direction", reward(v.clone(), &wrong_dir)),
            ("shuffled", reward(shuffled, c)),
            ("noise", reward(noisy, c)),
            ("frozen", reward(frozen, c)),
        ];
        for (name, r) in cases {
            assert!(
                r < gt - 0.2,
                "`{}`: {name} scores {r} vs ground truth {gt}",
                c.text()
            );
        }
    }
}

#[test]
fn gradients_reach_the_pixels() {
    type AD = Autodiff<B>;
    let c = moving()[1];
    let v = render(&c, VideoConfig::default(), 3)
        .unwrap()
        .to_tensor::<AD>(&Default::default())
        .unsqueeze::<5>();
    // a perturbed video, so no term sits at its optimum
    let v = (v.clone()
        + Tensor::random(
            v.dims(),
            Distribution::Normal(0.0, 0.05),
            &Default::default(),
        ))
    .require_grad();
    let r = OracleReward.score(v.clone(), &[c]).unwrap();
    let g = v.grad(&r.sum().backward()).unwrap();
    let vals: Vec<f32> = g.into_data().to_vec().unwrap();
    assert!(vals.iter().all(|x| x.is_finite()));
    let nonzero = vals.iter().filter(|x| x.abs() > 0.0).count();
    assert!(
        nonzero > vals.len() / 2,
        "{nonzero} of {} pixels get a gradient",
        vals.len()
    );
}

#[test]
fn batch_mismatch_is_an_error() {
    let c = moving()[0];
    assert!(OracleReward.score(video(&c, 0), &[c, c]).is_err());
}
