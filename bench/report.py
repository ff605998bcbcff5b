#!/usr/bin/env python3
"""Turn bench/run's raw numbers into docs/BENCHMARKS.md (written to stdout).

Input: --raw TSV lines `metric variant run value detail`, --machine TSV lines `key value`.
Stdlib only. Medians everywhere; ratios are ours / other (below 1 means ours is smaller
or faster).
"""
import argparse

import report_figures  # figures 5-11 (bench/figures/*.sh), beside this file
from report_figures import load_raw, mb, median, numbers, ratio, secs, spread

MEM_TARGET_MB = 200


def md_cell(text):
    return text.replace("|", "\\|")


def builder_figure(w, data, runs):
    """4. Builder builds (bench/builder.sh): only when it ran."""
    ms = {v: numbers(data, "builder_ms", v) for v in ("ours_cold", "ours_warm", "df_cold", "df_warm")}
    if not any(ms.values()):
        return
    med = {v: median(values) for v, values in ms.items()}
    checks = {variant: rows[0][1] for (metric, variant), rows in data.items()
              if metric == "builder_check"}
    w("## 4. Builder builds: a warm rebuild of examples/with_deps\n")
    w(f"{runs} runs; each run builds cold, changes one line of the app (`lib/with_deps/greeting.ex`),")
    w("then builds warm, alternating ours and docker (A B A B). examples/with_deps has four path")
    w("dependencies with 224 modules. Before a cold build both images are removed (ours' previous")
    w("one too); before a warm build the final images are removed but ours' previous image stays")
    w("under another tag, so what makes a warm build warm is each side's cache: docker's build")
    w("cache; ours' cache volumes and its previous image's layers in the engine (as a user's")
    w("previous image is there when they rebuild). Builder image")
    w("`docker-release-test/builder:bookworm`.\n")
    w("- ours: `mix docker.release --builder docker-release-test/builder:bookworm` (cold: `--no-cache`,")
    w("  fresh cache volumes; warm: the cache volumes of the cold build), wall time of the whole")
    w("  command, image loaded into the engine;")
    w("- docker: `DOCKER_BUILDKIT=0 docker build` (cold: `--no-cache`) of a multi-stage Dockerfile of")
    w("  the usual Phoenix shape: `COPY mix.exs` + the path deps, `RUN mix deps.get --only prod && mix")
    w("  deps.compile`, `COPY config`, `COPY lib`, `RUN mix compile && mix release`, then `COPY")
    w("  --from=build` of the release onto `docker-release-bench/minbase-runtime:bookworm`.\n")
    w("| | median | range | runs |")
    w("| --- | ---: | ---: | ---: |")
    for variant, label in [("ours_cold", "ours, cold"), ("ours_warm", "ours, warm"),
                           ("df_cold", "Dockerfile, cold"), ("df_warm", "Dockerfile, warm")]:
        w(f"| {label} | {secs(med[variant])} | {spread(ms[variant], secs)} | {len(ms[variant])} |")
    w("")
    w(f"Ratios (of the medians): ours warm / ours cold {ratio(med['ours_warm'], med['ours_cold'])}; "
      f"ours warm / Dockerfile warm {ratio(med['ours_warm'], med['df_warm'])}; "
      f"ours cold / Dockerfile cold {ratio(med['ours_cold'], med['df_cold'])}.")
    if med["ours_warm"] and med["ours_cold"] and med["df_warm"]:
        cold_ok = med["ours_warm"] * 3 <= med["ours_cold"]
        df_ok = med["ours_warm"] < med["df_warm"]
        w(f"Targets: warm rebuild at least 3x faster than cold: {'met' if cold_ok else 'missed'}; "
          f"warm rebuild faster than the Dockerfile's warm rebuild: {'met' if df_ok else 'missed'}.")
    ours_size = median(numbers(data, "builder_image_bytes", "ours"))
    df_size = median(numbers(data, "builder_image_bytes", "df"))
    if ours_size is not None:
        w(f"Image sizes: ours {mb(ours_size)}, Dockerfile {mb(df_size)} (ratio {ratio(ours_size, df_size)}).")
    load = numbers(data, "load1", "builder")
    if load:
        w(f"1-minute load average at the start of each run: {', '.join(f'{v:.2f}' for v in load)}"
          " (other work on the machine slows both sides).")
    if checks:
        w("Checks: only the changed module compiled in ours' warm builds: "
          f"{md_cell(checks.get('ours_warm_compiles_one', 'not checked'))}; the last images serve the"
          f" last change: ours {md_cell(checks.get('ours', 'not checked'))}, Dockerfile"
          f" {md_cell(checks.get('df', 'not checked'))}; other images in the engine holding"
          " ours' layers (which would make ours' cold loads faster than on a clean engine):"
          f" {md_cell(checks.get('other_images_with_ours_layers', 'not checked'))}.")
    w("")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--raw", required=True)
    parser.add_argument("--machine", required=True)
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--mem-runs", type=int, required=True)
    parser.add_argument("--blob-mb", type=int, required=True)
    parser.add_argument("--builder-runs", type=int, default=3)
    args = parser.parse_args()
    data = load_raw(args.raw)
    with open(args.machine) as f:
        machine = [line.rstrip("\n").split("\t", 1) for line in f if "\t" in line]
    smoke = {variant: rows[0][1] for (metric, variant), rows in data.items() if metric == "smoke"}
    not_run = [(variant, detail) for (metric, variant), rows in data.items()
               if metric == "not_run" for _, _, detail in rows]

    out = []
    w = out.append
    w("# Benchmarks\n")
    w("Generated by `bench/run` (do not edit by hand; run it again). Raw numbers and logs of the")
    w("last run are in `bench/results/`. Medians throughout; ratios are ours / other, so below 1")
    w("means ours is smaller or faster.\n")

    w("## Machine\n")
    w("| | |\n| --- | --- |")
    for key, value in machine:
        w(f"| {key} | {md_cell(value)} |")
    w("")

    # 1. Size
    w("## 1. Image size of examples/hello\n")
    w("`docker image inspect -f '{{.Size}}'` of each image. The Dockerfile images are the same")
    w("release `COPY`ed onto a Debian bookworm base made with `debootstrap --variant=minbase`")
    w("(apt caches removed), built with the legacy builder (`DOCKER_BUILDKIT=0`). \"Starts\" means")
    w("a container answered `GET /health` and `GET /` on a published loopback port.\n")
    ours_sizes = numbers(data, "image_bytes", "ours")
    ours = median(ours_sizes)
    w("| image | size | ours / this | starts |")
    w("| --- | ---: | ---: | --- |")
    rows = [
        ("ours", "ours: `mix docker.release --no-cache --from-release`"),
        ("minbase", "release on `docker-release-bench/minbase:bookworm`"),
        ("runtime", "release on minbase + libssl3, ca-certificates"),
    ]
    for variant, label in rows:
        size = median(numbers(data, "image_bytes", variant))
        r = "1.00" if variant == "ours" and ours else ratio(ours, size)
        w(f"| {label} | {mb(size)} | {r} | {md_cell(smoke.get(variant, 'not checked'))} |")
    for variant, label in rows[1:]:
        base = median(numbers(data, "base_bytes", variant))
        if base is not None:
            w(f"| (the base alone: {label.split('on ', 1)[1]}) | {mb(base)} | | |")
    release = median(numbers(data, "release_bytes", "release"))
    w("")
    w(f"Release directory (`du -sb _build/prod/rel/hello`): {mb(release)} ({release and int(release)} bytes).")
    if len(set(ours_sizes)) > 1:
        w(f"Our image size varied between runs: {spread(ours_sizes, mb)} over {len(ours_sizes)} builds.")
    elif len(ours_sizes) > 1:
        w(f"Our image had the same size in all {len(ours_sizes)} builds.")
    w("")

    # 2. Speed
    w("## 2. Building from an existing release\n")
    w(f"{args.runs} runs each, alternating ours and docker in the same run (A B A B …), both")
    w("images removed (`docker rmi -f`) before every build, so each starts from nothing but the")
    w("cached base.\n")
    w("- ours: `mix docker.release --no-cache --from-release DIR --tag bench/hello:ours` (every layer")
    w("  compressed, as docker builds every layer), run in examples/hello")
    w("  (wall time of the whole command, Mix start-up included), loading the image into the engine;")
    w("- docker: `DOCKER_BUILDKIT=0 docker build --no-cache -t bench/hello:df` of `FROM")
    w("  docker-release-bench/busybox:latest` / `COPY rel /app` / `ENTRYPOINT [\"/app/bin/hello\"]`")
    w("  over a context holding the same release.\n")
    ours_ms = numbers(data, "build_ms", "ours")
    df_ms = numbers(data, "build_ms", "docker")
    w("| | median | range | runs |")
    w("| --- | ---: | ---: | ---: |")
    w(f"| ours | {secs(median(ours_ms))} | {spread(ours_ms, secs)} | {len(ours_ms)} |")
    w(f"| docker build | {secs(median(df_ms))} | {spread(df_ms, secs)} | {len(df_ms)} |")
    pairs = [a / b for a, b in zip(ours_ms, df_ms) if b]
    w("")
    w(f"Ratio ours / docker: {ratio(median(ours_ms), median(df_ms))} (of the medians); "
      f"median of the {len(pairs)} per-pair ratios: {ratio(median(pairs), 1) if pairs else 'n/a'}.\n")

    # 3. Memory
    w("## 3. Peak memory with a large file\n")
    w(f"`mix docker.release --no-cache --from-release DIR --output X.tar`, where DIR is the hello release plus")
    w(f"a {args.blob_mb} MB file of random bytes at `lib/hello-0.1.0/priv/blob.bin`. Peak of the summed")
    w("VmRSS of the whole process tree, sampled every 20 ms by `bench/memsample.py`; the baseline is")
    w("`mix help docker.release` in the same project (the VM and Mix, building nothing).")
    w(f"Target: below {MEM_TARGET_MB} MB.\n")
    peaks = numbers(data, "peak_rss_mb", "ours")
    base = median(numbers(data, "peak_rss_mb", "baseline"))
    peak = median(peaks)
    verdict = "n/a" if peak is None else ("met" if peak < MEM_TARGET_MB else "**missed**")
    w("| | median peak | range | runs | target |")
    w("| --- | ---: | ---: | ---: | --- |")
    w(f"| ours, --output | {'n/a' if peak is None else f'{peak:.1f} MB'} | "
      f"{spread(peaks, lambda v: f'{v:.1f} MB')} | {len(peaks)} | {verdict} |")
    w(f"| baseline | {'n/a' if base is None else f'{base:.1f} MB'} | | | |")
    out_ms = median(numbers(data, "output_ms", "ours"))
    out_bytes = median(numbers(data, "output_bytes", "ours"))
    if out_ms is not None:
        big = median(numbers(data, "release_bytes", "big"))
        w("")
        w(f"Input {mb(big)}; archive written {mb(out_bytes)} in {secs(out_ms)} (median wall time,"
          " sampling included).")
    w("")

    builder_figure(w, data, args.builder_runs)
    report_figures.write_all(w, data, machine)

    notes = [detail for (metric, _), rows in data.items() if metric == "note" for _, _, detail in rows]
    if notes:
        w("## Notes on this run\n")
        for detail in notes:
            w(f"- {md_cell(detail)}")
        w("")
    if not_run:
        w("## Not run\n")
        for variant, detail in not_run:
            w(f"- **{variant}**: {md_cell(detail)}")
        w("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
