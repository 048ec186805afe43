//! The loss curve as a PNG: training loss per step (blue) and validation loss (red dots)
//! on a light grid with one horizontal line per nat.

use std::path::Path;

use crate::TrainError;

const W: usize = 960;
const H: usize = 480;
const MARGIN: usize = 24;

/// Draws `train` (step, loss) and `validation` (step, loss) to `path`.
pub fn draw_loss_curve(
    path: &Path,
    train: &[(u64, f32)],
    validation: &[(u64, f64)],
) -> Result<(), TrainError> {
    let mut px = vec![255u8; W * H * 3];
    let max_step = train
        .iter()
        .map(|p| p.0)
        .chain(validation.iter().map(|p| p.0))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let losses = train
        .iter()
        .map(|p| f64::from(p.1))
        .chain(validation.iter().map(|p| p.1))
        .filter(|l| l.is_finite());
    let top = losses.fold(1.0f64, f64::max).ceil();
    let x_of = |s: u64| MARGIN as f64 + s as f64 / max_step * (W - 2 * MARGIN) as f64;
    let y_of = |l: f64| (H - MARGIN) as f64 - l.clamp(0.0, top) / top * (H - 2 * MARGIN) as f64;
    let mut set = |x: i64, y: i64, c: [u8; 3]| {
        if (0..W as i64).contains(&x) && (0..H as i64).contains(&y) {
            let i = (y as usize * W + x as usize) * 3;
            px[i..i + 3].copy_from_slice(&c);
        }
    };
    for nat in 0..=top as i64 {
        let y = y_of(nat as f64).round() as i64;
        for x in MARGIN..W - MARGIN {
            set(x as i64, y, [215, 215, 215]);
        }
    }
    for y in MARGIN..=H - MARGIN {
        set(MARGIN as i64, y as i64, [90, 90, 90]);
    }
    for x in MARGIN..W - MARGIN {
        set(x as i64, (H - MARGIN) as i64, [90, 90, 90]);
    }
    let blue = [40, 90, 200];
    for w in train.windows(2) {
        let (x0, y0) = (x_of(w[0].0), y_of(f64::from(w[0].1)));
        let (x1, y1) = (x_of(w[1].0), y_of(f64::from(w[1].1)));
        let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
        for i in 0..=n {
            let t = i as f64 / n as f64;
            set(
                (x0 + (x1 - x0) * t).round() as i64,
                (y0 + (y1 - y0) * t).round() as i64,
                blue,
            );
        }
    }
    for &(s, l) in validation {
        let (cx, cy) = (x_of(s).round() as i64, y_of(l).round() as i64);
        for dy in -3..=3i64 {
            for dx in -3..=3i64 {
                if dx * dx + dy * dy <= 9 {
                    set(cx + dx, cy + dy, [210, 40, 40]);
                }
            }
        }
    }
    let file = std::fs::File::create(path).map_err(TrainError::io(path))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), W as u32, H as u32);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let io = |e: png::EncodingError| TrainError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    };
    let mut writer = enc.write_header().map_err(io)?;
    writer.write_image_data(&px).map_err(io)?;
    writer.finish().map_err(io)?;
    Ok(())
}
