//! One OMI worker: the process Sluice started (or an endpoint it was given),
//! a gRPC client to it, and what its `Status` said.
//!
//! Everything here is blocking, driven on the backend's small Tokio runtime,
//! because it is called from the engine's instance threads. Started workers
//! run in their own process group (a Ctrl-C in the terminal reaches Sluice,
//! which stops them in order) and are killed when their handle drops; the
//! SDK also exits by itself when its parent process disappears
//! (`SLUICE_PARENT_PID`), so no worker outlives Sluice.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime as Tokio;
use tonic::transport::{Channel, Endpoint};

use crate::proto::modzy_model_client::ModzyModelClient;
use crate::proto::{RunRequest, RunResponse, ShutdownRequest, StatusRequest, StatusResponse};
use crate::OmiError;

/// Largest message either side may send (model outputs can be large files).
const MAX_MESSAGE: usize = 256 << 20;

/// How a worker is reached.
#[derive(Debug, Clone)]
pub(crate) enum Launch {
    /// Sluice starts the worker: program, arguments, working directory, environment.
    Command {
        program: PathBuf,
        args: Vec<String>,
        dir: PathBuf,
        env: Vec<(String, String)>,
    },
    /// The worker already runs at `host:port`.
    Endpoint(String),
}

/// Why a `Run` call did not produce a response.
#[derive(Debug)]
pub(crate) enum CallFault {
    /// The worker process died or the connection broke.
    Crashed(String),
    /// The call exceeded the run timeout.
    TimedOut(Duration),
    /// The worker stopped answering `Status` probes during the call for this
    /// long (stopped, deadlocked, swapped out): treated as hung.
    Hung(Duration),
    /// The worker refused the request as invalid (gRPC `INVALID_ARGUMENT`).
    Invalid(String),
    /// The worker answered with a gRPC error and is still alive.
    Rejected(String),
}

/// How a `Run` call watches for a hung worker: a `Status` probe every
/// `interval` on a separate connection, each given `interval` to answer;
/// no answer for `timeout` means hung.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HangWatch {
    pub timeout: Duration,
    pub interval: Duration,
}

impl HangWatch {
    /// Four probes per hang timeout (at least 20 ms apart).
    pub fn new(timeout: Duration) -> HangWatch {
        HangWatch {
            timeout,
            interval: (timeout / 4).max(Duration::from_millis(20)),
        }
    }
}

/// A started (or connected) worker.
pub(crate) struct Worker {
    /// Model and slot, for logs.
    pub label: String,
    /// `host:port`.
    pub endpoint: String,
    child: Option<Child>,
    client: ModzyModelClient<Channel>,
    /// A second connection, for `Status` probes while a `Run` is in flight
    /// (so a probe never queues behind the call it watches).
    probe: ModzyModelClient<Channel>,
    /// The worker's `Status` answer.
    pub status: StatusResponse,
}

