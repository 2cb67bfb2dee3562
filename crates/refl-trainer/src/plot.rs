//! Line plots of training curves as PNG files, drawn by `plotters` with a font shipped in the
//! crate (DejaVu Sans, `assets/`), so they render the same on a machine without fonts.

use std::{
    path::{Path, PathBuf},
    sync::Once,
};

use diffusion_core::io::atomic::{
    folder_of, remove_stale_temporaries, sync_folder, temporary_path,
};

use plotters::prelude::*;

use crate::error::{config_error, Result, TrainError};

/// One curve: a label and `(x, y)` points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Points, in x order.
    pub points: Vec<(f64, f64)>,
}

/// The curves' colours, in series order (then repeated).
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
];

/// The font every plot uses, registered once per process.
const FONT: &str = "sans-serif";

fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/DejaVuSans.ttf");
        if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_err() {
            result = Err(config_error("plot.font", "the shipped font does not parse"));
        }
    });
    result
}

/// Draws the series on shared axes (with a legend and axis labels) and writes an RGB PNG of
/// 720 x 440 pixels.
///
/// # Errors
/// `Io` when the file cannot be written; `Config` when no series has a finite point.
pub fn write_curves_png(path: &Path, title: &str, x_label: &str, series: &[Series]) -> Result<()> {
    let finite = |s: &Series| -> Vec<(f64, f64)> {
        s.points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect()
    };
    let pts: Vec<(f64, f64)> = series.iter().flat_map(finite).collect();
    if pts.is_empty() {
        return Err(config_error("series", "nothing finite to plot"));
    }
    register_font()?;
    let bound = |f: fn(&(f64, f64)) -> f64| {
        pts.iter()
            .map(f)
            .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)))
    };
    let (x0, mut x1) = bound(|p| p.0);
    let (y0, y1) = bound(|p| p.1);
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    let draw_error = |e: &dyn std::fmt::Display| TrainError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    // drawn into a temporary file renamed over `path`: a crash leaves the old plot or the new
    let dir = folder_of(path);
    remove_stale_temporaries(dir)?;
    let tmp = PathBuf::from(format!("{}.png", temporary_path(path).display()));
    let root = BitMapBackend::new(&tmp, (720, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_error(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
        .map_err(|e| draw_error(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .label_style((FONT, 13))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|e| draw_error(&e))?;
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(finite(s), color.stroke_width(2)))
            .map_err(|e| draw_error(&e))?
            .label(s.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| draw_error(&e))?;
    root.present().map_err(|e| draw_error(&e))?;
    std::fs::rename(&tmp, path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(sync_folder(dir)?)
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
        // both curve colours are drawn, and dark text (the title, labels)
        for c in &COLORS[..2] {
            let rgb = [c.0, c.1, c.2];
            assert!(buf.chunks(3).any(|p| p == rgb), "colour {rgb:?} missing");
        }
        assert!(
            buf.chunks(3).any(|p| p.iter().all(|v| *v < 60)),
            "no text drawn"
        );
        assert!(write_curves_png(&path, "t", "x", &[]).is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
