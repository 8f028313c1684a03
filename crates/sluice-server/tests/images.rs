//! Image inputs within bounds (issue 10, finding 5): a small PNG that claims
//! 22000 x 22000 pixels is refused from its header, alone, without the
//! gigabytes its decoding would take, also when several arrive at once.

mod common;

use common::Server;
use reqwest::StatusCode;

/// Resident memory of this process (the test and the in-process server), bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decompression_bombs_fail_alone_without_taking_memory() {
    let server = Server::start(vec![common::repo_model("nanodet-m").await]).await;
    // What the probe sent: a ~470 KB PNG of 22000 x 22000.
    let bomb = sluice_processing::test_util::bomb_png(22_000, 22_000);
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let dog = std::fs::read(common::image("dog.jpg")).expect("image");
    let before = rss_bytes();

    // Four at once, each beside a real photo that must still be answered.
    let requests = (0..4).map(|i| {
        let (ctype, body) = common::multipart(&[(&format!("bomb{i}.png"), bomb.clone()), ("dog.jpg", dog.clone())]);
        let server = &server;
        async move { server.post_raw("/v1/models/nanodet-m/infer", &ctype, body).await }
    });
    for (status, resp) in futures_util::future::join_all(requests).await {
        assert_eq!(status, StatusCode::OK, "{resp}");
        let bomb = &resp["results"][0]["error"];
        assert_eq!(bomb["code"], "invalid_input", "{resp}");
        let msg = bomb["message"].as_str().expect("message");
        assert!(msg.contains("22000x22000") && msg.contains("max_pixels"), "{msg}");
        let labels: Vec<&str> = resp["results"][1]["output"]["detections"]
            .as_array()
            .unwrap_or_else(|| panic!("the photo beside the bomb was not answered: {resp}"))
            .iter()
            .filter_map(|d| d["label"].as_str())
            .collect();
        assert!(labels.contains(&"dog"), "{labels:?}");
    }

    // A bomb alone: the request's only input is invalid, so 400 with the reason.
    let (ctype, body) = common::multipart(&[("bomb.png", bomb.clone())]);
    let (status, resp) = server.post_raw("/v1/models/nanodet-m/infer", &ctype, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    assert!(
        resp["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_pixels")),
        "{resp}"
    );
    // Decoding one would have taken 1.45 GB (484 MB gray + RGB copy); four, 5.8 GB.
    let grown = rss_bytes().saturating_sub(before);
    assert!(grown < 300 << 20, "memory grew by {} MiB", grown >> 20);
    assert_eq!(sluice_processing::decode::DecodeBudget::global().in_use(), 0);
}
