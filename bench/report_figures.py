"""Report sections for the figures of bench/figures/*.sh (used by bench/report.py).

Each `*_figure(w, data, machine)` writes one Markdown section through `w` (a line appender),
from the raw rows `data[(metric, variant)] = [(run, value, detail)]`, and writes nothing when
its figure did not run. Medians throughout; ratios are ours / other. Stdlib only.
"""
import collections
import statistics
import sys

MEM_LARGE_TARGET_MB = 150
PUSH_TARGET_SHARE = 0.05
LATENESS_TARGET_MS = 20
WARM_TARGET = 1.3
INSTALL_TARGET_EXTRA_S = 15
PLATFORMS_TARGET = 1.5


def load_raw(path):
    """Raw rows `metric variant run value detail` as data[(metric, variant)] = [(run, value, detail)]."""
    data = collections.defaultdict(list)
    with open(path) as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 4:
                continue
            metric, variant, run, value = fields[:4]
            detail = fields[4] if len(fields) > 4 else ""
            data[(metric, variant)].append((int(run), value, detail))
    return data


def numbers(data, metric, variant):
    out = []
    for _, v, _ in sorted(data.get((metric, variant), [])):
        try:
            out.append(float(v))
        except ValueError:
            pass
    return out


def median(values):
    return statistics.median(values) if values else None


def mb(n):
    return "n/a" if n is None else f"{n / 1e6:.1f} MB"


def secs(ms):
    return "n/a" if ms is None else f"{ms / 1000:.2f} s"


def _ms(v):
    return "n/a" if v is None else f"{v:.1f} ms"


def ratio(a, b):
    return "n/a" if a is None or not b else f"{a / b:.2f}"


def spread(values, fmt):
    if not values:
        return "n/a"
    if min(values) == max(values):
        return fmt(values[0])
    return f"{fmt(min(values))} – {fmt(max(values))}"


def _pair_ratio(a, b):
    pairs = [x / y for x, y in zip(a, b) if y]
    return (f"{statistics.median(pairs):.2f}" if pairs else "n/a"), len(pairs)


def _verdict(ok):
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def _load(w, data, figure):
    load = numbers(data, "load1", figure)
    if load:
        w(f"1-minute load average when the figure started: {load[0]:.2f} (other work on the machine"
          " shows here).\n")


def _has(data, metric):
    return any(m == metric for m, _ in data)


