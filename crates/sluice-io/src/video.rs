//! Video files as a source: frames sampled by FFmpeg, one input each.
//!
//! # Why a child process
//!
//! Frames are decoded by the `ffmpeg` program, run as a child process that
//! streams raw RGB frames over a pipe, instead of linking the libav*
//! libraries: a malformed or hostile file can crash or hang only that child
//! (untrusted footage is never parsed inside the server's process), any
//! container and codec the installed FFmpeg knows works, and no C library
//! has to be built with Sluice. The pipe is the bound: FFmpeg blocks when the
//! frames it wrote are not read, so decoding runs ahead of the model only as
//! far as the bounded queues allow, and a two-hour video never sits in
//! memory.
//!
//! FFmpeg is found through `SLUICE_FFMPEG`, else `.sluice/bin/ffmpeg` (what
//! `scripts/setup.sh` links from the `imageio-ffmpeg` wheel) in the current
//! directory, the executable's directory or any of their parents, else
//! `ffmpeg` on `PATH` ([`find_ffmpeg`]).
//!
//! # What comes out
//!
//! Each sampled frame is a [`Record`] keyed `<video>@<seconds>` (three
//! decimals: `vtest.avi@12.500`), where `<video>` is the file's key under
//! the usual rules (the path as given or as the glob matched it, or relative
//! to the folder), with the kept columns `video`, `frame` (the frame's index
//! in the video) and `t` (its time in seconds from the start). The frame is
//! scaled once by FFmpeg to what the model's image processing needs
//! ([`FrameFit`]), so the image processor does no resize.
//!
//! A file FFmpeg cannot open (not a video, a cut-off MP4 without its index)
//! gives one failed record keyed by the video. A video that is damaged or
//! cut short midway gives the frames that decoded, then one failed record
//! keyed by the video that says where decoding stopped.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use sluice_core::{Frame, FrameFit, Input};
use tokio::sync::mpsc;

use crate::confine::open_confined;
use crate::{Kept, Record, Records, SourceError, SourceOptions};

/// Environment variable naming the `ffmpeg` binary to use.
pub const FFMPEG_ENV: &str = "SLUICE_FFMPEG";
/// Where `scripts/setup.sh` links the `imageio-ffmpeg` wheel's binary.
pub const LOCAL_FFMPEG: &str = ".sluice/bin/ffmpeg";
/// What to do when no FFmpeg is found.
pub const FFMPEG_HINT: &str = "install FFmpeg (Debian/Ubuntu: `apt install ffmpeg`; or `bash scripts/setup.sh` in the Sluice checkout, which installs the imageio-ffmpeg wheel's static binary as .sluice/bin/ffmpeg), or set SLUICE_FFMPEG to an ffmpeg binary";

/// File extensions read as video.
pub const VIDEO_EXTENSIONS: [&str; 14] = [
    "mp4", "m4v", "mov", "avi", "mkv", "webm", "mpg", "mpeg", "ts", "mts", "m2ts", "flv", "wmv", "3gp",
];

/// Default number of videos decoded at the same time.
pub const DEFAULT_DECODERS: usize = 2;

/// Whether `path` names a video file (by its extension).
pub fn is_video_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Which frames of a video become inputs. As JSON (a job's `video`):
/// `"all"`, `{"fps": 2}`, `{"every": 5}` or `"keyframes"`.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sampling {
    /// Every frame.
    #[default]
    All,
    /// This many frames per second of video: the first frame at or after
    /// each of 0, 1/fps, 2/fps, ... seconds (a frame's own time, never a
    /// copy: a gap in the footage gives no item).
    Fps(f64),
    /// Every n-th frame: 0, n, 2n, ...
    Every(u64),
    /// Only key frames (the decoder skips the others, which is fast).
    Keyframes,
}

