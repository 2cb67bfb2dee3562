//! The pixel-space oracle reward: how well a video matches its caption, in `[0, 1]`,
//! differentiable end to end with respect to the pixels.
//!
//! With `x` the video in `[0, 1]`, `c` the prompted colour and `b` the prompted background:
//!
//! - per pixel, coverage `alpha = clamp(<x - b, c - b> / |c - b|^2, 0, 1)` along the line from
//!   background to colour, fidelity `phi = exp(-|x - b - alpha (c - b)|^2 / (2 tau^2))` (tau 0.15),
//!   object mask `m = alpha phi`, background mask `m_b = (1 - alpha) phi` (anti-aliased edges
//!   count as the fraction they cover; other colours have low fidelity);
//! - per frame: area `a_f = mean(m)`, soft centroid `(cx_f, cy_f) = sum(m p) / sum(m)`;
//! - **size** `s_size = exp(-ln(mean_f a_f / a*)^2 / (2 * 0.3^2))`, `a*` the prompted shape's area
//!   (absent or wrong-coloured objects score 0 here);
//! - **shape** `s_shape = softmax_k(100 * IoU_k)[prompted]`, `IoU_k` the soft IoU of `m` with a
//!   template of shape `k` of area `a*` at the centroid;
//! - **motion** `s_motion = exp(-|v - v*|^2 / (2 * 0.35^2))`, `v` the least-squares velocity of the
//!   centroid track (pixels per frame), `v*` the prompted direction times the prompted speed;
//! - **smoothness** `s_smooth = exp(-rms_res^2 / 2)`, the residual of the track around its line (px);
//! - **stability** `s_stab = exp(-(std_f a_f / mean_f a_f)^2 / (2 * 0.1^2))`;
//! - **cleanliness** `s_clean = exp(-(1 - e)^2 / (2 * 0.15^2))` with
//!   `e = mean(phi)`, the share of pixels explained as object or background;
//! - **flicker** `s_flicker = exp(-mean(m_b,f m_b,f+1 |x_f+1 - x_f|) / 0.03)`;
//!
//! `alignment = (s_size s_shape s_motion)^(1/3)`, `quality = (s_smooth s_stab s_clean s_flicker)^(1/4)`,
//! `reward = 0.6 alignment + 0.4 quality`.

use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::{attributes::Shape, caption::Caption, error::WorldError, render::shape_area};

const TAU: f64 = 0.15;
const EPS: f64 = 1e-6;
const SHAPE_SHARPNESS: f64 = 100.0;

/// Every term of the oracle, per sample (`[B]` each).
#[derive(Debug, Clone)]
pub struct OracleScores<B: Backend> {
    /// Prompted colour present at the prompted size.
    pub size: Tensor<B, 1>,
    /// Prompted shape, against the other shapes.
    pub shape: Tensor<B, 1>,
    /// Prompted direction and speed.
    pub motion: Tensor<B, 1>,
    /// Straight, even track.
    pub smooth: Tensor<B, 1>,
    /// Constant object area.
    pub stability: Tensor<B, 1>,
    /// Pixels explained as object or background (no noise, no stray colours).
    pub clean: Tensor<B, 1>,
    /// Static background.
    pub flicker: Tensor<B, 1>,
    /// Text alignment, geometric mean of size, shape, motion.
    pub alignment: Tensor<B, 1>,
    /// Temporal quality, geometric mean of smooth, stability, clean, flicker.
    pub quality: Tensor<B, 1>,
    /// The reward, `0.6 alignment + 0.4 quality`.
    pub reward: Tensor<B, 1>,
}

/// The shapes-world oracle (see the module docs for the formula).
#[derive(Debug, Clone, Copy, Default)]
pub struct OracleReward;

fn per_sample<B: Backend>(vals: Vec<f32>, shape: [usize; 4], device: &B::Device) -> Tensor<B, 4> {
    Tensor::from_data(TensorData::new(vals, shape), device)
}

