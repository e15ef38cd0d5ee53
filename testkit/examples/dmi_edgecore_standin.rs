//! Runs the DMI edgecore stand-in of twinflash-testkit, for the demo (KubeEdge cannot be installed here): it serves
//! edgecore's DMI socket and feeds it the Devices and DeviceModels of YAML or JSON files. A TEST STAND-IN, not
//! edgecore: see testkit/src/dmi_edgecore.rs for what it models and what it does not.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test tool: a panic is a clear failure

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use twinflash_testkit::{DmiEdgecore, DmiLogKind};

const HELP: &str = "dmi_edgecore_standin: a TEST STAND-IN for KubeEdge's edgecore v1.23.1 (DMI side only), for the demo and
tests, because KubeEdge cannot be installed here. It is not edgecore: see testkit/src/dmi_edgecore.rs.

Usage: dmi_edgecore_standin --dir <DIR> [--watch <DIR>] [FILE]...

  --dir <DIR>      serve edgecore's DMI server on <DIR>/dmi.sock (what a mapper's kubeedge.dmi_socket points to)
  --watch <DIR>    poll <DIR> once a second: every *.yaml, *.yml or *.json file there is applied when it appears
                   or changes (in file name order); when a file goes away, its Devices and DeviceModels are deleted
  FILE             YAML (several documents allowed) or JSON files applied once at start, in order
  -h, --help       this text

Objects are devices.kubeedge.io/v1beta1 Device and DeviceModel (a `kind: List` is unpacked). Apply the DeviceModel
before its Devices. Logs what edgecore would log to stderr; prints a device's stored twins to stdout whenever
they change:  twins <ns>/<name> <twin>=<actual> (expected <expected>) ...
Exits on SIGTERM or Ctrl-C.";

/// The objects of a YAML or JSON file.
fn objects(path: &Path) -> Result<Vec<Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut docs = Vec::new();
    if path.extension().is_some_and(|e| e == "json") {
        docs.push(
            serde_json::from_str::<Value>(&text).map_err(|e| format!("{}: {e}", path.display()))?,
        );
    } else {
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if !v.is_null() {
                docs.push(serde_json::to_value(v).map_err(|e| format!("{}: {e}", path.display()))?);
            }
        }
    }
    let mut out = Vec::new();
    for d in docs {
        match d["kind"].as_str() {
            Some("List") => out.extend(d["items"].as_array().cloned().unwrap_or_default()),
            _ => out.push(d),
        }
    }
    Ok(out)
}

fn key(obj: &Value) -> (String, String, String) {
    (
        obj["kind"].as_str().unwrap_or("").to_owned(),
        obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned(),
        obj["metadata"]["name"].as_str().unwrap_or("").to_owned(),
    )
}

fn apply(ec: &DmiEdgecore, path: &Path) -> Vec<(String, String, String)> {
    let objs = match objects(path) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("dmi edgecore stand-in: {e}");
            return Vec::new();
        }
    };
    let mut keys = Vec::new();
    for mut obj in objs {
        let k = key(&obj);
        if obj["metadata"]["namespace"].is_null() {
            obj["metadata"]["namespace"] = Value::from(k.1.clone());
        }
        match k.0.as_str() {
            "DeviceModel" => ec.apply_model(&obj),
            "Device" => ec.apply_device(&obj),
            other => {
                eprintln!(
                    "dmi edgecore stand-in: {}: kind {other:?} ignored",
                    path.display()
                );
                continue;
            }
        }
        eprintln!(
            "dmi edgecore stand-in: applied {} {}/{} from {}",
            k.0,
            k.1,
            k.2,
            path.display()
        );
        keys.push(k);
    }
    keys
}

fn delete(ec: &DmiEdgecore, keys: &[(String, String, String)]) {
    // Devices first: a model goes with its last device (spec §4), or on its own delete afterwards.
    for (kind, ns, name) in keys.iter().filter(|k| k.0 == "Device") {
        eprintln!("dmi edgecore stand-in: deleted {kind} {ns}/{name}");
        ec.delete_device(ns, name);
    }
    for (kind, ns, name) in keys.iter().filter(|k| k.0 == "DeviceModel") {
        eprintln!("dmi edgecore stand-in: deleted {kind} {ns}/{name}");
        ec.delete_model(ns, name);
    }
}

fn watched(dir: &Path) -> BTreeMap<PathBuf, SystemTime> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let ok = p
            .extension()
            .is_some_and(|x| x == "yaml" || x == "yml" || x == "json");
        if ok && let Ok(m) = e.metadata().and_then(|m| m.modified()) {
            out.insert(p, m);
        }
    }
    out
}

fn main() {
    let mut dir = None;
    let mut watch = None;
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next().unwrap_or_else(|| {
                eprintln!("dmi_edgecore_standin: {a} needs a value\n\n{HELP}");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "-h" | "--help" => {
                println!("{HELP}");
                return;
            }
            "--dir" => dir = Some(PathBuf::from(value())),
            "--watch" => watch = Some(PathBuf::from(value())),
            other if other.starts_with('-') => {
                eprintln!("dmi_edgecore_standin: unknown argument {other:?}\n\n{HELP}");
                std::process::exit(2);
            }
            file => files.push(PathBuf::from(file)),
        }
    }
    let Some(dir) = dir else {
        eprintln!("dmi_edgecore_standin: --dir is required\n\n{HELP}");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    rt.block_on(async move {
        let ec = DmiEdgecore::start_in(&dir).await.expect("the DMI socket");
        eprintln!(
            "dmi edgecore stand-in (a test stand-in, not KubeEdge): serving {}",
            ec.socket().display()
        );
        for f in &files {
            apply(&ec, f);
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        let mut seen: BTreeMap<PathBuf, SystemTime> = BTreeMap::new();
        let mut from_file: BTreeMap<PathBuf, Vec<(String, String, String)>> = BTreeMap::new();
        let mut printed_log = 0;
        let mut printed_twins: BTreeMap<String, String> = BTreeMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = tick.tick() => {}
            }
            if let Some(w) = &watch {
                let now = watched(w);
                for (p, m) in &now {
                    if seen.get(p) != Some(m) {
                        let keys = apply(&ec, p);
                        from_file.insert(p.clone(), keys);
                    }
                }
                for gone in seen.keys().filter(|p| !now.contains_key(*p)) {
                    delete(&ec, &from_file.remove(gone).unwrap_or_default());
                }
                seen = now;
            }
            let log = ec.log();
            for l in log.iter().skip(printed_log) {
                let tag = match l.kind {
                    DmiLogKind::Call | DmiLogKind::Lifecycle | DmiLogKind::Synced => "I",
                    _ => "E",
                };
                eprintln!("edgecore {tag} {:?}: {}", l.kind, l.text);
            }
            printed_log = log.len();
            for id in ec.cached_devices() {
                let (ns, name) = id.split_once('/').unwrap_or(("default", &id));
                let twins = ec.twin(ns, name);
                let line = twins
                    .iter()
                    .map(|(k, t)| {
                        let v = |x: &Option<mqtt_schema::TwinValue>| {
                            x.as_ref().and_then(|v| v.value.clone()).unwrap_or_default()
                        };
                        format!("{k}={} (expected {})", v(&t.actual), v(&t.expected))
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                if !twins.is_empty() && printed_twins.get(&id) != Some(&line) {
                    println!("twins {id} {line}");
                    printed_twins.insert(id, line);
                }
            }
        }
        ec.stop();
        eprintln!("dmi edgecore stand-in: stopped {:?}", ec.counters());
    });
}