impl Sampling {
    /// Checks the numbers: a positive, finite fps; n at least 1.
    pub fn check(&self) -> Result<(), String> {
        match *self {
            Sampling::Fps(f) if !(f.is_finite() && f > 0.0 && f <= 1000.0) => Err(format!(
                "--fps must be a number of frames per second in (0, 1000], got {f}"
            )),
            Sampling::Every(0) => Err("--every must be at least 1 (1 is every frame)".into()),
            _ => Ok(()),
        }
    }

    /// The FFmpeg filter that picks the frames, if any.
    fn filter(&self) -> Option<String> {
        match *self {
            Sampling::All | Sampling::Keyframes | Sampling::Every(1) => None,
            // FFmpeg's `fps` filter would label the last frame within half a
            // period with the period's time; this keeps each frame's own time.
            Sampling::Fps(f) => Some(format!(
                "select='eq(n\\,0)+gt(floor(t*{f}+1e-6)\\,floor(prev_t*{f}+1e-6))'"
            )),
            Sampling::Every(n) => Some(format!("select='not(mod(n\\,{n}))'")),
        }
    }
}

/// How videos are read.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoOptions {
    /// Which frames.
    pub sampling: Sampling,
    /// How frames are scaled for the model; `None` keeps the video's size.
    pub fit: Option<FrameFit>,
    /// Videos decoded at the same time (at least 1).
    pub decoders: usize,
    /// The `ffmpeg` binary; `None` finds one ([`find_ffmpeg`]).
    pub ffmpeg: Option<PathBuf>,
}

impl Default for VideoOptions {
    fn default() -> Self {
        VideoOptions {
            sampling: Sampling::All,
            fit: None,
            decoders: DEFAULT_DECODERS,
            ffmpeg: None,
        }
    }
}

/// Finds the `ffmpeg` binary (see the module docs for the order).
pub fn find_ffmpeg() -> Result<PathBuf, SourceError> {
    if let Some(p) = std::env::var_os(FFMPEG_ENV) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(SourceError::Decoder(format!(
                "{FFMPEG_ENV}={} does not exist; {FFMPEG_HINT}",
                p.display()
            )))
        };
    }
    if let Some(local) = sluice_core::local::search_ancestors(|d| Some(d.join(LOCAL_FFMPEG)).filter(|p| p.is_file())) {
        return Ok(local);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("ffmpeg");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(SourceError::Decoder(format!("ffmpeg not found; {FFMPEG_HINT}")))
}

/// What FFmpeg says about a video before decoding it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VideoInfo {
    /// Width of the video stream in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames per second, when the stream declares a rate.
    pub fps: Option<f64>,
    /// Duration in seconds, when the container declares one.
    pub duration_s: Option<f64>,
    /// Time of the first frame in seconds (subtracted from every `t`).
    pub start_s: f64,
    /// The codec, as FFmpeg names it (`h264`, `msmpeg4v3`, ...).
    pub codec: String,
}

/// Durations of the videos a source opened, filled in as each is probed
/// (for per-video summaries).
pub type VideoInfos = Arc<Mutex<BTreeMap<String, Result<VideoInfo, String>>>>;

/// Where one video lies.
#[derive(Debug, Clone)]
pub(crate) enum VideoFile {
    /// A local file (opened under the roots, when set).
    Local(PathBuf),
    /// An object, copied to a temporary file to be decoded (FFmpeg needs to
    /// seek in most containers), then removed.
    Object {
        /// The store.
        store: Arc<dyn object_store::ObjectStore>,
        /// The object's path in it.
        path: object_store::path::Path,
    },
}

/// A set of video files to be decoded, opened but not yet read.
#[derive(Debug)]
pub struct VideoSource {
    files: Vec<(VideoFile, String)>,
    video: VideoOptions,
    opts: SourceOptions,
    ffmpeg: PathBuf,
    infos: VideoInfos,
}

