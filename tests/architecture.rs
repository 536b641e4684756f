//! ARCHITECTURE.md's dependency invariants, enforced: reads `cargo metadata` and fails
//! naming the crate and the dependency that breaks a rule (the way rust-analyzer's tidy
//! tests keep its rules).
//!
//! - Crates import downward only ([`LAYERS`]): storage and fabric are leaves and do not
//!   know each other; GX's domain crate builds on storage (its read models); the devnet on
//!   fabric and GX; the engine on storage and fabric — and knows no GX; the API on storage
//!   and GX; the daemon, the composition root, on all.
//! - Only the crates in [`OWNERS`] may depend on a technology's crates: only `fabric/`
//!   (and its devnet) knows tonic and Fabric's protos, only `api/` knows axum, only
//!   `storage/` knows PostgreSQL, only `storage/` knows RocksDB — with the devnet's ledger
//!   as the one stated exception — and only the devnet generates certificates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Workspace members and the workspace members each may depend on (any dependency kind).
const LAYERS: &[(&str, &[&str])] = &[
    ("gxd-storage", &[]),
    ("gxd-fabric", &[]),
    ("gxd-gx", &["gxd-storage", "gxd-engine"]),
    ("gxd-devnet", &["gxd-fabric", "gxd-gx"]),
    ("gxd-engine", &["gxd-storage", "gxd-fabric"]),
    ("gxd-api", &["gxd-storage", "gxd-gx"]),
    (
        "gxd",
        &[
            "gxd-storage",
            "gxd-fabric",
            "gxd-gx",
            "gxd-devnet",
            "gxd-engine",
            "gxd-api",
        ],
    ),
];

/// External crates and the only workspace members that may depend on them directly
/// (normal and build dependencies; tests may use anything).
const OWNERS: &[(&str, &[&str])] = &[
    ("tonic", &["gxd-fabric", "gxd-devnet"]),
    ("tonic-prost", &["gxd-fabric", "gxd-devnet"]),
    ("tonic-build", &["gxd-fabric", "gxd-devnet"]),
    ("tonic-prost-build", &["gxd-fabric", "gxd-devnet"]),
    ("fabric-sdk", &["gxd-fabric", "gxd-devnet"]),
    ("axum", &["gxd-api"]),
    ("tower-http", &["gxd-api"]),
    ("jsonwebtoken", &["gxd-api"]),
    ("rocksdb", &["gxd-storage", "gxd-devnet"]),
    ("librocksdb-sys", &["gxd-storage", "gxd-devnet"]),
    ("tokio-postgres", &["gxd-storage"]),
    ("deadpool-postgres", &["gxd-storage"]),
    ("postgres-types", &["gxd-storage"]),
    ("refinery", &["gxd-storage"]),
    ("rcgen", &["gxd-devnet"]),
    // ccaas chaincode packages: only the devnet's shim module builds and reads them.
    ("tar", &["gxd-devnet"]),
    ("flate2", &["gxd-devnet"]),
];

/// Every rule the workspace described by `metadata` (`cargo metadata --no-deps` JSON)
/// breaks, one line each, naming the crate and the dependency.
fn violations(metadata: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let packages = metadata["packages"].as_array().cloned().unwrap_or_default();
    let members: Vec<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    for package in &packages {
        let name = package["name"].as_str().unwrap_or("?");
        let Some((_, allowed_internal)) = LAYERS.iter().find(|(n, _)| *n == name) else {
            out.push(format!(
                "{name}: a workspace crate the layer table does not know; add it to LAYERS \
                 in tests/architecture.rs and to ARCHITECTURE.md"
            ));
            continue;
        };
        for dep in package["dependencies"].as_array().into_iter().flatten() {
            let dep_name = dep["name"].as_str().unwrap_or("?");
            // "normal" is null in cargo metadata; "dev" and "build" are named.
            let kind = dep["kind"].as_str().unwrap_or("normal");
            if members.contains(&dep_name) {
                // Any crate's tests may run against the devnet (test infrastructure).
                let test_devnet = kind == "dev" && dep_name == "gxd-devnet";
                if dep_name != name && !allowed_internal.contains(&dep_name) && !test_devnet {
                    out.push(format!(
                        "{name} depends on {dep_name} ({kind}): crates import downward only; \
                         {name} may use {allowed_internal:?}"
                    ));
                }
                continue;
            }
            if kind == "dev" {
                continue;
            }
            if let Some((_, owners)) = OWNERS.iter().find(|(n, _)| *n == dep_name)
                && !owners.contains(&name)
            {
                out.push(format!(
                    "{name} depends on {dep_name} ({kind}): only {owners:?} may know {dep_name}"
                ));
            }
        }
    }
    out
}

fn workspace_metadata() -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(&root)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

#[test]
fn the_workspace_keeps_its_dependency_invariants() {
    let metadata = workspace_metadata();
    let names: Vec<&str> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    // The table covers the real workspace (a rename must not make the rules vacuous).
    for (crate_name, _) in LAYERS {
        assert!(
            names.contains(crate_name),
            "{crate_name} is in LAYERS but not in the workspace ({names:?})"
        );
    }
    let found = violations(&metadata);
    assert!(
        found.is_empty(),
        "ARCHITECTURE.md invariants broken:\n  {}",
        found.join("\n  ")
    );
}

fn package(name: &str, deps: &[(&str, Option<&str>)]) -> Value {
    serde_json::json!({
        "name": name,
        "dependencies": deps
            .iter()
            .map(|(d, kind)| serde_json::json!({ "name": d, "kind": kind }))
            .collect::<Vec<_>>(),
    })
}

#[test]
fn each_kind_of_violation_is_reported_by_crate_and_dependency() {
    let metadata = serde_json::json!({ "packages": [
        package("gxd-storage", &[("rocksdb", None), ("gxd-fabric", None)]),
        package("gxd-fabric", &[("rocksdb", None), ("rcgen", Some("dev")), ("tonic", None)]),
        package("gxd-devnet", &[("rocksdb", None), ("rcgen", None), ("gxd-fabric", None)]),
        package("gxd-api", &[("axum", None), ("tonic", None), ("gxd-storage", None)]),
        package("gxd", &[("tokio-postgres", None), ("gxd-api", None), ("axum", Some("dev"))]),
        package("gxd-extra", &[]),
    ]});
    let found = violations(&metadata);
    let expected = [
        "gxd-storage depends on gxd-fabric (normal): crates import downward only",
        "gxd-fabric depends on rocksdb (normal): only [\"gxd-storage\", \"gxd-devnet\"]",
        "gxd-api depends on tonic (normal): only [\"gxd-fabric\", \"gxd-devnet\"]",
        "gxd depends on tokio-postgres (normal): only [\"gxd-storage\"]",
        "gxd-extra: a workspace crate the layer table does not know",
    ];
    for e in expected {
        assert!(
            found.iter().any(|f| f.starts_with(e)),
            "missing {e:?} in {found:#?}"
        );
    }
    // rcgen as a dev-dependency of fabric, axum in the daemon's tests, rocksdb and rcgen
    // in the devnet: allowed.
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}
