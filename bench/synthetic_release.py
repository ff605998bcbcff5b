#!/usr/bin/env python3
"""Make a large synthetic Elixir release for the benchmarks (deterministic, cached).

Usage: bench/synthetic_release.py DIR [--base REL] [--apps N] [--seed S] [--jobs J] [--force]

DIR becomes a copy of a real release (default: examples/hello's prod release, built with
`MIX_ENV=prod mix release --overwrite` when absent) plus N generated dependency applications
`lib/depNNN-1.0.0/` (default 150), each with:

  ebin/depNNN.app                 a real application resource file
  ebin/depNNN_modMM.beam          8 to 16 modules compiled from generated Erlang with erlc:
                                  pattern-matching code (compresses about 2x), a big binary
                                  literal of random bytes (incompressible) and a text literal
  priv/data/table.csv             text (compresses about 5x)
  priv/data/seed.b64              base64 of random bytes (compresses to about 3/4)
  priv/assets/blob.bin            random bytes (incompressible)

so that the whole release holds about 330 MB in about 4,000 files of mixed compressibility.

Everything derives from --seed: the same arguments, base release and OTP version give the same
bytes (erlc runs with +deterministic). The result is cached: DIR.stamp records what made DIR,
and a second run with the same inputs returns at once (--force makes it again). Prints one
line of JSON: {"dir", "bytes", "files", "apps", "cached"}.
"""
import argparse
import base64
import concurrent.futures
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys

VERSION = 1  # bump when the generated content changes
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELLO = os.path.join(ROOT, "examples", "hello")
DEFAULT_BASE = os.path.join(HELLO, "_build", "prod", "rel", "hello")

WORDS = (
    "request response handler process supervisor worker config value error timeout "
    "session user account order invoice payment status pending active closed retry "
    "queue message event stream buffer cache index table record field schema query"
).split()


def log(msg):
    print(f"synthetic_release: {msg}", file=sys.stderr, flush=True)