impl VideoSource {
    /// Video files `files` (each with its key), read as `video` says.
    pub(crate) fn new(
        files: Vec<(VideoFile, String)>,
        video: VideoOptions,
        opts: SourceOptions,
    ) -> Result<VideoSource, SourceError> {
        video.sampling.check().map_err(SourceError::Decoder)?;
        if let Some(fit) = video.fit {
            if fit.width == 0 || fit.height == 0 {
                return Err(SourceError::Decoder(format!(
                    "frames cannot be scaled to {}x{}",
                    fit.width, fit.height
                )));
            }
        }
        let ffmpeg = match &video.ffmpeg {
            Some(p) => p.clone(),
            None => find_ffmpeg()?,
        };
        Ok(VideoSource {
            files,
            video,
            opts,
            ffmpeg,
            infos: VideoInfos::default(),
        })
    }

    /// The number of videos (not frames: those are known only once decoded).
    pub fn videos(&self) -> usize {
        self.files.len()
    }

    /// The FFmpeg binary this source runs.
    pub fn ffmpeg(&self) -> &Path {
        &self.ffmpeg
    }

    /// What FFmpeg said about each video, filled in as videos are opened.
    pub fn infos(&self) -> VideoInfos {
        self.infos.clone()
    }

    /// The frames of every video, decoded by up to [`VideoOptions::decoders`]
    /// FFmpeg processes at a time on threads of their own; records of
    /// different videos interleave. Dropping the records stops the decoders.
    pub fn records(self) -> Records {
        let decoders = self.video.decoders.clamp(1, self.files.len().max(1));
        // A couple of frames per decoder: the pipe and this channel are all
        // the read-ahead there is.
        let (tx, rx) = mpsc::channel(2 * decoders);
        let queue = Arc::new(Mutex::new(self.files.into_iter()));
        let job = Arc::new(Decode {
            ffmpeg: self.ffmpeg,
            video: self.video,
            roots: self.opts.roots.clone(),
            infos: self.infos,
        });
        for i in 0..decoders {
            let (thread_tx, queue, job) = (tx.clone(), queue.clone(), job.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("sluice-video-{i}"))
                .spawn(move || loop {
                    let next = match queue.lock() {
                        Ok(mut q) => q.next(),
                        Err(_) => None,
                    };
                    let Some((file, key)) = next else { break };
                    if !job.decode_file(&file, &key, &thread_tx) {
                        break;
                    }
                });
            if let Err(e) = spawned {
                let _ = tx.blocking_send(Err(SourceError::Decoder(format!("cannot start a decoder thread: {e}"))));
            }
        }
        Records::from_channel(rx, self.opts)
    }
}

/// What every decoder thread shares.
struct Decode {
    ffmpeg: PathBuf,
    video: VideoOptions,
    roots: Option<Vec<PathBuf>>,
    infos: VideoInfos,
}

/// The kept columns of a frame record.
fn frame_columns(video: &str, frame: Option<u64>, t: Option<f64>) -> Kept {
    let mut k = Kept::new();
    k.insert("video".into(), video.into());
    k.insert("frame".into(), frame.map_or(serde_json::Value::Null, Into::into));
    k.insert(
        "t".into(),
        t.and_then(|t| serde_json::Number::from_f64(round_ms(t)))
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
    );
    k
}

/// `t` rounded to milliseconds, as in the key.
fn round_ms(t: f64) -> f64 {
    (t * 1000.0).round() / 1000.0
}

/// The key of the frame of `video` at `t` seconds.
pub fn frame_key(video: &str, t: f64) -> String {
    format!("{video}@{:.3}", round_ms(t))
}

/// The video and time of a frame key `<video>@<seconds>`; `None` for any
/// other key (the failed record of a whole video is keyed by the video).
pub fn parse_frame_key(key: &str) -> Option<(&str, f64)> {
    let (video, t) = key.rsplit_once('@')?;
    let t: f64 = t.parse().ok().filter(|t: &f64| t.is_finite() && *t >= 0.0)?;
    is_video_path(Path::new(video)).then_some((video, t))
}

/// The failed record of a whole video.
fn failed(video: &str, t: Option<f64>, message: String) -> Record {
    Record {
        key: video.to_owned(),
        input: Err(message),
        keep: Some(frame_columns(video, None, t)),
    }
}

