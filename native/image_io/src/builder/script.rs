//! The scripts a builder container runs, and reading the build's output: step markers, the
//! last lines for a failure, the OTP release.

use super::sources::SOURCES_SCRIPT;
use super::{
    run_captured, wait_status, BuilderError, BuilderSpec, OnLine, OnStep, LOCK_FILE, RELEASE_DIR,
    SRC_DIR,
};
use crate::engine::{ContainerEngine, ExecSpec, Output};
use crate::lines::Lines;
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};
use std::collections::VecDeque;

/// How many output lines a [`BuilderError::BuildFailed`] keeps.
pub const LAST_LINES: usize = 20;

/// The script of the preparing exec (as root): `$1` is [`RELEASE_DIR`], emptied; `$2` the
/// image's user, given `/src` and `$1` (empty: the image runs as root).
pub(super) const PREPARE_SCRIPT: &str =
    r#"rm -rf "$1" && mkdir -p "$1" && if [ -n "$2" ]; then chown -R "$2" /src "$1"; fi"#;

/// The script of the build exec (run after [`SOURCES_SCRIPT`], which defines the
/// `docker_release_sources*` functions). `$1` is the name for `mix release` (empty: a plain
/// `mix release`, the default release), `$2` the step marker; `MIX_ENV` comes from the
/// environment. Everything goes to stdout so lines keep their order.
///
/// Both Mix steps run in one VM when `mix` is the Elixir script (not a version manager's
/// shell shim, which `elixir -S` cannot run): a one-line task defined with `elixir -e` prints
/// the marker between them, once (`mix cmd echo` would print it once per umbrella app, each
/// time under an `==> app` header).
const BUILD_SCRIPT: &str = r#"exec 2>&1
set -e
if command -v flock >/dev/null 2>&1; then
  exec 9>>/src/_build/.docker_release.lock
  if ! flock -n 9; then
    echo "$2 wait"
    flock 9
  fi
else
  echo "$2 noflock"
fi
trap 'docker_release_sources_done $?' EXIT
docker_release_sources "$2"
echo "$2 deps.get"
m=$(command -v mix) || m=
if head -n 1 "$m" 2>/dev/null | grep -q elixir; then
  elixir -e 'defmodule Mix.Tasks.DockerRelease.Step do use Mix.Task; def run(a), do: IO.puts(Enum.join(a, " ")) end' \
    -S mix do deps.get --only "$MIX_ENV" + docker_release.step "$2 release" + release ${1:+"$1"} --overwrite --path /app
else
  mix deps.get --only "$MIX_ENV"
  echo "$2 release"
  mix release ${1:+"$1"} --overwrite --path /app
fi
e=$(command -v erl 2>/dev/null) && e=$(readlink -f "$e" 2>/dev/null) || e=
if [ -n "$e" ]; then
  for v in "${e%/bin/erl}"/releases/*/OTP_VERSION; do
    if [ -f "$v" ]; then v=${v%/OTP_VERSION}; echo "$2 otp ${v##*/}"; break; fi
  done
fi
"#;

const OTP_EVAL: &str = "io:put_chars(erlang:system_info(otp_release)), halt().";

/// The builder's OTP release from `erl` itself (when the build could not name it).
pub(super) async fn otp_with_erl(
    engine: &impl ContainerEngine,
    id: &str,
    env: Vec<String>,
) -> Result<String, BuilderError> {
    let otp = ExecSpec {
        cmd: vec![
            "erl".into(),
            "-noshell".into(),
            "-eval".into(),
            OTP_EVAL.into(),
        ],
        env,
        user: None,
        working_dir: "/".into(),
    };
    let (status, out) = run_captured(engine, id, &otp).await?;
    let otp_release = out.trim().to_string();
    if status != 0 || otp_release.is_empty() {
        return Err(BuilderError::Builder(format!(
            "reading the OTP release in the builder (`erl -noshell -eval '{OTP_EVAL}'`) failed with exit status {status}: {}",
            out.trim()
        )));
    }
    Ok(otp_release)
}

