"""pipelines/preprocess.py at scale on Beam's DirectRunner: 1 worker against 2 worker processes.

For each ``--events`` size: a synthetic log (``tfrs_linear.data.synthetic.generate``, the
first N events of its time-ordered log, cut into ``--shards`` CSV files by time, so users
span files) is written to a temporary directory (removed at the end, never committed);
then ``python pipelines/preprocess.py`` runs on it once per configuration:

* ``1 worker``: the DirectRunner's defaults (one process);
* ``2 processes``: ``--direct_num_workers 2 --direct_running_mode multi_processing``.

Each run is a fresh subprocess. Measured: wall time (Python, TensorFlow and Beam start-up
included), events/s (input events / wall time), and the peak RSS of the whole process tree
(the sum over the process and its descendants, sampled every ``--sample-s``; shared library
pages count once per process) and of its largest process. Then the outputs of the two runs
are compared: the same ``tf.train.Example`` per user (as multisets of (user, item_ids,
item_raw_ids): record order and sharding may differ), byte-identical ``vocab.txt`` and
``item_popularity.txt``, and the same counts in ``metadata.json``. The sequences fix the
leave-one-out splits (train / validation / test), so equal examples mean equal splits.

Writes ``docs/bench/preprocess.md``; exits 1 when outputs differ.

    .venv/bin/python scripts/bench_preprocess.py --events 200000 1000000
"""

import argparse
import collections
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = (("1 worker", []),
           ("2 processes", ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]))
# Counts of metadata.json that both runs must agree on.
META_KEYS = ("events_read", "num_users", "num_interactions", "num_items", "vocab_size",
             "dropped_users", "dropped_interactions", "dropped_duplicates")
MEAN_EVENTS_PER_USER = 220  # the synthetic default's lengths (median 150, log-normal): a first guess


def write_log(directory, events, shards, items, seed):
    """The first ``events`` events of a synthetic log, in ``shards`` CSV files by time."""
    from tfrs_linear.data import synthetic

    users = max(1, int(events / MEAN_EVENTS_PER_USER * 1.1))
    while True:
        inter = synthetic.generate(num_users=users, num_items=items, seed=seed)
        if len(inter.users) >= events:
            break
        users = int(users * 1.2 * events / len(inter.users)) + 1
    directory.mkdir(parents=True)
    for s, rows in enumerate(np.array_split(np.arange(events), shards)):
        lines = [f"{u},{i},{int(t)}\n" for u, i, t in
                 zip(inter.users[rows], inter.items[rows], inter.timestamps[rows])]
        (directory / f"part-{s:05d}.csv").write_text("user,item,timestamp\n" + "".join(lines))


class TreeSampler(threading.Thread):
    """Samples the RSS of a process and its descendants until it exits."""

    def __init__(self, pid, interval):
        super().__init__(daemon=True)
        self.root, self.interval = psutil.Process(pid), interval
        self.peak_tree = self.peak_one = self.max_procs = 0
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                procs = [self.root] + self.root.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            rss = []
            for proc in procs:
                try:
                    rss.append(proc.memory_info().rss)
                except psutil.Error:  # exited between listing and reading
                    pass
            self.peak_tree = max(self.peak_tree, sum(rss))
            self.peak_one = max(self.peak_one, max(rss, default=0))
            self.max_procs = max(self.max_procs, len(rss))
            self.done.wait(self.interval)


def run_preprocess(inputs, output, flags, log_path, interval):
    cmd = [sys.executable, str(ROOT / "pipelines" / "preprocess.py"),
           "--input", str(inputs / "part-*.csv"),
           "--output", str(output), "--num-shards", "4"] + flags
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    with open(log_path, "w") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        sampler = TreeSampler(proc.pid, interval)
        sampler.start()
        rc = proc.wait()
        wall = time.perf_counter() - start
        sampler.done.set()
        sampler.join()
    if rc != 0:
        tail = Path(log_path).read_text(errors="replace")[-3000:]
        raise SystemExit(f"preprocess failed (exit {rc}): {' '.join(cmd)}\n{tail}")
    return {"wall_s": wall, "peak_tree_rss": sampler.peak_tree, "peak_process_rss": sampler.peak_one,
            "processes": sampler.max_procs, "command": " ".join(["pipelines/preprocess.py"] + flags)}


def read_output(directory):
    """(Counter of example digests, vocab.txt, item_popularity.txt, counts of metadata.json)."""
    import tensorflow as tf

    from tfrs_linear import data

    meta = data.read_preprocessed_metadata(directory)
    examples = collections.Counter()
    for shard in meta["shards"]:
        for record in tf.data.TFRecordDataset(str(directory / shard)).as_numpy_iterator():
            f = tf.train.Example.FromString(record).features.feature
            key = repr((f["user_id"].bytes_list.value[0], tuple(f["item_ids"].int64_list.value),
                        tuple(f["item_raw_ids"].bytes_list.value)))
            examples[hashlib.sha256(key.encode()).digest()] += 1  # small at 10M events
    return (examples, (directory / "vocab.txt").read_bytes(),
            (directory / "item_popularity.txt").read_bytes(), {k: meta[k] for k in META_KEYS})


