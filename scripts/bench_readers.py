"""Speed and peak memory of the interaction readers: the exact parser against the pyarrow fast path.

Writes synthetic interaction files (300k and 3M events by default, MovieLens-100K
``u.data`` and CSV layouts) into a temporary directory, deleted at the end, and reads each
one in a fresh process per reader so that every peak RSS is that reader's own:

* ``exact``: ``load_interactions(path, fast=False)``, the pure-Python parser;
* ``fast``: ``load_interactions(path)``, pyarrow.csv with the exact parser's checks;
* ``sequences``: the fast path, then ``build_sequences`` (what ``load_dataset(path)`` does
  for a file, and what ``tfrs-linear train --data FILE`` holds in memory);
* ``pyarrow.csv`` and ``pandas``: the bare libraries (columns only, no checks), for scale.

Usage::

    .venv/bin/python scripts/bench_readers.py [--sizes 300000 3000000] [--out docs/bench/readers.md]

The report gives wall and CPU seconds (all threads), events per CPU second, peak RSS
(``VmHWM``: this process's own high-water mark, not its parent's), and each reader's speed
as a ratio to the exact parser's, all from one run. On a shared machine wall time mostly
measures the wait for a core; the CPU ratios are the ones to compare.

The workers import the readers without running ``tfrs_linear/data/__init__.py``, which
imports TensorFlow for tf.data (tens of seconds on a busy machine, and ~700 MB of RSS
that no reader needs); the functions measured are the package's own.
"""

import argparse
import json
import os
import platform
import resource
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
READERS = ("exact", "fast", "sequences", "pyarrow.csv", "pandas")