/// The build exec: `mix deps.get` then `mix release` under the cache lock, output streamed to
/// `on_line` line by line, step markers turned into `on_step` lines. Returns the OTP release
/// of the `erl` in the builder's `PATH` when the script could name it.
pub(super) async fn run_build(
    engine: &impl ContainerEngine,
    id: &str,
    spec: &BuilderSpec,
    env: &[String],
    on_step: &OnStep,
    on_line: &OnLine,
) -> Result<Option<String>, BuilderError> {
    let marker = format!("@@docker_release-{}@@", nonce(id));
    let build = ExecSpec {
        cmd: vec![
            "sh".into(),
            "-c".into(),
            format!("{SOURCES_SCRIPT}{BUILD_SCRIPT}"),
            "docker_release".into(),
            if spec.named_release {
                spec.release_name.clone()
            } else {
                String::new()
            },
            marker.clone(),
        ],
        env: env.to_vec(),
        user: None,
        working_dir: SRC_DIR.into(),
    };
    let commands = [
        ("deps.get", format!("mix deps.get --only {}", spec.mix_env)),
        (
            "release",
            if spec.named_release {
                format!(
                    "mix release {} --overwrite --path {RELEASE_DIR}",
                    spec.release_name
                )
            } else {
                format!("mix release --overwrite --path {RELEASE_DIR}")
            },
        ),
    ];
    let (exec_id, output) = engine.exec(id, &build).await?;
    let mut lines = Marked::new(marker);
    let mut step: Option<&str> = None;
    let mut last: VecDeque<String> = VecDeque::with_capacity(LAST_LINES);
    let mut otp: Option<String> = None;
    let mut handle = |line: Line, step: &mut Option<&'static str>, last: &mut VecDeque<String>| {
        match line {
            Line::Marker(m) if m.starts_with("otp ") => {
                let v = m["otp ".len()..].trim();
                if !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') {
                    otp = Some(v.to_string());
                }
            }
            Line::Marker(m) => match m.as_str() {
                "wait" => on_step(&format!(
                    "waiting for another build that uses the same cache (lock {LOCK_FILE})"
                )),
                "sources all -" => on_step(
                    "no earlier build in the cache volumes: every file counts as changed",
                ),
                m if m.starts_with("sources ") => {
                    let mut n = m["sources ".len()..].split(' ');
                    if let (Some(changed), Some(total)) = (n.next(), n.next()) {
                        on_step(&format!(
                            "{changed} of {total} files differ from what the cache volumes were last built from"
                        ));
                    }
                }
                "noflock" => on_step(&format!(
                    "warning: {} has no flock: builds sharing this cache are not serialised; do not run two at once",
                    spec.image
                )),
                name => {
                    if let Some((s, cmd)) = commands.iter().find(|(s, _)| *s == name) {
                        *step = Some(s);
                        last.clear();
                        on_step(&format!("running `{cmd}` in the builder"));
                    }
                }
            },
            Line::Text(text) => {
                let s = step.unwrap_or("prepare");
                if last.len() == LAST_LINES {
                    last.pop_front();
                }
                last.push_back(text.clone());
                on_line(s, &text);
            }
        }
    };
    let mut output = output;
    while let Some(chunk) = output.next().await {
        let bytes = match chunk? {
            Output::Stdout(b) | Output::Stderr(b) => b,
        };
        for line in lines.push(&bytes) {
            handle(line, &mut step, &mut last);
        }
    }
    for line in lines.finish() {
        handle(line, &mut step, &mut last);
    }
    let status = wait_status(engine, &exec_id).await?;
    if status != 0 {
        let (step, command) = match step {
            Some(s) => commands
                .iter()
                .find(|(n, _)| *n == s)
                .map(|(n, c)| (n.to_string(), c.clone()))
                .unwrap_or_default(),
            None => (
                "prepare".to_string(),
                format!(
                    "flock {LOCK_FILE}; comparing the sources with the cache (preparing the build)"
                ),
            ),
        };
        return Err(BuilderError::BuildFailed {
            step,
            command,
            image: spec.image.clone(),
            status,
            last_lines: last.into_iter().collect(),
        });
    }
    Ok(otp)
}

/// A per-build marker that no program output will contain by accident.
fn nonce(id: &str) -> String {
    let mut h = Sha256::new();
    h.update(id.as_bytes());
    h.update(std::process::id().to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(now.as_nanos().to_le_bytes());
    hex::encode(h.finalize())[..16].to_string()
}

/// A line of build output: text, or one of our step markers (`MARKER text`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    Text(String),
    Marker(String),
}

/// Build output as [`Line`]s: lines ([`Lines`]) with our marker recognised.
struct Marked {
    marker: String,
    lines: Lines,
}

impl Marked {
    fn new(marker: String) -> Marked {
        Marked {
            marker,
            lines: Lines::default(),
        }
    }