/// Runs FFmpeg with the video file on its standard input: the file is
/// opened here (under the roots, when set), so FFmpeg reads exactly the file
/// that passed the check, through `/dev/stdin`, which it can seek.
fn ffmpeg_with_file(ffmpeg: &Path, file: File, args: &[String], stdout: bool) -> std::io::Result<Child> {
    Command::new(ffmpeg)
        .args(args)
        .stdin(Stdio::from(file))
        .stdout(if stdout { Stdio::piped() } else { Stdio::null() })
        .stderr(Stdio::piped())
        .spawn()
}

/// A line of FFmpeg's log (`-loglevel level+info`) that says the input is
/// damaged: an error, or a warning about corrupt or missing data.
fn is_damage(line: &str) -> bool {
    if line.contains("[error]") || line.contains("[fatal]") || line.contains("[panic]") {
        return true;
    }
    let lower = line.to_ascii_lowercase();
    line.contains("[warning]")
        && ["corrupt", "truncat", "partial file", "invalid", "damaged", "missing"]
            .iter()
            .any(|w| lower.contains(w))
}

/// The message of a log line, without FFmpeg's `[component @ 0x..] [level]` prefixes.
fn log_message(line: &str) -> &str {
    let mut rest = line.trim();
    while let Some(stripped) = rest.strip_prefix('[') {
        match stripped.find(']') {
            Some(end) => rest = stripped[end + 1..].trim_start(),
            None => break,
        }
    }
    rest
}

impl Decode {
    /// Opens the video: under the roots (when set) if `confined`; a
    /// temporary copy of an object is not under them.
    fn open(&self, path: &Path, confined: bool) -> Result<File, String> {
        match self.roots.as_ref().filter(|_| confined) {
            Some(roots) => open_confined(path, roots).map_err(|why| format!("cannot open the video: {why}")),
            None => File::open(path).map_err(|e| format!("cannot open the video: {e}")),
        }
    }

    /// FFmpeg's description of the video, or why it is not one.
    fn probe(&self, path: &Path, confined: bool) -> Result<VideoInfo, String> {
        let file = self.open(path, confined)?;
        let args: Vec<String> = ["-hide_banner", "-nostdin", "-noautorotate", "-i", "file:/dev/stdin"]
            .map(String::from)
            .to_vec();
        let out = ffmpeg_with_file(&self.ffmpeg, file, &args, false)
            .and_then(Child::wait_with_output)
            .map_err(|e| format!("cannot run {}: {e}", self.ffmpeg.display()))?;
        let log = String::from_utf8_lossy(&out.stderr);
        parse_probe(&log).ok_or_else(|| {
            // FFmpeg's own reason: the last line that is not the "no output" complaint.
            let why = log
                .lines()
                .map(log_message)
                .rfind(|l| !l.is_empty() && !l.contains("output file") && !l.starts_with("Error opening input file"))
                .unwrap_or("FFmpeg found no video stream")
                .to_owned();
            format!("not a video FFmpeg can decode: {why}")
        })
    }

    /// Decodes one video, local or an object, into `tx`; false when the
    /// receiver is gone (stop).
    fn decode_file(&self, file: &VideoFile, key: &str, tx: &mpsc::Sender<Result<Record, SourceError>>) -> bool {
        match file {
            VideoFile::Local(path) => self.decode(path, true, key, tx),
            VideoFile::Object { store, path } => match fetch(store.clone(), path.clone()) {
                Ok(tmp) => self.decode(tmp.path(), false, key, tx),
                Err(message) => {
                    if let Ok(mut infos) = self.infos.lock() {
                        infos.insert(key.to_owned(), Err(message.clone()));
                    }
                    tx.blocking_send(Ok(failed(key, None, message))).is_ok()
                }
            },
        }
    }

