//! A job whose `source` is video files, through a real `sluice serve`: every
//! frame becomes an input keyed `<video>@<seconds>` and runs through the real
//! NanoDet model; a file that is not a video fails alone; the per-video
//! summary is served at `/v1/jobs/{id}/summary` and written into the output's
//! `_manifest.json`, equal to the one computed from the results.

mod common;

use std::path::Path;

use common::{repo_root, require_onnxruntime, ServerProc};
use serde_json::{json, Value};

/// A folder holding `clip.avi` (the first second of the committed vtest.avi:
/// 10 frames) and `notes.avi` (not a video).
fn footage(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let ffmpeg = repo_root().join(".sluice/bin/ffmpeg");
    assert!(
        ffmpeg.is_file(),
        "run `bash scripts/setup.sh` first (it installs ffmpeg)"
    );
    let st = std::process::Command::new(&ffmpeg)
        .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-i"])
        .arg(repo_root().join("data/video/vtest.avi"))
        .args(["-t", "1", "-c", "copy", "-y"])
        .arg(dir.join("clip.avi"))
        .status()
        .expect("ffmpeg runs");
    assert!(st.success());
    std::fs::write(dir.join("notes.avi"), b"meeting notes, not a video\n").expect("write");
}

#[test]
fn a_job_over_video_files_runs_every_frame_and_keeps_a_summary_in_its_manifest() {
    require_onnxruntime();
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().canonicalize().expect("canonical");
    let models = root.join("models");
    std::fs::create_dir(&models).expect("models");
    std::os::unix::fs::symlink(repo_root().join("models/nanodet-m"), models.join("nanodet-m")).expect("link");
    let src = root.join("footage");
    footage(&src);
    let out_root = root.join("out");
    std::fs::create_dir(&out_root).expect("out");
    let server = ServerProc::start_with(
        &models,
        &root.join("data"),
        Some(&src),
        &root.join("server.log"),
        &["--output-root", out_root.to_str().expect("utf-8")],
    );
    let out = out_root.join("day1/");
    let body = json!({"model": "nanodet-m", "source": src.to_str().expect("utf-8"),
        "output": {"uri": out.to_str().expect("utf-8"), "format": "jsonl"}});
    let (status, job) = server.post("/v1/jobs", &body);
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().expect("id").to_owned();
    let job = server.wait_for(&id, "wrote its output", |j| {
        assert_ne!(j["output"]["state"], "failed", "{j}");
        j["output"]["state"] == "written"
    });
    assert_eq!(job["counts"]["completed"], 10, "{job}");
    assert_eq!(job["counts"]["failed"], 1, "{job}");

    // Every frame once, keyed by its time, with detections; the non-video alone failed.
    let mut lines: Vec<Value> = Vec::new();
    server
        .http
        .each_line(&server.url(&format!("/v1/jobs/{id}/results")), |l| {
            lines.push(serde_json::from_slice(l).expect("a JSON line"));
        });
    let mut keys: Vec<String> = lines
        .iter()
        .map(|l| l["key"].as_str().unwrap_or("").to_owned())
        .collect();
    keys.sort();
    let mut want: Vec<String> = (0..10)
        .map(|i| format!("clip.avi@{:.3}", f64::from(i) / 10.0))
        .collect();
    want.push("notes.avi".into());
    assert_eq!(keys, want);
    let persons: usize = lines
        .iter()
        .filter_map(|l| l["output"]["detections"].as_array())
        .map(|d| d.iter().filter(|d| d["label"] == "person").count())
        .sum();
    let failed = lines.iter().find(|l| l["key"] == "notes.avi").expect("notes.avi");
    assert!(
        failed["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not a video")),
        "{failed}"
    );

    // The summary adds the frames' detections up, and the manifest holds the same.
    let (status, summary) = server.get(&format!("/v1/jobs/{id}/summary"));
    assert_eq!(status, 200, "{summary}");
    let videos = summary["videos"].as_array().expect("videos");
    assert_eq!(videos.len(), 2, "{summary}");
    let clip = videos.iter().find(|v| v["video"] == "clip.avi").expect("clip");
    assert_eq!((clip["frames"].as_u64(), clip["failed"].as_u64()), (Some(10), Some(0)));
    assert!(persons > 10, "NanoDet sees the pedestrians: {persons}");
    assert_eq!(clip["labels"]["person"]["detections"].as_u64(), Some(persons as u64));
    assert_eq!(clip["labels"]["person"]["per_minute"], json!([persons]));
    let notes = videos.iter().find(|v| v["video"] == "notes.avi").expect("notes");
    assert!(
        notes["error"].as_str().is_some_and(|e| e.contains("not a video")),
        "{notes}"
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("_manifest.json")).expect("manifest")).expect("manifest JSON");
    assert_eq!(manifest["summary"], summary, "the manifest's summary");

    // Sampling: 5 frames per second of the 1 s clip, kept with the job.
    let body = json!({"model": "nanodet-m", "source": src.join("clip.avi").to_str().expect("utf-8"),
        "video": {"fps": 5}});
    let (status, job) = server.post("/v1/jobs", &body);
    assert_eq!(status, 201, "{job}");
    let id = job["id"].as_str().expect("id").to_owned();
    server.wait_for(&id, "completed", |j| j["status"] == "COMPLETED");
    let mut keys: Vec<String> = Vec::new();
    server
        .http
        .each_line(&server.url(&format!("/v1/jobs/{id}/results")), |l| {
            let v: Value = serde_json::from_slice(l).expect("a JSON line");
            keys.push(v["key"].as_str().unwrap_or("").to_owned());
        });
    keys.sort();
    let src_clip = src.join("clip.avi").display().to_string();
    let want: Vec<String> = (0..5)
        .map(|i| format!("{src_clip}@{:.3}", f64::from(i) / 5.0))
        .collect();
    assert_eq!(keys, want);

    // Bad sampling, or sampling without a source: 400 naming the problem.
    for (body, says) in [
        (
            json!({"model": "nanodet-m", "source": src.to_str().expect("utf-8"), "video": {"fps": 0}}),
            "fps",
        ),
        (
            json!({"model": "nanodet-m", "open": true, "video": "keyframes"}),
            "needs a 'source'",
        ),
        (
            json!({"model": "nanodet-m", "source": src.to_str().expect("utf-8"), "video": {"speed": 2}}),
            "video",
        ),
    ] {
        let (status, answer) = server.post("/v1/jobs", &body);
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer.to_string().contains(says), "{body}: {answer}");
    }

    // An unknown job has no summary.
    let (status, _) = server.get("/v1/jobs/no-such-job/summary");
    assert_eq!(status, 404);
}