def from_release_figure(w, data, machine):
    if not _has(data, "fr_ms"):
        return
    runs = max(len(numbers(data, "fr_ms", f"{n}_ours")) for n in ("with_deps", "synth"))
    w("## 5. Building from an existing release: examples/with_deps and a large release\n")
    w(f"{runs} runs each per release, alternating ours and docker (A B A B) after one untimed")
    w("round, both images removed before every build (bench/figures/from_release.sh).\n")
    w("- ours: `mix docker.release --no-cache --from-release DIR --tag bench/NAME:ours` (every layer")
    w("  compressed, as docker builds every layer; wall time of the whole")
    w("  command, loading into the engine included), run in the release's project (examples/hello")
    w("  for the synthetic release);")
    w("- docker: `DOCKER_BUILDKIT=0 docker build --no-cache` of `FROM docker-release-bench/minbase:bookworm`")
    w("  / `COPY rel /app` over a context holding the same release;")
    w("- the synthetic release is examples/hello's release plus 150 generated dependency apps")
    w("  (`bench/synthetic_release.py`: erlc-compiled modules with big literals, `.app` files, priv")
    w("  data of mixed compressibility; seeded, cached in bench/results/synthetic/).\n")
    w("| release | size | files | ours | docker build | ours / docker | per-pair ratio | image: ours | image: docker |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    hello_ours = numbers(data, "build_ms", "ours")
    hello_df = numbers(data, "build_ms", "docker")
    if hello_ours or hello_df:
        pr, _ = _pair_ratio(hello_ours, hello_df)
        size = median(numbers(data, "release_bytes", "release"))
        w(f"| examples/hello (figure 2; docker side on the busybox base) | {mb(size)} | | "
          f"{secs(median(hello_ours))} | {secs(median(hello_df))} | "
          f"{ratio(median(hello_ours), median(hello_df))} | {pr} | "
          f"{mb(median(numbers(data, 'image_bytes', 'ours')))} | "
          f"{mb(median(numbers(data, 'image_bytes', 'docker')))} |")
    for name, label in (("with_deps", "examples/with_deps"), ("synth", "synthetic")):
        ours = numbers(data, "fr_ms", f"{name}_ours")
        df = numbers(data, "fr_ms", f"{name}_docker")
        if not ours and not df:
            continue
        pr, _ = _pair_ratio(ours, df)
        files = median(numbers(data, "fr_release_files", name))
        w(f"| {label} | {mb(median(numbers(data, 'fr_release_bytes', name)))} | "
          f"{'' if files is None else int(files)} | {secs(median(ours))} ({spread(ours, secs)}) | "
          f"{secs(median(df))} ({spread(df, secs)}) | {ratio(median(ours), median(df))} | {pr} | "
          f"{mb(median(numbers(data, 'fr_image_bytes', f'{name}_ours')))} | "
          f"{mb(median(numbers(data, 'fr_image_bytes', f'{name}_docker')))} |")
    w("")
    w("Times are medians (range in parentheses); \"ours / docker\" is the ratio of the medians, the")
    w("per-pair ratio the median of each run's ours / docker. Image sizes are the engine's")
    w("(`docker image inspect -f '{{.Size}}'`; the docker image includes the 80 MB minbase).\n")
    _load(w, data, "from_release")


def memory_large_figure(w, data, machine):
    peaks = numbers(data, "mem_large_peak_mb", "ours")
    if not peaks:
        return
    w("## 6. Peak memory with a large release of many files\n")
    w("`mix docker.release --no-cache --from-release SYNTH --output X.tar` in examples/hello, SYNTH the synthetic")
    w(f"release of figure 5 ({mb(median(numbers(data, 'mem_large_input_bytes', 'synth')))} in "
      f"{int(median(numbers(data, 'mem_large_input_files', 'synth')) or 0)} files). Peak of the summed")
    w("VmRSS of the whole process tree every 20 ms (`bench/memsample.py`); the baseline is")
    w(f"`mix help docker.release`. Target: below {MEM_LARGE_TARGET_MB} MB "
      "(bench/figures/memory_large.sh).\n")
    peak = median(peaks)
    base = median(numbers(data, "mem_large_peak_mb", "baseline"))
    w("| | median peak | range | runs | target |")
    w("| --- | ---: | ---: | ---: | --- |")
    w(f"| ours, --output | {peak:.1f} MB | {spread(peaks, lambda v: f'{v:.1f} MB')} | {len(peaks)} | "
      f"{_verdict(peak < MEM_LARGE_TARGET_MB)} |")
    w(f"| baseline | {'n/a' if base is None else f'{base:.1f} MB'} | | | |")
    ms = numbers(data, "mem_large_ms", "ours")
    w("")
    w(f"Archive written: {mb(median(numbers(data, 'mem_large_out_bytes', 'ours')))} in "
      f"{secs(median(ms))} (median wall time, range {spread(ms, secs)}, sampling included).\n")
    _load(w, data, "memory_large")


def archive_figure(w, data, machine):
    if not _has(data, "archive_ms"):
        return
    level = median(numbers(data, "archive_level", "tree"))
    level = "?" if level is None else int(level)
    runs = len(numbers(data, "archive_ms", "ours"))
    tar_bytes = median(numbers(data, "archive_tar_bytes", "ours"))
    w("## 7. Compressing a layer: ours vs tar | gzip and tar | pigz\n")
    w(f"The synthetic release as one gzip blob with its sha256 at level {level}, {runs} rounds")
    w("alternating the variants after one untimed round (bench/figures/archive.sh). Wall time of the")
    w("whole process or pipeline:\n")
    w("- ours: `native/image_core/examples/write_layer.rs`, i.e. `layer::write_layer` over the tree as")
    w("  a build writes a layer: sorted normalised tar, gzip, sha256 of the tar (diff_id) and of the")
    w("  blob (digest); the blob is discarded;")
    w(f"- `tar -C DIR -c . | pigz -{level} | sha256sum` and the same with `gzip -{level}`.\n")
    w("| | median | range | MB/s of tar | blob size | time / pigz |")
    w("| --- | ---: | ---: | ---: | ---: | ---: |")
    pigz = median(numbers(data, "archive_ms", "pigz"))
    labels = {"ours": "ours", "pigz": "tar \\| pigz", "gzip": "tar \\| gzip",
              "compare": "another build of ours (--compare-bin)"}
    for variant, label in labels.items():
        ms = numbers(data, "archive_ms", variant)
        if not ms:
            continue
        med = median(ms)
        speed = "n/a" if not tar_bytes or not med else f"{tar_bytes / 1e6 / (med / 1000):.0f}"
        w(f"| {label} | {secs(med)} | {spread(ms, secs)} | {speed} | "
          f"{mb(median(numbers(data, 'archive_out_bytes', variant)))} | {ratio(med, pigz)} |")
    ours = numbers(data, "archive_ms", "ours")
    pr, n = _pair_ratio(ours, numbers(data, "archive_ms", "pigz"))
    w("")
    w(f"Uncompressed tar: ours {mb(tar_bytes)}, GNU tar "
      f"{mb(median(numbers(data, 'archive_tar_bytes', 'tar')))}; input "
      f"{mb(median(numbers(data, 'archive_input_bytes', 'tree')))} in "
      f"{int(median(numbers(data, 'archive_input_files', 'tree')) or 0)} files. Median of the {n} per-round")
    w(f"ratios ours / pigz: {pr}. Target: ours no slower than the pigz pipeline: "
      f"{_verdict(None if median(ours) is None or pigz is None else median(ours) <= pigz)}.\n")
    _load(w, data, "archive")


def push_figure(w, data, machine):
    if not _has(data, "push_ms"):
        return
    runs = len(numbers(data, "push_ms", "full"))
    w("## 8. Registry push: full vs incremental\n")
    w("`mix docker.release --no-cache --from-release REL --push --tag 127.0.0.1:PORT/team/with_deps:N")
    w("--metadata-file F` of a copy of examples/with_deps to a local `docker-registry` (plain HTTP")
    w("on loopback), emptied before every round; each round pushes the release as is (full: every")
    w("blob uploaded) and then after a one-line change to `lib/with_deps/greeting.ex`")
    w(f"(incremental), {runs} rounds (bench/figures/push.sh). Bytes from the metadata JSON")
    w(f"(`pushed.uploaded_bytes`) against the image's compressed size (layers + config). Target:")
    w(f"incremental at most {PUSH_TARGET_SHARE:.0%} of the image's bytes.\n")
    w("| push | median time | range | uploaded | image | uploaded / image | blobs uploaded | target |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for step in ("full", "incremental"):
        ms = numbers(data, "push_ms", step)
        up = median(numbers(data, "push_uploaded_bytes", step))
        total = median(numbers(data, "push_total_bytes", step))
        share = None if up is None or not total else up / total
        blobs = data.get(("push_blobs", step), [])
        blob_text = f"{blobs[0][1]} ({blobs[0][2]})" if blobs else "n/a"
        verdict = _verdict(None if share is None else share <= PUSH_TARGET_SHARE) if step == "incremental" else ""
        w(f"| {step} | {secs(median(ms))} | {spread(ms, secs)} | {mb(up)} ({'n/a' if up is None else int(up)} B) | "
          f"{mb(total)} | {'n/a' if share is None else f'{share:.2%}'} | {blob_text} | {verdict} |")
    full = numbers(data, "push_ms", "full")
    incr = numbers(data, "push_ms", "incremental")
    pr, _ = _pair_ratio(incr, full)
    w("")
    w(f"Time incremental / full: {ratio(median(incr), median(full))} (medians; per-round median {pr}).")
    w("Both include Mix start-up and writing the layers (the blobs are written before the push).\n")
    _load(w, data, "push")


def responsiveness_figure(w, data, machine):
    if not _has(data, "resp_max_ms"):
        return
    runs = len(numbers(data, "resp_max_ms", "build"))
    w("## 9. Responsiveness of the VM during a build\n")
    w("In examples/hello, `mix run --no-start` starts a process that loops on")
    w("`Process.send_after(self(), :tick, 10)` and records how late each tick arrives")
    w("(`:erlang.monotonic_time`), while the same VM calls `DockerRelease.Config.new!/3` and")
    w("`DockerRelease.build/2` to assemble the synthetic release into an archive (`output:`). Two")
    w("baselines run the same loop: beside, while the same build runs as a separate")
    w("`mix docker.release` OS process (the machine's CPU contention alone, nothing in this VM), and")
    w(f"idle, 3 s with no build. {runs} rounds alternating build, beside and idle")
    w(f"(bench/figures/responsiveness.sh). Target: worst lateness below {LATENESS_TARGET_MS} ms.\n")
    w("| | median of the worst lateness | range | median p99 | ticks | build time | target |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for mode in ("build", "beside", "idle"):
        mx = numbers(data, "resp_max_ms", mode)
        p99 = median(numbers(data, "resp_p99_ms", mode))
        ticks = median(numbers(data, "resp_ticks", mode))
        el = median(numbers(data, "resp_build_ms", mode))
        verdict = _verdict(None if not mx else max(mx) < LATENESS_TARGET_MS) if mode == "build" else ""
        w(f"| {mode} | {_ms(median(mx))} | {spread(mx, _ms)} | {_ms(p99)} | "
          f"{'n/a' if ticks is None else int(ticks)} | {secs(el) if mode != 'idle' else ''} | {verdict} |")
    w("")
    w("The target is judged on the worst round, not the median.\n")
    _load(w, data, "responsiveness")


def warm_figure(w, data, machine):
    if not _has(data, "warm_ms"):
        return
    runs = max(len(numbers(data, "warm_ms", f"{n}_ours")) for n in ("hello", "with_deps"))
    w("## 10. The warm path: a one-line change rebuilt on the host\n")
    w("What a developer does all day: change one line, rebuild, run. A copy of each project (its")
    w("docker_release dependency pointed back at this checkout), one untimed round (both")
    w(f"environments compiled, a first image loaded), then {runs} rounds alternating (A B C A B C),")
    w("each command after its own one-line change, so each compiles exactly one module")
    w("(bench/figures/warm.sh):\n")
    w("- bare: `MIX_ENV=prod mix release --overwrite`, the floor: what the release costs anyway;")
    w("- ours: `mix docker.release --tag bench/NAME:warm` (no flags: the release built on the host,")
    w("  the image loaded into the engine, the previous image still there as a user's is), run")
    w("  from `dev`: the release is built by a separate `mix` (one more VM start);")
    w("- ours, same VM: `MIX_ENV=prod mix docker.release --tag bench/NAME:warm`: the release is")
    w("  built in the task's own VM (the copy declares docker_release for `[:dev, :prod]`).\n")
    w(f"Target: ours at most {WARM_TARGET}x bare.\n")
    w("| project | form | bare | ours | ours / bare | per-pair ratio | target |")
    w("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for name, label in (("hello", "examples/hello"), ("with_deps", "examples/with_deps")):
        bare = numbers(data, "warm_ms", f"{name}_bare")
        for variant, form in (("ours", "from dev"), ("ours_here", "MIX_ENV=prod, same VM")):
            ours = numbers(data, "warm_ms", f"{name}_{variant}")
            if not bare or not ours:
                continue
            pr, _ = _pair_ratio(ours, bare)
            r = median(ours) / median(bare)
            w(f"| {label} | {form} | {secs(median(bare))} ({spread(bare, secs)}) | "
              f"{secs(median(ours))} ({spread(ours, secs)}) | {ratio(median(ours), median(bare))} | "
              f"{pr} | {_verdict(r <= WARM_TARGET)} |")
    w("")
    checks = {variant: rows[0][1] for (metric, variant), rows in data.items() if metric == "warm_check"}
    if checks:
        w("The last image of each project runs: " + ", ".join(f"{k}: {v}" for k, v in sorted(checks.items())) + ".\n")
    _load(w, data, "warm")


def install_figure(w, data, machine):
    first = numbers(data, "install_ms", "first")
    source = numbers(data, "source_ms", "nif")
    if not first and not source:
        return
    w("## 11. Installing: the first run on a machine without Rust, and the source build\n")
    if first:
        second = numbers(data, "install_ms", "second")
        w("The package as Hex ships it (exactly the `files:` of mix.exs, its checksum file listing")
        w("the artifact `scripts/nif-artifact.sh build` made here), the artifact served by a local")
        w("`python3 -m http.server` (`DOCKER_RELEASE_NIF_BASE_URL`). Each run: a fresh copy of")
        w("examples/hello depending on that package, an empty HOME and XDG cache, a PATH without")
        w("cargo, rustc or a C compiler; the first `mix docker.release` (compiles the project and")
        w("the library, fetches and verifies the NIF, builds the release, loads the image), then the")
        w(f"second (bench/figures/install.sh, {len(first)} run(s)).\n")
        w(f"Target: first at most {INSTALL_TARGET_EXTRA_S} s more than second.\n")
        w("| first run | second run | first - second | per-run differences | target |")
        w("| ---: | ---: | ---: | --- | --- |")
        diffs = [a - b for a, b in zip(first, second)]
        extra = median(diffs) if diffs else None
        w(f"| {secs(median(first))} ({spread(first, secs)}) | {secs(median(second))} "
          f"({spread(second, secs)}) | {secs(extra)} | {', '.join(secs(d) for d in diffs)} | "
          f"{_verdict(extra is not None and extra <= INSTALL_TARGET_EXTRA_S * 1000)} |")
        w("")
        checks = [v for _, v, _ in sorted(data.get(("install_check", "prebuilt"), []))]
        if checks:
            ok = all(c == "yes" for c in checks)
            w("Every first run installed the prebuilt NIF (sha256 verified), ran no cargo, and the second"
              " fetched nothing: " + ("yes" if ok else "; ".join(c for c in checks if c != "yes")) + ".\n")
    if source:
        compiled = numbers(data, "source_crates", "compiled")
        tree = numbers(data, "source_crates", "tree")
        w("Source build: `DOCKER_RELEASE_BUILD=1 mix compile` of a fresh project over a fresh copy")
        w("of the package (cargo's target directory empty, `cargo build --release`):\n")
        w("| time | crates compiled (cargo's `Compiling` lines, build scripts' deps included) | crates in the NIF's normal dependency tree |")
        w("| ---: | ---: | ---: |")
        w(f"| {secs(median(source))} | {int(compiled[0]) if compiled else 'n/a'} | "
          f"{int(tree[0]) if tree else 'n/a'} |")
        w("")
    for variant, part in (("install", "the first runs"), ("install_source", "the source build")):
        load = numbers(data, "load1", variant)
        if load:
            w(f"1-minute load average when {part} started: {load[0]:.2f} (other work on the machine"
              " shows here).\n")


def platforms_figure(w, data, machine):
    if not _has(data, "platforms_ms"):
        return
    one = numbers(data, "platforms_ms", "one")
    two = numbers(data, "platforms_ms", "two")
    emu = numbers(data, "platforms_ms", "emu")
    arm = numbers(data, "platforms_ms", "arm")
    w("## 12. Several platforms: adding arm64 to an amd64 builder build\n")
    w("examples/with_deps built in the amd64 Debian 13 builder (`--builder")
    w("docker-release-test/builder:trixie`), warm (cache volumes, layer cache and the unpacked")
    w("arm64 image kept by an untimed round), each build after its own one-line change, written")
    order = "A B C D A B C D" if arm else "A B C A B C" if emu else "A B A B"
    w(f"to an archive (`--output`); {len(one)} rounds alternating ({order})")
    w("(bench/figures/platforms.sh):\n")
    w("- one: the amd64 image;")
    w("- two: `--platform linux/amd64,linux/arm64 --platform-image")
    w("  linux/arm64=docker-release-test/builder:trixie-arm64-dpkgdb`: the release built once, the arm64")
    w("  image's ERTS, OTP native files and runtime files read from the arm64 image (never run),")
    w("  both images and the index in the archive" + (";" if emu else ".\n"))
    if emu:
        w("- two, `--emulate`: the same, plus `--emulate`: the arm64 release built again in the arm64")
        w("  builder, run by the engine under QEMU (its own cache volumes, warm), and the arm64 image")
        w("  made from it. This is the way for projects with native code of their own, and what a")
        w("  build under QEMU costs (as `docker buildx --platform` builds do for the whole build)"
          + (";" if arm else ".\n"))
    if arm:
        w("- arm64 alone, `--emulate`: `--platform linux/arm64 --emulate`: the release built only in")
        w("  the arm64 builder under QEMU (no amd64 build), one image in the archive.\n")
    w(f"Target: two at most {PLATFORMS_TARGET}x one.\n")
    w("| build | median time | range |")
    w("| --- | ---: | ---: |")
    w(f"| one platform | {secs(median(one))} | {spread(one, secs)} |")
    w(f"| two platforms | {secs(median(two))} | {spread(two, secs)} |")
    if emu:
        w(f"| two platforms, `--emulate` | {secs(median(emu))} | {spread(emu, secs)} |")
    if arm:
        w(f"| arm64 alone, `--emulate` | {secs(median(arm))} | {spread(arm, secs)} |")
    w("")
    if one and two:
        pr, _ = _pair_ratio(two, one)
        r = median(two) / median(one)
        w(f"Two / one: {r:.2f} (medians; per-round median {pr}): {_verdict(r <= PLATFORMS_TARGET)}.\n")
    if one and emu:
        pr, _ = _pair_ratio(emu, one)
        r = median(emu) / median(one)
        w(f"Two with `--emulate` / one: {r:.2f} (medians; per-round median {pr}); / two:"
          f" {median(emu) / median(two):.2f}. No target: the figure says what emulation costs.\n")
    if arm and emu:
        pr, _ = _pair_ratio(arm, emu)
        w(f"arm64 alone with `--emulate` / two with `--emulate`: {median(arm) / median(emu):.2f}"
          f" (medians; per-round median {pr}): the amd64 build, plan and layers it skips.\n")
    checks = data.get(("platforms_check", "arm64"), [])
    if checks:
        w(f"The arm64 image of the last archive says `aarch64-unknown-linux-gnu` under QEMU: {checks[0][1]}.\n")
    why = data.get(("platforms_buildx", "why"), [])
    w("Not compared: `docker buildx build --platform linux/amd64,linux/arm64` under QEMU, the usual")
    w("way. Engine 20.10's BuildKit (the `docker` driver) refuses multi-platform builds (\"Switch to a")
    w("different driver, or turn on the containerd image store\", which needs Engine 24+), and the")
    w("`docker-container` driver needs the `moby/buildkit` image, which cannot be pulled here (no")
    w("registry is reachable)" + (f"; on this run: {why[0][2] or why[0][1]}" if why else "") + ".")
    w("For scale, measured by hand on this machine while researching issue 13 (load 7–12):")
    w("`mix release` of with_deps under QEMU took 28–39 s, natively 4 s.\n")
    _load(w, data, "platforms")


FIGURES = (
    from_release_figure,
    memory_large_figure,
    archive_figure,
    push_figure,
    responsiveness_figure,
    warm_figure,
    install_figure,
    platforms_figure,
)


def write_all(w, data, machine):
    for figure in FIGURES:
        figure(w, data, machine)


if __name__ == "__main__":
    # report_figures.py RAW FIGURE: one figure's section (a figure script run on its own).
    section = []
    globals()[f"{sys.argv[2]}_figure"](section.append, load_raw(sys.argv[1]), [])
    print("\n".join(section))
