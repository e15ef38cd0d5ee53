//! What a real edgecore STORES: its sqlite database (`database.dataSource`), read with the `sqlite3` command-line
//! tool (Debian package `sqlite3`; needed in real mode only, so no sqlite library is linked into the test kit).
//! Tables read: `device_twin` (`deviceid` = `<namespace>/<name>`, `name`, `expected`, `actual`, ...) and
//! `device` (`id`, `state`, `last_online`).
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// One `device_twin` row: the stored expected and actual values (an empty column is `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbTwin {
    pub expected: Option<String>,
    pub actual: Option<String>,
}

/// Rows of `sql` as JSON objects (`sqlite3 -json -readonly`, waiting up to 5 s for edgecore's write lock). A
/// database not created yet has no rows.
pub fn query(db: &Path, sql: &str) -> Result<Vec<Value>, String> {
    if !db.exists() {
        return Ok(Vec::new());
    }
    let out = Command::new("sqlite3")
        .arg("-json")
        .arg("-readonly")
        .arg("-cmd")
        .arg(".timeout 5000")
        .arg(db)
        .arg(sql)
        .output()
        .map_err(|e| {
            format!("running sqlite3 (Debian package sqlite3; needed to read a real edgecore's store): {e}")
        })?;
    if !out.status.success() {
        return Err(format!(
            "sqlite3 {} {sql:?}: {}",
            db.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&text).map_err(|e| format!("sqlite3 answered no JSON ({e}): {text}"))
}

/// A string literal of SQL.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn column(row: &Value, name: &str) -> Option<String> {
    row[name]
        .as_str()
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// The stored twins of device `<namespace>/<name>`, by twin name.
pub fn device_twins(db: &Path, namespace: &str, name: &str) -> BTreeMap<String, DbTwin> {
    let sql = format!(
        "select name, expected, actual from device_twin where deviceid = {}",
        literal(&format!("{namespace}/{name}"))
    );
    query(db, &sql)
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|r| {
            (
                column(r, "name").unwrap_or_default(),
                DbTwin {
                    expected: column(r, "expected"),
                    actual: column(r, "actual"),
                },
            )
        })
        .collect()
}

/// The devices edgecore's twin module knows (`device.id`, `<namespace>/<name>`), with their stored state.
pub fn devices(db: &Path) -> BTreeMap<String, Option<String>> {
    query(db, "select id, state from device")
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .filter_map(|r| Some((column(r, "id")?, column(r, "state"))))
        .collect()
}

/// Every `device_twin` row, one line each (`deviceid name expected=... actual=...`), for a failure message.
pub fn dump(db: &Path) -> String {
    match query(
        db,
        "select deviceid, name, expected, actual from device_twin order by deviceid, name",
    ) {
        Ok(rows) => rows
            .iter()
            .map(|r| {
                format!(
                    "  {} {} expected={:?} actual={:?}\n",
                    r["deviceid"].as_str().unwrap_or_default(),
                    r["name"].as_str().unwrap_or_default(),
                    r["expected"].as_str().unwrap_or_default(),
                    r["actual"].as_str().unwrap_or_default()
                )
            })
            .collect(),
        Err(e) => format!("  ({e})\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// edgecore v1.23.1's own schema of the two tables (`sqlite3 edgecore.db .schema`, recorded from a real
    /// edgecore's store).
    const SCHEMA: &str = "CREATE TABLE `device` (`id` text,`name` text,`description` text,`state` text,\
        `last_online` text,PRIMARY KEY (`id`));\
        CREATE TABLE `device_twin` (`id` integer PRIMARY KEY AUTOINCREMENT,`deviceid` text,`name` text,\
        `description` text,`expected` text,`actual` text,`expected_meta` text,`actual_meta` text,\
        `expected_version` text,`actual_version` text,`optional` numeric,`attr_type` text,`metadata` text);";

    #[test]
    fn reads_a_store_in_edgecores_schema() {
        if !twinflash_harness::needs(
            twinflash_harness::tool_available("sqlite3"),
            "the sqlite3 command-line tool",
        ) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("edgecore.db");
        assert!(
            device_twins(&db, "default", "x").is_empty(),
            "no database yet: no rows"
        );
        let rows = "INSERT INTO device VALUES ('default/blinky-1','blinky-1','','online','2026-12-07T14:23:03Z');\
            INSERT INTO device VALUES ('default/o''brien','o''brien','','','');\
            INSERT INTO device_twin (deviceid,name,description,expected,actual,expected_meta,actual_meta,\
            expected_version,actual_version,optional,attr_type,metadata) VALUES\
            ('default/blinky-1','firmware','','reg/fw:1@sha256:aa','reg/fw:1@sha256:aa','{\"timestamp\":1}',\
            '{\"timestamp\":2}','{\"cloud\":1,\"edge\":0}','{\"cloud\":0,\"edge\":1}',1,'string','{}'),\
            ('default/blinky-1','firmware-state','','','installed','','{\"timestamp\":2}','',\
            '{\"cloud\":0,\"edge\":1}',1,'string','{}'),\
            ('default/o''brien','firmware','','','it''s','','','','',1,'string','{}');";
        let out = Command::new("sqlite3")
            .arg(&db)
            .arg(format!("{SCHEMA}{rows}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        let twins = device_twins(&db, "default", "blinky-1");
        assert_eq!(twins.len(), 2);
        assert_eq!(
            twins["firmware"].expected.as_deref(),
            Some("reg/fw:1@sha256:aa")
        );
        assert_eq!(twins["firmware-state"].actual.as_deref(), Some("installed"));
        assert_eq!(
            twins["firmware-state"].expected, None,
            "an empty column is no value"
        );
        // A quote in a name is a literal, not SQL.
        assert_eq!(
            device_twins(&db, "default", "o'brien")["firmware"]
                .actual
                .as_deref(),
            Some("it's")
        );
        assert!(device_twins(&db, "other", "blinky-1").is_empty());
        let devices = devices(&db);
        assert_eq!(devices["default/blinky-1"].as_deref(), Some("online"));
        assert_eq!(devices["default/o'brien"], None);
        assert!(
            dump(&db)
                .contains("default/blinky-1 firmware-state expected=\"\" actual=\"installed\"")
        );
    }
}
