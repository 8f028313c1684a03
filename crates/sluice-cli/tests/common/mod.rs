//! Helpers shared by the CLI's integration tests: the repository layout, the
//! `sluice` binary with a clean environment, and a `sluice serve` child
//! process on free loopback ports (HTTP and gRPC) that is killed when dropped.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod moto;
pub mod outputs;

pub const SETUP: &str = "run `bash scripts/setup.sh` in the repository root first";

/// Longest a test waits for a server to start or a job to reach a state.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// Environment variables of the binary that must not leak into the tests.
pub const SLUICE_ENV: &[&str] = &[
    "SLUICE_MODELS",
    "SLUICE_DATA_DIR",
    "SLUICE_LISTEN",
    "SLUICE_GRPC_LISTEN",
    "SLUICE_NO_GRPC",
    "SLUICE_SOURCE_ROOTS",
    "SLUICE_MAX_BODY_MB",
    "SLUICE_MAX_INPUT_MB",
    "SLUICE_MAX_INPUTS_PER_JOB",
    "SLUICE_SHUTDOWN_GRACE_S",
    "SLUICE_STORE",
    "SLUICE_NODE_ID",
    "SLUICE_ROLE",
    "SLUICE_LEASE_S",
    "SLUICE_SERVER",
    "SLUICE_THREADS",
    "SLUICE_DEVICE",
    "SLUICE_LOG",
    "SLUICE_LOG_FORMAT",
    "SLUICE_TEST_INGEST_DELAY_MS",
    "SLUICE_OUTPUT_ROOTS",
    "SLUICE_OUTPUT_PART_MB",
    "SLUICE_OUTPUT_FLUSH_S",
];

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

pub fn require_onnxruntime() {
    if let Err(e) = sluice_onnx::locate_library() {
        panic!("ONNX Runtime is not installed ({e}); {SETUP}");
    }
}

/// `models/<name>/<file>` of the repository, which must exist.
pub fn repo_model_file(name: &str, file: &str) -> PathBuf {
    let p = repo_root().join("models").join(name).join(file);
    assert!(p.is_file(), "{} is missing; {SETUP}", p.display());
    p
}

/// Writes `dir/<name>/model.toml` from the repository's `models/<name>/model.toml`
/// with each `(from, to)` replacement applied (each must match).
pub fn write_model(dir: &Path, name: &str, replacements: &[(&str, String)]) {
    let src = repo_root().join("models").join(name).join("model.toml");
    let mut text = std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    for (from, to) in replacements {
        assert!(text.contains(from), "{} has no {from:?}", src.display());
        text = text.replace(from, to);
    }
    std::fs::create_dir_all(dir.join(name)).expect("model folder");
    std::fs::write(dir.join(name).join("model.toml"), text).expect("write model.toml");
}

/// Writes `dir/mlp/model.toml`: the repository's 3-layer MLP at `max_batch_size`, on
/// `intra_op_threads` threads when given.
pub fn write_mlp(dir: &Path, max_batch_size: usize, intra_op_threads: Option<usize>) {
    let mut batch = format!("max_batch_size = {max_batch_size}");
    if let Some(t) = intra_op_threads {
        batch.push_str(&format!("\nintra_op_threads = {t}"));
    }
    write_model(
        dir,
        "mlp",
        &[
            (
                "model_file = \"model.onnx\"",
                format!("model_file = {}", toml_path(&repo_model_file("mlp", "model.onnx"))),
            ),
            ("max_batch_size = 32", batch),
        ],
    );
}

/// Writes `n` MLP inputs with the ids `i00000`, `i00001`, .. as JSONL to `path`:
/// 512 values each, written as one-digit numbers to keep the file (and the store) small.
pub fn write_mlp_inputs(path: &Path, n: usize) {
    use std::io::Write as _;
    let mut w = std::io::BufWriter::new(File::create(path).expect("inputs file"));
    for i in 0..n {
        let v: Vec<u8> = (0..512).map(|j| ((i * 31 + j * 7) % 10) as u8).collect();
        serde_json::to_writer(&mut w, &serde_json::json!({"id": format!("i{i:05}"), "tensor": v})).expect("write line");
        w.write_all(b"\n").expect("newline");
    }
    w.flush().expect("flush");
}

/// A TOML string literal for a path.
pub fn toml_path(p: &Path) -> String {
    toml_str(&p.display().to_string())
}

pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string literal")
}

/// The `sluice` binary with the test environment cleared, run from the repository root.
pub fn sluice_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.current_dir(repo_root());
    for var in SLUICE_ENV {
        cmd.env_remove(var);
    }
    cmd
}

