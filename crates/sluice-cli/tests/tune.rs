//! `sluice tune` as a user runs it, on copies of the repository's models in
//! a temporary folder (the copies' model.toml is what `--write` edits): the
//! table, the chart and the one-line choice, the kept `.tune.json`, the edit
//! that keeps model.toml's comments, the warning when nothing meets a budget,
//! and a tight time budget that narrows the search instead of running over.
//! Budgets are small: the suite runs in debug builds on 2 cores. Nothing here
//! asserts a speed.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{assert_success, run_sluice, text};
use serde_json::Value;

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A copy of `models/mlp` (its model.toml, the graph from the repository) in `dir`.
fn mlp_copy(dir: &Path) -> std::path::PathBuf {
    common::require_onnxruntime();
    common::write_mlp(dir, 32, None);
    dir.join("mlp")
}

fn tune(model: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["tune", "--model", path_str(model)];
    args.extend_from_slice(extra);
    run_sluice(&args)
}

fn kept(model: &Path) -> Value {
    let path = model.join(".tune.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect(".tune.json is JSON")
}

#[test]
fn tune_writes_the_chosen_setting_and_keeps_comments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = mlp_copy(dir.path());
    let o = tune(&model, &["--time-budget-s", "20", "--write"]);
    assert_success(&o, "sluice tune --write");
    let out = text(&o.stdout);
    assert!(
        out.contains("items/s") && out.contains("p99 ms") && out.contains("peak MiB"),
        "no table:\n{out}"
    );
    assert!(out.contains("items/s per configuration"), "no chart:\n{out}");
    assert!(out.lines().any(|l| l.starts_with("chosen: max_batch_size = ")), "{out}");
    assert!(out.contains("chosen vs shipped: "), "{out}");

    let v = kept(&model);
    let rows = v["rows"].as_array().expect("rows");
    assert!(!rows.is_empty(), "{v}");
    for r in rows {
        assert!(r["items_per_s"].as_f64().is_some_and(|x| x > 0.0), "{r}");
    }
    assert!(
        rows.iter().any(|r| r["shipped"] == true),
        "the shipped setting was measured: {v}"
    );
    let chosen = &v["chosen"];
    assert!(v["shipped"]["items_per_s"].as_f64().is_some_and(|x| x > 0.0), "{v}");

    let toml = std::fs::read_to_string(model.join("model.toml")).expect("model.toml");
    assert!(toml.starts_with("# A 3-layer MLP"), "comments kept:\n{toml}");
    assert!(toml.contains("# Served on the same cores"), "comments kept:\n{toml}");
    let spec = sluice_core::ModelSpec::load(&model).expect("model.toml still loads");
    assert_eq!(
        Some(spec.max_batch_size as u64),
        chosen["max_batch_size"].as_u64(),
        "{toml}"
    );
    assert_eq!(Some(spec.instances as u64), chosen["instances"].as_u64(), "{toml}");
    assert_eq!(
        Some(spec.intra_op_threads as u64),
        chosen["intra_op_threads"].as_u64(),
        "{toml}"
    );
    // The binary's own loader agrees.
    assert_success(
        &run_sluice(&["models", "inspect", path_str(&model)]),
        "sluice models inspect",
    );
}

#[test]
fn a_latency_budget_nothing_meets_warns_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = mlp_copy(dir.path());
    let before = std::fs::read(model.join("model.toml")).expect("model.toml");
    let o = tune(
        &model,
        &["--time-budget-s", "4", "--latency-budget-ms", "0.001", "--write"],
    );
    assert_success(&o, "sluice tune with an impossible budget");
    let out = text(&o.stdout);
    assert!(out.contains("warning: no configuration meets the budgets"), "{out}");
    assert!(out.contains("chosen: "), "{out}");
    assert!(out.contains("✗ latency"), "{out}");
    assert_eq!(
        std::fs::read(model.join("model.toml")).expect("model.toml"),
        before,
        "model.toml changed:\n{out}"
    );
    let v = kept(&model);
    assert_eq!(v["chosen"]["fits_budgets"], false, "{v}");
    assert_eq!(v["budgets"]["latency_ms"], 0.001, "{v}");
}

#[test]
fn a_tight_time_budget_narrows_the_search() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = mlp_copy(dir.path());
    let t = Instant::now();
    let o = tune(&model, &["--time-budget-s", "3"]);
    let took = t.elapsed();
    assert_success(&o, "sluice tune --time-budget-s 3");
    let out = text(&o.stdout);
    // A bound on the budget mechanism (3 × the budget, plus loading), not a speed.
    assert!(took < Duration::from_secs(30), "took {took:?}:\n{out}");
    assert!(out.contains("narrowed the search"), "{out}");
    assert_eq!(kept(&model)["narrowed"], true);
}

#[test]
fn a_noop_model_is_tuned_over_batch_sizes_and_instances_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    common::write_model(dir.path(), "noop", &[]);
    let model = dir.path().join("noop");
    let o = tune(&model, &["--time-budget-s", "3", "--write"]);
    assert_success(&o, "sluice tune of the noop model");
    let out = text(&o.stdout);
    assert!(out.contains("intra-op threads apply to ONNX models only"), "{out}");
    let v = kept(&model);
    assert!(v["chosen"]["intra_op_threads"].is_null(), "{v}");
    let toml = std::fs::read_to_string(model.join("model.toml")).expect("model.toml");
    assert!(!toml.contains("intra_op_threads"), "{toml}");
    assert!(toml.starts_with("# A model that does nothing"), "{toml}");
}
