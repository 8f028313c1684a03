//! The jobs API: create (inline, from a server-side source, or open for
//! uploads), add inputs, close, follow, read results, cancel. The job
//! lifecycle is [`sluice_jobs::Jobs`]; these handlers parse requests, build
//! responses and map errors.

use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::{Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use sluice_jobs::{NewJobRequest, OutputRequest};
use sluice_store::{InputValue, ItemResult, Job, JobFilter, JobStatus};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody};
use crate::ingest;
use crate::AppState;

/// JSON extractor whose rejections become [`ApiError`]s.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(v) = Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(v))
    }
}

/// `POST /v1/jobs` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// Model name.
    pub model: String,
    /// Model version; default: the served one.
    #[serde(default)]
    pub version: Option<String>,
    /// Inputs by key: a string (text), `{"base64": ..}` (bytes, e.g. an
    /// image), `{"text": ..}`, or `{"tensor": ..}` / any array or object (tensor).
    #[serde(default)]
    #[schema(schema_with = inline_inputs_schema)]
    pub inputs: Option<InlineInputs>,
    /// A JSONL / CSV / text file or a folder on the server, under an allowed root.
    #[serde(default)]
    pub source: Option<String>,
    /// Create an open job and add inputs with `POST /v1/jobs/{id}/inputs`.
    #[serde(default)]
    pub open: bool,
    /// Time limit from creation; unfinished items then time out.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
    /// Higher runs more often when jobs share a model (0..9).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 9)]
    pub priority: i32,
    /// Free-form labels to filter by.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Where to write the results as they arrive, besides the store: rolling
    /// parts, `errors-*.jsonl` and `_manifest.json` in a folder or an
    /// object-store prefix under an allowed `--output-root`.
    #[serde(default)]
    pub output: Option<OutputBody>,
    /// With a `source` of video files: which frames become inputs:
    /// `{"fps": 2}` (the first frame at or after every half second),
    /// `{"every": 5}` (every 5th frame) or `"keyframes"`; default every frame.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub video: Option<sluice_jobs::ingest::Sampling>,
}

/// `CreateJob::output`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputBody {
    /// A folder on the server or an object-store prefix (`s3://bucket/out/`).
    pub uri: String,
    /// `jsonl` (default) or `parquet`.
    #[serde(default)]
    pub format: Option<String>,
}

/// A job's output and how far it is written.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutputView {
    /// Where.
    pub uri: String,
    /// `jsonl` or `parquet`.
    pub format: String,
    /// `writing`, `written` (every result and the manifest) or `failed`.
    pub state: String,
    /// Results in committed parts.
    pub rows: u64,
    /// Why the output failed (the results stay readable through the API).
    pub error: Option<String>,
}

/// The schema of `CreateJob::inputs`: an object with at least one key, or null.
fn inline_inputs_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .min_properties(Some(1))
        .description(Some(
            "Inputs by key (at least one): a string (text), `{\"base64\": ..}` (bytes, e.g. an image), \
             `{\"text\": ..}`, or `{\"tensor\": ..}` / any array or object (tensor).",
        ))
        .build()
}

/// The `inputs` object of an inline job, in the order given. A JSON object
/// parsed into a map keeps only the last of two equal keys; this keeps every
/// entry as it is read and refuses a key given twice, naming it, while the
/// body is parsed (no second pass over it).
#[derive(Debug, Default)]
pub struct InlineInputs(pub Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for InlineInputs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = InlineInputs;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of inputs by key")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<InlineInputs, A::Error> {
                let mut seen = HashSet::new();
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if seen.contains(&key) {
                        return Err(A::Error::custom(format!("duplicate input key '{key}'")));
                    }
                    let value = map.next_value::<serde_json::Value>()?;
                    seen.insert(key.clone());
                    entries.push((key, value));
                }
                Ok(InlineInputs(entries))
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

