//! A real S3-compatible server on loopback for the object-store tests:
//! moto in server mode, from the project's venv (`scripts/setup.sh`
//! installs it from PyPI), with buckets and objects made through boto3,
//! the AWS SDK. Killed when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{repo_root, SETUP};

/// The access key the tests use; moto accepts any.
pub const ACCESS_KEY: &str = "AKIASLUICETEST";
/// A secret that must never appear in anything Sluice prints.
pub const SECRET_KEY: &str = "sluice-test-secret-7f3a9c1e5b";

/// A moto server on a free loopback port.
pub struct Moto {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

fn venv_bin(name: &str) -> PathBuf {
    let p = repo_root().join(".sluice/venv/bin").join(name);
    assert!(p.is_file(), "{} is missing; {SETUP}", p.display());
    p
}

impl Moto {
    /// Starts the server and waits until it accepts connections.
    pub fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(venv_bin("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start moto_server");
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// The standard AWS environment that points a client at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// Runs a boto3 script (`s3` is a client for this server).
    pub fn boto3(&self, script: &str) {
        let program = format!(
            "import boto3, os, sys\ns3 = boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n{script}\n"
        );
        let out = Command::new(venv_bin("python"))
            .arg("-c")
            .arg(program)
            .envs(self.env())
            .current_dir(repo_root())
            .output()
            .expect("cannot run the venv's python");
        assert!(
            out.status.success(),
            "boto3 script failed:\n{script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Creates `bucket`.
    pub fn bucket(&self, bucket: &str) {
        self.boto3(&format!("s3.create_bucket(Bucket={bucket:?})"));
    }

    /// Uploads every photo of data/images under `prefix` of `bucket` (keys
    /// `prefix` + file name); returns the local files, in name order.
    pub fn upload_images(&self, bucket: &str, prefix: &str) -> Vec<PathBuf> {
        let images = repo_root().join("data/images");
        let mut files: Vec<_> = std::fs::read_dir(&images)
            .expect("data/images")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(files.len() >= 10, "data/images holds the photos");
        for f in &files {
            let name = f.file_name().and_then(|n| n.to_str()).expect("name");
            self.upload(f, bucket, &format!("{prefix}{name}"));
        }
        files
    }

    /// Uploads the local file `path` as `key` of `bucket`.
    pub fn upload(&self, path: &Path, bucket: &str, key: &str) {
        let path = path.display().to_string();
        self.boto3(&format!("s3.upload_file({path:?}, {bucket:?}, {key:?})"));
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
