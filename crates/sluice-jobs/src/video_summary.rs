//! Per-video summaries of a job over video files: read from the job's
//! results (frames keyed `<video>@<seconds>`, a failed video keyed by the
//! video), so they are the same whichever node wrote the results and
//! however often the job restarted (docs/video.md).

use sluice_io::summary::Summaries;
use sluice_io::video::{is_video_path, parse_frame_key};
use sluice_store::{ItemState, Store, StoreError};

/// Results read per page.
const PAGE: u32 = 1000;

/// The summaries of job `job_id`'s finished items, counting detections of
/// at least `min_score`; `None` when the job holds no video frames.
pub async fn job_summary(
    store: &dyn Store,
    job_id: &str,
    min_score: f32,
) -> Result<Option<serde_json::Value>, StoreError> {
    let mut summaries = Summaries::new(min_score);
    let mut seen = false;
    let mut after = None;
    loop {
        let page = store.results(job_id, after, PAGE).await?;
        if page.is_empty() {
            break;
        }
        for r in &page {
            after = r.done_seq.or(after);
            if let Some((video, t)) = parse_frame_key(&r.key) {
                seen = true;
                let output = r
                    .output
                    .as_ref()
                    .and_then(|o| serde_json::from_value::<sluice_core::Output>(o.clone()).ok());
                match (r.state, output) {
                    (ItemState::Done, Some(output)) => summaries.frame(video, t, &output),
                    (ItemState::Canceled, _) => {}
                    _ => summaries.frame_failed(video, t),
                }
            } else if is_video_path(std::path::Path::new(&r.key)) && r.state == ItemState::Failed {
                seen = true;
                let message = r.error.as_ref().map_or("the video failed", |e| e.message.as_str());
                summaries.video_failed(&r.key, message);
            }
        }
    }
    Ok(seen.then(|| summaries.to_json()))
}
