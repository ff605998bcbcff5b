//! Real files of two platforms for the tests: the Debian 13 builder images of amd64 and arm64
//! (made locally, nothing can be pulled: `test/support/make-builder-image.sh` and
//! `test/support/make-foreign-builder-image.sh`, cached by tag), their filesystems exported once
//! into a cache directory, and releases of the examples built natively in the amd64 builder.
//!
//! Nothing of arm64 is run: the arm64 image is made with `debootstrap --foreign` and read as
//! files. A missing engine or tool is a SKIP on a developer's machine and a failure in CI
//! ([`super::prereq::missing`]).

use super::prereq;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Debian 13 with Elixir, amd64 (the platform of this machine).
pub const AMD64_BUILDER: &str = "docker-release-test/builder:trixie";
/// The same packages for arm64.
pub const ARM64_BUILDER: &str = "docker-release-test/builder:trixie-arm64-dpkgdb";

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where exported filesystems and built releases are kept between runs.
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("platforms")
}

/// One test at a time makes images, exports and releases (each is made once, then cached).
static MAKING: Mutex<()> = Mutex::new(());

fn command_ok(cmd: &mut Command, what: &str) -> Option<Vec<u8>> {
    match cmd.output() {
        Ok(o) if o.status.success() => Some(o.stdout),
        Ok(o) => {
            prereq::missing(format!(
                "{what} failed ({}): {}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ));
            None
        }
        Err(e) => {
            prereq::missing(format!("cannot run {what}: {e}"));
            None
        }
    }
}

/// Both builder images, made when absent (about 1 min each), or `None` (SKIP) without an engine.
pub fn builders() -> Option<(&'static str, &'static str)> {
    let _guard = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let ok = Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        prereq::missing("a Docker engine (`docker info` fails)");
        return None;
    }
    let support = repo_root().join("test/support");
    command_ok(
        Command::new("bash")
            .arg(support.join("make-builder-image.sh"))
            .args(["trixie", AMD64_BUILDER]),
        "make-builder-image.sh",
    )?;
    command_ok(
        Command::new("bash")
            .arg(support.join("make-foreign-builder-image.sh"))
            .args(["trixie", "arm64", ARM64_BUILDER, AMD64_BUILDER]),
        "make-foreign-builder-image.sh",
    )?;
    Some((AMD64_BUILDER, ARM64_BUILDER))
}

/// The filesystem of `image`, exported once (`docker create` + `docker export`, never run) into
/// a directory named by the image's ID.
pub fn rootfs(image: &str) -> Option<PathBuf> {
    let _guard = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let id = command_ok(
        Command::new("docker").args(["image", "inspect", "-f", "{{.Id}}", image]),
        "docker image inspect",
    )?;
    let id = String::from_utf8_lossy(&id).trim().replace("sha256:", "");
    let dir = cache_dir().join(format!("rootfs-{}", &id[..16.min(id.len())]));
    if dir.join(".complete").exists() {
        return Some(dir);
    }
    let partial = cache_dir().join(format!(".partial-rootfs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).expect("create the export directory");
    let cid = command_ok(
        Command::new("docker").args(["create", image, "/bin/true"]),
        "docker create",
    )?;
    let cid = String::from_utf8_lossy(&cid).trim().to_string();
    let exported = command_ok(
        Command::new("sh").arg("-c").arg(format!(
            "docker export {cid} | tar -x --numeric-owner -C '{}'",
            partial.display()
        )),
        "docker export",
    );
    let _ = Command::new("docker").args(["rm", "-f", &cid]).output();
    exported?;
    std::fs::write(partial.join(".complete"), image).expect("mark the export complete");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&partial, &dir).expect("move the export into place");
    Some(dir)
}

/// The examples released by this test process.
static RELEASED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// `examples/NAME` released (`MIX_ENV=prod mix release`) in a container of `builder`, without
/// its docker_release dependency (a dev-only path dependency a container cannot see). Built
/// once per test process, into a fresh copy of the example (so it is never stale); returns the
/// release directory.
pub fn release(name: &str, builder: &str) -> Option<PathBuf> {
    let _guard = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let copy = cache_dir().join(format!("release-{name}"));
    let rel = copy.join(format!("_build/prod/rel/{name}"));
    let mut released = RELEASED.lock().unwrap_or_else(|e| e.into_inner());
    if released.iter().any(|r| r == name) && rel.join("releases/start_erl.data").is_file() {
        return Some(rel);
    }
    let _ = std::fs::remove_dir_all(&copy);
    let src = repo_root().join("examples").join(name);
    command_ok(
        Command::new("sh").arg("-c").arg(format!(
            "mkdir -p '{c}' && cd '{s}' && tar -c --exclude=./_build --exclude=./deps . | tar -x -C '{c}'",
            c = copy.display(),
            s = src.display()
        )),
        "copying the example",
    )?;
    let mix = copy.join("mix.exs");
    let dep = r#"{:docker_release, path: "../..", only: :dev, runtime: false}"#;
    let text = std::fs::read_to_string(&mix)
        .expect("read mix.exs")
        .replace(&format!(",\n      {dep}"), "")
        .replace(dep, "");
    assert!(
        !text.contains(":docker_release"),
        "examples/{name}/mix.exs declares docker_release in another way:\n{text}"
    );
    std::fs::write(&mix, text).expect("write mix.exs");
    command_ok(
        Command::new("docker")
            .args(["run", "--rm", "-e", "MIX_ENV=prod", "-w", "/src", "-v"])
            .arg(format!("{}:/src", copy.display()))
            .args([builder, "mix", "release", "--overwrite"]),
        &format!("mix release of examples/{name} in {builder}"),
    )?;
    released.push(name.to_string());
    Some(rel)
}

/// The applications of the OTP installation under `root` (`ROOT/lib/NAME-VSN`) and Elixir's:
/// what `DockerRelease` passes as `otp_apps`.
pub fn otp_apps(rootfs: &Path) -> Vec<String> {
    let mut apps: Vec<String> = std::fs::read_dir(rootfs.join("usr/lib/erlang/lib"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.split_once('-').map(|(n, _)| n.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    apps.extend(
        ["elixir", "eex", "ex_unit", "iex", "logger", "mix"]
            .iter()
            .map(|s| s.to_string()),
    );
    apps
}