def tree_fingerprint(path):
    """sha256 over the sorted (relative path, size, kind) of a tree's files (its top-level
    tmp/ aside): enough to notice a rebuild that changed the base release."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        if dirpath == path and "tmp" in dirnames:
            dirnames.remove("tmp")  # RELEASE_TMP: logs of a release that ran; never shipped
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, path)
            st = os.lstat(full)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mode & 0o170111}\n".encode())
    return h.hexdigest()


def otp_version():
    out = subprocess.run(
        ["erl", "-noshell", "-eval",
         'io:format("~s/~s", [erlang:system_info(otp_release), erlang:system_info(version)]), halt().'],
        check=True, capture_output=True, text=True)
    return out.stdout.strip()


def tree_size(path):
    total = files = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            total += st.st_size
            files += 1
    return total, files


def latin1_literal(data):
    """Bytes as the inside of an Erlang string literal in a latin-1 source file."""
    return data.replace(b"\\", b"\\\\").replace(b'"', b'\\"')


def text(rng, size):
    """CSV-like text of about `size` bytes (compresses well, but not trivially)."""
    out, n, row = [], 0, 0
    while n < size:
        line = "%d,%s,%s,%d,%s\n" % (
            row, rng.choice(WORDS), rng.choice(WORDS), rng.randrange(100000),
            " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 9))))
        out.append(line)
        n += len(line)
        row += 1
    return "".join(out)[:size].encode()


def module_source(rng, app, mod):
    """An Erlang module: lookup/1 with many clauses, a few hundred small functions, a random
    binary literal (blob/0) and a text literal (text/0)."""
    name = f"{app}_mod{mod:02d}"
    nfun = rng.randrange(150, 450)
    nclauses = rng.randrange(200, 600)
    blob = rng.randbytes(rng.randrange(10_000, 80_000))
    exports = ["blob/0", "text/0", "lookup/1"] + [f"f{i}/2" for i in range(nfun)]
    parts = [
        "%% coding: latin-1\n",
        f"-module({name}).\n",
        f"-export([{', '.join(exports)}]).\n",
        f"-vsn(\"1.0.{mod}\").\n",
    ]
    src = bytearray("".join(parts).encode("latin-1"))
    src += b'blob() -> <<"' + latin1_literal(blob) + b'">>.\n'
    src += b'text() -> <<"' + text(rng, rng.randrange(2_000, 20_000)).replace(b"\n", b"\\n") + b'">>.\n'
    for k in range(nclauses):
        src += (f'lookup({k}) -> {{ok, item_{k}, {rng.randrange(10**6)}, "{rng.choice(WORDS)} {k}"}};\n'
                .encode())
    src += b"lookup(_) -> error.\n"
    for i in range(nfun):
        a, b, c = rng.randrange(2, 9), rng.randrange(1, 999), rng.randrange(2, 99)
        src += (
            f"f{i}(X, Y) when is_integer(X) ->\n"
            f"    case X rem {a} of\n"
            f"        0 -> {{ok, X + {b}, Y}};\n"
            f"        1 -> lists:reverse([X, Y, {rng.choice(WORDS)}_{rng.randrange(500)}]);\n"
            f"        _ -> maps:put(k{i}, X * {c}, #{{y => Y, n => {i}}})\n"
            f"    end;\n"
            f"f{i}(_, Y) -> {{error, Y, <<\"{rng.randrange(10**9)}\">>}}.\n"
        ).encode()
    return name, bytes(src)


def make_app(args, index, staging):
    """Write lib/depNNN-1.0.0 under `staging`; compile its modules with erlc."""
    rng = random.Random(f"{args.seed}/dep/{index}")
    app = f"dep{index:03d}"
    top = os.path.join(staging, "lib", f"{app}-1.0.0")
    ebin = os.path.join(top, "ebin")
    src_dir = os.path.join(staging, ".src", app)
    os.makedirs(ebin)
    os.makedirs(src_dir)
    modules, sources = [], []
    for mod in range(rng.randrange(8, 17)):
        name, src = module_source(rng, app, mod)
        path = os.path.join(src_dir, name + ".erl")
        with open(path, "wb") as f:
            f.write(src)
        modules.append(name)
        sources.append(path)
    # A large minimum heap: scanning big literals otherwise spends most of its time in GC.
    env = dict(os.environ, ERL_FLAGS="+hms 20000000")
    subprocess.run(["erlc", "+deterministic", "-o", ebin] + sources, check=True, env=env)
    deps = ["kernel", "stdlib"] + ([f"dep{index - 1:03d}"] if index > 1 else [])
    with open(os.path.join(ebin, f"{app}.app"), "w") as f:
        f.write(
            f"{{application,{app},\n"
            f"    [{{description,\"Generated dependency {index} of the docker_release benchmarks\"}},\n"
            f"     {{vsn,\"1.0.0\"}},\n"
            f"     {{modules,[{','.join(modules)}]}},\n"
            f"     {{registered,[]}},\n"
            f"     {{applications,[{','.join(deps)}]}}]}}.\n")
    data = os.path.join(top, "priv", "data")
    assets = os.path.join(top, "priv", "assets")
    os.makedirs(data)
    os.makedirs(assets)
    with open(os.path.join(data, "table.csv"), "wb") as f:
        f.write(text(rng, rng.randrange(200_000, 1_000_000)))
    with open(os.path.join(data, "seed.b64"), "wb") as f:
        f.write(base64.encodebytes(rng.randbytes(rng.randrange(50_000, 250_000))))
    with open(os.path.join(assets, "blob.bin"), "wb") as f:
        f.write(rng.randbytes(rng.randrange(20_000, 300_000)))
    shutil.rmtree(src_dir)
    return app


def ensure_base(base):
    if os.path.isdir(os.path.join(base, "bin")):
        return
    if os.path.abspath(base) != DEFAULT_BASE:
        sys.exit(f"synthetic_release: {base} is not a release (no bin/)")
    log("building examples/hello's release (MIX_ENV=prod mix release --overwrite)")
    subprocess.run(["mix", "release", "--overwrite", "--quiet"], cwd=HELLO, check=True,
                   env=dict(os.environ, MIX_ENV="prod"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir")
    parser.add_argument("--base", default=DEFAULT_BASE, help="release to start from")
    parser.add_argument("--apps", type=int, default=150)
    parser.add_argument("--seed", default="docker-release-bench-1")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()

    out = os.path.abspath(args.dir)
    base = os.path.abspath(args.base)
    ensure_base(base)
    key = {
        "version": VERSION,
        "seed": args.seed,
        "apps": args.apps,
        "base": tree_fingerprint(base),
        "otp": otp_version(),
    }
    stamp = out + ".stamp"
    cached = False
    if not args.force and os.path.isdir(out) and os.path.exists(stamp):
        with open(stamp) as f:
            cached = json.load(f) == key
    if not cached:
        log(f"making {out} ({args.apps} apps, seed {args.seed!r}, {args.jobs} jobs)")
        staging = out + ".partial"
        shutil.rmtree(staging, ignore_errors=True)
        if os.path.exists(stamp):
            os.remove(stamp)
        shutil.copytree(base, staging, symlinks=True,
                        ignore=lambda d, names: ["tmp"] if d == base and "tmp" in names else [])
        os.mkdir(os.path.join(staging, "tmp"))
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for app in pool.map(lambda i: make_app(args, i, staging), range(1, args.apps + 1)):
                if app.endswith("0"):
                    log(f"{app} done")
        os.rmdir(os.path.join(staging, ".src"))
        shutil.rmtree(out, ignore_errors=True)
        os.rename(staging, out)
        with open(stamp, "w") as f:
            json.dump(key, f)
    size, files = tree_size(out)
    print(json.dumps({"dir": out, "bytes": size, "files": files, "apps": args.apps,
                      "cached": cached}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
