//! Missing prerequisites: a skip on a developer's machine, a failure in CI.
//!
//! A test that needs a tool, a service or something of this machine calls [`missing`] when it
//! is absent, then returns. Where every test must run — `CI` set to anything but empty, `0` or
//! `false` (as GitHub Actions, GitLab CI and our `.ci/run` set it), or
//! `DOCKER_RELEASE_REQUIRE_ALL=1` — [`missing`] fails the test instead: a suite that passes
//! while testing nothing proves nothing. Tests tied to the host's architecture are marked
//! `#[ignore]` on other hosts instead (libtest reports them as ignored, not passed).
#![allow(dead_code)]

/// Whether every test must run (a missing prerequisite fails the test).
pub fn required() -> bool {
    let set = |k: &str| {
        std::env::var(k)
            .map(|v| !matches!(v.trim(), "" | "0" | "false" | "FALSE" | "False"))
            .unwrap_or(false)
    };
    set("CI") || set("DOCKER_RELEASE_REQUIRE_ALL")
}

/// A prerequisite of the calling test is missing: panic when [`required`], else print SKIP (the
/// caller then returns).
#[track_caller]
pub fn missing(what: impl std::fmt::Display) {
    if required() {
        panic!(
            "missing prerequisite: {what}. CI (or DOCKER_RELEASE_REQUIRE_ALL) requires every test to run; scripts/setup.sh installs what the suite needs"
        );
    }
    println!("SKIP: {what}");
}