    /// Decodes one video into `tx` (opened as [`Decode::open`] says);
    /// false when the receiver is gone (stop).
    fn decode(&self, path: &Path, confined: bool, key: &str, tx: &mpsc::Sender<Result<Record, SourceError>>) -> bool {
        let info = self.probe(path, confined);
        if let Ok(mut infos) = self.infos.lock() {
            infos.insert(key.to_owned(), info.clone());
        }
        let info = match info {
            Ok(i) => i,
            Err(message) => return tx.blocking_send(Ok(failed(key, None, message))).is_ok(),
        };
        match self.frames(path, confined, key, &info, tx) {
            Ok(()) => true,
            Err(Stop::Receiver) => false,
            Err(Stop::Failed { t, message }) => tx.blocking_send(Ok(failed(key, t, message))).is_ok(),
        }
    }

    fn frames(
        &self,
        path: &Path,
        confined: bool,
        key: &str,
        info: &VideoInfo,
        tx: &mpsc::Sender<Result<Record, SourceError>>,
    ) -> Result<(), Stop> {
        let (w, h) = output_size(info, self.video.fit);
        let mut filters: Vec<String> = self.video.sampling.filter().into_iter().collect();
        filters.push(format!("scale={w}:{h}:flags=bilinear"));
        filters.push("format=rgb24".into());
        filters.push("showinfo".into());
        let mut args: Vec<String> = ["-hide_banner", "-nostdin", "-loglevel", "level+info", "-noautorotate"]
            .map(String::from)
            .to_vec();
        if self.video.sampling == Sampling::Keyframes {
            args.extend(["-skip_frame", "nokey"].map(String::from));
        }
        args.extend(
            [
                "-i",
                "file:/dev/stdin",
                "-map",
                "0:v:0",
                "-an",
                "-sn",
                "-dn",
                "-vf",
                &filters.join(","),
                "-fps_mode",
                "passthrough",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "rgb24",
                "pipe:1",
            ]
            .map(String::from),
        );
        let file = self
            .open(path, confined)
            .map_err(|message| Stop::Failed { t: None, message })?;
        let mut child = ffmpeg_with_file(&self.ffmpeg, file, &args, true).map_err(|e| Stop::Failed {
            t: None,
            message: format!("cannot run {}: {e}", self.ffmpeg.display()),
        })?;
        let (Some(mut stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Stop::Failed {
                t: None,
                message: "FFmpeg's output pipes are missing".into(),
            });
        };
        // The log is read on its own thread (a full stderr pipe would stall
        // FFmpeg): frame times from `showinfo`, and the first sign of damage.
        let (times_tx, times) = std::sync::mpsc::channel::<f64>();
        let damage: Arc<Mutex<Option<String>>> = Arc::default();
        let log = {
            let damage = damage.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(t) = showinfo_time(&line) {
                        let _ = times_tx.send(t);
                    } else if is_damage(&line) {
                        if let Ok(mut d) = damage.lock() {
                            d.get_or_insert_with(|| log_message(&line).to_owned());
                        }
                    }
                }
            })
        };
        let frame_bytes = w as usize * h as usize * 3;
        let mut n: u64 = 0;
        let mut last_t: Option<f64> = None;
        let result = loop {
            let mut rgb = vec![0u8; frame_bytes];
            match read_full(&mut stdout, &mut rgb) {
                Ok(true) => {}
                Ok(false) => break Ok(()),
                Err(e) => {
                    break Err(Stop::Failed {
                        t: last_t,
                        message: format!("reading frames from FFmpeg failed: {e}"),
                    })
                }
            }
            let pts = times.recv().ok();
            let fallback = info.fps.map_or(n as f64, |fps| n as f64 / fps) + info.start_s;
            let t = (pts.unwrap_or(fallback) - info.start_s).max(0.0);
            let frame = match self.video.sampling {
                Sampling::All => n,
                Sampling::Every(k) => n * k,
                Sampling::Fps(_) | Sampling::Keyframes => info.fps.map_or(n, |fps| (t * fps).round() as u64),
            };
            let record = Record {
                key: frame_key(key, t),
                input: Ok(Input::Frame(Frame {
                    width: w,
                    height: h,
                    rgb,
                    source_width: info.width,
                    source_height: info.height,
                })),
                keep: Some(frame_columns(key, Some(frame), Some(t))),
            };
            if tx.blocking_send(Ok(record)).is_err() {
                break Err(Stop::Receiver);
            }
            n += 1;
            last_t = Some(t);
        };
        if result.is_err() {
            let _ = child.kill();
        }
        drop(stdout);
        let status = child.wait();
        let _ = log.join();
        result?;
        let damage = damage.lock().ok().and_then(|d| d.clone());
        let exit_failed = status.as_ref().map_or(true, |s| !s.success());
        let where_ = match last_t {
            Some(t) => format!("after {n} frames, the last at {t:.3} s"),
            None => "before the first frame".to_owned(),
        };
        let of = info.duration_s.map(|d| format!(" of {d:.3} s")).unwrap_or_default();
        if exit_failed || damage.is_some() {
            let why = damage.unwrap_or_else(|| match &status {
                Ok(s) => format!("FFmpeg exited with {s}"),
                Err(e) => format!("FFmpeg could not be waited for: {e}"),
            });
            return Err(Stop::Failed {
                t: last_t,
                message: format!("the video is damaged or cut short: decoding stopped {where_}{of}: {why}"),
            });
        }
        // A stream that ends well before the declared duration was cut short
        // without FFmpeg saying so.
        if let (Some(d), Some(fps)) = (info.duration_s, info.fps) {
            let step = match self.video.sampling {
                Sampling::Fps(f) => 1.0 / f,
                Sampling::Every(k) => k as f64 / fps,
                Sampling::All => 1.0 / fps,
                Sampling::Keyframes => f64::INFINITY,
            };
            let end = last_t.unwrap_or(0.0);
            if step.is_finite() && d - end > (2.0 * step).max(1.0) {
                return Err(Stop::Failed {
                    t: last_t,
                    message: format!("the video is cut short: decoding stopped {where_}{of}"),
                });
            }
        }
        Ok(())
    }
}