/// Geometric mean of `[B]` scores.
fn geo_mean<B: Backend>(terms: &[&Tensor<B, 1>]) -> Tensor<B, 1> {
    let n = terms.len() as f64;
    let sum_log = terms
        .iter()
        .map(|t| (*t).clone().add_scalar(EPS).log())
        .reduce(|a, b| a + b)
        .expect("at least one term");
    sum_log.div_scalar(n).exp()
}

/// Soft template of `shape` with per-sample radius `r` centred at per-frame `(cx, cy)`.
///
/// # Shapes
/// - `px`: `[1, 1, 1, W]`, `py`: `[1, 1, H, 1]`, `cx`, `cy`: `[B, F, 1, 1]`, `r`: `[B, 1, 1, 1]`
/// - output: `[B, F, H, W]`
fn template<B: Backend>(
    shape: Shape,
    px: &Tensor<B, 4>,
    py: &Tensor<B, 4>,
    cx: &Tensor<B, 4>,
    cy: &Tensor<B, 4>,
    r: &Tensor<B, 4>,
    hw: [usize; 2],
) -> Tensor<B, 4> {
    let [b, f, _, _] = cx.dims();
    let full = [b, f, hw[0], hw[1]];
    let dx = (px.clone() - cx.clone()).expand(full);
    let dy = (py.clone() - cy.clone()).expand(full);
    let r_full = r.clone().expand(full);
    let d = match shape {
        Shape::Circle => {
            (dx.powi_scalar(2) + dy.powi_scalar(2))
                .add_scalar(1e-8)
                .sqrt()
                - r_full
        }
        Shape::Square => dx.abs().max_pair(dy.abs()) - r_full,
        Shape::Triangle => {
            let k = 3f64.sqrt();
            let x = dx.abs() - r_full.clone();
            let y = dy.neg() + r_full.clone().div_scalar(k);
            let fold = (x.clone() + y.clone().mul_scalar(k)).greater_elem(0.0);
            let xf = (x.clone() - y.clone().mul_scalar(k)).div_scalar(2.0);
            let yf = (x.clone().mul_scalar(-k) - y.clone()).div_scalar(2.0);
            let x = x.mask_where(fold.clone(), xf);
            let y = y.mask_where(fold, yf);
            // x - clamp(x, -2r, 0)
            let clamped = x.clone().clamp_max(0.0).max_pair(r_full.mul_scalar(-2.0));
            let x = x - clamped;
            (x.powi_scalar(2) + y.clone().powi_scalar(2))
                .add_scalar(1e-8)
                .sqrt()
                .neg()
                * y.sign()
        }
    };
    d.neg().add_scalar(0.5).clamp(0.0, 1.0)
}

