#!/usr/bin/env python3
"""Run a command and report the peak resident memory of its whole process tree.

Usage: bench/memsample.py [-i SECONDS] [-o FILE] [--] CMD [ARG...]

Every interval (default 20 ms) the process tree rooted at CMD is found by walking
/proc (parent pids from /proc/PID/stat, so no kernel option is needed), and the
VmRSS of every process in it is summed. The largest sum seen is the peak.

Prints `memsample: peak_rss_mb=… max_single_hwm_mb=… samples=… procs_seen=…` on
stderr when the command ends, writes the peak (MB, one number) to FILE with -o,
and exits with the command's status (128+N if it was killed by signal N).

Caveats: a sampling peak can miss a spike shorter than the interval; processes
that re-parent themselves out of the tree (daemons) are not counted, and neither
is memory held by other services on the command's behalf (e.g. dockerd).
max_single_hwm_mb is the largest VmHWM (kernel-tracked peak) of any one process.
"""
import argparse
import os
import signal
import subprocess
import sys
import time

MB = 1024 * 1024


def parent_map():
    """pid -> ppid for every live process."""
    parents = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name (field 2) is in parentheses and may contain spaces.
        fields = stat[stat.rfind(b")") + 2 :].split()
        parents[int(name)] = int(fields[1])
    return parents


def tree(root):
    children = {}
    for pid, ppid in parent_map().items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def status_kb(pid, keys):
    """Values (kB) of the given /proc/PID/status keys; missing keys count 0."""
    values = dict.fromkeys(keys, 0)
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in values:
                    values[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass  # the process ended between listing and reading: it holds nothing
    return values


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--interval", type=float, default=0.02)
    parser.add_argument("-o", "--output", help="write the peak (MB) to this file")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("no command given")

    proc = subprocess.Popen(cmd)
    # Pass interrupts on to the command and keep sampling until it ends.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: proc.send_signal(signum))

    peak_kb, samples, hwm_kb, seen = 0, 0, {}, set()
    while proc.poll() is None:
        total = 0
        for pid in tree(proc.pid):
            values = status_kb(pid, ("VmRSS", "VmHWM"))
            total += values["VmRSS"]
            hwm_kb[pid] = max(hwm_kb.get(pid, 0), values["VmHWM"])
            seen.add(pid)
        peak_kb = max(peak_kb, total)
        samples += 1
        time.sleep(args.interval)

    status = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    peak_mb = peak_kb * 1024 / MB
    max_hwm_mb = max(hwm_kb.values(), default=0) * 1024 / MB
    print(
        f"memsample: peak_rss_mb={peak_mb:.1f} max_single_hwm_mb={max_hwm_mb:.1f}"
        f" samples={samples} procs_seen={len(seen)} exit={status}",
        file=sys.stderr,
    )
    if args.output:
        with open(args.output, "w") as f:
            f.write(f"{peak_mb:.1f}\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
