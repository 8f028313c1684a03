//! Video as input, as a user runs it: real footage (OpenCV's vtest.avi, MPEG-4
//! in AVI; Big Buck Bunny, H.264 in MP4, both in data/video) decoded by the
//! real ffmpeg that scripts/setup.sh installs, through the real NanoDet model.
//! Frames at --fps / --every / --keyframes, their ids and fields, frames equal
//! to ffmpeg's own, per-video summaries that add up, and damaged files that
//! fail alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SETUP: &str = "run `bash scripts/setup.sh` in the repository root first";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// The ffmpeg that setup installs (tests fail, never skip, without it).
fn ffmpeg() -> PathBuf {
    let p = repo_root().join(".sluice/bin/ffmpeg");
    assert!(p.is_file(), "{} is missing; {SETUP}", p.display());
    p
}

fn require_nanodet() -> PathBuf {
    if let Err(e) = sluice_onnx::locate_library() {
        panic!("ONNX Runtime is not installed ({e}); {SETUP}");
    }
    let dir = repo_root().join("models/nanodet-m");
    assert!(
        dir.join("model.onnx").is_file(),
        "models/nanodet-m/model.onnx is missing"
    );
    dir
}

fn sluice_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(args).current_dir(repo_root());
    for var in ["SLUICE_MODELS", "SLUICE_THREADS", "SLUICE_FFMPEG", "RUST_BACKTRACE"] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("cannot start the sluice binary")
}

fn sluice(args: &[&str]) -> Output {
    sluice_env(args, &[])
}

