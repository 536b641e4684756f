#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The observability kit (`packaging/observability/`) against a live gxd: every `gxd_*`
//! metric that the Grafana dashboard and the Prometheus alert rules query — and every label
//! they select on it — is one that `gxd run` exports at `/metrics`, read from the real
//! binary with its engine running against a devnet peer, after a command was committed and
//! its block projected (so the engine's labelled series exist).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use gxd_storage::outbox::{Outbox, OutboxOptions};
use gxd_storage::{Db, DbOptions};

fn kit(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/observability")
        .join(file)
}

/// Every PromQL string of a Grafana dashboard: targets' `expr`, and template variables'
/// `query` / `definition`.
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::String(s)) if s.contains('(') => {
                        out.push(s.clone())
                    }
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

/// The alert rules' text without comment lines (every `gxd_*` token left is checked,
/// including those named in annotations).
fn rules_text(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The `gxd_*` metric names in `text`, each with the label names its selectors use
/// (`name{label="..", other=~".."}`).
fn metric_refs(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut refs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts = (i == 0 || !is_name_char(chars[i - 1]))
            && chars[i..].iter().take(4).collect::<String>() == "gxd_";
        if !starts {
            i += 1;
            continue;
        }
        let begin = i;
        while i < chars.len() && is_name_char(chars[i]) {
            i += 1;
        }
        let name: String = chars[begin..i].iter().collect();
        let labels = refs.entry(name).or_default();
        if chars.get(i) == Some(&'{') {
            let end = chars[i..].iter().position(|&c| c == '}').map(|p| i + p);
            let inner: String = chars[i + 1..end.unwrap_or(chars.len())].iter().collect();
            // label matchers: name op "value", separated by commas (values hold no commas here)
            for m in inner.split(',') {
                let label: String = m.trim().chars().take_while(|&c| is_name_char(c)).collect();
                if !label.is_empty() {
                    labels.insert(label);
                }
            }
        }
    }
    refs
}

/// Sample names in a Prometheus text exposition, each with the label names it carries.
fn exported(metrics: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name: String = line.chars().take_while(|&c| is_name_char(c)).collect();
        let labels = out.entry(name.clone()).or_default();
        if let Some(rest) = line[name.len()..].strip_prefix('{') {
            for pair in rest.split("\",") {
                if let Some((label, _)) = pair.split_once('=') {
                    labels.insert(label.trim_start_matches(',').trim().to_owned());
                }
            }
        }
    }
    out
}

/// What `refs` uses that `live` lacks: unknown metrics, and labels a metric does not carry
/// (`instance` and `job` are Prometheus' own target labels).
fn missing(
    refs: &BTreeMap<String, BTreeSet<String>>,
    live: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let mut bad = Vec::new();
    for (name, labels) in refs {
        match live.get(name) {
            None => bad.push(format!("metric {name}")),
            Some(have) => {
                for l in labels {
                    if !have.contains(l) && l != "instance" && l != "job" {
                        bad.push(format!("label {l} of {name}"));
                    }
                }
            }
        }
    }
    bad
}

#[test]
fn the_checks_can_fail() {
    let live = exported(
        "# TYPE gxd_a_total counter\ngxd_a_total{outcome=\"x\",route=\"/y\"} 1\ngxd_b 2\n",
    );
    let refs = metric_refs(
        r#"sum by (outcome) (rate(gxd_a_total{instance=~"$i",outcome="x"}[5m])) / gxd_b + gxd_c"#,
    );
    assert_eq!(missing(&refs, &live), ["metric gxd_c"]);
    let refs = metric_refs(r#"gxd_b{status="failed"} and xgxd_d"#);
    assert_eq!(missing(&refs, &live), ["label status of gxd_b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alert_rules_query_only_metrics_gxd_exports() {
    // What the kit queries.
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(kit("gxd-dashboard.json")).unwrap()).unwrap();
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    let dash_refs = metric_refs(&queries.join("\n"));
    let rule_refs = metric_refs(&rules_text(&kit("gxd-alerts.rules.yml")));
    // The issue's panels: commands, outbox, dead letters, latency, projector, API.
    for family in [
        "gxd_submitter_attempts_total",
        "gxd_outbox_commands",
        "gxd_projector_dead_lettered_transactions",
        "gxd_submitter_commit_latency_seconds_bucket",
        "gxd_projector_block",
        "gxd_api_requests_total",
        "gxd_api_request_duration_seconds_bucket",
    ] {
        assert!(dash_refs.contains_key(family), "dashboard lacks {family}");
    }
    assert!(rule_refs.len() >= 5, "{rule_refs:?}");

    // A live gxd with its engine: a devnet peer, one GX transfer accepted before start.
    let db = TestDb::new().await.unwrap();
    let dir = traversable_tempdir();
    let devnet = gxd_devnet::start(local_devnet(dir.path())).await.unwrap();
    let payers = vec!["treasury".to_owned()];
    common::verdict::setup(&devnet, &payers).await;
    let mut settings = Settings::new(&db, free_port());
    settings.extra_toml = devnet_fabric_toml(&devnet);
    let config = write_config(dir.path(), &settings);
    {
        let db = Db::open(Db::path_in(&dir.path().join("data")), &DbOptions::default()).unwrap();
        let outbox = Outbox::new(db, OutboxOptions::default()).unwrap();
        let c = outbox
            .enqueue(common::verdict::transfer("obs-1".into(), "treasury"))
            .await
            .unwrap();
        assert!(c.created);
    }
    let mut gxd = Gxd::spawn_with_api(
        &["run", "--config", config.to_str().unwrap()],
        &[],
        settings.api_port,
    );
    gxd.wait_ready(Duration::from_secs(90)).unwrap();
    let api = gxd.api.unwrap();
    let _ = http_get(api, "/livez").unwrap();
    let _ = http_get(api, "/nope").unwrap();

    // Until the command is committed and a block projected (the labelled series exist).
    let end = Instant::now() + Duration::from_secs(90);
    let metrics = loop {
        let (status, text) = http_get(api, "/metrics").unwrap();
        assert_eq!(status, 200);
        let projected = text
            .lines()
            .find_map(|l| l.strip_prefix("gxd_projector_block "))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .is_some_and(|b| b >= 0);
        if text.contains(r#"gxd_submitter_attempts_total{outcome="committed"} 1"#) && projected {
            break text;
        }
        assert!(
            Instant::now() < end,
            "no commit and projection within 90 s:\n{text}\n{}",
            gxd.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let live = exported(&metrics);

    let bad_dash = missing(&dash_refs, &live);
    let bad_rules = missing(&rule_refs, &live);
    println!(
        "dashboard queries {} gxd metrics, the rules {}; gxd exports {} series names",
        dash_refs.len(),
        rule_refs.len(),
        live.len()
    );
    assert!(
        bad_dash.is_empty() && bad_rules.is_empty(),
        "not exported by gxd — dashboard: {bad_dash:?}; rules: {bad_rules:?}\n/metrics:\n{metrics}"
    );

    // The figure behind the Kubernetes manifests' memory requests and limits.
    if let Some(pid) = gxd.pid()
        && let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
    {
        for l in status
            .lines()
            .filter(|l| l.starts_with("VmHWM") || l.starts_with("VmRSS"))
        {
            println!("gxd run (engine on, idle after one command): {l}");
        }
    }
    gxd.sigterm();
    let status = gxd
        .wait_exit(settings.shutdown_bound() + Duration::from_secs(10))
        .expect("exited");
    assert_eq!(status.code(), Some(0), "{}", gxd.logs());
    devnet.shutdown().await.unwrap();
}
