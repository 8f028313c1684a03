//! Per-video summaries of a video run: a detector (or classifier) run over
//! frames sampled from videos, its results folded into counts per label and
//! per minute as they arrive, in any order.
//!
//! [`Summaries::to_json`] gives, videos in name order:
//!
//! ```json
//! {"min_score": 0.35,
//!  "videos": [
//!   {"video": "vtest.avi", "duration_s": 79.5, "frames": 159, "failed": 0, "error": null,
//!    "labels": {"person": {"detections": 812, "per_minute": [610, 202], "max_in_frame": 9, "max_at": 12.5}}}
//!  ]}
//! ```
//!
//! - `frames` counts frames with a result, `failed` frames that failed, and
//!   `error` is the message of [`Summaries::video_failed`] or `null`.
//! - `duration_s` is the duration the container declares, else the largest
//!   frame time seen (failed frames included), else `0.0`.
//! - `labels`, in name order: for [`Output::Detections`], every detection
//!   scoring at least `min_score`; for [`Output::Classes`], the top label of
//!   each frame when it scores at least `min_score`; other outputs add no
//!   labels. `detections` is the total, `per_minute[m]` the part of it in
//!   frames with `t` in `[60m, 60(m+1))` (the list covers the duration and
//!   every minute with a frame, zeros where none, so it adds up to
//!   `detections` exactly), `max_in_frame` the most in one frame and
//!   `max_at` the time of the earliest frame reaching it.
//!
//! A frame time that is not finite or is negative counts as `0.0`. Times
//! past [`MAX_MINUTES`] minutes are counted in the last minute, so a
//! corrupt time or declared duration cannot make the lists unbounded.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use sluice_core::Output;

/// The most entries a `per_minute` list has (one week of minutes): frames
/// later than that are counted in the last entry, and a longer declared
/// duration lengthens the list only up to it.
pub const MAX_MINUTES: usize = 7 * 24 * 60;

/// Per-video summaries, built from results as they arrive (any order).
#[derive(Debug, Clone)]
pub struct Summaries {
    min_score: f32,
    videos: BTreeMap<String, VideoSummary>,
}

/// What is known of one video so far.
#[derive(Debug, Clone, Default)]
struct VideoSummary {
    /// The duration the container declares (finite, not negative).
    declared_s: Option<f64>,
    /// The largest frame time seen (after [`clean_t`]).
    max_t: Option<f64>,
    frames: u64,
    failed: u64,
    error: Option<String>,
    labels: BTreeMap<String, LabelSummary>,
}

/// Counts for one label of one video.
#[derive(Debug, Clone, Default)]
struct LabelSummary {
    detections: u64,
    /// Dense, indexed by minute; at most [`MAX_MINUTES`] long.
    per_minute: Vec<u64>,
    max_in_frame: u64,
    max_at: f64,
}

impl LabelSummary {
    /// Adds `n` (at least one) of this label found in the frame at `t`
    /// (already cleaned).
    fn add(&mut self, t: f64, n: u64) {
        self.detections += n;
        let m = minute(t);
        if self.per_minute.len() <= m {
            self.per_minute.resize(m + 1, 0);
        }
        if let Some(slot) = self.per_minute.get_mut(m) {
            *slot += n;
        }
        if n > self.max_in_frame || (n == self.max_in_frame && t < self.max_at) {
            self.max_in_frame = n;
            self.max_at = t;
        }
    }
}

/// A frame time fit for bucketing: not finite, negative (or `-0.0`) is `0.0`.
fn clean_t(t: f64) -> f64 {
    if t.is_finite() && t > 0.0 {
        t
    } else {
        0.0
    }
}

/// The minute index of a cleaned time, capped at `MAX_MINUTES - 1`.
fn minute(t: f64) -> usize {
    // `as` saturates for values beyond usize; `t` is finite and >= 0.
    ((t / 60.0).floor() as usize).min(MAX_MINUTES - 1)
}