impl OracleReward {
    /// Scores videos against their captions.
    ///
    /// # Shapes
    /// - `video`: `[B, 3, F, H, W]` in `[-1, 1]`; `captions.len() == B`
    pub fn scores<B: Backend>(
        &self,
        video: Tensor<B, 5>,
        captions: &[Caption],
    ) -> Result<OracleScores<B>, WorldError> {
        let [b, c, f, h, w] = video.dims();
        if c != 3 || b != captions.len() || b == 0 || h == 0 || w == 0 || f == 0 {
            return Err(WorldError::Shape {
                what: "video for the oracle ([captions, 3, F, H, W])".into(),
                expected: vec![captions.len(), 3, f, h, w],
                found: vec![b, c, f, h, w],
            });
        }
        let dev = video.device();
        let x = video.add_scalar(1.0).div_scalar(2.0);
        let rgb = |get: &dyn Fn(&Caption) -> [f32; 3]| -> Tensor<B, 5> {
            let v: Vec<f32> = captions.iter().flat_map(|c| get(c)).collect();
            Tensor::from_data(TensorData::new(v, [b, 3, 1, 1, 1]), &dev)
        };
        // coverage alpha along the background -> colour line, and colour fidelity
        let fg = rgb(&|c| c.color.rgb());
        let bg = rgb(&|c| c.background.rgb());
        let line = fg - bg.clone();
        let rel = x.clone() - bg;
        let len2 = line.clone().powi_scalar(2).sum_dim(1);
        let alpha = ((rel.clone() * line.clone()).sum_dim(1) / len2).clamp(0.0, 1.0);
        let resid = (rel - line * alpha.clone()).powi_scalar(2).sum_dim(1);
        let fidelity = resid
            .div_scalar(-2.0 * TAU * TAU)
            .exp()
            .reshape([b, f, h, w]);
        let alpha: Tensor<B, 4> = alpha.reshape([b, f, h, w]);
        let m = alpha.clone() * fidelity.clone();
        let mb = alpha.neg().add_scalar(1.0) * fidelity.clone();
        let npix = (h * w) as f64;
        let side = h.min(w) as f32;

        // areas and centroids per frame, [B, F]
        let mass = m.clone().sum_dim(3).sum_dim(2).reshape([b, f]);
        let area = mass.clone().div_scalar(npix);
        let xs: Vec<f32> = (0..w).map(|i| i as f32 + 0.5).collect();
        let ys: Vec<f32> = (0..h).map(|i| i as f32 + 0.5).collect();
        let px = per_sample::<B>(xs, [1, 1, 1, w], &dev);
        let py = per_sample::<B>(ys, [1, 1, h, 1], &dev);
        let denom = mass.clone().add_scalar(EPS);
        let cx = (m.clone() * px.clone())
            .sum_dim(3)
            .sum_dim(2)
            .reshape([b, f])
            / denom.clone();
        let cy = (m.clone() * py.clone())
            .sum_dim(3)
            .sum_dim(2)
            .reshape([b, f])
            / denom;

        // size
        let target: Vec<f32> = captions
            .iter()
            .map(|c| shape_area(c.shape, c.size.radius() * side) / npix as f32)
            .collect();
        let target_t = Tensor::<B, 1>::from_data(TensorData::new(target.clone(), [b]), &dev);
        let mean_area = area.clone().mean_dim(1).reshape([b]);
        let log_ratio = (mean_area.clone().add_scalar(EPS) / target_t).log();
        let s_size = log_ratio.powi_scalar(2).div_scalar(-2.0 * 0.3 * 0.3).exp();

        // shape: soft IoU with equal-area templates of each shape at the centroid
        let cx4: Tensor<B, 4> = cx.clone().reshape([b, f, 1, 1]);
        let cy4: Tensor<B, 4> = cy.clone().reshape([b, f, 1, 1]);
        let ious: Vec<Tensor<B, 1>> = Shape::ALL
            .iter()
            .map(|&s| {
                let radii: Vec<f32> = target
                    .iter()
                    .map(|a| (a * npix as f32 / shape_area(s, 1.0)).sqrt())
                    .collect();
                let r = per_sample::<B>(radii, [b, 1, 1, 1], &dev);
                let t = template(s, &px, &py, &cx4, &cy4, &r, [h, w]);
                let inter = (m.clone() * t.clone()).sum_dim(3).sum_dim(2);
                let union = (m.clone() + t.clone() - m.clone() * t)
                    .sum_dim(3)
                    .sum_dim(2)
                    .add_scalar(EPS);
                (inter / union).reshape([b, f]).mean_dim(1).reshape([b])
            })
            .collect();
        let logits: Tensor<B, 2> = Tensor::stack::<2>(ious, 1).mul_scalar(SHAPE_SHARPNESS);
        let probs = burn::tensor::activation::softmax(logits, 1);
        let pick: Vec<i64> = captions.iter().map(|c| c.shape.index() as i64).collect();
        let pick =
            Tensor::<B, 2, burn::tensor::Int>::from_data(TensorData::new(pick, [b, 1]), &dev);
        let s_shape = probs.gather(1, pick).reshape([b]);

        // motion: least-squares velocity of the track, and its residual
        let fbar = (f as f32 - 1.0) / 2.0;
        let fc: Vec<f32> = (0..f).map(|i| i as f32 - fbar).collect();
        let sxx: f32 = fc.iter().map(|v| v * v).sum::<f32>().max(1e-6);
        let fc = Tensor::<B, 2>::from_data(TensorData::new(fc, [1, f]), &dev);
        let fit = |track: Tensor<B, 2>| {
            let mean = track.clone().mean_dim(1);
            let vel = (track.clone() * fc.clone()).sum_dim(1).div_scalar(sxx);
            let res = track - mean - vel.clone() * fc.clone();
            (vel.reshape([b]), res)
        };
        let (vx, rx) = fit(cx);
        let (vy, ry) = fit(cy);
        let want: Vec<f32> = captions
            .iter()
            .flat_map(|c| {
                let (ux, uy) = c.direction.vector();
                let s = c.speed.per_frame() * side;
                [ux * s, uy * s]
            })
            .collect();
        let want = Tensor::<B, 2>::from_data(TensorData::new(want, [b, 2]), &dev);
        let vx_err = vx - want.clone().narrow(1, 0, 1).reshape([b]);
        let vy_err = vy - want.narrow(1, 1, 1).reshape([b]);
        let s_motion = (vx_err.powi_scalar(2) + vy_err.powi_scalar(2))
            .div_scalar(-2.0 * 0.35 * 0.35)
            .exp();
        let res2 = (rx.powi_scalar(2) + ry.powi_scalar(2))
            .mean_dim(1)
            .reshape([b]);
        let s_smooth = res2.div_scalar(-2.0).exp();

        // stability of the area
        let var = (area.clone() - area.clone().mean_dim(1))
            .powi_scalar(2)
            .mean_dim(1)
            .reshape([b]);
        let cv2 = var / mean_area.powi_scalar(2).add_scalar(EPS);
        let s_stab = cv2.div_scalar(-2.0 * 0.1 * 0.1).exp();

        // cleanliness: pixels explained as object or background
        let explained = fidelity.reshape([b as i32, -1]).mean_dim(1).reshape([b]);
        let s_clean = explained
            .neg()
            .add_scalar(1.0)
            .powi_scalar(2)
            .div_scalar(-2.0 * 0.15 * 0.15)
            .exp();

        // flicker of the background
        let s_flicker = if f > 1 {
            let diff = (x.clone().narrow(2, 1, f - 1) - x.narrow(2, 0, f - 1))
                .abs()
                .sum_dim(1)
                .reshape([b, f - 1, h, w]);
            let both = mb.clone().narrow(1, 1, f - 1) * mb.narrow(1, 0, f - 1);
            let fl = (diff * both)
                .reshape([b as i32, -1])
                .mean_dim(1)
                .reshape([b]);
            fl.div_scalar(-0.03).exp()
        } else {
            Tensor::ones([b], &dev)
        };

        let alignment = geo_mean(&[&s_size, &s_shape, &s_motion]);
        let quality = geo_mean(&[&s_smooth, &s_stab, &s_clean, &s_flicker]);
        let reward = alignment.clone().mul_scalar(0.6) + quality.clone().mul_scalar(0.4);
        Ok(OracleScores {
            size: s_size,
            shape: s_shape,
            motion: s_motion,
            smooth: s_smooth,
            stability: s_stab,
            clean: s_clean,
            flicker: s_flicker,
            alignment,
            quality,
            reward,
        })
    }

    /// The reward alone, `[B]` in `[0, 1]`.
    pub fn score<B: Backend>(
        &self,
        video: Tensor<B, 5>,
        captions: &[Caption],
    ) -> Result<Tensor<B, 1>, WorldError> {
        Ok(self.scores(video, captions)?.reward)
    }
}

impl<B: Backend> latent_reward::PixelReward<B> for OracleReward {
    type Prompt = Caption;

    fn score_pixels(
        &self,
        video: Tensor<B, 5>,
        prompts: &[Caption],
    ) -> latent_reward::Result<Tensor<B, 1>> {
        self.score(video, prompts)
            .map_err(|e| latent_reward::RewardError::Pixel(Box::new(e)))
    }
}
