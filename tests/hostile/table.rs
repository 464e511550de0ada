//! The hostile suite's result table: one row per attack (attack | expected | observed |
//! pass/fail), printed to stdout and appended as a tab-separated line to the file named by
//! `PALISADE_HOSTILE_TABLE` when it is set (resources/hostile.sh prints that file at the end).

use std::io::Write;

/// One attack's outcome.
pub struct Row {
    pub attack: String,
    pub expected: String,
    pub observed: String,
    pub pass: bool,
}

/// The rows of one test; `finish` asserts they all passed.
#[derive(Default)]
pub struct Table {
    rows: Vec<Row>,
}

fn clean(text: &str) -> String {
    text.replace(['\t', '\n'], " ")
}

impl Table {
    /// Records a row: printed now, appended to the table file now (so a later panic keeps it).
    pub fn record(&mut self, attack: &str, expected: &str, observed: &str, pass: bool) {
        let verdict = if pass { "pass" } else { "FAIL" };
        println!("HOSTILE | {attack} | {expected} | {observed} | {verdict}");
        if let Some(path) = std::env::var_os("PALISADE_HOSTILE_TABLE") {
            let line = format!(
                "{}\t{}\t{}\t{verdict}\n",
                clean(attack),
                clean(expected),
                clean(observed)
            );
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            if let Err(e) = written {
                panic!("cannot append to PALISADE_HOSTILE_TABLE {path:?}: {e}");
            }
        }
        self.rows.push(Row {
            attack: attack.to_string(),
            expected: expected.to_string(),
            observed: observed.to_string(),
            pass,
        });
    }

    /// Panics naming every failed row.
    pub fn finish(self) {
        let failed: Vec<String> = self
            .rows
            .iter()
            .filter(|r| !r.pass)
            .map(|r| {
                format!(
                    "{}: expected {}, observed {}",
                    r.attack, r.expected, r.observed
                )
            })
            .collect();
        assert!(
            failed.is_empty(),
            "attacks that got through:\n{}",
            failed.join("\n")
        );
    }
}