def compare(first, second):
    """The list of differences between two read_output results (empty: equal)."""
    names = ("examples (multiset)", "vocab.txt", "item_popularity.txt", "metadata.json counts")
    return [name for name, a, b in zip(names, first, second) if a != b]


def _mib(n):
    return f"{n / 2**20:,.0f} MiB"


def report(path, rows, args, load_start, load_end, started):
    lines = [
        "# Beam preprocessing on the DirectRunner: 1 worker vs 2 worker processes",
        "",
        f"- date: {started}; `scripts/bench_preprocess.py --events {' '.join(map(str, args.events))} "
        f"--shards {args.shards} --items {args.items}`",
        f"- machine: {platform.machine()}, {os.cpu_count()} logical cores (shared with other jobs), "
        f"{_mib(psutil.virtual_memory().total)} RAM; Python {platform.python_version()}",
        f"- load average at start {load_start}, at end {load_end}: timings on shared cores are "
        "noisy; compare the two configurations of one size, measured back to back",
        "- input: the first N events of `tfrs_linear.data.synthetic.generate` (catalogue "
        f"{args.items} items), {args.shards} CSV shards cut by time; output: 4 TFRecord shards",
        "- wall time includes start-up (Python, TensorFlow, Beam; with 2 processes also the "
        "workers' own: the marginal rates below cancel it); "
        "events/s = input events / wall time; peak RSS sampled every "
        f"{args.sample_s} s, summed over the process tree (shared pages count once per process)",
        "",
        "| events | users | configuration | wall | events/s | peak RSS, tree | largest process "
        "| processes | output equal to 1 worker |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['events']:,} | {r['users']:,} | {r['config']} | {r['wall_s']:.1f} s | "
            f"{r['events'] / r['wall_s']:,.0f} | {_mib(r['peak_tree_rss'])} | "
            f"{_mib(r['peak_process_rss'])} | "
            f"{r['processes']} | {r['equal']} |")
    lines += ["", "Ratios (2 processes / 1 worker, same size, same run):", ""]
    by_size = collections.defaultdict(dict)
    for r in rows:
        by_size[r["events"]][r["config"]] = r
    for events, pair in by_size.items():
        if len(pair) == 2:
            one, two = pair[CONFIGS[0][0]], pair[CONFIGS[1][0]]
            lines.append(f"- {events:,} events: wall {two['wall_s'] / one['wall_s']:.2f}x, "
                         f"peak tree RSS {two['peak_tree_rss'] / one['peak_tree_rss']:.2f}x")
    sizes = sorted(by_size)
    if len(sizes) > 1:
        lines += ["", "Between sizes (same configuration; start-up cancels out): marginal "
                  "events/s = extra events / extra wall time, RSS growth = extra peak tree RSS "
                  "/ extra events:", ""]
        for name, _ in CONFIGS:
            for small, big in zip(sizes, sizes[1:]):
                a, b = by_size[small].get(name), by_size[big].get(name)
                if a and b:
                    rate = (big - small) / max(b["wall_s"] - a["wall_s"], 1e-9)
                    growth = (b["peak_tree_rss"] - a["peak_tree_rss"]) / (big - small)
                    lines.append(f"- {name}, {small:,} -> {big:,} events: {rate:,.0f} events/s, "
                                 f"{growth:,.0f} bytes of RSS per extra event")
    if args.notes:
        lines += ["", Path(args.notes).read_text().strip()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, nargs="+", default=[200_000])
    parser.add_argument("--shards", type=int, default=8, help="input CSV files")
    parser.add_argument("--items", type=int, default=10_000, help="synthetic catalogue size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample-s", type=float, default=0.5, help="RSS sampling interval")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "preprocess.md")
    parser.add_argument("--notes", help="a Markdown file appended to the report (conclusions)")
    args = parser.parse_args(argv)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_start = [round(x, 2) for x in os.getloadavg()]
    rows, failed = [], False
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        tmp = Path(tmp)
        for events in args.events:
            log = tmp / f"log-{events}"
            write_log(log, events, args.shards, args.items, args.seed)
            outputs = []
            for name, flags in CONFIGS:
                out = tmp / f"out-{events}-{len(outputs)}"
                result = run_preprocess(log, out, flags, tmp / f"{out.name}.log", args.sample_s)
                outputs.append(read_output(out))
                diff = compare(outputs[0], outputs[-1])
                failed |= bool(diff)
                equal = "yes" if not diff else "NO: " + ", ".join(diff)
                row = dict(result, events=events, config=name, users=outputs[-1][3]["num_users"],
                           equal="(the reference)" if len(outputs) == 1 else equal)
                rows.append(row)
                print(f"{events:,} events, {name}: {row['wall_s']:.1f} s, "
                      f"{events / row['wall_s']:,.0f} events/s, tree RSS {_mib(row['peak_tree_rss'])}, "
                      f"equal: {row['equal']}", flush=True)
                # The next run's output directory is new: free this one's disk early.
                shutil.rmtree(out, ignore_errors=True)
            shutil.rmtree(log, ignore_errors=True)
    load_end = [round(x, 2) for x in os.getloadavg()]
    report(args.out, rows, args, load_start, load_end, started)
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