pub fn run_sluice(args: &[&str]) -> Output {
    sluice_cmd()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot start the sluice binary")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn assert_success(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// A running `sluice serve`; killed (SIGKILL) and reaped when dropped.
pub struct ServerProc {
    pub child: Child,
    pub base: String,
    /// The KServe v2 gRPC address, `127.0.0.1:port`.
    pub grpc: String,
    pub log: PathBuf,
    pub http: Http,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProc {
    /// Starts `sluice serve` on a free loopback port and waits until `/readyz`
    /// answers 200. Retries with another port if the chosen one was taken meanwhile.
    pub fn start(models: &Path, data_dir: &Path, source_root: Option<&Path>, log: &Path) -> ServerProc {
        ServerProc::start_with(models, data_dir, source_root, log, &[])
    }

    /// [`ServerProc::start`] with more `sluice serve` arguments.
    pub fn start_with(
        models: &Path,
        data_dir: &Path,
        source_root: Option<&Path>,
        log: &Path,
        extra: &[&str],
    ) -> ServerProc {
        ServerProc::start_env(models, data_dir, source_root, log, extra, &[])
    }

    /// [`ServerProc::start_with`] with environment variables for the server.
    pub fn start_env(
        models: &Path,
        data_dir: &Path,
        source_root: Option<&Path>,
        log: &Path,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> ServerProc {
        let http = Http::new();
        for attempt in 0..5 {
            let free_port = || {
                let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
                l.local_addr().expect("local address").port()
            };
            let (port, grpc_port) = (free_port(), free_port());
            let log_file = File::options().create(true).append(true).open(log).expect("server log");
            let mut cmd = sluice_cmd();
            cmd.arg("serve")
                .arg("--models")
                .arg(models)
                .arg("--data-dir")
                .arg(data_dir)
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--grpc-listen")
                .arg(format!("127.0.0.1:{grpc_port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file);
            if let Some(root) = source_root {
                cmd.arg("--source-root").arg(root);
            }
            cmd.args(extra);
            cmd.envs(env.iter().map(|(k, v)| (k, v)));
            let child = cmd.spawn().expect("cannot start sluice serve");
            let mut server = ServerProc {
                child,
                base: format!("http://127.0.0.1:{port}"),
                grpc: format!("127.0.0.1:{grpc_port}"),
                log: log.to_path_buf(),
                http: http.clone(),
            };
            let start = Instant::now();
            loop {
                if let Some(status) = server.child.try_wait().expect("try_wait") {
                    let log = server.log_text();
                    if log.contains("cannot listen") && attempt < 4 {
                        break; // the port was taken between our probe and the bind: try another
                    }
                    panic!("sluice serve exited early ({status}):\n{log}");
                }
                if let Ok((200, _)) = server.try_get("/readyz") {
                    return server;
                }
                assert!(
                    start.elapsed() < DEADLINE,
                    "sluice serve never became ready:\n{}",
                    server.log_text()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("could not find a free port for sluice serve");
    }

    /// Sends SIGTERM and waits for the exit, at most `limit`; the exit
    /// status and how long it took.
    pub fn terminate(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let o = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .output()
            .expect("kill -TERM");
        assert!(o.status.success(), "kill -TERM: {}", text(&o.stderr));
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return (status, start.elapsed());
            }
            assert!(
                start.elapsed() < limit,
                "sluice serve did not exit within {limit:?} of SIGTERM:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn try_get(&self, path: &str) -> Result<(u16, Value), reqwest::Error> {
        self.http.get(&self.url(path))
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        self.try_get(path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}\nserver log:\n{}", self.log_text()))
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.http
            .post(&self.url(path), body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}\nserver log:\n{}", self.log_text()))
    }

    pub fn job(&self, id: &str) -> Value {
        let (status, job) = self.get(&format!("/v1/jobs/{id}"));
        assert_eq!(status, 200, "GET job {id}: {job}");
        job
    }

    /// Polls the job until `done(view)` holds; panics after [`DEADLINE`].
    pub fn wait_for(&self, id: &str, what: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let job = self.job(id);
            if done(&job) {
                return job;
            }
            assert!(start.elapsed() < DEADLINE, "job {id} never {what}: {job}");
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// A blocking HTTP client: reqwest on a small Tokio runtime of its own.
#[derive(Clone)]
pub struct Http {
    rt: std::sync::Arc<tokio::runtime::Runtime>,
    client: reqwest::Client,
}

impl Http {
    pub fn new() -> Http {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Http {
            rt: std::sync::Arc::new(rt),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("HTTP client"),
        }
    }

    pub fn send(&self, req: reqwest::RequestBuilder) -> Result<(u16, Value), reqwest::Error> {
        self.rt.block_on(async {
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            let body = resp.text().await?;
            Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
        })
    }

    pub fn get(&self, url: &str) -> Result<(u16, Value), reqwest::Error> {
        self.send(self.client.get(url))
    }

    pub fn post(&self, url: &str, body: &Value) -> Result<(u16, Value), reqwest::Error> {
        self.send(self.client.post(url).json(body))
    }

    /// Streams a results body line by line into `f` (without holding it all).
    pub fn each_line(&self, url: &str, mut f: impl FnMut(&[u8])) {
        self.rt.block_on(async {
            use futures_util::StreamExt as _;
            let resp = self.client.get(url).send().await.expect("GET results");
            assert_eq!(resp.status().as_u16(), 200, "GET {url}");
            let mut stream = resp.bytes_stream();
            let mut buf: Vec<u8> = Vec::new();
            while let Some(chunk) = stream.next().await {
                buf.extend_from_slice(&chunk.expect("results chunk"));
                let mut start = 0;
                while let Some(len) = buf[start..].iter().position(|&b| b == b'\n') {
                    f(&buf[start..start + len]);
                    start += len + 1;
                }
                buf.drain(..start);
            }
            assert!(buf.is_empty(), "results end without a newline");
        });
    }
}