/// Item counts of a job.
#[derive(Debug, Serialize, ToSchema)]
pub struct Counts {
    /// Inputs in the job.
    pub total: u64,
    /// Not finished yet.
    pub pending: u64,
    /// Finished with a result.
    pub completed: u64,
    /// Finished with an error.
    pub failed: u64,
    /// Dropped by cancellation.
    pub canceled: u64,
    /// Dropped by the job's timeout.
    pub timedout: u64,
}

/// Where a job's time went.
#[derive(Debug, Serialize, ToSchema)]
pub struct Timings {
    /// Mean time an item waited for its batch, ms.
    pub mean_queue_ms: f64,
    /// Mean model time per item (batch time / batch size), ms.
    pub mean_model_ms: f64,
    /// Since the first item ran (or until the job ended), ms.
    pub elapsed_ms: Option<i64>,
}

/// A job as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    /// Job id.
    pub id: String,
    /// Model name.
    pub model: String,
    /// Model version, if given.
    pub version: Option<String>,
    /// SUBMITTED, IN_PROGRESS, COMPLETED, CANCELED, TIMEDOUT or FAILED.
    pub status: String,
    /// Still taking inputs.
    pub open: bool,
    /// Scheduling priority.
    pub priority: i32,
    /// Labels.
    pub tags: Vec<String>,
    /// Time limit, ms.
    pub timeout_ms: Option<u64>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms of the first item fed.
    pub started_at: Option<i64>,
    /// Unix ms when it ended.
    pub finished_at: Option<i64>,
    /// Item counts.
    pub counts: Counts,
    /// Timings.
    pub timings: Timings,
    /// Finished items per second since start.
    pub items_per_s: Option<f64>,
    /// Estimated seconds to finish at the current rate.
    pub eta_s: Option<f64>,
    /// Why the job failed as a whole, if it did; `null` otherwise.
    pub error: Option<JobError>,
    /// Where its results are written besides the store, and how far; absent
    /// without an output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputView>,
}

/// Why a job failed as a whole (its items' errors are in their results).
#[derive(Debug, Serialize, ToSchema)]
pub struct JobError {
    /// `source_failed`: the job's `source` could not be read to the end (a
    /// read error, an object store that stopped answering, a key given twice,
    /// more inputs than a job may hold, a source that vanished or changed
    /// before a resume after a restart). The inputs read before it still run
    /// and keep their results; the job then ends `FAILED`.
    pub code: &'static str,
    /// What went wrong, for humans: where the source stopped and why.
    pub message: String,
}

impl From<Job> for JobView {
    fn from(j: Job) -> Self {
        let finished = j.completed + j.failed;
        let end = j.finished_at.unwrap_or_else(sluice_store::now_ms);
        let elapsed_ms = j.started_at.map(|s| (end - s).max(0));
        let items_per_s = elapsed_ms.filter(|&e| e > 0).map(|e| finished as f64 * 1e3 / e as f64); // items that ran; canceled ones did not
        let pending = j.pending;
        let eta_s = items_per_s
            .filter(|r| *r > 0.0 && !j.status.is_terminal())
            .map(|r| pending as f64 / r);
        let mean = |total: f64| if finished == 0 { 0.0 } else { total / finished as f64 };
        JobView {
            counts: Counts {
                total: j.total,
                pending,
                completed: j.completed,
                failed: j.failed,
                canceled: j.canceled,
                timedout: j.timedout,
            },
            timings: Timings {
                mean_queue_ms: mean(j.queue_ms_total),
                mean_model_ms: mean(j.model_ms_total),
                elapsed_ms,
            },
            items_per_s,
            eta_s,
            id: j.id,
            model: j.model,
            version: j.version,
            status: j.status.as_str().to_string(),
            open: j.open && !j.closed,
            priority: j.priority,
            tags: j.tags,
            timeout_ms: j.timeout_ms,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            error: j.error.map(|message| JobError {
                code: "source_failed",
                message,
            }),
            output: j.output.map(|o| OutputView {
                uri: o.uri,
                format: o.format,
                state: match o.state {
                    sluice_store::OutputState::Writing => "writing",
                    sluice_store::OutputState::Written => "written",
                    sluice_store::OutputState::Failed => "failed",
                }
                .to_owned(),
                rows: o.rows,
                error: o.error,
            }),
        }
    }
}