/// The number of minutes that a duration (finite, >= 0) covers, capped.
fn minutes_covering(duration_s: f64) -> usize {
    ((duration_s / 60.0).ceil() as usize).min(MAX_MINUTES)
}

/// An `f32` as the JSON number its shortest text shows (0.35, not
/// 0.3499999940395355).
fn f32_json(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

impl Summaries {
    /// `min_score`: detections below it are not counted. A NaN threshold
    /// counts as `0.0`.
    pub fn new(min_score: f32) -> Summaries {
        Summaries {
            min_score: if min_score.is_nan() { 0.0 } else { min_score },
            videos: BTreeMap::new(),
        }
    }

    fn entry(&mut self, video: &str) -> &mut VideoSummary {
        self.videos.entry(video.to_owned()).or_default()
    }

    /// Registers a video (so a video with no frames at all still appears)
    /// with its duration in seconds when the container declares one. A
    /// duration that is not finite or is negative is taken as not declared;
    /// registering again replaces the duration only with a declared one.
    /// Frames of a video not registered register it, without a duration.
    pub fn video(&mut self, video: &str, duration_s: Option<f64>) {
        let declared = duration_s.filter(|d| d.is_finite() && *d >= 0.0);
        let v = self.entry(video);
        if declared.is_some() {
            v.declared_s = declared;
        }
    }

    fn saw(v: &mut VideoSummary, t: f64) -> f64 {
        let t = clean_t(t);
        v.max_t = Some(v.max_t.map_or(t, |m| m.max(t)));
        t
    }

    /// One frame's result at `t` seconds.
    pub fn frame(&mut self, video: &str, t: f64, output: &Output) {
        let min_score = self.min_score;
        let v = self.entry(video);
        let t = Self::saw(v, t);
        v.frames += 1;
        let mut found: BTreeMap<&str, u64> = BTreeMap::new();
        match output {
            Output::Detections(dets) => {
                for d in dets.iter().filter(|d| d.score >= min_score) {
                    *found.entry(d.label.as_str()).or_default() += 1;
                }
            }
            Output::Classes(classes) => {
                // The first of the highest scores (they come highest first,
                // but nothing here relies on it).
                let mut top: Option<&sluice_core::Label> = None;
                for c in classes {
                    if top.is_none_or(|b| c.score > b.score) && !c.score.is_nan() {
                        top = Some(c);
                    }
                }
                if let Some(c) = top.filter(|c| c.score >= min_score) {
                    found.insert(c.label.as_str(), 1);
                }
            }
            Output::Embedding(_) | Output::Tensors(_) | Output::Files(_) => {}
        }
        for (label, n) in found {
            match v.labels.get_mut(label) {
                Some(l) => l.add(t, n),
                None => {
                    let mut l = LabelSummary::default();
                    l.add(t, n);
                    v.labels.insert(label.to_owned(), l);
                }
            }
        }
    }

    /// One frame that failed (model or pre-processing error). Its time
    /// counts towards the duration when none is declared.
    pub fn frame_failed(&mut self, video: &str, t: f64) {
        let v = self.entry(video);
        Self::saw(v, t);
        v.failed += 1;
    }

    /// The video itself failed or stopped decoding (the message names
    /// where); the video's frames decoded before still count. The first
    /// message is kept when a video fails more than once.
    pub fn video_failed(&mut self, video: &str, message: &str) {
        let v = self.entry(video);
        if v.error.is_none() {
            v.error = Some(message.to_owned());
        }
    }

    /// The summaries as JSON (see the module docs), videos in name order.
    pub fn to_json(&self) -> Value {
        let videos: Vec<Value> = self
            .videos
            .iter()
            .map(|(name, v)| {
                let duration = v.declared_s.or(v.max_t).unwrap_or(0.0);
                let cover = minutes_covering(duration);
                let labels: Map<String, Value> = v
                    .labels
                    .iter()
                    .map(|(label, l)| {
                        let mut per_minute = l.per_minute.clone();
                        if per_minute.len() < cover {
                            per_minute.resize(cover, 0);
                        }
                        let value = json!({
                            "detections": l.detections,
                            "per_minute": per_minute,
                            "max_in_frame": l.max_in_frame,
                            "max_at": l.max_at,
                        });
                        (label.clone(), value)
                    })
                    .collect();
                json!({
                    "video": name,
                    "duration_s": duration,
                    "frames": v.frames,
                    "failed": v.failed,
                    "error": v.error,
                    "labels": labels,
                })
            })
            .collect();
        json!({ "min_score": f32_json(self.min_score), "videos": videos })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::{Detection, Label};

    fn det(label: &str, score: f32) -> Detection {
        Detection {
            class_id: 0,
            label: label.into(),
            score,
            bbox: [0.0, 0.0, 1.0, 1.0],
        }
    }

    fn dets(list: &[(&str, f32)]) -> Output {
        Output::Detections(list.iter().map(|(l, s)| det(l, *s)).collect())
    }

    fn people(n: usize) -> Output {
        dets(&vec![("person", 0.9); n])
    }

    /// The summary of `video` in `s`.
    fn video(s: &Summaries, video: &str) -> Value {
        let all = s.to_json();
        let found = all["videos"]
            .as_array()
            .expect("videos")
            .iter()
            .find(|v| v["video"] == video)
            .cloned();
        found.expect("the video is listed")
    }

    fn per_minute(v: &Value, label: &str) -> Vec<u64> {
        v["labels"][label]["per_minute"]
            .as_array()
            .expect("per_minute")
            .iter()
            .map(|n| n.as_u64().expect("a count"))
            .collect()
    }

    #[test]
    fn the_shape_matches_the_docs() {
        let mut s = Summaries::new(0.35);
        s.video("vtest.avi", Some(79.5));
        s.frame(
            "vtest.avi",
            12.5,
            &dets(&[("person", 0.9), ("person", 0.8), ("car", 0.2)]),
        );
        s.frame("vtest.avi", 70.0, &people(1));
        assert_eq!(
            s.to_json(),
            json!({"min_score": 0.35, "videos": [
                {"video": "vtest.avi", "duration_s": 79.5, "frames": 2, "failed": 0, "error": null,
                 "labels": {"person": {"detections": 3, "per_minute": [2, 1], "max_in_frame": 2, "max_at": 12.5}}}
            ]})
        );
    }

    #[test]
    fn per_minute_counts_add_up_to_the_totals() {
        let mut s = Summaries::new(0.5);
        s.video("a.mp4", None);
        for i in 0..40u32 {
            let t = f64::from(i) * 7.3;
            let n = (i % 5) as usize;
            let mut list = vec![("person", 0.9); n];
            list.extend(vec![("dog", 0.6); (i % 3) as usize]);
            list.push(("cat", 0.1));
            s.frame("a.mp4", t, &dets(&list));
        }
        let v = video(&s, "a.mp4");
        let labels = v["labels"].as_object().expect("labels");
        assert_eq!(labels.keys().collect::<Vec<_>>(), ["dog", "person"]);
        for (label, l) in labels {
            let sum: u64 = per_minute(&v, label).iter().sum();
            assert_eq!(Some(sum), l["detections"].as_u64(), "{label}");
        }
        assert_eq!(v["labels"]["person"]["detections"], 80);
        assert_eq!(v["frames"], 40);
        // 39 * 7.3 = 284.7 s: five minutes.
        assert_eq!(per_minute(&v, "person").len(), 5);
    }

    #[test]
    fn max_in_frame_is_the_earliest_frame_whatever_the_arrival_order() {
        let mut s = Summaries::new(0.35);
        s.frame("v", 30.0, &people(3));
        s.frame("v", 50.0, &people(2));
        s.frame("v", 10.0, &people(3));
        s.frame("v", 5.0, &people(1));
        let v = video(&s, "v");
        assert_eq!(v["labels"]["person"]["max_in_frame"], 3);
        assert_eq!(v["labels"]["person"]["max_at"], 10.0);

        // A larger count later in time, arriving last, takes over.
        s.frame("v", 90.0, &people(4));
        let v = video(&s, "v");
        assert_eq!(v["labels"]["person"]["max_in_frame"], 4);
        assert_eq!(v["labels"]["person"]["max_at"], 90.0);
        // An equal count that arrives later but is earlier in time wins.
        s.frame("v", 60.0, &people(4));
        let v = video(&s, "v");
        assert_eq!(v["labels"]["person"]["max_at"], 60.0);
        assert_eq!(v["labels"]["person"]["detections"], 17);
    }

    #[test]
    fn a_failed_video_keeps_its_frames() {
        let mut s = Summaries::new(0.35);
        s.video("broken.mkv", Some(120.0));
        s.frame("broken.mkv", 1.0, &people(2));
        s.frame("broken.mkv", 2.0, &people(1));
        s.frame_failed("broken.mkv", 3.0);
        s.video_failed("broken.mkv", "decode error at 3.5 s (packet 87)");
        s.video_failed("broken.mkv", "a later, less useful message");
        let v = video(&s, "broken.mkv");
        assert_eq!(v["error"], "decode error at 3.5 s (packet 87)");
        assert_eq!(v["frames"], 2);
        assert_eq!(v["failed"], 1);
        assert_eq!(v["duration_s"], 120.0);
        assert_eq!(v["labels"]["person"]["detections"], 3);
        assert_eq!(per_minute(&v, "person"), [3, 0]);
    }

    #[test]
    fn detections_below_the_threshold_are_not_counted() {
        let mut s = Summaries::new(0.35);
        s.frame(
            "v",
            0.0,
            &dets(&[("person", 0.34), ("person", 0.35), ("person", 0.9), ("car", 0.3)]),
        );
        s.frame("v", 1.0, &dets(&[("car", 0.1), ("bike", f32::NAN)]));
        let v = video(&s, "v");
        assert_eq!(v["labels"]["person"]["detections"], 2);
        assert_eq!(v["labels"]["person"]["max_in_frame"], 2);
        let labels = v["labels"].as_object().expect("labels");
        assert_eq!(labels.keys().collect::<Vec<_>>(), ["person"]);
        assert_eq!(v["frames"], 2);
    }

    #[test]
    fn minute_boundaries_are_half_open() {
        let mut s = Summaries::new(0.0);
        s.frame("v", 59.999, &people(1));
        s.frame("v", 60.0, &people(2));
        s.frame("v", 0.0, &people(4));
        let v = video(&s, "v");
        assert_eq!(per_minute(&v, "person"), [5, 2]);
        assert_eq!(v["duration_s"], 60.0);
    }

    #[test]
    fn a_registered_video_without_frames_is_listed() {
        let mut s = Summaries::new(0.35);
        s.video("empty.avi", None);
        s.video("declared.avi", Some(12.0));
        assert_eq!(
            video(&s, "empty.avi"),
            json!({"video": "empty.avi", "duration_s": 0.0, "frames": 0, "failed": 0, "error": null, "labels": {}})
        );
        assert_eq!(video(&s, "declared.avi")["duration_s"], 12.0);
        assert_eq!(video(&s, "declared.avi")["labels"], json!({}));
    }

    #[test]
    fn a_declared_duration_longer_than_the_frames_gives_trailing_zero_minutes() {
        let mut s = Summaries::new(0.35);
        s.video("long.mp4", Some(250.0));
        s.frame("long.mp4", 10.0, &people(2));
        s.frame("long.mp4", 70.0, &people(1));
        let v = video(&s, "long.mp4");
        assert_eq!(per_minute(&v, "person"), [2, 1, 0, 0, 0]);
        assert_eq!(v["duration_s"], 250.0);
    }

    #[test]
    fn frames_past_a_short_declared_duration_still_count() {
        let mut s = Summaries::new(0.35);
        s.video("short.mp4", Some(30.0));
        s.frame("short.mp4", 130.0, &people(1));
        let v = video(&s, "short.mp4");
        assert_eq!(per_minute(&v, "person"), [0, 0, 1]);
        assert_eq!(v["duration_s"], 30.0);
    }

    #[test]
    fn classes_count_the_top_label_of_each_frame() {
        let label = |name: &str, score: f32| Label {
            class_id: 0,
            label: name.into(),
            score,
        };
        let mut s = Summaries::new(0.5);
        s.frame("v", 1.0, &Output::Classes(vec![label("cat", 0.8), label("dog", 0.1)]));
        s.frame("v", 2.0, &Output::Classes(vec![label("dog", 0.7), label("cat", 0.2)]));
        s.frame("v", 3.0, &Output::Classes(vec![label("cat", 0.9)]));
        // Top label under the threshold: the frame counts, the label does not.
        s.frame("v", 4.0, &Output::Classes(vec![label("dog", 0.4), label("cat", 0.3)]));
        s.frame("v", 5.0, &Output::Classes(vec![]));
        let v = video(&s, "v");
        assert_eq!(v["frames"], 5);
        assert_eq!(v["labels"]["cat"]["detections"], 2);
        assert_eq!(v["labels"]["cat"]["max_in_frame"], 1);
        assert_eq!(v["labels"]["cat"]["max_at"], 1.0);
        assert_eq!(v["labels"]["dog"]["detections"], 1);
    }

    #[test]
    fn other_outputs_count_only_frames() {
        let mut s = Summaries::new(0.35);
        s.frame("v", 1.0, &Output::Embedding(vec![0.1, 0.2]));
        s.frame("v", 2.0, &Output::Files(BTreeMap::new()));
        s.frame_failed("v", 3.0);
        let v = video(&s, "v");
        assert_eq!(v["frames"], 2);
        assert_eq!(v["failed"], 1);
        assert_eq!(v["labels"], json!({}));
        // The largest time seen, failed frames included.
        assert_eq!(v["duration_s"], 3.0);
    }

    #[test]
    fn bad_times_count_as_zero_and_never_panic() {
        let mut s = Summaries::new(0.35);
        s.frame("v", f64::NAN, &people(1));
        s.frame("v", f64::INFINITY, &people(1));
        s.frame("v", f64::NEG_INFINITY, &people(1));
        s.frame("v", -5.0, &people(1));
        s.frame("v", -0.0, &people(1));
        s.frame_failed("v", f64::NAN);
        let v = video(&s, "v");
        assert_eq!(per_minute(&v, "person"), [5]);
        assert_eq!(v["duration_s"], 0.0);
        assert_eq!(v["labels"]["person"]["max_at"], 0.0);

        // A finite but absurd time, or a declared duration, is capped.
        s.video("w", Some(1e300));
        s.frame("w", 1e300, &people(2));
        s.video("x", Some(f64::NAN));
        let w = video(&s, "w");
        let minutes = per_minute(&w, "person");
        assert_eq!(minutes.len(), MAX_MINUTES);
        assert_eq!(minutes.last(), Some(&2));
        assert_eq!(minutes.iter().sum::<u64>(), 2);
        assert_eq!(video(&s, "x")["duration_s"], 0.0);
    }

    #[test]
    fn videos_come_in_name_order_and_register_themselves() {
        let mut s = Summaries::new(0.35);
        s.frame("b.mp4", 1.0, &people(1));
        s.video("c.mp4", None);
        s.frame_failed("a.mp4", 2.0);
        s.video_failed("d.mp4", "cannot open");
        let all = s.to_json();
        let names: Vec<&str> = all["videos"]
            .as_array()
            .expect("videos")
            .iter()
            .filter_map(|v| v["video"].as_str())
            .collect();
        assert_eq!(names, ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]);
        assert_eq!(video(&s, "d.mp4")["error"], "cannot open");
        assert_eq!(video(&s, "d.mp4")["frames"], 0);
    }

    #[test]
    fn the_threshold_shows_as_given() {
        assert_eq!(Summaries::new(0.35).to_json()["min_score"], 0.35);
        assert_eq!(Summaries::new(f32::NAN).to_json()["min_score"], 0.0);
        assert_eq!(Summaries::new(0.35).to_json()["videos"], json!([]));
    }
}