/// Copies an object to a temporary file, streaming (a video is never held
/// in memory); the file is removed when the handle drops.
fn fetch(
    store: Arc<dyn object_store::ObjectStore>,
    path: object_store::path::Path,
) -> Result<tempfile::NamedTempFile, String> {
    use futures_util::StreamExt as _;
    use object_store::ObjectStoreExt as _;
    use std::io::Write as _;
    crate::object::on_io_thread(async move {
        let mut tmp = tempfile::NamedTempFile::new().map_err(|e| format!("cannot make a temporary file: {e}"))?;
        let got = store
            .get(&path)
            .await
            .map_err(|e| format!("cannot read the video: {}", crate::object::said(&e)))?;
        let mut body = got.into_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| format!("reading the video stopped: {}", crate::object::said(&e)))?;
            tmp.write_all(&chunk)
                .map_err(|e| format!("cannot write the temporary copy of the video: {e}"))?;
        }
        tmp.flush()
            .map_err(|e| format!("cannot write the temporary copy of the video: {e}"))?;
        Ok(tmp)
    })?
}

/// Why a video's frames stopped.
enum Stop {
    /// Nobody reads the records any more.
    Receiver,
    /// The video failed at `t` (the last frame read).
    Failed { t: Option<f64>, message: String },
}

/// Fills `buf` from `r`; false at a clean end before the first byte.
fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("a partial frame of {filled} of {} bytes", buf.len()),
                ))
            }
            Ok(k) => filled += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The size FFmpeg scales frames to: the model's size when it stretches;
