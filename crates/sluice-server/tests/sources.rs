//! Server-side sources stay inside their roots (issue 10, finding 4): a
//! symlink planted inside a source folder must not make the server read, run
//! or describe a file outside the allowed roots.

mod common;

use common::{assert_counts_add_up, count, image, line, repo_model, Config, Server};
use serde_json::json;

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_inside_a_source_folder_that_leave_the_root_fail_alone_and_say_nothing() {
    let root = tempfile::tempdir().expect("source root");
    let outside = tempfile::tempdir().expect("outside the root");
    // What the probe did: `ln -s /outside/secret.bin ROOT/folder/leak.bin`.
    let secret = outside.path().join("secret.bin");
    // A real image: were the link followed, the detector would run on it.
    let secret_bytes = std::fs::read(image("dog.jpg")).expect("dog.jpg");
    std::fs::write(&secret, &secret_bytes).expect("secret");
    let folder = root.path().join("folder");
    std::fs::create_dir(&folder).expect("folder");
    std::os::unix::fs::symlink(&secret, folder.join("leak.bin")).expect("symlink to a file");
    // A link to a file of another root-less folder, through a linked directory.
    let sub = outside.path().join("dir");
    std::fs::create_dir(&sub).expect("dir");
    std::fs::copy(image("horses.jpg"), sub.join("other.bin")).expect("other");
    std::os::unix::fs::symlink(&sub, root.path().join("linked-dir")).expect("symlink to a dir");
    std::os::unix::fs::symlink(root.path().join("linked-dir/other.bin"), folder.join("via-dir.bin"))
        .expect("symlink through a linked dir");
    // A link that stays inside the root is fine, and so is a plain file.
    std::fs::copy(image("kite.jpg"), root.path().join("inside.bin")).expect("inside");
    std::os::unix::fs::symlink(root.path().join("inside.bin"), folder.join("ok-link.bin")).expect("inner link");
    std::fs::copy(image("person.jpg"), folder.join("plain.bin")).expect("plain");

    let server = Server::with(
        vec![repo_model("nanodet-m").await],
        Config {
            source_roots: vec![root.path().to_path_buf()],
            ..Config::default()
        },
    )
    .await;
    let job = server
        .create(json!({"model": "nanodet-m", "source": folder.display().to_string()}))
        .await;
    let id = job["id"].as_str().expect("id").to_string();
    let job = server.wait_end(&id).await;
    assert_counts_add_up(&job);
    let lines = server.results(&id, "").await;
    assert_eq!(count(&job, "total"), 4, "{job}");

    for key in ["leak.bin", "via-dir.bin"] {
        let l = line(&lines, key);
        assert_eq!(l["state"], "failed", "{key} must not run: {l}");
        assert_eq!(l["error"]["code"], "invalid_input", "{l}");
        let msg = l["error"]["message"].as_str().expect("message");
        assert!(msg.contains("outside the allowed source roots"), "{msg}");
        // Nothing about the target: not its path, not its size.
        for leak in [
            secret.display().to_string(),
            sub.display().to_string(),
            secret_bytes.len().to_string(),
            "secret".to_string(),
        ] {
            assert!(!msg.contains(&leak), "the message reveals {leak:?}: {msg}");
        }
    }
    // The files inside the root ran.
    for key in ["ok-link.bin", "plain.bin"] {
        let l = line(&lines, key);
        assert_eq!(l["state"], "done", "{key}: {l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_larger_than_the_input_limit_is_refused_without_being_read() {
    let root = tempfile::tempdir().expect("source root");
    let folder = root.path().join("folder");
    std::fs::create_dir(&folder).expect("folder");
    std::fs::write(folder.join("big.bin"), vec![b' '; (1 << 20) + 1]).expect("big");
    std::fs::copy(image("dog.jpg"), folder.join("small.bin")).expect("small");
    let server = Server::with(
        vec![repo_model("nanodet-m").await],
        Config {
            source_roots: vec![root.path().to_path_buf()],
            limits: sluice_server::Limits {
                max_input_bytes: 1 << 20,
                ..sluice_server::Limits::default()
            },
        },
    )
    .await;
    let job = server
        .create(json!({"model": "nanodet-m", "source": folder.display().to_string()}))
        .await;
    let id = job["id"].as_str().expect("id").to_string();
    let job = server.wait_end(&id).await;
    let lines = server.results(&id, "").await;
    assert_eq!(count(&job, "completed"), 1, "{job}");
    let big = line(&lines, "big.bin");
    assert_eq!(big["state"], "failed", "{big}");
    assert!(
        big["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("larger than the limit of 1048576 bytes")),
        "{big}"
    );
}