/// Create a job.
#[utoipa::path(post, path = "/v1/jobs", operation_id = "create_job", request_body = CreateJob,
    responses((status = 201, body = JobView, description = "The job; `Location` is its URL",
        links(
            ("GetJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/id")))),
            ("AddInputs" = (operation_id = "add_job_inputs", parameters(("id" = "$response.body#/id")))),
            ("CloseJob" = (operation_id = "close_job", parameters(("id" = "$response.body#/id")))),
            ("Results" = (operation_id = "job_results", parameters(("id" = "$response.body#/id")))),
            ("CancelJob" = (operation_id = "cancel_job", parameters(("id" = "$response.body#/id"))))
        )), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
              (status = 503, description = "The job store cannot write now (see /readyz); retry after `Retry-After` seconds", body = ErrorBody)))]
pub async fn create(State(state): State<AppState>, ApiJson(req): ApiJson<CreateJob>) -> Result<Response, ApiError> {
    let job = state
        .jobs()
        .create(NewJobRequest {
            model: req.model,
            version: req.version,
            inputs: req.inputs.map(|InlineInputs(entries)| entries),
            source: req.source,
            open: req.open,
            timeout_ms: req.timeout_ms,
            priority: req.priority,
            tags: req.tags,
            output: req.output.map(|o| OutputRequest {
                uri: o.uri,
                format: o.format,
            }),
            video: req.video,
        })
        .await?;
    let location = format!("/v1/jobs/{}", job.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(JobView::from(job)),
    )
        .into_response())
}

/// Inputs added by an upload.
#[derive(Debug, Serialize, ToSchema)]
pub struct Added {
    /// Inputs added by this request.
    pub added: u64,
    /// Inputs in the job now.
    pub total: u64,
}

/// Add inputs to an open job: a JSONL body (one `{"key", "text" | "base64" |
/// "tensor" | "value"}` per line) or multipart files (key = file name).
#[utoipa::path(post, path = "/v1/jobs/{id}/inputs", operation_id = "add_job_inputs", params(("id" = String, Path, description = "Job id")),
    request_body(content = String, content_type = "application/x-ndjson"),
    responses((status = 200, body = Added), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody),
              (status = 413, description = "The body, an input, or the job's number of inputs is over its limit", body = ErrorBody),
              (status = 503, description = "The job store cannot write now (see /readyz); retry after `Retry-After` seconds", body = ErrorBody)))]
pub async fn add_inputs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Json<Added>, ApiError> {
    let jobs = state.jobs();
    let job = jobs.open_for_inputs(&id).await?;
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let mut items = Vec::new();
    if is_multipart {
        let mut mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::BadRequest(e.body_text()))?;
        while let Some(field) = mp.next_field().await? {
            let key = field
                .file_name()
                .or_else(|| field.name())
                .map(str::to_string)
                .ok_or_else(|| ApiError::BadRequest("each multipart part needs a file name or a field name".into()))?;
            let data = field.bytes().await?;
            items.push((key, InputValue::Bytes(data.to_vec())));
        }
    } else {
        let body = Bytes::from_request(req, &()).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge(format!("request body too large: {}", e.body_text()))
            } else {
                ApiError::BadRequest(e.body_text())
            }
        })?;
        let text =
            std::str::from_utf8(&body).map_err(|_| ApiError::BadRequest("the JSONL body is not UTF-8".into()))?;
        let offset = usize::try_from(job.total).unwrap_or(0);
        for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            items.push(ingest::record_from_json(line, offset + i + 1).map_err(ApiError::BadRequest)?);
        }
    }
    let (added, total) = jobs.add_inputs(&job, items).await?;
    Ok(Json(Added { added, total }))
}