impl Worker {
    /// Starts (or connects to) a worker and waits for its first `Status`.
    pub fn start(
        rt: &Tokio,
        label: String,
        launch: &Launch,
        start_timeout: Duration,
        status_timeout: Duration,
    ) -> Result<Worker, OmiError> {
        let (endpoint, mut child) = match launch {
            Launch::Endpoint(e) => (e.clone(), None),
            Launch::Command {
                program,
                args,
                dir,
                env,
            } => {
                let port = free_port().map_err(|e| OmiError::Start(format!("{label}: no free port: {e}")))?;
                let mut cmd = Command::new(program);
                cmd.args(args)
                    .current_dir(dir)
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .env("PSC_MODEL_PORT", port.to_string())
                    .env("PSC_MODEL_HOST", "127.0.0.1")
                    .env("SLUICE_PARENT_PID", std::process::id().to_string())
                    .env("PYTHONUNBUFFERED", "1")
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .process_group(0);
                let mut child = cmd
                    .spawn()
                    .map_err(|e| OmiError::Start(format!("{label}: cannot start {}: {e}", program.display())))?;
                forward(&label, "stdout", child.stdout.take());
                forward(&label, "stderr", child.stderr.take());
                tracing::info!(worker = %label, pid = child.id(), port, "OMI worker started");
                (format!("127.0.0.1:{port}"), Some(child))
            }
        };
        let deadline = Instant::now() + start_timeout;
        let mut last_error = String::from("no answer yet");
        loop {
            if let Some(c) = child.as_mut() {
                if let Ok(Some(exit)) = c.try_wait() {
                    return Err(OmiError::Start(format!(
                        "{label}: the worker exited ({exit}) before answering Status; last error: {last_error}"
                    )));
                }
            }
            match rt.block_on(connect_and_status(&endpoint, status_timeout)) {
                Ok((client, status)) => {
                    if status.status_code >= 400 {
                        last_error = format!("Status answered {}: {}", status.status_code, status.message);
                    } else {
                        let probe = match probe_client(rt, &endpoint) {
                            Ok(p) => p,
                            Err(e) => {
                                if let Some(mut c) = child {
                                    let _ = c.kill();
                                    let _ = c.wait();
                                }
                                return Err(OmiError::Start(format!("{label}: {e}")));
                            }
                        };
                        let mut w = Worker {
                            label,
                            endpoint,
                            child,
                            client,
                            probe,
                            status,
                        };
                        w.log_status();
                        return Ok(w);
                    }
                }
                Err(e) => last_error = e,
            }
            if Instant::now() >= deadline {
                if let Some(mut c) = child {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(OmiError::Start(format!(
                    "{label}: no Status from {endpoint} within {start_timeout:?}: {last_error}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_status(&mut self) {
        let s = &self.status;
        let info = s.model_info.clone().unwrap_or_default();
        tracing::info!(
            worker = %self.label,
            endpoint = %self.endpoint,
            model = %info.model_name,
            version = %info.model_version,
            batch_size = s.features.as_ref().map_or(0, |f| f.batch_size),
            "OMI worker ready"
        );
    }

    /// The worker's process id, when Sluice started it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether a started worker's process has exited.
    pub fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(exit)) => Some(exit.to_string()),
            _ => None,
        }
    }

    /// A `Status` health check.
    pub fn health(&mut self, rt: &Tokio, timeout: Duration) -> Result<(), String> {
        let mut client = self.client.clone();
        match rt.block_on(async { tokio::time::timeout(timeout, client.status(StatusRequest {})).await }) {
            Ok(Ok(r)) if r.get_ref().status_code < 400 => Ok(()),
            Ok(Ok(r)) => Err(format!(
                "Status answered {}: {}",
                r.get_ref().status_code,
                r.get_ref().message
            )),
            Ok(Err(e)) => Err(format!("Status failed: {}: {}", e.code(), e.message())),
            Err(_) => Err(format!("Status did not answer within {timeout:?}")),
        }
    }

    /// One `Run` call, bounded by `timeout`, while `hang` probes the worker
    /// with `Status` on the probe connection: a worker that answers no probe
    /// for `hang.timeout` is reported as hung at once, whatever `timeout` says.
    pub fn run(
        &mut self,
        rt: &Tokio,
        req: RunRequest,
        timeout: Duration,
        hang: HangWatch,
    ) -> Result<RunResponse, CallFault> {
        let mut client = self.client.clone();
        let mut probe = self.probe.clone();
        let outcome = rt.block_on(async move {
            let call = tokio::time::timeout(timeout, client.run(req));
            let watch = async {
                let mut last_ok = Instant::now();
                loop {
                    tokio::time::sleep(hang.interval).await;
                    let answered = matches!(
                        tokio::time::timeout(hang.interval, probe.status(StatusRequest {})).await,
                        Ok(Ok(ref r)) if r.get_ref().status_code < 400
                    );
                    if answered {
                        last_ok = Instant::now();
                    } else if last_ok.elapsed() >= hang.timeout {
                        return last_ok.elapsed();
                    }
                }
            };
            tokio::select! {
                r = call => Ok(r),
                silent = watch => Err(silent),
            }
        });
        let outcome = match outcome {
            Ok(r) => r,
            Err(silent) => return Err(CallFault::Hung(silent)),
        };
        match outcome {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Err(_) => Err(CallFault::TimedOut(timeout)),
            Ok(Err(status)) => {
                let text = format!("{}: {}", status.code(), status.message());
                if self.child.is_some() {
                    // A crash shows as a broken connection; give the exit a moment to be visible.
                    for _ in 0..10 {
                        if let Some(exit) = self.exited() {
                            return Err(CallFault::Crashed(format!("the worker process exited ({exit})")));
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                match status.code() {
                    tonic::Code::InvalidArgument => Err(CallFault::Invalid(status.message().to_string())),
                    tonic::Code::Unavailable | tonic::Code::Cancelled => Err(CallFault::Crashed(text)),
                    tonic::Code::Unknown | tonic::Code::Internal if is_transport(status.message()) => {
                        Err(CallFault::Crashed(text))
                    }
                    _ => Err(CallFault::Rejected(text)),
                }
            }
        }
    }

    /// Stops the worker: kill at once (`graceful = false`, after a crash or
    /// timeout), or `Shutdown`, wait up to `grace`, then kill.
    pub fn stop(mut self, rt: Option<&Tokio>, graceful: bool, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if graceful {
            if let Some(rt) = rt {
                let mut client = self.client.clone();
                let _ = rt.block_on(async { tokio::time::timeout(grace, client.shutdown(ShutdownRequest {})).await });
            }
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    tracing::info!(worker = %self.label, "OMI worker stopped");
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        tracing::info!(worker = %self.label, "OMI worker killed");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Reached only when `stop` was not called (a panic, a leaked handle): never leave a process behind.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn is_transport(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["transport", "connection", "h2 protocol", "broken pipe", "reset"]
        .iter()
        .any(|k| m.contains(k))
}

async fn connect_and_status(
    endpoint: &str,
    timeout: Duration,
) -> Result<(ModzyModelClient<Channel>, StatusResponse), String> {
    let channel = Endpoint::from_shared(format!("http://{endpoint}"))
        .map_err(|e| format!("bad endpoint {endpoint}: {e}"))?
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
    let mut client = ModzyModelClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let status = tokio::time::timeout(timeout, client.status(StatusRequest {}))
        .await
        .map_err(|_| format!("Status did not answer within {timeout:?}"))?
        .map_err(|e| format!("Status failed: {}: {}", e.code(), e.message()))?
        .into_inner();
    Ok((client, status))
}

/// A client on a connection of its own, made on first use.
fn probe_client(rt: &Tokio, endpoint: &str) -> Result<ModzyModelClient<Channel>, String> {
    let _entered = rt.enter();
    let channel = Endpoint::from_shared(format!("http://{endpoint}"))
        .map_err(|e| format!("bad endpoint {endpoint}: {e}"))?
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(ModzyModelClient::new(channel))
}

fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Forwards a worker's output, line by line, to `tracing`.
fn forward(label: &str, stream: &'static str, pipe: Option<impl Read + Send + 'static>) {
    let Some(pipe) = pipe else { return };
    let label = label.to_string();
    let _ = std::thread::Builder::new()
        .name(format!("omi-{stream}"))
        .spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                tracing::info!(target: "sluice_omi::worker", worker = %label, stream, "{line}");
            }
        });
}