/// within it keeping the aspect ratio (rounded as the image processor
/// rounds) when it letterboxes; the video's size without a model.
pub fn output_size(info: &VideoInfo, fit: Option<FrameFit>) -> (u32, u32) {
    match fit {
        None => (info.width.max(1), info.height.max(1)),
        Some(f) if !f.keep_aspect => (f.width, f.height),
        Some(f) => {
            let (w, h) = (f64::from(info.width.max(1)), f64::from(info.height.max(1)));
            let scale = f64::min(f64::from(f.width) / w, f64::from(f.height) / h);
            let side = |s: f64, target: u32| ((s * scale).round() as u32).clamp(1, target);
            (side(w, f.width), side(h, f.height))
        }
    }
}

/// The `pts_time` of a `showinfo` frame line.
fn showinfo_time(line: &str) -> Option<f64> {
    if !line.contains("showinfo") || !line.contains(" n:") {
        return None;
    }
    let rest = &line[line.find("pts_time:")? + "pts_time:".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Reads FFmpeg's description of its input: the first video stream's
/// size, rate and codec, and the container's duration and start.
fn parse_probe(log: &str) -> Option<VideoInfo> {
    let mut info = VideoInfo::default();
    let mut found = false;
    for line in log.lines() {
        let line = log_message(line);
        if let Some(rest) = line.strip_prefix("Duration:") {
            for part in rest.split(',') {
                let part = part.trim();
                if let Some(d) = parse_hms(part) {
                    info.duration_s.get_or_insert(d);
                }
                if let Some(s) = part.strip_prefix("start:") {
                    info.start_s = s.trim().parse().unwrap_or(0.0);
                }
            }
        } else if !found && line.starts_with("Stream #") && line.contains(": Video: ") {
            let desc = &line[line.find(": Video: ")? + ": Video: ".len()..];
            info.codec = desc.split([' ', ',']).next().unwrap_or("").to_owned();
            for part in split_top_level(desc) {
                let part = part.trim();
                if let Some((w, h)) = part.split_whitespace().next().and_then(|s| s.split_once('x')) {
                    if let (Ok(w), Ok(h)) = (w.parse::<u32>(), h.parse::<u32>()) {
                        if info.width == 0 && w > 0 && h > 0 {
                            info.width = w;
                            info.height = h;
                        }
                    }
                }
                for unit in [" fps", " tbr"] {
                    if let Some(v) = part.strip_suffix(unit) {
                        if info.fps.is_none() {
                            info.fps = parse_rate(v).filter(|f| *f > 0.0 && f.is_finite());
                        }
                    }
                }
            }
            found = info.width > 0;
        }
    }
    found.then_some(info)
}

/// Splits a stream description at commas that are not inside parentheses
/// (`yuv420p(tv, bt709)` stays whole).
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' if depth <= 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// `10`, `29.97`, `30k` (FFmpeg's shorthand for thousands) as a number.
fn parse_rate(s: &str) -> Option<f64> {
    let s = s.trim();
    match s.strip_suffix('k') {
        Some(k) => k.parse::<f64>().ok().map(|v| v * 1000.0),
        None => s.parse().ok(),
    }
}

/// `00:01:19.50` as seconds; `N/A` is none.
fn parse_hms(s: &str) -> Option<f64> {
    let mut parts = s.trim().split(':');
    let (h, m, sec) = (parts.next()?, parts.next()?, parts.next()?);
    let v = h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + sec.parse::<f64>().ok()?;
    v.is_finite().then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVI: &str = "\
[info] Input #0, avi, from 'file:/dev/stdin':
[info]   Metadata:
[info]     software        : MEncoder 2:1.0~rc2-0ubuntu19
[info]   Duration: 00:01:19.50, start: 0.000000, bitrate: 818 kb/s
[info]   Stream #0:0: Video: msmpeg4v3 (msmpeg4) (div3 / 0x33766964), yuv420p, 768x576, 816 kb/s, 10 fps, 10 tbr, 10 tbn
[fatal] At least one output file must be specified";

    const MP4: &str = "\
  Duration: 00:00:05.31, start: 0.000000, bitrate: 1589 kb/s
  Stream #0:0[0x1](und): Video: h264 (Main) (avc1 / 0x31637661), yuv420p(tv, bt709, progressive), 1280x720 [SAR 1:1 DAR 16:9], 1205 kb/s, 29.97 fps, 30k tbr, 12800 tbn (default)";

    #[test]
    fn probe_reads_size_rate_duration_and_codec() {
        let avi = parse_probe(AVI).expect("avi");
        assert_eq!(
            (avi.width, avi.height, avi.fps, avi.duration_s),
            (768, 576, Some(10.0), Some(79.5))
        );
        assert_eq!(avi.codec, "msmpeg4v3");
        let mp4 = parse_probe(MP4).expect("mp4");
        assert_eq!((mp4.width, mp4.height, mp4.fps), (1280, 720, Some(29.97)));
        assert_eq!(mp4.codec, "h264");
        assert!((mp4.duration_s.unwrap_or(0.0) - 5.31).abs() < 1e-9);
        assert_eq!(parse_probe("[error] Invalid data found when processing input"), None);
        assert_eq!(parse_probe("  Stream #0:0: Audio: mp3, 44100 Hz"), None);
    }

    #[test]
    fn showinfo_lines_give_frame_times() {
        let line = "[Parsed_showinfo_2 @ 0x7f43c800f900] [info] n:  14 pts:    350 pts_time:35      duration:      1";
        assert_eq!(showinfo_time(line), Some(35.0));
        assert_eq!(
            showinfo_time("[Parsed_showinfo_2 @ 0x1] [info] config in time_base: 1/2, frame_rate: 2/1"),
            None
        );
    }

    #[test]
    fn damage_is_an_error_or_a_warning_about_bad_data() {
        assert!(is_damage("[msmpeg4 @ 0x55] [error] ac-tex damaged at 18 4"));
        assert!(is_damage(
            "[in#0/avi @ 0x55] [warning] corrupt input packet in stream 0"
        ));
        assert!(!is_damage("[swscaler @ 0x55] [warning] deprecated pixel format used"));
        assert_eq!(
            log_message("[in#0/avi @ 0x55] [warning] corrupt input packet in stream 0"),
            "corrupt input packet in stream 0"
        );
    }

    #[test]
    fn frames_are_scaled_like_the_image_processor_resizes() {
        let info = VideoInfo {
            width: 768,
            height: 576,
            ..VideoInfo::default()
        };
        let fit = |keep_aspect| {
            Some(FrameFit {
                width: 416,
                height: 416,
                keep_aspect,
            })
        };
        assert_eq!(output_size(&info, fit(false)), (416, 416));
        assert_eq!(output_size(&info, fit(true)), (416, 312));
        assert_eq!(output_size(&info, None), (768, 576));
    }

    #[test]
    fn keys_and_sampling_checks() {
        assert_eq!(frame_key("vtest.avi", 12.5), "vtest.avi@12.500");
        assert_eq!(parse_frame_key("a/vtest.avi@12.500"), Some(("a/vtest.avi", 12.5)));
        assert_eq!(parse_frame_key("me@example.com"), None);
        assert_eq!(parse_frame_key("vtest.avi"), None);
        assert_eq!(parse_frame_key("x.mp4@-1"), None);
        assert_eq!(frame_key("a/b.mp4", 0.1 + 0.2), "a/b.mp4@0.300");
        assert!(Sampling::Fps(0.0).check().is_err());
        assert!(Sampling::Fps(f64::NAN).check().is_err());
        assert!(Sampling::Every(0).check().is_err());
        assert!(Sampling::Fps(2.0).check().is_ok() && Sampling::Keyframes.check().is_ok());
        assert_eq!(Sampling::Every(5).filter().as_deref(), Some("select='not(mod(n\\,5))'"));
        assert_eq!(
            Sampling::Fps(2.0).filter().as_deref(),
            Some("select='eq(n\\,0)+gt(floor(t*2+1e-6)\\,floor(prev_t*2+1e-6))'")
        );
        assert!(is_video_path(Path::new("x/VTEST.AVI")) && !is_video_path(Path::new("x.jpg")));
    }
}
