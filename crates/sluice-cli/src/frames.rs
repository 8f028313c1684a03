//! `sluice frames`: decode videos as a model run would, without a model:
//! count the frames and the time (decode-only throughput), and optionally
//! write them as PNG files to look at or compare with `ffmpeg`'s own.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use image::ImageEncoder as _;
use sluice_core::{FrameFit, Input};
use sluice_io::Source;

use crate::inputs::{self, Kind, VideoArgs};

/// Arguments of `sluice frames`.
#[derive(Args, Debug)]
pub struct FramesArgs {
    /// Video files: a file, a folder or a glob.
    #[arg(long, short)]
    input: String,
    #[command(flatten)]
    video: VideoArgs,
    /// Scale frames to WIDTHxHEIGHT, as for a model of that input size
    /// (default: the video's own size).
    #[arg(long, value_parser = parse_size)]
    size: Option<[u32; 2]>,
    /// With --size: keep the aspect ratio (a letterboxing model) instead of stretching.
    #[arg(long, requires = "size")]
    keep_aspect: bool,
    /// Write each frame as a PNG file into this folder, named after its id.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

fn parse_size(s: &str) -> Result<[u32; 2], String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("size must be WIDTHxHEIGHT, like 416x416, not {s}"))?;
    let side = |v: &str| match v.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("size must be WIDTHxHEIGHT with positive numbers, not {s}")),
    };
    Ok([side(w)?, side(h)?])
}

/// The file name of a frame's PNG: its id with path separators replaced.
fn png_name(key: &str) -> String {
    let safe: String = key
        .chars()
        .map(|c| if matches!(c, '/' | '\\' | ':') { '_' } else { c })
        .collect();
    format!("{safe}.png")
}

pub async fn frames(args: FramesArgs) -> anyhow::Result<()> {
    let fit = args.size.map(|[width, height]| FrameFit {
        width,
        height,
        keep_aspect: args.keep_aspect,
    });
    let video = args.video.options(fit)?;
    let source = inputs::open_video(&args.input, Kind::Image, "id", None, &[], Some(video))?;
    if !matches!(source, Source::Video(_)) {
        anyhow::bail!(
            "{} holds no video files ({})",
            args.input,
            sluice_io::video::VIDEO_EXTENSIONS.join(", ")
        );
    }
    if let Some(dir) = &args.output {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let output = args.output.clone();
    let started = Instant::now();
    let (frames, failed) = tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, u64)> {
        let (mut frames, mut failed) = (0u64, 0u64);
        for record in source.records()? {
            let record = record?;
            match record.input {
                Ok(Input::Frame(f)) => {
                    frames += 1;
                    if let Some(dir) = &output {
                        let path = dir.join(png_name(&record.key));
                        let file = std::io::BufWriter::new(
                            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
                        );
                        image::codecs::png::PngEncoder::new(file)
                            .write_image(&f.rgb, f.width, f.height, image::ExtendedColorType::Rgb8)
                            .with_context(|| format!("writing {}", path.display()))?;
                    }
                }
                Ok(other) => anyhow::bail!("{}: a video gave a {} input", record.key, other.kind()),
                Err(message) => {
                    failed += 1;
                    eprintln!("{}: {message}", record.key);
                }
            }
        }
        Ok((frames, failed))
    })
    .await??;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{frames} frames in {secs:.3} s = {:.1} frames/s ({failed} failed)",
        frames as f64 / secs.max(1e-9)
    );
    if failed > 0 {
        anyhow::bail!("{failed} videos failed to decode (see above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_names() {
        assert_eq!(parse_size("416x320"), Ok([416, 320]));
        assert!(parse_size("416").is_err() && parse_size("0x4").is_err());
        assert_eq!(png_name("a/b.avi@1.500"), "a_b.avi@1.500.png");
    }
}
