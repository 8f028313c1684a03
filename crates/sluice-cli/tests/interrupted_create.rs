//! An inline job appears whole or not at all, whenever the server is killed
//! (issue 10, finding 8). Before, `POST /v1/jobs` with a 25 MB inline body
//! created the job first (visible as SUBMITTED with total 0) and stored its
//! inputs after; a `kill -9` in between left a job that the next start closed
//! and reported COMPLETED with 0 inputs.
//!
//! Each round sends a ~25 MB inline job to a real `sluice serve` process,
//! kills it with SIGKILL while the request is in flight, restarts it on the
//! same data and checks every job it lists: each one holds all its inputs and
//! runs to COMPLETED with one result per input.

mod common;

use std::io::Write as _;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{write_model, ServerProc, DEADLINE};
use serde_json::Value;

/// Inputs per job, and floats per input: about 25 MB of JSON.
const INPUTS: usize = 50_000;
const FLOATS: usize = 128;

/// The request as raw bytes: `POST /v1/jobs` with an inline job on `noop`.
fn request(round: usize) -> Vec<u8> {
    let value = vec!["1.5"; FLOATS].join(",");
    let mut body = String::with_capacity(INPUTS * (FLOATS * 4 + 16));
    body.push_str(r#"{"model":"noop","tags":["round"#);
    body.push_str(&round.to_string());
    body.push_str(r#""],"inputs":{"#);
    for i in 0..INPUTS {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!("\"r{round}-{i:05}\":[{value}]"));
    }
    body.push_str("}}");
    let mut req = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body.as_bytes());
    req
}

/// Where in the request the server is killed.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// As soon as `GET /v1/jobs` lists a job of this round (before: the empty
    /// job, long before its inputs were in), or the answer came.
    FirstSight,
    /// This long after the whole body was handed to the socket.
    AfterBody(Duration),
}

fn jobs(server: &ServerProc) -> Vec<Value> {
    let (status, list) = server.get("/v1/jobs?limit=1000");
    assert_eq!(status, 200, "{list}");
    list["jobs"].as_array().cloned().unwrap_or_default()
}

fn round_jobs(server: &ServerProc, round: usize) -> Vec<Value> {
    let tag = format!("round{round}");
    jobs(server)
        .into_iter()
        .filter(|j| {
            j["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|x| x == &Value::from(tag.as_str())))
        })
        .collect()
}

/// Sends the round's job on a thread and kills the server at `at`; returns
/// how long after the body was sent the kill came.
fn send_and_kill(server: &mut ServerProc, round: usize, at: KillAt) -> Duration {
    let addr = server.base.trim_start_matches("http://").to_string();
    let req = request(round);
    let (sent_tx, sent_rx) = std::sync::mpsc::channel::<()>();
    let sender = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(&addr).expect("connect");
        // The server may die while we write: a broken pipe is expected then.
        let _ = stream.write_all(&req);
        let _ = sent_tx.send(());
        let mut answer = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stream, &mut answer);
    });
    let mut sent_at = None;
    match at {
        KillAt::FirstSight => {
            let start = Instant::now();
            while round_jobs(server, round).is_empty() && !sender.is_finished() {
                assert!(
                    start.elapsed() < DEADLINE,
                    "the job never appeared:\n{}",
                    server.log_text()
                );
                if sent_at.is_none() && sent_rx.try_recv().is_ok() {
                    sent_at = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        KillAt::AfterBody(delay) => {
            let _ = sent_rx.recv_timeout(DEADLINE);
            sent_at = Some(Instant::now());
            std::thread::sleep(delay);
        }
    }
    server.child.kill().expect("kill -9");
    let killed = sent_at.map_or(Duration::ZERO, |t| t.elapsed());
    server.child.wait().expect("reap");
    sender.join().expect("sender thread");
    killed
}

/// Every job listed holds all its inputs and completes with one result each.
fn check_all_whole(server: &ServerProc) {
    for job in jobs(server) {
        let id = job["id"].as_str().expect("id").to_string();
        assert_eq!(
            job["counts"]["total"].as_u64(),
            Some(INPUTS as u64),
            "a job with part of its inputs after kill -9: {job}"
        );
        let done = server.wait_for(&id, "completed", |j| {
            j["status"] != "SUBMITTED" && j["status"] != "IN_PROGRESS"
        });
        assert_eq!(done["status"], "COMPLETED", "{done}");
        assert_eq!(done["counts"]["completed"].as_u64(), Some(INPUTS as u64), "{done}");
    }
}

#[test]
fn kill_9_during_a_large_inline_create_leaves_the_job_whole_or_absent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let models = tmp.path().join("models");
    write_model(&models, "noop", &[]);
    let data = tmp.path().join("data");
    let log = tmp.path().join("server.log");
    let start = |log: &Path| ServerProc::start_with(&models, &data, None, log, &[]);
    let mut server = start(&log);
    let mut present = 0usize;
    // Round 0 kills at the first sight of the job, and measures how long the
    // create takes after its body is sent; the next rounds kill at fractions
    // of that time, while the server parses the body or stores the inputs.
    let mut create_time = Duration::ZERO;
    for round in 0..6 {
        let at = match round {
            0 => KillAt::FirstSight,
            1 => KillAt::AfterBody(Duration::ZERO),
            r => KillAt::AfterBody(create_time.mul_f64([0.3, 0.6, 0.8, 0.95][r - 2])),
        };
        let killed = send_and_kill(&mut server, round, at);
        if round == 0 {
            create_time = killed;
        }
        server = start(&log);
        let found = round_jobs(&server, round).len();
        assert!(found <= 1, "round {round}: {found} jobs");
        present += found;
        eprintln!(
            "round {round} ({at:?}, killed {killed:?} after the body): job {}",
            if found == 1 { "whole" } else { "absent" }
        );
        check_all_whole(&server);
    }
    // The last job also reads back with every result, once.
    if present > 0 {
        let last = &jobs(&server)[0];
        let id = last["id"].as_str().expect("id");
        let mut lines = 0usize;
        let mut keys = std::collections::HashSet::new();
        server
            .http
            .each_line(&server.url(&format!("/v1/jobs/{id}/results")), |line| {
                lines += 1;
                if let Some(key) = serde_json::from_slice::<Value>(line)
                    .ok()
                    .and_then(|v| v["key"].as_str().map(str::to_owned))
                {
                    keys.insert(key);
                }
            });
        assert_eq!(keys.len(), INPUTS);
        assert_eq!(lines, INPUTS);
    }
}