def write_file(path, events, layout, seed=0):
    """A synthetic log: 50 events per user on average, Zipf-like item popularity."""
    rng = np.random.default_rng(seed)
    users = rng.integers(1, max(events // 50, 2) + 1, events)
    items = np.minimum(rng.zipf(1.3, events), 50_000)
    ratings = rng.integers(1, 6, events)
    times = 874_724_710 + np.sort(rng.integers(0, 10**8, events))
    columns = [c.astype(str) for c in (users, items, ratings, times)]
    sep, header = ("\t", "") if layout == "udata" else (",", "user_id,item_id,rating,timestamp\n")
    with open(path, "w", encoding="utf-8") as f:
        f.write(header)
        for start in range(0, events, 500_000):
            rows = zip(*(c[start:start + 500_000] for c in columns))
            f.write("".join(sep.join(row) + "\n" for row in rows))


def import_readers():
    """``tfrs_linear.data.readers`` and ``.sequences``, without the package's TensorFlow import."""
    import types

    sys.path.insert(0, str(ROOT))
    package = types.ModuleType("tfrs_linear.data")
    package.__path__ = [str(ROOT / "tfrs_linear" / "data")]
    sys.modules["tfrs_linear.data"] = package
    from tfrs_linear.data import readers, sequences

    assert "tensorflow" not in sys.modules
    return readers, sequences


def memory_mb(field):
    """``VmRSS`` or ``VmHWM`` of this process, in MiB (from /proc/self/status)."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.M).group(1)) / 1024


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(reader, path):
    """Reads ``path`` with ``reader`` once; prints JSON: seconds, events, RSS after imports and peak."""
    start = time.perf_counter()
    import pyarrow.compute  # noqa: F401  (what the fast path imports on its first call)
    import pyarrow.csv

    pyarrow_import = time.perf_counter() - start
    import pandas  # every library imported before the baseline RSS

    readers, sequences = import_readers()
    before = memory_mb("VmRSS")
    is_csv = path.endswith(".csv")
    start, cpu = time.perf_counter(), cpu_seconds()
    if reader in ("exact", "fast"):
        events = len(readers.load_interactions(path, fast=reader == "fast"))
    elif reader == "sequences":
        events = sequences.build_sequences(readers.load_interactions(path)).num_interactions
    elif reader == "pyarrow.csv":
        events = pyarrow.csv.read_csv(path, read_options=pyarrow.csv.ReadOptions(
            autogenerate_column_names=not is_csv), parse_options=pyarrow.csv.ParseOptions(
            delimiter="," if is_csv else "\t")).num_rows
    else:
        events = len(pandas.read_csv(path, sep="," if is_csv else "\t",
                                     header=0 if is_csv else None))
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    print(json.dumps({"seconds": seconds, "cpu": cpu, "events": events, "rss_mb": before,
                      "peak_mb": memory_mb("VmHWM"), "pyarrow_import_s": pyarrow_import}))


def measure(reader, path, repeats):
    """The run of least CPU time of ``repeats`` fresh-process runs (and its peak RSS)."""
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, __file__, "--worker", reader, str(path)],
                             check=True, capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return min(runs, key=lambda r: r["cpu"])


def report(results, sizes, args):
    lines = [
        "# Interaction readers: exact parser vs pyarrow fast path",
        "",
        f"`scripts/bench_readers.py --sizes {' '.join(map(str, sizes))}`, one run, "
        f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), Python "
        f"{platform.python_version()}. Each reader reads each file in a fresh process "
        f"(the least CPU time of {args.repeats} at the smaller sizes, 1 at {max(sizes):,}); peak "
        "RSS is that process's `VmHWM`, and 'added' subtracts its RSS after the imports.",
        "CPU seconds count every thread (pyarrow reads with several). The machine was shared "
        "(2 cores, several jobs): wall time there is mostly waiting for a core, so compare the "
        "CPU columns.",
        "Synthetic files: 50 events per user on average, Zipf item popularity; `u.data` is "
        "tab-separated `user item rating timestamp`, the CSV has a header.",
        "`sequences` is the fast path plus `build_sequences` (what `load_dataset(FILE)` and "
        "`tfrs-linear train --data FILE` hold); `pyarrow.csv` and `pandas` are the bare "
        "libraries (columns only, no checks). 'vs exact' is the exact parser's time over the "
        "reader's, in CPU and in wall time (higher is faster).",
        f"Importing pyarrow (once per process, before the first fast read, not in the times "
        f"below): {min(r['pyarrow_import_s'] for r in results):.2f} s.",
        "",
        "| file | events | MB | reader | CPU s | wall s | events per CPU s | vs exact, CPU | "
        "vs exact, wall | peak RSS MB | added MB |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    summary = ["", "In this run:", ""]
    for r in results:
        lines.append(
            f"| {r['layout']} | {r['events']:,} | {r['mb']:.1f} | {r['reader']} | {r['cpu']:.2f} | "
            f"{r['seconds']:.2f} | {r['events'] / r['cpu']:,.0f} | {r['cpu_ratio']:.1f}× | "
            f"{r['ratio']:.1f}× | {r['peak_mb']:.0f} | {r['peak_mb'] - r['rss_mb']:.0f} |")
        if r["reader"] == "sequences":
            by = {x["reader"]: x for x in results
                  if (x["layout"], x["events"]) == (r["layout"], r["events"])}
            fast, exact = by["fast"], by["exact"]
            summary.append(
                f"* {r['layout']}, {r['events']:,} events ({r['mb']:.1f} MB): the fast path reads "
                f"it in {fast['cpu']:.2f} CPU s, {fast['cpu_ratio']:.1f}× the exact parser's speed "
                f"({exact['cpu']:.2f} s), with {fast['peak_mb'] - fast['rss_mb']:.0f} MB "
                f"added at the peak instead of {exact['peak_mb'] - exact['rss_mb']:.0f} MB; "
                f"the per-user sequences take {r['cpu'] - fast['cpu']:.2f} CPU s more "
                f"({(r['cpu'] - fast['cpu']) / r['cpu']:.0%} of the load).")
    return "\n".join(lines + summary) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=2, metavar=("READER", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=[300_000, 3_000_000])
    parser.add_argument("--layouts", nargs="+", default=["udata", "csv"], choices=["udata", "csv"])
    parser.add_argument("--repeats", type=int, default=3, help="runs at the smaller sizes")
    parser.add_argument("--out", default=str(ROOT / "docs" / "bench" / "readers.md"))
    args = parser.parse_args()
    if args.worker:
        return worker(*args.worker)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-readers-") as tmp:
        for events in args.sizes:
            for layout in args.layouts:
                path = Path(tmp) / ("u.data" if layout == "udata" else "log.csv")
                write_file(path, events, layout)
                mb = path.stat().st_size / 2**20
                repeats = 1 if events == max(args.sizes) else args.repeats
                exact = None
                for reader in READERS:
                    r = measure(reader, path, repeats)
                    exact = exact or r
                    assert r["events"] == events or reader == "sequences", r
                    results.append({**r, "layout": path.name, "events": events, "mb": mb,
                                    "reader": reader, "ratio": exact["seconds"] / r["seconds"],
                                    "cpu_ratio": exact["cpu"] / r["cpu"]})
                    print(f"{path.name} {events:,} {reader}: {r['cpu']:.2f} CPU s, "
                          f"{r['seconds']:.2f} s, peak {r['peak_mb']:.0f} MB", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report(results, args.sizes, args), encoding="utf-8")
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out} and its .json")


if __name__ == "__main__":
    main()