/// Close an open job: no more inputs; it completes when all have run.
#[utoipa::path(post, path = "/v1/jobs/{id}/close", operation_id = "close_job", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody),
              (status = 503, description = "The job store cannot take the request now", body = ErrorBody)))]
pub async fn close(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<JobView>, ApiError> {
    Ok(Json(state.jobs().close(&id).await?.into()))
}

/// A job's status, counts, timings, rate and ETA.
#[utoipa::path(get, path = "/v1/jobs/{id}", operation_id = "get_job", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody),
              (status = 503, description = "The job store cannot take the request now", body = ErrorBody)))]
pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<JobView>, ApiError> {
    Ok(Json(state.jobs().get(&id).await?.into()))
}

/// Cancel a job: items not yet run are dropped; a running batch finishes.
#[utoipa::path(delete, path = "/v1/jobs/{id}", operation_id = "cancel_job", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody),
              (status = 503, description = "The job store cannot take the request now", body = ErrorBody)))]
pub async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<JobView>, ApiError> {
    Ok(Json(state.jobs().cancel(&id).await?.into()))
}

/// `GET /v1/jobs` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only jobs in this status.
    pub status: Option<String>,
    /// Only jobs on this model.
    pub model: Option<String>,
    /// Only jobs with this tag.
    pub tag: Option<String>,
    /// Page size (default 50, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// List jobs, newest first, filtered and paged.
#[utoipa::path(get, path = "/v1/jobs", operation_id = "list_jobs", params(ListQuery),
    responses((status = 200, body = JobList), (status = 400, body = ErrorBody),
              (status = 503, description = "The job store cannot take the request now", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let Query(q) = q?;
    let status = match q.status.as_deref() {
        Some(s) => Some(
            s.to_ascii_uppercase()
                .parse::<JobStatus>()
                .map_err(|_| ApiError::BadRequest(format!("unknown status '{s}'")))?,
        ),
        None => None,
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be between 1 and 1000".into()));
    }
    let (jobs, next_cursor) = state
        .store
        .list_jobs(JobFilter {
            status,
            model: q.model,
            tag: q.tag,
            limit: u32::try_from(limit).unwrap_or(1000),
            cursor: q.cursor,
        })
        .await?;
    Ok(Json(JobList {
        jobs: jobs.into_iter().map(JobView::from).collect(),
        next_cursor,
    }))
}

/// One line of the results stream.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResultLine {
    /// Input key.
    pub key: String,
    /// done, failed, canceled, timedout or pending.
    pub state: String,
    /// The output (for `done`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub output: Option<serde_json::Value>,
    /// The error (otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub error: Option<serde_json::Value>,
    /// Queue time, ms.
    pub queue_ms: f64,
    /// Model time per item, ms.
    pub model_ms: f64,
    /// Resume cursor: pass as `cursor` to continue after this line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<i64>,
}

impl From<ItemResult> for ResultLine {
    fn from(r: ItemResult) -> Self {
        ResultLine {
            key: r.key,
            state: r.state.as_str().to_string(),
            output: r.output,
            error: r
                .error
                .map(|e| serde_json::json!({"code": e.code, "message": e.message})),
            queue_ms: r.queue_ms.unwrap_or(0.0),
            model_ms: r.model_ms.unwrap_or(0.0),
            cursor: r.done_seq,
        }
    }
}

/// `GET /v1/jobs/{id}/results` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ResultsQuery {
    /// Continue after this cursor (the `cursor` of the last line read).
    pub cursor: Option<i64>,
    /// Most lines to return (default: all).
    pub limit: Option<u64>,
    /// Keep the stream open until the job ends, sending results as they come.
    #[serde(default)]
    pub wait: bool,
}

/// Results as NDJSON, in completion order, resumable with `cursor`; readable
/// while the job runs (`wait=true` follows it to the end).
#[utoipa::path(get, path = "/v1/jobs/{id}/results", operation_id = "job_results", params(("id" = String, Path, description = "Job id"), ResultsQuery),
    responses((status = 200, body = ResultLine, content_type = "application/x-ndjson"), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 503, description = "The job store cannot take the request now", body = ErrorBody)))]
