//! Writing videos as animated GIFs and PNG contact sheets.

use std::path::Path;

use burn::tensor::{backend::Backend, Tensor};
use diffusion_core::io::atomic::write_atomic;

use crate::{
    error::WorldError,
    render::{Video, VideoConfig},
};

impl Video {
    /// A video from a tensor in `[-1, 1]` (values outside are clamped).
    ///
    /// # Shapes
    /// - `video`: `[3, F, H, W]`
    pub fn from_tensor<B: Backend>(video: Tensor<B, 4>) -> Result<Self, WorldError> {
        let [c, frames, height, width] = video.dims();
        if c != 3 {
            return Err(WorldError::Shape {
                what: "video tensor [3, F, H, W]".into(),
                expected: vec![3, frames, height, width],
                found: video.dims().to_vec(),
            });
        }
        let data: Vec<f32> =
            crate::error::host_f32(video.add_scalar(1.0).div_scalar(2.0).clamp(0.0, 1.0))?;
        Ok(Video {
            config: VideoConfig {
                frames,
                height,
                width,
            },
            data,
            track: Vec::new(),
        })
    }

    /// Frame `f` as interleaved RGB bytes, each pixel repeated `scale` x `scale` times.
    pub fn frame_rgb(&self, f: usize, scale: usize) -> Vec<u8> {
        let VideoConfig { height, width, .. } = self.config;
        let mut out = Vec::with_capacity(height * width * scale * scale * 3);
        for y in 0..height * scale {
            for x in 0..width * scale {
                let p = self.pixel(f, y / scale, x / scale);
                out.extend(p.iter().map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8));
            }
        }
        out
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> WorldError {
    WorldError::InvalidConfig(format!("cannot write {}: {e}", path.display()))
}

/// Writes an animated, looping GIF (`scale`x upscaled, `delay_ms` per frame).
pub fn write_gif(
    path: &Path,
    video: &Video,
    scale: usize,
    delay_ms: u16,
) -> Result<(), WorldError> {
    let VideoConfig {
        frames,
        height,
        width,
    } = video.config;
    let (w, h) = ((width * scale) as u16, (height * scale) as u16);
    let mut bytes = Vec::new();
    {
        let mut enc = gif::Encoder::new(&mut bytes, w, h, &[]).map_err(|e| io_err(path, e))?;
        enc.set_repeat(gif::Repeat::Infinite)
            .map_err(|e| io_err(path, e))?;
        for f in 0..frames {
            let mut frame = gif::Frame::from_rgb_speed(w, h, &video.frame_rgb(f, scale), 10);
            frame.delay = delay_ms / 10;
            enc.write_frame(&frame).map_err(|e| io_err(path, e))?;
        }
    }
    write_atomic(path, &bytes).map_err(|e| io_err(path, e))
}

/// Writes a PNG with one row per video and one column per frame (`scale`x upscaled, 2 px gaps).
pub fn write_contact_sheet(path: &Path, videos: &[Video], scale: usize) -> Result<(), WorldError> {
    let Some(first) = videos.first() else {
        return Err(WorldError::InvalidConfig(
            "no videos for the contact sheet".into(),
        ));
    };
    let VideoConfig {
        frames,
        height,
        width,
    } = first.config;
    if videos.iter().any(|v| v.config != first.config) {
        return Err(WorldError::InvalidConfig(
            "contact sheet videos must share one size".into(),
        ));
    }
    let (fw, fh, gap) = (width * scale, height * scale, 2);
    let (sw, sh) = (frames * (fw + gap) - gap, videos.len() * (fh + gap) - gap);
    let mut img = vec![255u8; sw * sh * 3];
    for (row, v) in videos.iter().enumerate() {
        for f in 0..frames {
            let rgb = v.frame_rgb(f, scale);
            for y in 0..fh {
                let dst = ((row * (fh + gap) + y) * sw + f * (fw + gap)) * 3;
                img[dst..dst + fw * 3].copy_from_slice(&rgb[y * fw * 3..(y + 1) * fw * 3]);
            }
        }
    }
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, sw as u32, sh as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(|e| io_err(path, e))?;
        writer.write_image_data(&img).map_err(|e| io_err(path, e))?;
    }
    write_atomic(path, &bytes).map_err(|e| io_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{attributes::*, caption::Caption, render::render};

    #[test]
    fn gif_and_png_are_written_and_tensor_round_trips() {
        let c = Caption::new(
            Shape::Triangle,
            Color::Yellow,
            Background::Navy,
            Direction::Up,
            Size::Large,
            Speed::Slow,
        );
        let v = render(&c, VideoConfig::default(), 0).unwrap();
        let t = v.to_tensor::<burn_flex_alias::B>(&Default::default());
        let back = Video::from_tensor(t).unwrap();
        assert!(v
            .data
            .iter()
            .zip(&back.data)
            .all(|(a, b)| (a - b).abs() < 1e-6));
        let dir = tempfile::tempdir().unwrap();
        let gif = dir.path().join("test.gif");
        let png = dir.path().join("test.png");
        write_gif(&gif, &v, 2, 80).unwrap();
        write_contact_sheet(&png, &[v.clone(), back], 1).unwrap();
        assert_eq!(&std::fs::read(&gif).unwrap()[..6], b"GIF89a");
        assert_eq!(&std::fs::read(&png).unwrap()[1..4], b"PNG");
    }

    mod burn_flex_alias {
        pub type B = diffusion_core::backend::Flex;
    }
}
