//! Making Mix's recompile decision right in the builder, whatever mtimes the upload carried.
//!
//! Mix decides what to recompile from modification times: a source is read again only when its
//! size changed or its mtime is newer than what Mix recorded (Elixir 1.14–1.16: the manifest's
//! mtime; 1.17 and later: the source's own mtime at its last compile), and a newer config file
//! (`config/*.exs`, `mix.lock`) or `mix.exs` makes it re-check the modules that depend on
//! them (all of them, when the app's own config changed). The upload keeps the host's mtimes,
//! and the cache volumes outlive the project's files: a project recreated with older mtimes
//! (`cp -a` of an old copy, `rsync -a`, an archive or CI cache restored) whose changed module
//! kept its size would not be recompiled, and the image would ship the code the cache was
//! built from. A fresh `git clone` (every mtime new) would re-check everything.
//!
//! So before Mix runs, under the cache lock, [`SOURCES_SCRIPT`]'s `docker_release_sources`
//! compares the content of every uploaded file (everything under `/src` but the `_build` and
//! `deps` volumes) with `_build/.docker_release.sources`, the digests (`HASH  ./PATH` lines,
//! sorted) of what the last successful build in these volumes was built from:
//!
//! - a file whose content is unchanged gets mtime 1980-01-01 00:00, older than anything Mix
//!   recorded, so Mix leaves it alone (and an unchanged `mix.exs` does not force a full
//!   check). Not 0: Mix takes mtime 0 with size 0 for a missing file;
//! - a changed or new file gets the current time, newer than anything Mix recorded (if the
//!   last build ended within the current second, it waits for the next one first: Mix compares
//!   whole seconds, strictly), so Mix compares its digest and recompiles it;
//! - with no record (first build, `--no-cache`, a cache of an older docker_release) every file
//!   counts as changed; so does a file whose name holds a newline or a backslash (the digest
//!   tools escape or split those lines).
//!
//! The new digests go to `….sources.new`; `docker_release_sources_done STATUS` (the build
//! script's `EXIT` trap) renames it to `….sources` only when the build succeeded, so a failed
//! build's files still count as changed next time. It also touches
//! `_build/.docker_release.stamp` at every end, which is what the same-second check reads.
//! Both run under the lock that serialises builds sharing the volumes, so a concurrent build
//! cannot make the comparison stale.
//!
//! Only POSIX `sh` and tools that both Debian (coreutils, findutils, mawk) and BusyBox
//! (Alpine) have: `find -exec {} +`, `sha256sum` (else `md5sum`), `sort`, `awk`, `touch -c`,
//! `touch -t`, `date -r`. Without a digest tool every file counts as changed (correct,
//! slower) and the script says so.

