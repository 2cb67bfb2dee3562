//! Line plots of training curves as PNG files (no plotting dependency: lines, axes, grid and a
//! 3x5 pixel font for labels).

use std::path::Path;

use crate::error::{Result, TrainError};

/// One curve: a label and `(x, y)` points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text (lower-case letters, digits, `.-_ /()`).
    pub label: String,
    /// Points, in x order.
    pub points: Vec<(f64, f64)>,
}

const COLORS: [[u8; 3]; 6] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [23, 190, 207],
];

/// 3x5 glyphs, one row per 3 bits (MSB left).
fn glyph(c: char) -> [u8; 5] {
    match c.to_ascii_lowercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 3, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 2, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'a' => [2, 5, 7, 5, 5],
        'b' => [6, 5, 6, 5, 6],
        'c' => [3, 4, 4, 4, 3],
        'd' => [6, 5, 5, 5, 6],
        'e' => [7, 4, 6, 4, 7],
        'f' => [7, 4, 6, 4, 4],
        'g' => [3, 4, 5, 5, 3],
        'h' => [5, 5, 7, 5, 5],
        'i' => [7, 2, 2, 2, 7],
        'j' => [1, 1, 1, 5, 2],
        'k' => [5, 5, 6, 5, 5],
        'l' => [4, 4, 4, 4, 7],
        'm' => [5, 7, 7, 5, 5],
        'n' => [6, 5, 5, 5, 5],
        'o' => [2, 5, 5, 5, 2],
        'p' => [6, 5, 6, 4, 4],
        'q' => [2, 5, 5, 6, 3],
        'r' => [6, 5, 6, 5, 5],
        's' => [3, 4, 2, 1, 6],
        't' => [7, 2, 2, 2, 2],
        'u' => [5, 5, 5, 5, 7],
        'v' => [5, 5, 5, 5, 2],
        'w' => [5, 5, 7, 7, 5],
        'x' => [5, 5, 2, 5, 5],
        'y' => [5, 5, 2, 2, 2],
        'z' => [7, 1, 2, 4, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        '_' => [0, 0, 0, 0, 7],
        '/' => [1, 1, 2, 4, 4],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        ':' => [0, 2, 0, 2, 0],
        _ => [0; 5],
    }
}

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = 3 * (y as usize * self.w + x as usize);
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn line(&mut self, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: [u8; 3], thick: i64) {
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for k in 0..=n {
            let t = k as f64 / n as f64;
            let (x, y) = (x0 + t * (x1 - x0), y0 + t * (y1 - y0));
            for dx in 0..thick {
                for dy in 0..thick {
                    self.set(x.round() as i64 + dx, y.round() as i64 + dy, c);
                }
            }
        }
    }

    /// Text at scale 2 (6x10 pixels per glyph, 8 wide with spacing).
    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits >> (2 - col) & 1 == 1 {
                        for d in 0..4 {
                            self.set(
                                x + 8 * i as i64 + 2 * col + d % 2,
                                y + 2 * row as i64 + d / 2,
                                c,
                            );
                        }
                    }
                }
            }
        }
    }
}