    fn push(&mut self, bytes: &[u8]) -> Vec<Line> {
        let lines = self.lines.push(bytes);
        lines.into_iter().map(|l| self.line(l)).collect()
    }

    fn finish(&mut self) -> Vec<Line> {
        let last = self.lines.finish();
        last.into_iter().map(|l| self.line(l)).collect()
    }

    fn line(&self, text: String) -> Line {
        match text
            .strip_prefix(self.marker.as_str())
            .and_then(|rest| rest.strip_prefix(' '))
        {
            Some(m) => Line::Marker(m.to_string()),
            None => Line::Text(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lines::MAX_LINE;
    use std::path::Path;

    #[test]
    fn lines_split_across_chunks_and_markers_are_recognised() {
        let mut l = Marked::new("@@m@@".into());
        let mut got = l.push(b"hel");
        got.extend(l.push(b"lo\r\n@@m@@ rel"));
        got.extend(l.push(b"ease\nCompiling 2 files (.ex)\n@@m@@x\ntail"));
        got.extend(l.finish());
        assert_eq!(
            got,
            vec![
                Line::Text("hello".into()),
                Line::Marker("release".into()),
                Line::Text("Compiling 2 files (.ex)".into()),
                Line::Text("@@m@@x".into()),
                Line::Text("tail".into()),
            ]
        );
        let mut l = Marked::new("@@m@@".into());
        let long = vec![b'a'; MAX_LINE + 10];
        let got = l.push(&long);
        assert_eq!(got.len(), 1);
        assert_eq!(l.finish(), vec![Line::Text("a".repeat(10))]);
    }

    /// Runs [`BUILD_SCRIPT`] with `PATH` holding only `tools` (shell scripts by name) and the
    /// few utilities it calls; returns its output.
    fn run_build_script(tools: &[(&str, &str)], release: &str) -> String {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in tools {
            let path = dir.path().join(name);
            std::fs::write(&path, body).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        for tool in ["head", "grep", "readlink"] {
            let found = ["/usr/bin", "/bin"]
                .iter()
                .map(|d| Path::new(d).join(tool))
                .find(|p| p.exists())
                .unwrap();
            std::os::unix::fs::symlink(found, dir.path().join(tool)).unwrap();
        }
        // The sources check (its own tests: tests/builder.rs) is stubbed out here.
        let script =
            format!("docker_release_sources() {{ :; }}\ndocker_release_sources_done() {{ :; }}\n{BUILD_SCRIPT}");
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &script, "docker_release", release, "@M"])
            .env_clear()
            .env("PATH", dir.path())
            .env("MIX_ENV", "prod")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn build_script_runs_both_mix_steps_in_one_vm_and_prints_the_marker_once() {
        // `mix` is the Elixir script: `elixir -S mix do …` with our step task between.
        let tools = [
            ("mix", "#!/usr/bin/env elixir\nMix.CLI.main()\n"),
            (
                "elixir",
                "#!/bin/sh\nfor a in \"$@\"; do echo \"[$a]\"; done\n",
            ),
        ];
        let out = run_build_script(&tools, "hello");
        let args: Vec<&str> = out.lines().collect();
        assert_eq!(args[..2], ["@M noflock", "@M deps.get"]);
        assert_eq!(args[2], "[-e]");
        assert!(args[3].contains("defmodule Mix.Tasks.DockerRelease.Step"));
        let rest = "[-S] [mix] [do] [deps.get] [--only] [prod] [+] [docker_release.step] [@M release] [+] [release] [hello] [--overwrite] [--path] [/app]";
        assert_eq!(args[4..].join(" "), rest);
        // The default release: no name at all (`mix release APP` fails without releases:).
        let out = run_build_script(&tools, "");
        assert!(
            out.ends_with("[+]\n[release]\n[--overwrite]\n[--path]\n[/app]\n"),
            "{out}"
        );
    }

    #[test]
    fn build_script_runs_mix_twice_when_mix_is_a_shim() {
        // asdf and Nix put shell scripts named `mix` on PATH: `elixir -S` cannot run those.
        let tools = [("mix", "#!/bin/sh\necho \"mix $*\"\n")];
        let out = run_build_script(&tools, "hello");
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            [
                "@M noflock",
                "@M deps.get",
                "mix deps.get --only prod",
                "@M release",
                "mix release hello --overwrite --path /app"
            ]
        );
        let out = run_build_script(&tools, "");
        assert!(
            out.ends_with("mix release --overwrite --path /app\n"),
            "{out}"
        );
    }
}