/// Shell functions (no commands run when it is sourced): `docker_release_sources MARKER`,
/// to run in the project directory under the cache lock before Mix, and
/// `docker_release_sources_done STATUS`, for the `EXIT` trap. `docker_release_sources`
/// prints `MARKER sources CHANGED TOTAL`, or `MARKER sources all -` when there was no record.
pub const SOURCES_SCRIPT: &str = r#"
docker_release_files() {
  find . \( -path ./_build -o -path ./deps \) -prune -o -type f "$@"
}
docker_release_sources() {
  _dr_marker=$1
  _dr_rec=_build/.docker_release.sources
  _dr_new=$_dr_rec.new
  _dr_stamp=_build/.docker_release.stamp
  _dr_sum=
  for _dr_h in sha256sum md5sum; do
    if command -v "$_dr_h" >/dev/null 2>&1; then _dr_sum=$_dr_h; break; fi
  done
  rm -f "$_dr_new" "$_dr_new.unsorted" "$_dr_new.changed"
  if [ -z "$_dr_sum" ]; then
    echo "warning: the builder has neither sha256sum nor md5sum: every file counts as changed (Mix compares the contents)"
  elif ! { docker_release_files -exec "$_dr_sum" {} + >"$_dr_new.unsorted" &&
      LC_ALL=C sort "$_dr_new.unsorted" >"$_dr_new"; }; then
    echo "warning: could not take the digests of the project's files: every file counts as changed"
    rm -f "$_dr_new"
  fi
  rm -f "$_dr_new.unsorted"
  # Mix compares whole seconds, strictly: what it recorded in the last build must be older.
  if [ -f "$_dr_stamp" ] && [ "$(date +%s)" -le "$(date -r "$_dr_stamp" +%s)" ]; then
    sleep 1
  fi
  if [ -f "$_dr_new" ] && [ -f "$_dr_rec" ]; then
    docker_release_files -exec touch -c -t 198001010000.00 {} +
    awk 'FILENAME == ARGV[1] { old[$0] = 1; next }
      /^\\/ { next }
      !($0 in old) { print substr($0, index($0, "  ") + 2) }' "$_dr_rec" "$_dr_new" >"$_dr_new.changed"
    set --
    while IFS= read -r _dr_f; do
      set -- "$@" "$_dr_f"
      if [ $# -ge 64 ]; then touch -c "$@"; set --; fi
    done <"$_dr_new.changed"
    if [ $# -gt 0 ]; then touch -c "$@"; fi
    _dr_nl='
'
    docker_release_files \( -path '*\\*' -o -path "*$_dr_nl*" \) -exec touch -c {} +
    echo "$_dr_marker sources $(wc -l <"$_dr_new.changed" | tr -d ' ') $(wc -l <"$_dr_new" | tr -d ' ')"
    rm -f "$_dr_new.changed"
  else
    docker_release_files -exec touch -c {} +
    echo "$_dr_marker sources all -"
  fi
}
docker_release_sources_done() {
  touch _build/.docker_release.stamp 2>/dev/null || :
  if [ "$1" = 0 ] && [ -f _build/.docker_release.sources.new ]; then
    mv -f _build/.docker_release.sources.new _build/.docker_release.sources
  else
    rm -f _build/.docker_release.sources.new
  fi
}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// A shell to run the script with: the system's `sh` with its tools (Debian: dash,
    /// coreutils, findutils, mawk), or BusyBox's `sh` with a `PATH` of nothing but BusyBox
    /// applets (what an Alpine builder has).
    #[derive(Clone, Copy, Debug)]
    enum Shell {
        System,
        BusyBox,
    }

    struct Project {
        dir: tempfile::TempDir,
        shell: Shell,
        applets: Option<tempfile::TempDir>,
    }

    impl Project {
        fn new(shell: Shell) -> Project {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("_build/prod")).unwrap();
            std::fs::create_dir_all(dir.path().join("deps/x")).unwrap();
            let applets = match shell {
                Shell::System => None,
                Shell::BusyBox => {
                    let busybox = which("busybox")
                        .expect("busybox is needed for this test (Debian: busybox-static)");
                    let bin = tempfile::tempdir().unwrap();
                    let out = Command::new(&busybox).arg("--list").output().unwrap();
                    for applet in String::from_utf8(out.stdout).unwrap().lines() {
                        std::os::unix::fs::symlink(&busybox, bin.path().join(applet)).unwrap();
                    }
                    Some(bin)
                }
            };
            Project {
                dir,
                shell,
                applets,
            }
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }

        fn write(&self, rel: &str, text: &str, mtime: i64) {
            let p = self.path(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            set_mtime(&p, mtime);
        }

        fn mtime(&self, rel: &str) -> i64 {
            std::fs::metadata(self.path(rel)).unwrap().mtime()
        }

        /// Runs `docker_release_sources` then `docker_release_sources_done STATUS`; returns
        /// what the first printed.
        fn build(&self, status: i32) -> String {
            let script = format!(
                "{SOURCES_SCRIPT}\nset -e\ndocker_release_sources @@m@@\ndocker_release_sources_done {status}\n"
            );
            let mut cmd = match self.shell {
                Shell::System => Command::new("sh"),
                Shell::BusyBox => {
                    let bin = self.applets.as_ref().unwrap().path();
                    let mut c = Command::new(bin.join("sh"));
                    c.env_clear().env("PATH", bin);
                    c
                }
            };
            let out = cmd
                .args(["-c", &script])
                .current_dir(self.dir.path())
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{:?}: {text}", self.shell);
            text
        }
    }

    fn which(name: &str) -> Option<PathBuf> {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    }

    fn set_mtime(p: &Path, secs: i64) {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    const RECORD: &str = "_build/.docker_release.sources";
    const STAMP: &str = "_build/.docker_release.stamp";
    /// 1980-01-01 00:00 UTC (the tests run with TZ unset).
    const OLD: i64 = 315_532_800;
    const LONG_AGO: i64 = 1_000_000_000;

    fn run_all(shell: Shell) {
        let p = Project::new(shell);
        p.write("mix.exs", "defmodule P.MixProject do end\n", LONG_AGO);
        p.write("lib/a.ex", "defmodule A, do: def(v, do: 1)\n", LONG_AGO);
        p.write("lib/b c.ex", "defmodule B, do: nil\n", LONG_AGO);
        p.write("deps/x/x.ex", "untouched\n", LONG_AGO);
        p.write("_build/prod/y", "untouched\n", LONG_AGO);

        // First build: no record, every file counts as changed.
        let before = now();
        let out = p.build(0);
        assert!(out.contains("@@m@@ sources all -"), "{shell:?}: {out}");
        for f in ["mix.exs", "lib/a.ex", "lib/b c.ex"] {
            assert!(p.mtime(f) >= before, "{shell:?}: {f} was not touched");
        }
        // The volumes are not the project's files.
        assert_eq!(p.mtime("deps/x/x.ex"), LONG_AGO);
        assert_eq!(p.mtime("_build/prod/y"), LONG_AGO);
        let record = std::fs::read_to_string(p.path(RECORD)).unwrap();
        assert_eq!(record.lines().count(), 3, "{shell:?}: {record}");
        assert!(record.contains("  ./lib/b c.ex\n"), "{shell:?}: {record}");
        assert!(p.path(STAMP).exists());

        // The same contents, with any mtimes (a fresh clone: new ones): nothing counts as
        // changed, every file gets the old time.
        p.write("mix.exs", "defmodule P.MixProject do end\n", now() + 100);
        p.write("lib/a.ex", "defmodule A, do: def(v, do: 1)\n", now());
        let out = p.build(0);
        assert!(out.contains("@@m@@ sources 0 3"), "{shell:?}: {out}");
        for f in ["mix.exs", "lib/a.ex", "lib/b c.ex"] {
            assert_eq!(p.mtime(f), OLD, "{shell:?}: {f}");
        }

        // A same-size change with an older mtime (`cp -a` of an old copy): touched, and only
        // it; the build fails, so the record keeps the contents it was built from.
        p.write("lib/a.ex", "defmodule A, do: def(v, do: 2)\n", LONG_AGO);
        let before = now();
        let out = p.build(1);
        assert!(out.contains("@@m@@ sources 1 3"), "{shell:?}: {out}");
        assert!(p.mtime("lib/a.ex") >= before);
        assert_eq!(p.mtime("lib/b c.ex"), OLD);
        // Still changed after the failure; then a success records it.
        p.write("lib/a.ex", "defmodule A, do: def(v, do: 2)\n", LONG_AGO);
        let out = p.build(0);
        assert!(out.contains("@@m@@ sources 1 3"), "{shell:?}: {out}");
        // The build that just ended stamped this second: a change now must wait for the
        // next one, so that the new mtime is newer than anything Mix recorded.
        p.write("lib/a.ex", "defmodule A, do: def(v, do: 3)\n", LONG_AGO);
        let stamp = p.mtime(STAMP);
        let out = p.build(0);
        assert!(out.contains("@@m@@ sources 1 3"), "{shell:?}: {out}");
        assert!(p.mtime("lib/a.ex") > stamp, "{shell:?}: not past the stamp");
        let out = p.build(0);
        assert!(out.contains("@@m@@ sources 0 3"), "{shell:?}: {out}");

        // New and removed files; a name with a newline always counts as changed.
        std::fs::remove_file(p.path("lib/b c.ex")).unwrap();
        p.write("lib/new.ex", "defmodule New, do: nil\n", LONG_AGO);
        p.write("lib/odd\nname.ex", "defmodule Odd, do: nil\n", LONG_AGO);
        let before = now();
        let out = p.build(0);
        assert!(p.mtime("lib/new.ex") >= before, "{shell:?}: {out}");
        assert!(p.mtime("lib/odd\nname.ex") >= before, "{shell:?}: {out}");
        assert_eq!(p.mtime("lib/a.ex"), OLD);
        let out = p.build(0);
        assert!(p.mtime("lib/odd\nname.ex") >= before, "{shell:?}: {out}");
        assert_eq!(p.mtime("lib/new.ex"), OLD);
    }

    #[test]
    fn decisions_with_the_system_shell_and_tools() {
        run_all(Shell::System);
    }

    #[test]
    fn decisions_with_busybox_only() {
        run_all(Shell::BusyBox);
    }
}
