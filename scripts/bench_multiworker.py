#!/usr/bin/env python
"""One worker against two: ``tfrs-linear train`` on a streamed preprocessed directory.

Writes a synthetic preprocessed directory (``bench_streaming_data.write_directory``), then
trains on it for ``--steps`` batches of one epoch with the same global batch, first as
one process (the default strategy), then as two ``--strategy multiworker`` workers on
loopback ports of this machine (``TF_CONFIG``; the directory's shards split by file).
Records per configuration: wall time (start-up, data counting, training, the final
streamed evaluation), the epoch's training seconds (``metrics.json``'s history),
training sequences/s, and each process's peak RSS (sampled every 0.1 s).

Both workers share this machine's cores, so two workers on one 2-core machine measure the
cost of the collective all-reduce and of splitting the input, not a speed-up: on real
machines each worker has its own cores. Writes ``docs/bench/multiworker.md`` and ``.json``.

    .venv/bin/python scripts/bench_multiworker.py [--events 1000000] [--steps 100]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

FLAGS = ["--regime", "all", "--epochs", "1", "--max-len", "50", "--d-model", "32",
         "--num-layers", "1", "--ffn-dim", "64", "--batch-size", "128",
         "--eval-batch-size", "1024"]


def run(workers, directory, output, steps, attention):
    """Runs the training as ``workers`` processes; returns its measurements."""
    cmd = [sys.executable, "-m", "tfrs_linear", "train", "--data", str(directory),
           "--output", str(output), "--steps-per-epoch", str(steps), "--attention",
           attention, *FLAGS]
    from tfrs_linear.training.strategy import loopback_tf_configs

    base = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    configs = loopback_tf_configs(workers)
    procs = []
    start = time.monotonic()
    for index in range(workers):
        env = dict(base)
        extra = []
        if workers > 1:
            env["TF_CONFIG"] = configs[index]
            extra = ["--strategy", "multiworker"]
        procs.append(psutil.Popen(cmd + extra, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True))
    peaks = [0] * workers
    while any(p.poll() is None for p in procs):
        for i, p in enumerate(procs):
            try:
                peaks[i] = max(peaks[i], p.memory_info().rss)
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.1)
    wall = time.monotonic() - start
    for p in procs:
        if p.returncode != 0:
            raise SystemExit(f"worker failed ({p.returncode}): {p.stderr.read()[-2000:]}")
    history = json.loads((Path(output) / "metrics.json").read_text())["history"]
    seconds = history[0]["seconds"]
    return {"workers": workers, "wall_s": wall, "epoch_train_s": seconds,
            "sequences_per_s": steps * 128 / seconds,
            "peak_rss_mb": [p / 2**20 for p in peaks],
            "valid_ndcg@10": history[0]["valid"]["ndcg@10"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=5_000)
    p.add_argument("--shards", type=int, default=16)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--attention", default="linrec")
    p.add_argument("--workdir", default=None)
    p.add_argument("--report", default=str(ROOT / "docs" / "bench" / "multiworker.md"))
    args = p.parse_args()
    from bench_streaming_data import write_directory

    work = Path(args.workdir or tempfile.mkdtemp(prefix="tfrs-linear-mw-"))
    directory = work / f"events-{args.events}"
    meta = (json.loads((directory / "metadata.json").read_text()) if directory.exists()
            else write_directory(directory, args.events, args.items, args.shards))
    load_start = os.getloadavg()
    results = []
    for workers in (1, 2):
        output = work / f"run-{workers}"
        if output.exists():
            import shutil
            shutil.rmtree(output)
        results.append(run(workers, directory, output, args.steps, args.attention))
        print(json.dumps(results[-1]), flush=True)
    write_report(results, meta, args, load_start, os.getloadavg(), Path(args.report))


def write_report(results, meta, args, load_start, load_end, path):
    one = results[0]
    lines = [
        "# One worker against two (`--strategy multiworker`, loopback, one machine)", "",
        f"- `scripts/bench_multiworker.py --events {args.events} --steps {args.steps}`, "
        f"{time.strftime('%Y-%m-%d')}; 2-core CPU, load average {load_start[0]:.1f} at the "
        f"start, {load_end[0]:.1f} at the end.",
        f"- data: a preprocessed directory of {meta['num_interactions']:,} events, "
        f"{meta['num_users']:,} users, {args.items:,} items, {args.shards} shards (split "
        "by file between the workers); streamed, never loaded.",
        f"- model: {args.attention}, regime all, max_len 50, d_model 32, 1 layer, global "
        f"batch 128 (64 per worker with two), {args.steps} steps, full-catalogue loss; "
        "wall includes start-up, the counting pass, and the final streamed evaluation.",
        "- both workers run on the same 2 cores: this measures what the collective "
        "all-reduce and the split input cost, not a speed-up (real workers have their own "
        "cores). One worker compiles its train step with XLA; two run it as a TensorFlow "
        "graph (tf-keras cannot compile a cross-replica step on CPU).", "",
        "| workers | wall s | epoch training s | training sequences/s | vs 1 worker | "
        "peak RSS per process MB | valid NDCG@10 after the epoch |",
        "|---|---|---|---|---|---|---|"]
    for r in results:
        rss = " / ".join(f"{x:.0f}" for x in r["peak_rss_mb"])
        lines.append(f"| {r['workers']} | {r['wall_s']:.0f} | {r['epoch_train_s']:.1f} | "
                     f"{r['sequences_per_s']:.0f} | "
                     f"{r['sequences_per_s'] / one['sequences_per_s']:.2f}x | {rss} | "
                     f"{r['valid_ndcg@10']:.4f} |")
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