pub async fn results(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<ResultsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    let job = state.jobs().get(&id).await?;
    let store = state.store.clone();
    let shutdown = state.shutdown.clone();
    let page = 1000u64;
    let init = (q.cursor, q.limit.unwrap_or(u64::MAX), false);
    let stream = futures_util::stream::unfold(init, move |(cursor, left, done)| {
        let store = store.clone();
        let id = id.clone();
        let shutdown = shutdown.clone();
        async move {
            if done || left == 0 {
                return None;
            }
            loop {
                let n = u32::try_from(left.min(page)).unwrap_or(1000);
                // Read the status first: results recorded before a terminal status are all visible below.
                let terminal = match store.get_job(&id).await {
                    Ok(Some(j)) => j.status.is_terminal(),
                    _ => true,
                };
                let rows = match store.results(&id, cursor, n).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(job = %id, error = %e, "results stream stopped");
                        return None;
                    }
                };
                if !rows.is_empty() {
                    let next = rows.last().and_then(|r| r.done_seq).or(cursor);
                    let count = rows.len() as u64;
                    let mut chunk = Vec::with_capacity(rows.len() * 128);
                    for r in rows {
                        if serde_json::to_writer(&mut chunk, &ResultLine::from(r)).is_ok() {
                            chunk.push(b'\n');
                        }
                    }
                    return Some((Ok::<_, Infallible>(Bytes::from(chunk)), (next, left - count, false)));
                }
                // On shutdown a follower gets what is recorded, then the stream ends
                // (it resumes from its last cursor against the restarted server).
                if !q.wait || terminal || shutdown.is_set() {
                    return None;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    () = shutdown.wait() => {}
                }
            }
        }
    });
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        "application/x-ndjson"
            .parse()
            .map_err(|_| ApiError::Internal("header".into()))?,
    );
    if let Ok(v) = job.status.as_str().parse() {
        headers.insert("x-job-status", v);
    }
    Ok((headers, Body::from_stream(stream)).into_response())
}

/// Per-video summaries of a job over video files (docs/video.md): per
/// video, frames done and failed, why it stopped decoding, and per label the
/// detections per minute and the most seen in one frame; read from the
/// results finished so far. A job without video frames has no videos.
#[utoipa::path(get, path = "/v1/jobs/{id}/summary", operation_id = "job_summary",
    params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "Per-video summaries", body = Object), (status = 404, body = ErrorBody),
              (status = 503, description = "The job store cannot take the request now", body = ErrorBody)))]
pub async fn summary(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let job = state
        .store
        .get_job(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job '{id}' not found")))?;
    let min_score = state
        .registry
        .spec(&job.model)
        .map_or(0.0, |s| s.processing.describe().gives.min_score());
    let summary = sluice_jobs::video_summary::job_summary(&*state.store, &id, min_score)
        .await?
        .unwrap_or_else(|| serde_json::json!({"min_score": min_score, "videos": []}));
    Ok(Json(summary))
}

/// One input's result (state `pending` while it waits).
#[utoipa::path(get, path = "/v1/jobs/{id}/results/{key}", operation_id = "job_result",
    params(("id" = String, Path, description = "Job id"), ("key" = String, Path, description = "Input key")),
    responses((status = 200, body = ResultLine), (status = 404, body = ErrorBody),
              (status = 503, description = "The job store cannot take the request now", body = ErrorBody)))]
pub async fn result(
    State(state): State<AppState>,
    Path((id, key)): Path<(String, String)>,
) -> Result<Json<ResultLine>, ApiError> {
    if state.store.get_job(&id).await?.is_none() {
        return Err(ApiError::NotFound(format!("job '{id}' not found")));
    }
    let r = state
        .store
        .result(&id, &key)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("job '{id}' has no input '{key}'")))?;
    Ok(Json(r.into()))
}