fn ok(o: &Output) -> &Output {
    assert!(
        o.status.success(),
        "sluice failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    o
}

fn rows(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn vtest() -> String {
    repo_root().join("data/video/vtest.avi").display().to_string()
}

#[test]
fn vtest_at_2_fps_gives_a_frame_every_half_second_with_persons_and_a_summary_that_adds_up() {
    require_nanodet();
    let dir = tempfile::tempdir().expect("tempdir");
    let (out, summary) = (dir.path().join("v.jsonl"), dir.path().join("summary.json"));
    let input = vtest();
    ok(&sluice(&[
        "run",
        "--model",
        "models/nanodet-m",
        "--input",
        &input,
        "--fps",
        "2",
        "--output",
        out.to_str().expect("utf-8"),
        "--summary",
        summary.to_str().expect("utf-8"),
        "-q",
    ]));
    let rows = rows(&out);
    // The committed cut is 20 s at 10 fps: 0.0, 0.5, ..., 19.5.
    assert_eq!(rows.len(), 40, "one item every 0.5 s of 20 s");
    let mut by_t: BTreeMap<i64, &serde_json::Value> = BTreeMap::new();
    for r in &rows {
        assert_eq!(r["video"], input.as_str());
        let t = r["t"].as_f64().expect("t");
        assert_eq!(r["id"], format!("{input}@{t:.3}"));
        assert_eq!(
            r["frame"].as_u64(),
            Some((t * 10.0).round() as u64),
            "frame index at 10 fps"
        );
        by_t.insert((t * 1000.0).round() as i64, r);
    }
    let expected: Vec<i64> = (0..40).map(|k| k * 500).collect();
    assert_eq!(by_t.keys().copied().collect::<Vec<_>>(), expected);

    // NanoDet sees the pedestrians in most frames; boxes are in the video's pixels.
    let persons = |r: &serde_json::Value| {
        r["output"]["detections"]
            .as_array()
            .expect("detections")
            .iter()
            .filter(|d| d["label"] == "person")
            .inspect(|d| {
                let b: Vec<f64> = d["bbox"]
                    .as_array()
                    .expect("bbox")
                    .iter()
                    .filter_map(|v| v.as_f64())
                    .collect();
                assert!(b[2] <= 768.0 && b[3] <= 576.0 && b[0] < b[2] && b[1] < b[3], "{b:?}");
            })
            .count()
    };
    let with_person = rows.iter().filter(|r| persons(r) > 0).count();
    assert!(with_person >= 32, "persons in only {with_person} of 40 frames");

    // The summary's counts are the per-frame detections added up.
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary")).expect("json");
    let min = s["min_score"].as_f64().expect("min_score");
    let v = &s["videos"][0];
    assert_eq!(v["video"], input.as_str());
    assert_eq!((v["frames"].as_u64(), v["failed"].as_u64()), (Some(40), Some(0)));
    assert!((v["duration_s"].as_f64().expect("duration") - 20.0).abs() < 0.05);
    let person = &v["labels"]["person"];
    let total: usize = rows
        .iter()
        .flat_map(|r| r["output"]["detections"].as_array().expect("detections"))
        .filter(|d| d["label"] == "person" && d["score"].as_f64().unwrap_or(0.0) >= min - 1e-6)
        .count();
    let per_minute: Vec<u64> = person["per_minute"]
        .as_array()
        .expect("per_minute")
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    assert_eq!(per_minute, vec![total as u64], "20 s is one minute bucket");
    assert_eq!(person["detections"].as_u64(), Some(total as u64));
    let most = rows.iter().map(persons).max().unwrap_or(0);
    assert_eq!(person["max_in_frame"].as_u64(), Some(most as u64));
    let first_most = rows
        .iter()
        .filter(|r| persons(r) == most)
        .filter_map(|r| r["t"].as_f64())
        .fold(f64::INFINITY, f64::min);
    assert_eq!(person["max_at"].as_f64(), Some(first_most));
}

/// Mean absolute difference per channel value of two RGB pictures.
fn mean_diff(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

#[test]
fn a_frame_decoded_by_sluice_equals_the_frame_ffmpeg_writes_for_the_same_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let frames = dir.path().join("frames");
    let input = vtest();
    ok(&sluice(&[
        "frames",
        "--input",
        &input,
        "--fps",
        "2",
        "--output",
        frames.to_str().expect("utf-8"),
    ]));
    let names: Vec<String> = std::fs::read_dir(&frames)
        .expect("frames")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert_eq!(names.len(), 40);
    let safe = input.replace('/', "_");
    let ours = image::open(frames.join(format!("{safe}@12.500.png")))
        .expect("frame at 12.5 s")
        .to_rgb8();
    assert_eq!(ours.dimensions(), (768, 576), "native size without --size");
    // ffmpeg's own frame at 12.5 s (the first at or after it), written as PNG.
    let reference = dir.path().join("ref.png");
    let st = Command::new(ffmpeg())
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-i", &input])
        .args(["-vf", "select=gte(t\\,12.5)", "-frames:v", "1", "-y"])
        .arg(&reference)
        .status()
        .expect("ffmpeg runs");
    assert!(st.success());
    let theirs = image::open(&reference).expect("reference").to_rgb8();
    let same = mean_diff(&ours, &theirs);
    assert!(
        same < 2.0,
        "frame at 12.5 s differs from ffmpeg's by {same:.2} per value"
    );
    // And it is not any frame: the one 2 s later differs clearly more.
    let later = image::open(frames.join(format!("{safe}@14.500.png")))
        .expect("14.5")
        .to_rgb8();
    assert!(mean_diff(&later, &theirs) > same + 1.0);

    // Scaled for a model: exactly the size asked for, letterbox keeping the aspect.
    let scaled = dir.path().join("scaled");
    ok(&sluice(&[
        "frames",
        "--input",
        &input,
        "--every",
        "100",
        "--size",
        "416x416",
        "--keep-aspect",
        "--output",
        scaled.to_str().expect("utf-8"),
    ]));
    let first = image::open(scaled.join(format!("{safe}@0.000.png")))
        .expect("frame 0")
        .to_rgb8();
    assert_eq!(first.dimensions(), (416, 312));
    assert_eq!(
        std::fs::read_dir(&scaled).expect("scaled").count(),
        2,
        "frames 0 and 100 of 200"
    );
}

#[test]
fn h264_mp4_by_every_nth_frame_and_by_keyframes() {
    require_nanodet();
    let dir = tempfile::tempdir().expect("tempdir");
    let input = repo_root().join("data/video/bigbuckbunny.mp4").display().to_string();
    let out = dir.path().join("every.jsonl");
    ok(&sluice(&[
        "run",
        "--model",
        "models/nanodet-m",
        "--input",
        &input,
        "--every",
        "25",
        "--output",
        out.to_str().expect("utf-8"),
        "-q",
    ]));
    let mut got: Vec<(u64, String)> = rows(&out)
        .iter()
        .map(|r| {
            assert!(r["output"]["detections"].is_array(), "{r}");
            (
                r["frame"].as_u64().expect("frame"),
                r["id"].as_str().expect("id").to_owned(),
            )
        })
        .collect();
    got.sort();
    // 132 frames at 25 fps: frames 0, 25, ..., 125 at 0, 1, ..., 5 s.
    let want: Vec<(u64, String)> = (0..6).map(|k| (k * 25, format!("{input}@{k}.000"))).collect();
    assert_eq!(got, want);

    let out = dir.path().join("key.jsonl");
    ok(&sluice(&[
        "run",
        "--model",
        "models/nanodet-m",
        "--input",
        &input,
        "--keyframes",
        "--output",
        out.to_str().expect("utf-8"),
        "-q",
    ]));
    let keys: Vec<String> = rows(&out)
        .iter()
        .map(|r| r["id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(keys, vec![format!("{input}@0.000")], "this file has one key frame");
}

#[test]
fn a_truncated_video_gives_its_decodable_frames_and_one_error_and_the_rest_goes_on() {
    require_nanodet();
    let dir = tempfile::tempdir().expect("tempdir");
    let footage = dir.path().join("footage");
    std::fs::create_dir(&footage).expect("mkdir");
    let whole = std::fs::read(vtest()).expect("vtest");
    std::fs::write(footage.join("a-whole.avi"), &whole).expect("copy");
    // Half the file: the first ~10 s decode, then the data stops.
    std::fs::write(footage.join("b-cut.avi"), &whole[..whole.len() / 2]).expect("cut");
    std::fs::write(footage.join("c-text.mp4"), b"this is not a video\n").expect("text");
    let mp4 = std::fs::read(repo_root().join("data/video/bigbuckbunny.mp4")).expect("mp4");
    std::fs::write(footage.join("d-cut.mp4"), &mp4[..mp4.len() / 2]).expect("cut mp4");
    let (out, summary) = (dir.path().join("out.jsonl"), dir.path().join("s.json"));
    ok(&sluice(&[
        "run",
        "--model",
        "models/nanodet-m",
        "--input",
        footage.to_str().expect("utf-8"),
        "--fps",
        "1",
        "--output",
        out.to_str().expect("utf-8"),
        "--summary",
        summary.to_str().expect("utf-8"),
        "-q",
    ]));
    let rows = rows(&out);
    let of = |video: &str| rows.iter().filter(|r| r["video"] == video).collect::<Vec<_>>();
    let whole_rows = of("a-whole.avi");
    assert_eq!(whole_rows.len(), 20);
    assert!(
        whole_rows.iter().all(|r| r.get("error").is_none()),
        "the whole video is intact"
    );

    let cut = of("b-cut.avi");
    let frames: Vec<&&serde_json::Value> = cut.iter().filter(|r| r["id"] != "b-cut.avi").collect();
    let errors: Vec<&&serde_json::Value> = cut.iter().filter(|r| r["id"] == "b-cut.avi").collect();
    assert!(
        frames.len() >= 5 && frames.len() < 20,
        "{} frames decoded of the cut",
        frames.len()
    );
    assert!(frames.iter().all(|r| r.get("error").is_none()));
    assert_eq!(errors.len(), 1, "one failed item for the cut video");
    let last_t = frames.iter().filter_map(|r| r["t"].as_f64()).fold(0.0, f64::max);
    let message = errors[0]["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("stopped") && message.contains(&format!("{last_t:.3} s")),
        "the error says where decoding stopped: {message}"
    );
    assert_eq!(errors[0]["t"].as_f64(), Some(last_t));

    for bad in ["c-text.mp4", "d-cut.mp4"] {
        let r = of(bad);
        assert_eq!(r.len(), 1, "{bad}: one failed item");
        assert_eq!(r[0]["id"], bad);
        let m = r[0]["error"]["message"].as_str().expect("message");
        assert!(m.contains("not a video"), "{bad}: {m}");
    }

    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).expect("summary")).expect("json");
    let videos = s["videos"].as_array().expect("videos");
    assert_eq!(videos.len(), 4);
    let cut_summary = videos
        .iter()
        .find(|v| v["video"] == "b-cut.avi")
        .expect("cut in summary");
    assert_eq!(cut_summary["frames"].as_u64(), Some(frames.len() as u64));
    assert!(cut_summary["error"].as_str().is_some_and(|e| e.contains("stopped")));
}

#[test]
fn without_ffmpeg_or_with_bad_flags_the_error_says_what_to_do() {
    let input = vtest();
    let o = sluice_env(
        &["frames", "--input", &input],
        &[("SLUICE_FFMPEG", "/nonexistent/ffmpeg")],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("apt install ffmpeg") && err.contains("SLUICE_FFMPEG"),
        "{err}"
    );

    let o = sluice(&[
        "run",
        "--model",
        "models/nanodet-m",
        "--input",
        "data/images",
        "--fps",
        "2",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("apply to video inputs"));

    let o = sluice(&["run", "--model", "models/nanodet-m", "--input", &input, "--fps", "0"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--fps must be"));

    let o = sluice(&[
        "run",
        "--model",
        "models/nanodet-m",
        "--input",
        &input,
        "--fps",
        "2",
        "--every",
        "3",
    ]);
    assert!(!o.status.success(), "--fps and --every exclude each other");

    let o = sluice(&["run", "--model", "models/minilm-l6", "--input", &input]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("video frames go to image models"));
}
