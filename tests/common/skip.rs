//! Skipping a test that cannot run here, without lying about it.
//!
//! Outside CI a test that lacks /dev/kvm, root or a network namespace prints one
//! `SKIPPED: <test>: <reason>` line, appends it to the file named by `PALISADE_SKIP_LOG`
//! (resources/run-tests.sh counts them in its closing line) and returns. With
//! `PALISADE_NO_SKIP` set (`.ci/run` sets it: CI machines have all of these) the same call
//! fails the test instead, so a test that could not run never counts as passed.

use std::io::Write;

/// Records that `test` cannot run for `reason`; panics when skips are failures.
pub fn skip(test: &str, reason: &str) {
    let line = format!("SKIPPED: {test}: {reason}");
    if std::env::var_os("PALISADE_NO_SKIP").is_some_and(|v| !v.is_empty()) {
        panic!("{line} (PALISADE_NO_SKIP is set: a test that cannot run fails)");
    }
    println!("{line}");
    if let Some(path) = std::env::var_os("PALISADE_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}
