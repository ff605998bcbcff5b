//! Credential helpers in a process that ignores SIGCHLD, as the BEAM does: the kernel reaps
//! such a process's children at once, so `waitpid` fails with ECHILD ("No child processes",
//! os error 10). This test binary sets SIGCHLD to ignored for the whole process first, like
//! the VM the NIF runs in (its own binary: the setting is process-wide).
//!
//! The end-to-end proof through `mix docker.release` is test/e2e/credentials_test.exs.

use image_io::registry::credentials::{Credential, CredentialError, CredentialStore};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn helper(dir: &Path, name: &str, body: &str) {
    let p = dir.join(format!("docker-credential-{name}"));
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn helpers_work_where_sigchld_is_ignored() {
    // SAFETY: set before any thread of this test binary starts a child.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
    }
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    // A helper that, like real ones (`pass`, `gpg`), runs programs of its own and waits for
    // them: that needs SIGCHLD at its default in the helper too.
    helper(
        &bin,
        "good",
        "host=$(cat)\nuser=$(echo ci-user | cat)\nwait\nprintf '{\"Username\":\"%s\",\"Secret\":\"s3cret-for-%s\"}' \"$user\" \"$host\"",
    );
    helper(
        &bin,
        "absent",
        "cat >/dev/null\necho 'credentials not found in native keychain'\nexit 1",
    );
    helper(
        &bin,
        "broken",
        "cat >/dev/null\necho 'keychain locked' >&2\nexit 7",
    );
    let cfg = tmp.path().join("config");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(
        cfg.join("config.json"),
        r#"{"credHelpers": {"good.example": "good", "absent.example": "absent", "broken.example": "broken"}}"#,
    )
    .unwrap();
    let (c, p) = (cfg.display().to_string(), bin.display().to_string());
    let store = CredentialStore::from_env(&move |k| match k {
        "DOCKER_CONFIG" => Some(c.clone()),
        "PATH" => Some(p.clone()),
        _ => None,
    });

    assert_eq!(
        store.get("good.example").unwrap(),
        Some(Credential {
            username: "ci-user".into(),
            password: "s3cret-for-good.example".into(),
        })
    );
    assert_eq!(store.get("absent.example").unwrap(), None);
    let err = store.get("broken.example").unwrap_err();
    assert!(matches!(err, CredentialError::Helper { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("exited with status 7"), "{text}");
    assert!(text.contains("keychain locked"), "{text}");
    assert!(!text.contains("os error 10"), "{text}");
}