fn label(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Draws the series on shared axes (with a legend and axis labels) and writes an RGB PNG.
///
/// # Errors
/// `Io` when the file cannot be written; `Config` when no series has a finite point.
pub fn write_curves_png(path: &Path, title: &str, x_label: &str, series: &[Series]) -> Result<()> {
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if pts.is_empty() {
        return Err(crate::error::config_error(
            "series",
            "nothing finite to plot",
        ));
    }
    let (w, h) = (720usize, 440usize);
    let (left, right, top, bottom) = (70.0, 20.0, 40.0, 50.0);
    let mut cv = Canvas {
        w,
        h,
        px: vec![255; w * h * 3],
    };
    let (mut x0, mut x1) = (f64::MAX, f64::MIN);
    let (mut y0, mut y1) = (f64::MAX, f64::MIN);
    for (x, y) in &pts {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    y0 -= pad;
    y1 += pad;
    let (pw, ph) = (w as f64 - left - right, h as f64 - top - bottom);
    let to_px = |x: f64, y: f64| {
        (
            left + (x - x0) / (x1 - x0) * pw,
            top + (1.0 - (y - y0) / (y1 - y0)) * ph,
        )
    };
    let grey = [220, 220, 220];
    let black = [0, 0, 0];
    for k in 0..=4 {
        let fy = y0 + (y1 - y0) * k as f64 / 4.0;
        let (_, py) = to_px(x0, fy);
        cv.line((left, py), (left + pw, py), grey, 1);
        cv.text(4, py as i64 - 5, &label(fy), black);
        let fx = x0 + (x1 - x0) * k as f64 / 4.0;
        let (px, _) = to_px(fx, y0);
        cv.line((px, top), (px, top + ph), grey, 1);
        cv.text(px as i64 - 10, (top + ph) as i64 + 8, &label(fx), black);
    }
    cv.line((left, top), (left, top + ph), black, 1);
    cv.line((left, top + ph), (left + pw, top + ph), black, 1);
    cv.text(left as i64, 12, title, black);
    cv.text((left + pw / 2.0) as i64 - 20, h as i64 - 16, x_label, black);
    for (i, s) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let good: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        for pair in good.windows(2) {
            cv.line(
                to_px(pair[0].0, pair[0].1),
                to_px(pair[1].0, pair[1].1),
                c,
                2,
            );
        }
        if good.len() == 1 {
            let (px, py) = to_px(good[0].0, good[0].1);
            cv.line((px - 2.0, py), (px + 2.0, py), c, 3);
        }
        let ly = top as i64 + 8 + 16 * i as i64;
        let lx = (left + pw) as i64 - 8 * s.label.len() as i64 - 30;
        cv.line(
            (lx as f64, ly as f64 + 4.0),
            (lx as f64 + 18.0, ly as f64 + 4.0),
            c,
            3,
        );
        cv.text(lx + 24, ly, &s.label, black);
    }
    let io = |e: std::io::Error| TrainError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let file = std::fs::File::create(path).map_err(io)?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc
        .write_header()
        .map_err(|e| io(std::io::Error::other(e)))?;
    writer
        .write_image_data(&cv.px)
        .map_err(|e| io(std::io::Error::other(e)))
}

/// The curves of a run's metrics log: the reward the method reports, smoothed over 10 steps,
/// and the held-out evaluations (from `start`, the held-out value before training, when given),
/// against the step.
///
/// # Errors
/// IO errors writing the file.
pub fn write_metrics_png(
    path: &Path,
    title: &str,
    log: &[crate::metrics::StepMetrics],
    start: Option<f64>,
) -> Result<()> {
    let reward: Vec<f64> = log
        .iter()
        .map(|m| m.latent_reward.unwrap_or(f64::NAN))
        .collect();
    let smooth = (0..reward.len())
        .map(|i| {
            let w = &reward[i.saturating_sub(9)..=i];
            (i as f64 + 1.0, w.iter().sum::<f64>() / w.len() as f64)
        })
        .collect();
    let mut heldout: Vec<(f64, f64)> = start.map(|r| (0.0, r)).into_iter().collect();
    heldout.extend(
        log.iter()
            .filter_map(|m| m.heldout_reward.map(|r| (m.step as f64 + 1.0, r))),
    );
    let curves = [
        Series {
            label: "reward (train)".into(),
            points: smooth,
        },
        Series {
            label: "held-out".into(),
            points: heldout,
        },
    ];
    write_curves_png(path, title, "step", &curves)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_with_the_curves() {
        let path = std::env::temp_dir().join(format!("plot_{}.png", std::process::id()));
        let s = |label: &str, k: f64| Series {
            label: label.into(),
            points: (0..10).map(|i| (i as f64, k * i as f64)).collect(),
        };
        write_curves_png(
            &path,
            "held-out reward",
            "step",
            &[s("prfl", 1.0), s("rgb refl", 0.5)],
        )
        .unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        reader.next_frame(&mut buf).unwrap();
        // both curve colours are drawn
        for c in &COLORS[..2] {
            assert!(buf.chunks(3).any(|p| p == c), "colour {c:?} missing");
        }
        assert!(write_curves_png(&path, "t", "x", &[]).is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
