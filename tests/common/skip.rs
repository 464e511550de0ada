//! Skipping a test that cannot run here, without lying about it.
//!
//! Outside CI a test that lacks /dev/kvm, root or a network namespace prints one
//! `SKIPPED: <test>: <reason>` line, appends it to the file named by `PALISADE_SKIP_LOG`
//! (resources/run-tests.sh counts them in its closing line) and returns. In CI the same call
//! fails the test instead, so a test that could not run never counts as passed: CI is
//! `PALISADE_NO_SKIP` set (`.ci/run` sets it), or `CI` set to anything but `false` or `0`
//! (what GitHub Actions, GitLab CI and most others set), whichever runner starts the tests.

use std::ffi::OsStr;
use std::io::Write;

/// The variable that makes a skip a failure, given the values of `PALISADE_NO_SKIP` and `CI`.
fn skips_fail_because(no_skip: Option<&OsStr>, ci: Option<&OsStr>) -> Option<&'static str> {
    if no_skip.is_some_and(|v| !v.is_empty()) {
        return Some("PALISADE_NO_SKIP");
    }
    let ci = ci.map(|v| v.to_string_lossy().trim().to_ascii_lowercase());
    if ci.is_some_and(|v| !v.is_empty() && v != "false" && v != "0") {
        return Some("CI");
    }
    None
}

/// Records that `test` cannot run for `reason`; panics when skips are failures.
pub fn skip(test: &str, reason: &str) {
    let line = format!("SKIPPED: {test}: {reason}");
    let no_skip = std::env::var_os("PALISADE_NO_SKIP");
    let ci = std::env::var_os("CI");
    if let Some(var) = skips_fail_because(no_skip.as_deref(), ci.as_deref()) {
        panic!("{line} ({var} is set: a test that cannot run fails)");
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

#[test]
fn a_skip_fails_under_palisade_no_skip_or_any_ci_value_but_false_or_0() {
    let os = |s: &'static str| Some(OsStr::new(s));
    let cases = [
        (None, None, None),
        (os(""), os(""), None),
        (None, os("false"), None),
        (None, os("FALSE"), None),
        (None, os("0"), None),
        (os("1"), None, Some("PALISADE_NO_SKIP")),
        (os("1"), os("false"), Some("PALISADE_NO_SKIP")),
        (None, os("true"), Some("CI")),
        (None, os("1"), Some("CI")),
        (None, os("yes"), Some("CI")),
        (os(""), os("woodpecker"), Some("CI")),
    ];
    for (no_skip, ci, want) in cases {
        assert_eq!(skips_fail_because(no_skip, ci), want, "{no_skip:?} {ci:?}");
    }
}
